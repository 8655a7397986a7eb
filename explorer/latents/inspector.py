"""The prompt inspector: per token of a chat-templated prompt, its top SAE latents and refusal projection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from explorer.core.generation import Conversation, encode_chats
from explorer.core.hooks import capture, forward, run_to
from explorer.core.models import LoadedModel, special_token_ids
from explorer.latents.reader import LatentCache
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.refusal.score import refusal_score_of, refusal_strings
from explorer.saes.loading import LoadedSAE

PROMPT_LATENTS = 12
"""Latents the prompt-wide view follows: those with the highest peak over the prompt's counted tokens."""
MAX_TOKENS = 1024
"""The app's cap on a chat-templated prompt: its forward passes stay within seconds on a CPU."""


class Inspectable(Protocol):
    """What the inspector reads off a workspace (`explorer.workspace.Workspace` is one)."""

    @property
    def loaded(self) -> LoadedModel: ...
    @property
    def saes(self) -> Mapping[str, LoadedSAE]: ...
    @property
    def refusal(self) -> RefusalDirection | None: ...
    @property
    def caches(self) -> Mapping[str, LatentCache]: ...


Source = Inspectable | tuple[LoadedModel, Mapping[str, LoadedSAE], RefusalDirection | None]
"""A workspace, or its parts: the model, its SAEs by hook, and the refusal direction (or None)."""


class InspectError(ValueError):
    """A prompt inspection that cannot run as asked (an unknown SAE, nothing to inspect, over the cap)."""


@dataclass(frozen=True)
class TokenLatents:
    """One token's most active latents, strongest first (only latents that fire: activation > 0).

    Attributes:
        latents: latent indices.
        activations: their raw activations.
        fractions: activation / the latent's max on the cache's corpus (None without a cache, or for a
            latent that never fired on the corpus).
    """

    latents: list[int]
    activations: list[float]
    fractions: list[float | None]


@dataclass(frozen=True)
class PromptInspection:
    """What the inspector shows about one prompt (plain lists and floats; rendering takes this).

    Statistics (the prompt-wide latents) exclude the flagged tokens: special tokens (chat markers, BOS)
    and the first position (the attention sink, whose activations are outliers), which are still shown.

    Attributes:
        text: the chat-templated prompt.
        tokens: each token's piece of `text`; they join back to `text` exactly (a token that only
            completes a multi-byte character has an empty piece).
        token_ids: the token ids.
        special: True for special tokens.
        hook: the SAE's hook, or None when no SAE was inspected.
        top: per token, its top latents (empty lists when `hook` is None).
        l0: per token, how many latents fire.
        prompt_latents: the latents with the highest peak activation over the counted tokens.
        prompt_activations: [latent][token] raw activations of `prompt_latents` at every token.
        prompt_fractions: the same as fractions of each latent's corpus max (None without a cache; a
            row of None for a latent that never fired on the corpus).
        refusal_location: the hook the refusal direction was read at (None without a direction).
        refusal_projection: per token, the residual at `refusal_location` · the unit refusal direction.
        layer_locations: every residual location, when projections at every layer were asked for.
        layer_projections: [location][token] residual · the same unit direction at each location.
        refusal_position: the direction's position (negative, from the end of the prompt), or None.
        refusal_score: the log-odds that the reply opens with a refusal token (`refusal_strings`), as the
            direction selection scores it; None when it was not asked for.
        refusal_strings: the refusal-opening strings the score counts.
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    hook: str | None
    top: list[TokenLatents]
    l0: list[int]
    prompt_latents: list[int]
    prompt_activations: list[list[float]]
    prompt_fractions: list[list[float | None]] | None
    refusal_location: str | None
    refusal_projection: list[float] | None
    layer_locations: list[str]
    layer_projections: list[list[float]]
    refusal_position: int | None = None
    refusal_score: float | None = None
    refusal_strings: list[str] = field(default_factory=list)

    @property
    def excluded(self) -> list[bool]:
        """Tokens left out of statistics: special tokens and the first position."""
        return [s or i == 0 for i, s in enumerate(self.special)]

    @property
    def has_max(self) -> bool:
        """Whether activations can be shown as fractions of each latent's corpus max."""
        return self.prompt_fractions is not None


