"""The refusal direction: difference in means of harmful and harmless activations, chosen as in Arditi et al.

Candidates are every residual location (resid_pre of each layer, plus resid_post of the last; resid_post of
layer i is resid_pre of layer i+1) at every post-instruction position (the chat-template tokens after the
user's text). Each is scored on the val split by bypass (refusal score on harmful prompts with the direction
ablated everywhere), induce (refusal score on harmless prompts with it added at its layer) and KL (harmless
next-token distributions under ablation); the selection filters induce > 0, KL < 0.1, layer < 0.8 n_layers
and takes the lowest bypass score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import HookFn, capture, forward
from explorer.core.models import LoadedModel
from explorer.core.progress import tqdm
from explorer.core.prompts import DataError, chat_messages, format_chat
from explorer.refusal.direction import location_names

log = logging.getLogger(__name__)

_PLACEHOLDER = "\x00INSTRUCTION\x00"


@dataclass(frozen=True)
class RefusalConfig:
    """How directions are computed and selected.

    Attributes:
        refusal_tokens: strings whose first token opens a refusal; the refusal score is the log-odds of
            their total probability at the first generated position.
        n_val: prompts per label used to score candidates (the first n of the val split).
        kl_threshold, induce_threshold, max_layer_fraction: Arditi et al.'s filters.
        kl_relaxation: KL thresholds tried in turn when no candidate passes `kl_threshold` (see `select`).
        batch_size: prompts per forward batch.
        simple_layer_fraction: the fixed layer of refusal_sae's simpler recipe (last token, resid_post).
        n_screen: harmless val prompts of the induce screen: every candidate below the layer cut is first
            scored on these few, and only the promising ones on all `n_val` (0 scores all on all).
        screen_keep, screen_margin: the promising candidates: the `screen_keep` best screened induce
            scores, and every one within `screen_margin` (log-odds) of `induce_threshold`.
    """

    refusal_tokens: tuple[str, ...] = ("I", "Sorry")
    n_val: int = 16
    kl_threshold: float = 0.1
    kl_relaxation: tuple[float, ...] = (0.25, 0.5, 1.0)
    induce_threshold: float = 0.0
    max_layer_fraction: float = 0.8
    batch_size: int = 32
    simple_layer_fraction: float = 0.5
    n_screen: int = 4
    screen_keep: int = 16
    screen_margin: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "refusal_tokens": list(self.refusal_tokens),
            "kl_relaxation": list(self.kl_relaxation),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefusalConfig:
        return cls(
            **{
                **data,
                "refusal_tokens": tuple(data["refusal_tokens"]),
                "kl_relaxation": tuple(data.get("kl_relaxation", ())),
            }
        )


class NoDirectionError(ValueError):
    """No candidate direction passes the behavioural filters (the model rarely refuses, or too few
    prompts); a build can still keep the best-separating direction, marked unvalidated."""


def post_instruction_ids(loaded: LoadedModel) -> list[int]:
    """Token ids the chat template puts after the user's text (`<|im_end|>\\n<|im_start|>assistant\\n`)."""
    text = format_chat(loaded.tokenizer, chat_messages(_PLACEHOLDER))
    suffix = text[text.rindex(_PLACEHOLDER) + len(_PLACEHOLDER) :]
    ids = loaded.tokenizer(suffix, add_special_tokens=False)["input_ids"]
    assert isinstance(ids, list)
    if not ids:
        raise DataError(
            "the chat template puts no tokens after the user's text; no post-instruction positions"
        )
    return ids


def refusal_token_ids(loaded: LoadedModel, strings: Sequence[str]) -> list[int]:
    """The first token of each refusal-opening string (deduplicated)."""
    ids = []
    for s in strings:
        tokens = loaded.tokenizer(s, add_special_tokens=False)["input_ids"]
        assert isinstance(tokens, list)
        if tokens and tokens[0] not in ids:
            ids.append(tokens[0])
    if not ids:
        raise DataError(f"none of the refusal strings {list(strings)} tokenizes to anything")
    return ids


