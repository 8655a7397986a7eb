"""Steered decoding: the default and the steered reply in one batched pass, streamed token by token.

`decode` is the one decoding loop: a batch of conversations, a steering spec, and which rows it steers.
Every row samples with its own generator seeded with the sampling seed, so a row's tokens depend only on
its own logits: the default column of `generate_side_by_side` (a batch of two, the hook acting on the
second row only) equals a plain unsteered `decode` of the same prompt and seed, token for token.

The model lock is taken per forward call, with the request's hooks attached only for that call, so
concurrent requests (browser sessions sharing one model) interleave steps but never see each other's
clamps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from explorer.core.generation import Conversation, SamplingConfig, encode_chats, to_messages
from explorer.core.hooks import HookFn, forward
from explorer.core.judge import Judge, SubstringJudge
from explorer.core.models import LoadedModel
from explorer.core.progress import tqdm
from explorer.core.prompts import format_chat
from explorer.refusal.direction import RefusalDirection
from explorer.saes.loading import LoadedSAE
from explorer.steering.hooks import StepState, steering_hooks
from explorer.steering.spec import Scope, SteeringSpec


@dataclass(frozen=True)
class Steerer:
    """The shared, read-only things steering needs: model, SAEs by hook, refusal direction, latent maxima.

    Attributes:
        loaded: the model (shared; never mutated).
        saes: hook -> SAE.
        refusal: the refusal direction, for the direction baselines and the per-token projection.
        max_activations: hook -> [d_sae] each latent's max on the cache's corpus (for `units="max"`).
        judge: judges each reply (the substring judge by default).
    """

    loaded: LoadedModel
    saes: Mapping[str, LoadedSAE] = field(default_factory=dict)
    refusal: RefusalDirection | None = None
    max_activations: Mapping[str, torch.Tensor] | None = None
    judge: Judge = field(default_factory=SubstringJudge)

    def hooks(self, spec: SteeringSpec, state: StepState, *, record: bool) -> dict[str, HookFn]:
        """The hooks applying `spec` with this steerer's SAEs, maxima and direction (validated first)."""
        return steering_hooks(
            spec,
            self.saes,
            state,
            self.loaded.n_layers,
            max_activations=self.max_activations,
            refusal=self.refusal,
            record=record,
        )


@dataclass(frozen=True)
class TokenStep:
    """One generated token with what the UI shows under it.

    Attributes:
        token_id: the token; text: its decoded piece.
        latents: the clamped latents' activations (before clamping) at the position that produced it.
        refusal_projection: the residual's projection on the unit refusal direction there, after steering.
    """

    token_id: int
    text: str
    latents: list[float]
    refusal_projection: float | None


@dataclass(frozen=True)
class Reply:
    """One row's reply."""

    text: str
    token_ids: list[int]
    finished: bool
    steered: bool
    verdict: dict[str, Any]
    steps: list[TokenStep]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SideBySide:
    """The default and steered replies, and how they were made.

    Attributes:
        prompt_text: the default column's chat-templated prompt; steered_prompt_text: the steered
            column's (the same text unless each column kept its own multi-turn history).
    """

    prompt_text: str
    default: Reply
    steered: Reply
    spec: dict[str, Any]
    sampling: dict[str, Any]
    latent_labels: list[str]
    steered_prompt_text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


StepCallback = Callable[[int, list[TokenStep | None]], None]
"""Called after every step with the step number and each row's new token (None for a finished row)."""


def sample_next(
    logits: torch.Tensor,  # [batch, vocab]
    history: list[list[int]],
    generated: list[list[int]],
    sampling: SamplingConfig,
    generators: list[torch.Generator],
) -> list[int]:
    """Each row's next token: repetition penalty over the row's whole sequence, frequency penalty over
    its generated tokens, then greedy, or temperature and top-p sampling with the row's own generator."""
    out = []
    for row in range(logits.shape[0]):
        scores = logits[row].float().clone()
        if sampling.repetition_penalty != 1.0 and history[row]:
            seen = torch.tensor(sorted(set(history[row])), device=scores.device)
            penalised = scores[seen]
            scores[seen] = torch.where(
                penalised > 0,
                penalised / sampling.repetition_penalty,
                penalised * sampling.repetition_penalty,
            )
        if sampling.frequency_penalty and generated[row]:
            counts = torch.bincount(torch.tensor(generated[row]), minlength=scores.shape[0])
            scores -= sampling.frequency_penalty * counts.to(scores.device, scores.dtype)
        if sampling.greedy:
            out.append(int(scores.argmax()))
            continue
        probs = (scores / sampling.temperature).softmax(-1).cpu()
        if sampling.top_p < 1.0:
            kept, ids = nucleus(probs, sampling.top_p)
            out.append(int(ids[draw(kept, generators[row])]))
        else:
            out.append(draw(probs, generators[row]))
    return out