@dataclass(frozen=True)
class LatentSummary:
    """A latent in one line, from its cache: for tables that list several latents."""

    latent: int
    density: float
    max: float
    refusal_cos: float | None
    top_logits: list[str]
    label: str


def _parts(
    source: Source,
) -> tuple[LoadedModel, Mapping[str, LoadedSAE], RefusalDirection | None, Mapping[str, LatentCache]]:
    if isinstance(source, tuple):
        loaded, saes, refusal = source
        return loaded, saes, refusal, {}
    return source.loaded, source.saes, source.refusal, source.caches


def token_pieces(tokenizer: PreTrainedTokenizerBase, text: str, ids: Sequence[int]) -> list[str]:
    """Each token's piece of `text`, from the tokenizer's character offsets, so the pieces join to `text`.

    Tokens that share a character (bytes of one emoji) give it to the first and get "" themselves. A
    tokenizer without offsets (a slow one) falls back to decoding each token alone.
    """
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        encoded = None
    if encoded is None or list(encoded["input_ids"]) != list(ids):
        return [str(tokenizer.decode([i])) for i in ids]
    pieces, done = [], 0
    for _, end in encoded["offset_mapping"]:
        pieces.append(text[done:end] if end > done else "")
        done = max(done, end)
    if pieces:
        pieces[-1] += text[done:]
    return pieces


@torch.no_grad()
def inspect_prompt(
    source: Source,
    prompt: Conversation,
    hook: str | None,
    top_k: int = 8,
    *,
    max_activations: Mapping[str, torch.Tensor] | None = None,
    every_layer: bool = False,
    system: str | None = None,
    max_tokens: int | None = None,
    score: bool = False,
) -> PromptInspection:
    """Chat-template a prompt, run the model once (only as deep as needed) and read it token by token.

    Args:
        source: a workspace, or (model, SAEs by hook, refusal direction or None).
        prompt: a user prompt, or chat messages.
        hook: the SAE to encode the residual with; None for the refusal projection only.
        top_k: latents listed per token.
        max_activations: hook -> [d_sae] each latent's corpus max (default: a workspace's cache).
        every_layer: also project the residual at every location onto the refusal direction.
        system: a system prompt put before the conversation.
        max_tokens: refuse a chat-templated prompt longer than this (None: only the context limits it).
        score: also compute the refusal score: the pass then runs the whole model, not just as deep as
            the deepest hook.

    Returns:
        The inspection record.

    Raises:
        DataError: an empty prompt, or one longer than the model's context.
        InspectError: `hook` names no loaded SAE, there is neither an SAE nor a refusal direction, the
            prompt has more than `max_tokens` tokens.
    """
    loaded, saes, refusal, caches = _parts(source)
    if top_k < 1:
        raise InspectError(f"top_k must be at least 1, got {top_k}")
    if hook is not None and hook not in saes:
        raise InspectError(f"no SAE at {hook!r}; the loaded SAEs are at {sorted(saes) or 'no hook'}")
    if hook is None and refusal is None:
        raise InspectError("nothing to inspect: no SAE was chosen and the model has no refusal direction")
    texts, batch = encode_chats(loaded, [prompt], system=system)
    ids = batch["input_ids"][:1]  # [1, pos]
    if max_tokens is not None and ids.shape[1] > max_tokens:
        raise InspectError(
            f"the chat-templated prompt has {ids.shape[1]:,} tokens; the inspector reads at most "
            f"{max_tokens:,}. Shorten the prompt"
        )
    names = [hook] if hook is not None else []
    if refusal is not None:
        names.append(refusal.location)
        if every_layer:
            names += location_names(loaded.n_layers)
    strings = refusal_strings(refusal)
    refusal_score = None
    if score:  # one full pass: the residuals on the way, the next-token logits at the end
        with capture(loaded.model, names) as store:
            logits = forward(loaded.model, input_ids=ids, use_cache=False, logits_to_keep=1).logits
        resid = {name: store[name][0] for name in names}  # name -> [1, pos, d_model]
        refusal_score = refusal_score_of(loaded, logits[:, -1], strings)[0]
    else:
        resid = run_to(loaded.model, ids, names)  # name -> [1, pos, d_model]
    token_ids = ids[0].tolist()
    specials = special_token_ids(loaded.tokenizer)
    special = [i in specials for i in token_ids]
    counted = torch.tensor([not (s or i == 0) for i, s in enumerate(special)])

    top: list[TokenLatents] = []
    l0: list[int] = []
    prompt_latents: list[int] = []
    prompt_activations: list[list[float]] = []
    prompt_fractions: list[list[float | None]] | None = None
    if hook is not None:
        sae = saes[hook].sae
        acts = sae.encode(resid[hook][0].to(sae.device, sae.dtype)).float().cpu()  # [pos, d_sae]
        peak_corpus = _corpus_max(hook, max_activations, caches)
        top = _top_latents(acts, min(top_k, acts.shape[1]), peak_corpus)
        l0 = (acts > 0).sum(-1).tolist()
        if counted.any():
            peak = acts[counted].max(0).values
            values, order = peak.topk(min(PROMPT_LATENTS, peak.shape[0]))
            prompt_latents = order[values > 0].tolist()
        prompt_activations = acts[:, prompt_latents].T.tolist()
        if peak_corpus is not None:
            prompt_fractions = [
                [v / top for v in row] if top > 0 else [None] * len(row)
                for row, top in zip(prompt_activations, peak_corpus[prompt_latents].tolist(), strict=True)
            ]

    projection, locations, layers = None, [], []
    if refusal is not None:
        unit = refusal.direction.float().cpu()
        unit = unit / unit.norm()
        projection = (resid[refusal.location][0].float().cpu() @ unit).tolist()
        if every_layer:
            locations = location_names(loaded.n_layers)
            layers = [(resid[name][0].float().cpu() @ unit).tolist() for name in locations]
    return PromptInspection(
        text=texts[0],
        tokens=token_pieces(loaded.tokenizer, texts[0], token_ids),
        token_ids=token_ids,
        special=special,
        hook=hook,
        top=top,
        l0=l0,
        prompt_latents=prompt_latents,
        prompt_activations=prompt_activations,
        prompt_fractions=prompt_fractions,
        refusal_location=refusal.location if refusal is not None else None,
        refusal_projection=projection,
        layer_locations=locations,
        layer_projections=layers,
        refusal_position=refusal.position if refusal is not None else None,
        refusal_score=refusal_score,
        refusal_strings=strings,
    )