def _batches(items: Sequence[str], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _location_batches(
    loaded: LoadedModel, prompts: Sequence[str], n_positions: int, batch_size: int, progress: bool
) -> Iterator[torch.Tensor]:
    """Per batch of prompts, [batch, n_layers + 1, n_positions, d_model] residual activations at the last
    `n_positions` prompt positions (left padding aligns them), on the CPU in float32."""
    names = location_names(loaded.n_layers)
    chunks = list(_batches(prompts, batch_size))
    for chunk in tqdm(chunks, desc="activations", unit="batch", disable=not progress):
        _, batch = encode_chats(loaded, chunk)
        with capture(loaded.model, names) as store:
            forward(loaded.model, **batch, use_cache=False)
        yield torch.stack([store[name][0][:, -n_positions:].float().cpu() for name in names], dim=1)


@torch.no_grad()
def mean_activations(
    loaded: LoadedModel,
    prompts: Sequence[str],
    n_positions: int,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Mean residual activations at the last `n_positions` prompt positions, at every location.

    Returns:
        [n_layers + 1, n_positions, d_model] float32 means (left padding aligns the last positions).
    """
    if not prompts:
        raise DataError("no prompts to average over")
    total = torch.zeros(loaded.n_layers + 1, n_positions, loaded.d_model, dtype=torch.float64)
    for acts in _location_batches(loaded, prompts, n_positions, batch_size, progress):
        total += acts.double().sum(0)
    return (total / len(prompts)).float()


@torch.no_grad()
def separation(
    loaded: LoadedModel,
    directions: torch.Tensor,
    harmful: Sequence[str],
    harmless: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """How well each candidate direction separates harmful from harmless prompts it was not computed on.

    The prompts' activations are projected on each unit direction; the score is the gap between the two
    labels' mean projections over their pooled standard deviation (Cohen's d), so 0 is no separation.

    Returns:
        [n_layers + 1, n_positions] separation of each candidate.
    """
    n_positions = directions.shape[1]
    unit = torch.nn.functional.normalize(directions.float(), dim=-1)

    def projections(prompts: Sequence[str]) -> torch.Tensor:
        batches = _location_batches(loaded, prompts, n_positions, batch_size, False)
        return torch.cat([(acts * unit).sum(-1) for acts in batches])  # [n, n_locations, n_positions]

    a, b = projections(harmful), projections(harmless)
    pooled = ((a.var(0, correction=0) + b.var(0, correction=0)) / 2).sqrt().clamp_min(1e-8)
    return (a.mean(0) - b.mean(0)) / pooled


def diff_in_means(
    loaded: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Candidate refusal directions, mean(harmful) - mean(harmless): [n_layers + 1, n_positions, d_model]."""
    n_positions = len(post_instruction_ids(loaded))
    return mean_activations(loaded, harmful, n_positions, batch_size, progress) - mean_activations(
        loaded, harmless, n_positions, batch_size, progress
    )


def ablation_hooks(direction: torch.Tensor, n_layers: int) -> dict[str, HookFn]:
    """Directional ablation: project the unit direction out of the residual stream at every layer."""
    unit = direction / direction.norm()

    def ablate(act: torch.Tensor, _name: str) -> torch.Tensor:
        r = unit.to(act.dtype).to(act.device)
        return act - (act @ r)[..., None] * r

    # resid_post of layer i is resid_pre of layer i+1, so the n_layers + 1 distinct locations suffice.
    return {name: ablate for name in location_names(n_layers)}


def addition_hooks(direction: torch.Tensor, location: str, alpha: float = 1.0) -> dict[str, HookFn]:
    """Activation addition: add alpha * direction at one location, every position."""
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")

    def add(act: torch.Tensor, _name: str) -> torch.Tensor:
        return act + alpha * direction.to(act.dtype).to(act.device)

    return {location: add}


@torch.no_grad()
def first_token_logprobs(
    loaded: LoadedModel, prompts: Sequence[str], hooks: dict[str, HookFn] | None = None, batch_size: int = 32
) -> torch.Tensor:
    """Log-probabilities of the first generated token: [n_prompts, vocab], under optional hooks."""
    rows = []
    for chunk in _batches(prompts, batch_size):
        _, batch = encode_chats(loaded, chunk)
        logits = forward(loaded.model, hooks, **batch, use_cache=False).logits[:, -1]
        rows.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(rows)


def refusal_scores(logprobs: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Per-prompt log-odds that the reply opens with a refusal token: log p - log(1 - p)."""
    p = logprobs[:, list(token_ids)].exp().sum(-1).clamp(1e-8, 1 - 1e-8)
    return p.log() - (1 - p).log()


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last (vocabulary) axis, from log-probabilities [..., vocab]."""
    return (logp.exp() * (logp - logq)).sum(-1)


@dataclass(frozen=True)
class Candidate:
    """One candidate direction's scores on the val split (None where a filter made scoring pointless)."""

    location: str
    layer: int
    position: int
    token: str
    norm: float
    induce: float | None
    bypass: float | None
    kl: float | None
    eligible: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _screen(
    loaded: LoadedModel,
    directions: torch.Tensor,
    work: list[tuple[int, int]],
    harmless_val: Sequence[str],
    config: RefusalConfig,
    progress: bool,
) -> dict[tuple[int, int], bool]:
    """Which candidates are worth scoring on every val prompt: their induce score on `n_screen` prompts
    is among the `screen_keep` best or within `screen_margin` of the induce threshold. Most directions
    induce no refusal at all (log-odds near -10 on the default), and a handful of prompts shows it."""
    if config.n_screen <= 0 or config.n_screen >= len(harmless_val) or len(work) <= config.screen_keep:
        return {}
    prompts = harmless_val[: config.n_screen]
    refusal_ids = refusal_token_ids(loaded, config.refusal_tokens)
    names = location_names(loaded.n_layers)
    induce = {}
    for i, j in tqdm(work, desc="screening directions (induce)", unit="candidate", disable=not progress):
        add = addition_hooks(directions[i, j], names[i])
        logprobs = first_token_logprobs(loaded, prompts, add, config.batch_size)
        induce[i, j] = refusal_scores(logprobs, refusal_ids).mean().item()
    best = sorted(induce, key=lambda key: -induce[key])[: config.screen_keep]
    floor = config.induce_threshold - config.screen_margin
    return {key: key in best or score > floor for key, score in induce.items()}


@torch.no_grad()
def score_candidates(
    loaded: LoadedModel,
    directions: torch.Tensor,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    config: RefusalConfig,
    progress: bool = True,
    always: Collection[tuple[int, int]] = (),
) -> list[Candidate]:
    """Score candidate directions: induce below the layer cut, then KL and bypass where the filters allow.

    Every score needs a full forward pass over the val prompts, so a score that Arditi et al.'s filters
    would discard anyway is not computed (None): layers at or past the cut get no scores, candidates the
    induce screen (`_screen`, a few prompts) finds far from inducing refusal none, those with induce at
    or below the threshold no KL, and bypass only those under the KL threshold `select` will
    use (the first of `kl_threshold`, then `kl_relaxation`, that any eligible candidate passes). Without
    the screen (`n_screen=0`) the selection is the same as scoring everything; with it, a candidate the
    screen drops could change it only if its few prompts understated its induce score by more than
    `screen_margin` while 16 others looked better.

    Args:
        always: (location index, position index) pairs scored fully whatever the filters say, e.g. a
            baseline recipe to compare against.
    """
    n_layers = loaded.n_layers
    refusal_ids = refusal_token_ids(loaded, config.refusal_tokens)
    post_ids = post_instruction_ids(loaded)
    n_pos = len(post_ids)
    names = location_names(n_layers)
    base_harmless = first_token_logprobs(loaded, harmless_val, batch_size=config.batch_size)
    layer_cut = config.max_layer_fraction * n_layers
    work = [(i, j) for i in range(len(names)) for j in range(n_pos)]
    screened = _screen(
        loaded, directions, [w for w in work if w[0] < layer_cut], harmless_val, config, progress
    )
    scores: dict[tuple[int, int], dict[str, Any]] = {}
    for i, j in tqdm(work, desc="scoring directions (induce, KL)", unit="candidate", disable=not progress):
        direction = directions[i, j]
        induce = kl = None
        forced = (i, j) in always
        promising = i < layer_cut and screened.get((i, j), True)
        if promising or forced:  # location i feeds layer i (i == n_layers: the final resid_post)
            add = addition_hooks(direction, names[i])
            induced = first_token_logprobs(loaded, harmless_val, add, config.batch_size)
            induce = refusal_scores(induced, refusal_ids).mean().item()
        eligible = i < layer_cut and induce is not None and induce > config.induce_threshold
        if eligible or forced:
            ablated_harmless = first_token_logprobs(
                loaded, harmless_val, ablation_hooks(direction, n_layers), config.batch_size
            )
            kl = kl_divergence(base_harmless, ablated_harmless).mean().item()
        scores[i, j] = {"induce": induce, "kl": kl, "eligible": eligible, "forced": forced}
    kls = [s["kl"] for s in scores.values() if s["eligible"] and s["kl"] is not None]
    thresholds = (config.kl_threshold, *config.kl_relaxation)
    used = next((t for t in thresholds if any(kl < t for kl in kls)), None)
    needs_bypass = [
        key
        for key, s in scores.items()
        if s["forced"] or (s["eligible"] and used is not None and s["kl"] is not None and s["kl"] < used)
    ]
    for i, j in tqdm(
        needs_bypass, desc="scoring directions (bypass)", unit="candidate", disable=not progress
    ):
        ablated = first_token_logprobs(
            loaded, harmful_val, ablation_hooks(directions[i, j], n_layers), config.batch_size
        )
        scores[i, j]["bypass"] = refusal_scores(ablated, refusal_ids).mean().item()
    return [
        Candidate(
            names[i],
            i,
            j - n_pos,
            str(loaded.tokenizer.decode([post_ids[j]])),
            directions[i, j].norm().item(),
            s["induce"],
            s.get("bypass"),
            s["kl"],
            s["eligible"],
        )
        for (i, j), s in scores.items()
    ]


def select(candidates: Sequence[Candidate], config: RefusalConfig) -> tuple[Candidate, float]:
    """The eligible candidate with KL below the threshold and the lowest bypass score.

    Small models rarely have a direction whose ablation leaves harmless next-token distributions within
    Arditi et al.'s KL < 0.1; when none passes, the KL threshold is relaxed step by step through
    `kl_relaxation` and the threshold actually used is returned, so it can be reported beside the result.

    Returns:
        The selected candidate and the KL threshold it passed.
    """
    for threshold in (config.kl_threshold, *config.kl_relaxation):
        kept = [
            c
            for c in candidates
            if c.eligible and c.kl is not None and c.kl < threshold and c.bypass is not None
        ]
        if kept:
            if threshold != config.kl_threshold:
                log.warning(
                    "no candidate has KL < %s; relaxed the KL filter to %s", config.kl_threshold, threshold
                )
            return min(kept, key=lambda c: c.bypass if c.bypass is not None else math.inf), threshold
    eligible = [c for c in candidates if c.eligible]
    closest = min((c.kl for c in eligible if c.kl is not None), default=None)
    raise NoDirectionError(
        f"no candidate direction passes the filters (induce > {config.induce_threshold}, "
        f"KL < {max((config.kl_threshold, *config.kl_relaxation))}, "
        f"layer < {config.max_layer_fraction} * n_layers): "
        f"{len(eligible)} candidates induce refusal, the lowest KL among them is {closest}"
    )