def nucleus(probs: torch.Tensor, top_p: float, candidates: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p nucleus of a distribution: the most probable tokens, in descending order, until their
    mass reaches `top_p` (at least one token).

    A full sort of a 50k vocabulary costs more than the rest of a decoding step's sampling; the nucleus
    is almost always among the top few hundred tokens, so it is looked for there first, widening the
    search only when the candidates' mass is not enough.

    Returns:
        The kept probabilities [n] (descending, not renormalised) and their token ids [n].
    """
    k = min(candidates, probs.numel())
    while True:
        top, ids = probs.topk(k)
        keep = top.cumsum(-1) - top <= top_p  # mass before each token; keeps at least the top one
        if not keep[-1] or k == probs.numel():
            n = int(keep.sum())
            return top[:n], ids[:n]
        k = min(k * 8, probs.numel())


def draw(weights: torch.Tensor, generator: torch.Generator) -> int:
    """An index drawn with probability proportional to `weights` [n], by inverting the cumulative sum with
    one uniform number from `generator` (a fraction of what `torch.multinomial` costs on a vocabulary)."""
    cdf = weights.double().cumsum(-1)
    u = torch.rand((1,), generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), weights.numel() - 1)


def _in_scope(scope: Scope, prefill: bool) -> bool:
    """Whether this forward call's positions are in scope: the prefill call holds exactly the prompt."""
    return scope == "all" or (scope == "prompt") == prefill


@torch.no_grad()
def decode(
    steerer: Steerer,
    conversations: Sequence[Conversation],
    spec: SteeringSpec | None = None,
    steer_rows: Sequence[bool] | None = None,
    sampling: SamplingConfig | None = None,
    *,
    system: str | None = None,
    record: bool = True,
    on_step: StepCallback | None = None,
) -> list[Reply]:
    """Generate one reply per conversation in one batch, steering the rows in `steer_rows`.

    Args:
        spec: the steering; None or an empty spec attaches no hook that changes anything.
        steer_rows: which rows the spec acts on (default: all).
        record: record per-token latent activations and refusal projections (adds read-only hooks).
        on_step: streaming callback, called after every generated token.

    Raises:
        DataError: an empty conversation, or a prompt too long for the context.
        SteeringError: a spec that does not fit the loaded SAEs (checked before anything runs).
    """
    loaded, spec = steerer.loaded, spec or SteeringSpec()
    sampling = sampling or SamplingConfig()
    texts, batch = encode_chats(loaded, conversations, system=system, max_new_tokens=sampling.max_new_tokens)
    n_rows, width = batch["input_ids"].shape
    rows = torch.tensor(list(steer_rows) if steer_rows is not None else [True] * n_rows, dtype=torch.bool)
    if len(rows) != n_rows:
        raise ValueError(f"steer_rows has {len(rows)} entries for {n_rows} conversations")
    state = StepState()
    hooks = {}
    if not spec.is_empty or (record and steerer.refusal is not None):
        hooks = steerer.hooks(spec, state, record=record)
    attention = batch["attention_mask"].cpu()
    first = attention.long().argmax(-1)
    real = attention.bool() & (torch.arange(width)[None, :] > first[:, None])
    positions = (attention.long().cumsum(-1) - 1).clamp_min(0)
    history = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"].cpu(), attention, strict=True)
    ]
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    steps: list[list[TokenStep]] = [[] for _ in range(n_rows)]
    finished = [False] * n_rows
    generators = [torch.Generator().manual_seed(sampling.seed) for _ in range(n_rows)]
    eos = loaded.tokenizer.eos_token_id
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else eos
    device = loaded.device
    inputs, past = batch["input_ids"], None
    for t in range(sampling.max_new_tokens):
        live = torch.tensor([not f for f in finished])
        state.real = (real & live[:, None]).to(device)
        state.mask = state.real & rows[:, None].to(device) & _in_scope(spec.scope, t == 0)
        state.gate, state.record = None, {}
        out = forward(
            loaded.model,
            hooks,
            few_rows=True,
            input_ids=inputs.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,  # the prefill would otherwise unembed every prompt position
        )
        past = out.past_key_values
        tokens = sample_next(out.logits[:, -1], history, generated, sampling, generators)
        events: list[TokenStep | None] = []
        for row, token in enumerate(tokens):
            if finished[row]:
                events.append(None)
                continue
            if token == eos:
                finished[row] = True
                events.append(None)
                continue
            step = TokenStep(
                token,
                str(loaded.tokenizer.decode([token])),
                [v for hook in _clamped_hooks(spec) for v in _recorded(state, hook, row)],
                _projection(state, row),
            )
            history[row].append(token)
            generated[row].append(token)
            steps[row].append(step)
            events.append(step)
        if on_step is not None:
            on_step(t, events)
        if all(finished):
            break
        fed = [pad if finished[r] else tokens[r] for r in range(n_rows)]
        inputs = torch.tensor(fed)[:, None]
        attention = torch.cat([attention, torch.ones(n_rows, 1, dtype=attention.dtype)], dim=1)
        positions = positions[:, -1:] + 1
        real = torch.ones(n_rows, 1, dtype=torch.bool)
    replies = []
    for row in range(n_rows):
        text = str(loaded.tokenizer.decode(generated[row], skip_special_tokens=True))
        verdict = steerer.judge.judge(text, texts[row]).to_dict()
        replies.append(Reply(text, generated[row], finished[row], bool(rows[row]), verdict, steps[row]))
    return replies


