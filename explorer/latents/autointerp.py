"""Automatic labels: an LLM explains each latent from its activating windows, and the explanation is scored
by detection (told the explanation, can the LLM pick held-out activating windows out of a shuffled mix
with non-activating ones?); the score is the balanced accuracy of its picks.

Work is split as elsewhere: `prepare_tasks` reads the cache (and, if given, runs the model to prove the
non-activating windows are zero), the prompts and parsers are plain functions of those records, and
`label_latents` only talks to the endpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Protocol

import torch

from explorer.core.hooks import run_to
from explorer.core.llm import Messages
from explorer.core.models import LoadedModel
from explorer.core.paths import utc_now
from explorer.core.progress import tqdm
from explorer.latents.autointerp_client import (
    PROMPT_VERSION,
    ReplyError,
    detection_messages,
    explanation_messages,
    parse_detection,
    parse_explanation,
    render_window,
)
from explorer.latents.notes_format import Label
from explorer.latents.reader import CacheError, Example, LatentCache, LatentRecord, trimmed
from explorer.saes.loading import LoadedSAE, latent_encoder

NegativeSource = Literal["model", "cache", "unverified"]
"""How the non-activating windows were checked: a forward pass through the model and SAE; the cache
alone (exact: the latent has fewer top examples than slots, so every row it fires in is known); or not
at all (windows from rows the latent has no stored example in)."""
RowActivations = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]
"""(input_ids [rows, pos], lengths [rows], latents) -> [rows, pos, len(latents)] activations."""


class Chat(Protocol):
    """What labelling needs of an endpoint (`ChatClient` has it)."""

    def complete(self, messages: Messages, max_tokens: int) -> str: ...


@dataclass(frozen=True)
class AutoInterpConfig:
    """What the explainer sees and how explanations are scored.

    Attributes:
        n_top: top examples shown to the explainer.
        n_groups: quantile-group examples shown too (one per group, spread over the activation range).
        n_detect: held-out activating windows per detection test, and as many non-activating ones.
        before, after: tokens shown before and after each window's activating token.
        candidate_rows: corpus rows searched for non-activating windows.
        explain_tokens, detect_tokens: `max_tokens` of the two requests.
        seed: seeds the choice of non-activating windows and the shuffle.
    """

    n_top: int = 8
    n_groups: int = 4
    n_detect: int = 8
    before: int = 12
    after: int = 4
    candidate_rows: int = 128
    explain_tokens: int = 64
    detect_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        may_be_zero = ("before", "after", "n_groups", "seed")
        wrong = {k: v for k, v in asdict(self).items() if v < (0 if k in may_be_zero else 1)}
        if wrong:
            raise ValueError(
                f"auto-interp settings out of range: {wrong} ({', '.join(may_be_zero)} >= 0, others >= 1)"
            )

    @property
    def width(self) -> int:
        """Tokens in a full window."""
        return self.before + self.after + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoInterpConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Window:
    """Tokens of one corpus row from `start`, with the latent's activation at each (None: a position the
    cache does not count, such as a special token)."""

    row: int
    start: int
    tokens: list[str]
    values: list[float | None]

    @property
    def activating(self) -> bool:
        return any(v is not None and v > 0 for v in self.values)


@dataclass(frozen=True)
class LatentTask:
    """One latent, ready to be labelled: what the explainer sees and the shuffled detection windows.

    Attributes:
        peak: the latent's max on the corpus (activations are shown relative to it).
        problem: why the latent cannot be labelled (then `shown` and `detect` may be empty).
    """

    latent: int
    peak: float
    shown: list[Window]
    detect: list[Window]
    negatives: NegativeSource
    problem: str | None = None


@dataclass(frozen=True)
class LatentResult:
    """The outcome for one latent: its explanation and detection score, or the reason it failed.

    Attributes:
        score: balanced accuracy (TPR + TNR) / 2 of the labeller's picks; None when it failed.
        picked: the detection windows the labeller said activate (1-based, as numbered in the prompt).
    """

    latent: int
    explanation: str | None
    score: float | None
    tpr: float | None
    tnr: float | None
    n_activating: int
    n_quiet: int
    negatives: NegativeSource
    picked: list[int]
    error: str | None = None


def task_prompts(task: LatentTask, explanation: str = "<explanation>") -> tuple[Messages, Messages]:
    """The explanation prompt of a task and its detection prompt for `explanation`."""
    shown = [render_window(w.tokens, w.values, task.peak) for w in task.shown]
    detect = [render_window(w.tokens, w.values, None) for w in task.detect]
    return explanation_messages(shown), detection_messages(explanation, detect)


def balanced_accuracy(truth: Sequence[bool], picked: Sequence[int]) -> tuple[float, float, float]:
    """(balanced accuracy, true positive rate, true negative rate) of 1-based picks against `truth`.

    Raises:
        ValueError: `truth` lacks activating or non-activating windows.
    """
    chosen = set(picked)
    pos = [n for n, t in enumerate(truth, 1) if t]
    neg = [n for n, t in enumerate(truth, 1) if not t]
    if not pos or not neg:
        raise ValueError("balanced accuracy needs activating and non-activating windows")
    tpr = sum(n in chosen for n in pos) / len(pos)
    tnr = sum(n not in chosen for n in neg) / len(neg)
    return (tpr + tnr) / 2, tpr, tnr


def select_latents(cache: LatentCache, text: str, by: str = "refusal_cos") -> list[int]:
    """Latents from `top:N` (the N highest by column `by`) or explicit ids (`0,5,7`), in order, once each.

    Raises:
        CacheError: a malformed selection, a latent out of range, or a column the cache lacks.
    """
    text = text.strip()
    if text.startswith("top:"):
        count = text[4:].strip()
        if not count.isdigit() or int(count) < 1:
            raise CacheError(f"--latents {text!r}: top:N needs a positive whole number N")
        return cache.top_latents(by, int(count))
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise CacheError(f"--latents {text!r} is neither top:N nor comma-separated latent numbers like 0,5,7")
    wrong = [int(p) for p in parts if int(p) >= cache.d_sae]
    if wrong:
        raise CacheError(f"latent(s) {wrong} out of range: this SAE has latents 0..{cache.d_sae - 1}")
    return list(dict.fromkeys(int(p) for p in parts))


def sae_activations(loaded: LoadedModel, sae: LoadedSAE, batch_size: int = 16) -> RowActivations:
    """A `RowActivations` that runs the model to the SAE's hook and encodes the residual (zero past each
    row's length), proving windows non-activating instead of guessing."""

    @torch.no_grad()
    def run(input_ids: torch.Tensor, lengths: torch.Tensor, latents: Sequence[int]) -> torch.Tensor:
        encode = latent_encoder(sae, latents)
        out = torch.zeros(*input_ids.shape, len(latents))
        starts = range(0, len(input_ids), batch_size)
        for lo in tqdm(starts, desc="checking windows", unit="batch", disable=len(starts) < 4):
            size = lengths[lo : lo + batch_size]
            width = max(int(size.max()), 1)
            ids = input_ids[lo : lo + batch_size, :width].long().to(loaded.device)
            attention = (torch.arange(width)[None, :] < size[:, None]).long()
            resid = run_to(loaded.model, ids, [sae.hook], attention_mask=attention.to(loaded.device))
            acts = encode(resid[sae.hook].to(sae.sae.device, sae.sae.dtype)).float().cpu()
            out[lo : lo + batch_size, :width] = acts * attention[..., None]
        return out

    return run