def _corpus_max(
    hook: str, given: Mapping[str, torch.Tensor] | None, caches: Mapping[str, LatentCache]
) -> torch.Tensor | None:
    """[d_sae] the latents' corpus maxima at `hook`, if known."""
    if given is not None:
        return given[hook].float().cpu() if hook in given else None
    if hook in caches:
        return caches[hook].column("max").float()
    return None


def _top_latents(acts: torch.Tensor, k: int, peak: torch.Tensor | None) -> list[TokenLatents]:
    """Each position's k strongest firing latents. `acts` is [pos, d_sae]."""
    values, indices = acts.topk(k, dim=-1)
    out = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
        kept = [(i, v) for i, v in zip(row_indices, row_values, strict=True) if v > 0]
        fractions: list[float | None] = []
        for i, v in kept:
            top = float(peak[i]) if peak is not None else 0.0
            fractions.append(v / top if top > 0 else None)
        out.append(TokenLatents([i for i, _ in kept], [v for _, v in kept], fractions))
    return out


def latent_summaries(cache: LatentCache, latents: Sequence[int], n_logits: int = 5) -> list[LatentSummary]:
    """One-line summaries of a few latents (density, max, refusal cosine, top promoted tokens, the build's
    heuristic label).

    Raises:
        CacheError: a latent is out of range.
    """
    out = []
    for latent in latents:
        record = cache.latent(int(latent), window=0)
        out.append(
            LatentSummary(
                latent=record.latent,
                density=record.density,
                max=record.max,
                refusal_cos=record.refusal_cos,
                top_logits=[token for token, _ in record.logits_top[:n_logits]],
                label=record.label,
            )
        )
    return out