def _clamped_hooks(spec: SteeringSpec) -> list[str]:
    return list(dict.fromkeys(c.hook for c in spec.clamps))


def latent_labels(spec: SteeringSpec) -> list[str]:
    """`hook:latent` of each value in `TokenStep.latents`, in that order (grouped by hook)."""
    return [f"{c.hook}:{c.latent}" for hook in _clamped_hooks(spec) for c in spec.clamps if c.hook == hook]


def _recorded(state: StepState, hook: str, row: int) -> list[float]:
    values = state.record.get(hook)
    return [] if values is None else values[row].tolist()


def _projection(state: StepState, row: int) -> float | None:
    values = state.record.get("refusal_projection")
    return None if values is None else float(values[row])


def generate_side_by_side(
    steerer: Steerer,
    conversation: Conversation,
    spec: SteeringSpec,
    sampling: SamplingConfig | None = None,
    *,
    steered_conversation: Conversation | None = None,
    system: str | None = None,
    on_step: StepCallback | None = None,
) -> SideBySide:
    """The default and the steered reply, generated in one batch of two (same seed).

    Args:
        conversation: a prompt or a multi-turn list of chat messages, for the default column.
        spec: the steering for the second column.
        steered_conversation: the steered column's own conversation, when it differs (a multi-turn chat in
            which each column keeps its own earlier replies); default: `conversation`.
        on_step: streaming callback; row 0 is the default column, row 1 the steered one.
    """
    sampling = sampling or SamplingConfig()
    steered_conversation = conversation if steered_conversation is None else steered_conversation
    default, steered = decode(
        steerer,
        [conversation, steered_conversation],
        spec,
        [False, True],
        sampling,
        system=system,
        on_step=on_step,
    )
    provenance = {**spec.provenance, "seed": sampling.seed, "judge": getattr(steerer.judge, "name", "judge")}
    tokenizer = steerer.loaded.tokenizer
    return SideBySide(
        format_chat(tokenizer, to_messages(conversation, system)),
        default,
        steered,
        {**spec.to_dict(), "provenance": provenance},
        sampling.to_dict(),
        latent_labels(spec),
        format_chat(tokenizer, to_messages(steered_conversation, system)),
    )


def decode_many(
    steerer: Steerer,
    conversations: Sequence[Conversation],
    spec: SteeringSpec | None = None,
    sampling: SamplingConfig | None = None,
    *,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Reply]:
    """`decode` over many conversations in batches, every row steered (evaluation sweeps, prompt files)."""
    replies: list[Reply] = []
    starts = range(0, len(conversations), batch_size)
    for start in tqdm(
        starts, desc="steered generation", unit="batch", disable=not progress or len(starts) < 2
    ):
        chunk = conversations[start : start + batch_size]
        replies += decode(steerer, chunk, spec, sampling=sampling, system=system, record=False)
    return replies