def _window(example: Example, before: int, after: int) -> Window:
    e = trimmed(example, before, after)
    return Window(e.row, e.pos - e.focus, e.context, e.values)


def _split_examples(record: LatentRecord, config: AutoInterpConfig) -> tuple[list[Example], list[Example]]:
    """(shown to the explainer, held out for detection): the top examples and one example of groups
    spread over the range are shown; the held-out ones come from every group in turn, then the top."""
    groups = [g.examples for g in record.groups if g.examples]
    picks = {round(i * (len(groups) - 1) / max(config.n_groups - 1, 1)) for i in range(config.n_groups)}
    shown: list[Example] = []
    seen: set[tuple[int, int]] = set()
    for e in record.top_examples[: config.n_top] + [groups[g][0] for g in sorted(picks) if groups]:
        if (e.row, e.pos) not in seen:
            seen.add((e.row, e.pos))
            shown.append(e)
    depth = max(map(len, groups), default=0)
    rest = [g[layer] for layer in range(depth) for g in groups if layer < len(g)]
    # A held-out window shares no token with a shown one: the detector would recognise the text.
    windows = [_window(e, config.before, config.after) for e in shown]
    covered = {(w.row, p) for w in windows for p in range(w.start, w.start + len(w.tokens))}
    held: list[Example] = []
    for e in [*rest, *record.top_examples[config.n_top :]]:
        w = _window(e, config.before, config.after)
        clash = any((w.row, p) in covered for p in range(w.start, w.start + len(w.tokens)))
        if (e.row, e.pos) not in seen and not clash and len(held) < config.n_detect:
            seen.add((e.row, e.pos))
            held.append(e)
    while len(held) < min(config.n_detect, (len(shown) + len(held)) // 2):
        held.append(shown.pop())  # too few examples: show fewer so that some are held out
    return shown, held


LATENT_CHUNK = 256
"""Latents whose activations one forward pass over the candidate rows keeps (bounds its memory)."""


class _Corpus:
    """The cache's token rows (ids, counted positions, lengths), its vocabulary, and the rows searched for
    non-activating windows."""

    def __init__(self, cache: LatentCache, config: AutoInterpConfig) -> None:
        self.ids, self.mask, self.lengths, self.vocab = (
            cache.input_ids,
            cache.counted,
            cache.lengths,
            cache.vocab,
        )
        self.config = config
        eligible = [r for r, n in enumerate(self.lengths.tolist()) if n > config.width]
        self.pool = sorted(
            random.Random(config.seed).sample(eligible, min(config.candidate_rows, len(eligible)))
        )
        top_tokens = cache.column("top_tokens")  # [d_sae, k], -1 for empty slots
        self.few_rows = ((top_tokens >= 0).sum(1) < top_tokens.shape[1]).tolist()
        self.covered = set((top_tokens[top_tokens >= 0] // cache.seq_len).tolist())

    def quiet(self, activations: RowActivations, latents: Sequence[int]) -> torch.Tensor:
        """[pool rows, starts, latents] True where the window from that start is zero at every counted
        position (a start 0 window, which shows the row's first token, is never chosen)."""
        acts = activations(self.ids[self.pool], self.lengths[self.pool], latents)
        active = ((acts > 0) & self.mask[self.pool][..., None]).long()
        ends = torch.nn.functional.pad(active.cumsum(1), (0, 0, 1, 0))
        return (ends[:, self.config.width :] - ends[:, : -self.config.width]) == 0

    def negatives(
        self, latent: int, n: int, quiet: torch.Tensor | None, record: LatentRecord, avoid: set[str]
    ) -> tuple[list[Window], NegativeSource]:
        """Up to `n` distinct non-activating windows (never a text in `avoid`), one per row, and how they
        were checked: `quiet` ([pool rows, starts] for this latent) if given, else the cache."""
        width, seed = self.config.width, self.config.seed
        source: NegativeSource = (
            "model" if quiet is not None else "cache" if self.few_rows[latent] else "unverified"
        )
        used = {e.row for e in [*record.top_examples, *(e for g in record.groups for e in g.examples)]}
        order = list(range(len(self.pool)))
        random.Random(seed * 1_000_003 + latent).shuffle(order)
        found: list[Window] = []
        for k in order:
            if len(found) >= n:
                break
            row, length = self.pool[k], int(self.lengths[self.pool[k]])
            if quiet is not None:
                starts = (quiet[k, 1 : length - width + 1].nonzero().flatten() + 1).tolist()
            elif row in used or (source == "cache" and row not in self.covered):
                continue
            else:
                starts = list(range(1, length - width + 1))
            if not starts:
                continue
            start = random.Random(seed + row * 7919 + latent).choice(starts)
            counted = self.mask[row, start : start + width].tolist()
            ids = self.ids[row, start : start + width].tolist()
            window = Window(row, start, [self.vocab[i] for i in ids], [0.0 if c else None for c in counted])
            text = render_window(window.tokens, window.values, None)  # as the detector will see it
            if text not in avoid:
                avoid.add(text)
                found.append(window)
        return found, source


def prepare_tasks(
    cache: LatentCache,
    latents: Sequence[int],
    config: AutoInterpConfig | None = None,
    activations: RowActivations | None = None,
) -> list[LatentTask]:
    """Choose each latent's shown, held-out activating and non-activating windows.

    Non-activating windows are whole windows of corpus rows where the latent is zero at every counted
    position. With `activations` (see `sae_activations`) that is checked by a forward pass over
    `candidate_rows` rows; without, from the cache alone: exact for a latent with fewer top examples than
    the cache keeps (top examples are one per row, so every row it fires in is known), otherwise
    unverified (rows the latent has no stored example in; some may activate, lowering its score).
    """
    config = config or AutoInterpConfig()
    corpus = _Corpus(cache, config)
    tasks = []
    for lo in range(0, len(latents), LATENT_CHUNK):
        chunk = list(latents[lo : lo + LATENT_CHUNK])
        quiet = corpus.quiet(activations, chunk) if activations is not None and corpus.pool else None
        for j, latent in enumerate(chunk):
            record = cache.latent(latent)
            shown, held = _split_examples(record, config)
            positives = [_window(e, config.before, config.after) for e in held]
            avoid = {render_window(w.tokens, w.values, None) for w in positives}
            column = None if quiet is None else quiet[..., j]
            negatives, source = corpus.negatives(latent, len(positives), column, record, avoid)
            problem = None
            if not record.top_examples:
                problem = "it never activates on the corpus"
            elif not held:
                problem = "too few examples to hold any out"
            elif not negatives:
                problem = f"no non-activating window found in {len(corpus.pool)} corpus rows"
            if problem is not None:
                tasks.append(LatentTask(latent, record.max, [], [], source, problem))
                continue
            detect = positives[: len(negatives)] + negatives
            random.Random(config.seed * 1_000_003 + latent).shuffle(detect)
            windows = [_window(e, config.before, config.after) for e in shown]
            tasks.append(LatentTask(latent, record.max, windows, detect, source))
    return tasks


def label_latents(
    tasks: Sequence[LatentTask], chat: Chat, config: AutoInterpConfig | None = None, *, progress: bool = True
) -> Iterator[LatentResult]:
    """Explain and score each task's latent, yielding results as they come (so a caller can save them).

    A reply that cannot be parsed fails that latent with the reason; an unusable endpoint (`LLMError`)
    ends the run.
    """
    config = config or AutoInterpConfig()
    for task in tqdm(tasks, desc="labelling", unit="latent", disable=not progress):
        truth = [w.activating for w in task.detect]
        n_pos, n_neg = sum(truth), len(truth) - sum(truth)
        result = LatentResult(task.latent, None, None, None, None, n_pos, n_neg, task.negatives, [])
        if task.problem is not None:
            yield replace(result, error=task.problem)
            continue
        try:
            explain, _ = task_prompts(task)
            explanation = parse_explanation(chat.complete(explain, config.explain_tokens))
            result = replace(result, explanation=explanation)
            _, detect = task_prompts(task, explanation)
            reply = chat.complete(detect, config.detect_tokens)
            picked = parse_detection(reply, len(task.detect))
        except ReplyError as e:
            yield replace(result, error=str(e))
            continue
        score, tpr, tnr = balanced_accuracy(truth, picked)
        yield replace(result, score=score, tpr=tpr, tnr=tnr, picked=picked)


def auto_labels(results: Sequence[LatentResult], hook: str, provider: str, model: str) -> list[Label]:
    """The scored results as automatic labels (failed latents get none), dated now."""
    now = utc_now()
    return [
        Label(hook, r.latent, r.explanation, "auto", provider, model, PROMPT_VERSION, r.score, now)
        for r in results
        if r.explanation is not None and r.score is not None and r.error is None
    ]
