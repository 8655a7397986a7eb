"""The jailbreak lens's forward passes: latents and refusal projection at the post-instruction positions."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import StopForward, capture, forward, parse_hook_name
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError
from explorer.latents.reader import CacheError, LatentCache
from explorer.refusal.candidates import post_instruction_ids
from explorer.refusal.direction import RefusalDirection
from explorer.saes.loading import LoadedSAE
from explorer.steering.search import SearchError, Selection, candidate_latents, harm_latents

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lensable(Protocol):
    """What the lens reads off a workspace (`explorer.workspace.Workspace` is one)."""

    @property
    def loaded(self) -> LoadedModel: ...
    @property
    def saes(self) -> Mapping[str, LoadedSAE]: ...
    @property
    def caches(self) -> Mapping[str, LatentCache]: ...
    @property
    def refusal(self) -> RefusalDirection | None: ...
    @property
    def main(self) -> str | None: ...


@dataclass(frozen=True)
class PostActivations:
    """What one set of prompts does at the post-instruction positions (tensors; not stored as is).

    Attributes:
        latents: hook -> [n_prompts, d_sae] each latent's activation averaged over the positions.
        projection: [n_prompts, n_post] the residual at the refusal location · the unit refusal direction,
            per position (None without a direction).
    """

    latents: dict[str, torch.Tensor]
    projection: torch.Tensor | None


@dataclass(frozen=True)
class LatentChange:
    """One latent's paired change (wrapped − plain) at the post-instruction positions.

    Attributes:
        latent: its index; label: the cache's label ("" without a cache).
        change: the mean over prompts of the per-prompt change; se: its standard error.
        plain, wrapped: the latent's mean activation over prompts, plain and wrapped.
    """

    latent: int
    label: str
    change: float
    se: float
    plain: float
    wrapped: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentChange:
        return cls(
            int(data["latent"]),
            str(data["label"]),
            float(data["change"]),
            float(data["se"]),
            float(data["plain"]),
            float(data["wrapped"]),
        )


def unit_direction(refusal: RefusalDirection) -> torch.Tensor:
    """[d_model] the refusal direction scaled to unit norm, on the CPU in float32."""
    direction = refusal.direction.float().cpu()  # [d_model]
    return direction / direction.norm()


def in_length_order(texts: Sequence[str], run: Callable[[list[str]], list[T]]) -> list[T]:
    """`run` on the texts sorted by length (a batch of similar lengths pads less), its results put back in
    the order of `texts`."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    done = run([texts[i] for i in order])
    out: list[T] = [done[0]] * len(texts) if done else []
    for rank, i in enumerate(order):
        out[i] = done[rank]
    return out


def _stop(_act: torch.Tensor, _name: str) -> None:
    raise StopForward


@torch.no_grad()
def post_instruction_activations(
    lens: Lensable,
    prompts: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> PostActivations:
    """Run the prompts (chat-templated, left-padded, with position ids from the mask so that a padded row
    reads as it would alone) and keep every SAE's latents and the refusal projection at the
    post-instruction positions.

    Args:
        lens: the model, its SAEs and refusal direction.
        prompts: user prompts.
        batch_size: prompts per forward pass.
        on_batch: called with (prompts done, total) after each batch.

    Raises:
        DataError: no prompts, or an empty one.
    """
    if not prompts:
        raise DataError("no prompts to run the jailbreak lens on")
    loaded, refusal = lens.loaded, lens.refusal
    n_post = len(post_instruction_ids(loaded))
    names = sorted(set(lens.saes) | ({refusal.location} if refusal is not None else set()))
    deepest = max(names, key=lambda h: parse_hook_name(h, loaded.n_layers).depth)
    latents: dict[str, list[torch.Tensor]] = {hook: [] for hook in lens.saes}
    projections: list[torch.Tensor] = []
    unit = unit_direction(refusal) if refusal is not None else None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    for start in range(0, len(prompts), batch_size):
        chunk = [prompts[i] for i in order[start : start + batch_size]]
        _, batch = encode_chats(loaded, chunk)
        mask = batch["attention_mask"]  # [batch, pos]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with (
            capture(loaded.model, names) as store,
            suppress(StopForward),
        ):  # layers past the deepest never run
            forward(
                loaded.model,
                {deepest: _stop},
                input_ids=batch["input_ids"],
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
            )
        resid = {name: store[name][0][:, -n_post:] for name in names}  # [batch, n_post, d_model]
        for hook, sae in lens.saes.items():
            acts = sae.sae.encode(resid[hook].to(sae.sae.device, sae.sae.dtype))  # [batch, n_post, d_sae]
            latents[hook].append(acts.float().cpu().mean(1))
        if refusal is not None and unit is not None:
            projections.append(resid[refusal.location].float().cpu() @ unit)  # [batch, n_post]
        if on_batch is not None:
            on_batch(min(start + batch_size, len(prompts)), len(prompts))
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # row of each prompt in the sorted order
    return PostActivations(
        {hook: torch.cat(rows)[back] for hook, rows in latents.items()},
        torch.cat(projections)[back] if projections else None,
    )


def paired_change(plain: torch.Tensor, wrapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard error over prompts of the per-prompt change wrapped − plain.

    Args:
        plain, wrapped: [n_prompts, d] the same prompts' values, row for row.

    Returns:
        ([d] mean change, [d] standard error; zeros for a single prompt), in float64.
    """
    if plain.shape != wrapped.shape or plain.ndim != 2 or plain.shape[0] == 0:
        raise ValueError(
            f"paired values need equal [n_prompts, d] shapes; got {plain.shape}, {wrapped.shape}"
        )
    diff = wrapped.double() - plain.double()  # [n_prompts, d]
    n = diff.shape[0]
    se = diff.std(0) / math.sqrt(n) if n > 1 else torch.zeros(diff.shape[1], dtype=torch.float64)
    return diff.mean(0), se


def latent_changes(
    plain: torch.Tensor, wrapped: torch.Tensor, latents: Sequence[int], labels: Sequence[str] | None
) -> list[LatentChange]:
    """`LatentChange` records of `latents` from [n_prompts, d_sae] plain and wrapped activations."""
    mean, se = paired_change(plain, wrapped)
    plain_mean, wrapped_mean = plain.double().mean(0), wrapped.double().mean(0)
    return [
        LatentChange(
            int(i),
            labels[i] if labels else "",
            float(mean[i]),
            float(se[i]),
            float(plain_mean[i]),
            float(wrapped_mean[i]),
        )
        for i in latents
    ]


def extremes(
    plain: torch.Tensor, wrapped: torch.Tensor, n: int, labels: Sequence[str] | None
) -> tuple[list[LatentChange], list[LatentChange]]:
    """The `n` latents most suppressed (most negative mean change) and most boosted (most positive), each
    list strongest first; a latent whose change is 0 is in neither."""
    mean, _ = paired_change(plain, wrapped)
    k = min(n, mean.shape[0])
    down, up = (-mean).topk(k), mean.topk(k)
    suppressed = [int(i) for v, i in zip(down.values, down.indices, strict=True) if v > 0]
    boosted = [int(i) for v, i in zip(up.values, up.indices, strict=True) if v > 0]
    return latent_changes(plain, wrapped, suppressed, labels), latent_changes(plain, wrapped, boosted, labels)


def earliest_hook(hooks: Sequence[str], n_layers: int) -> str:
    """The hook nearest the embedding among `hooks`."""
    return min(hooks, key=lambda h: parse_hook_name(h, n_layers).depth)


def cache_labels(lens: Lensable, hook: str) -> list[str] | None:
    """The cache's label of every latent of `hook`'s SAE, or None without a readable cache."""
    cache = lens.caches.get(hook)
    if cache is None:
        return None
    try:
        return cache.labels()
    except (CacheError, KeyError):
        return None


@dataclass(frozen=True)
class LatentSet:
    """A chosen set of latents and how a wrapper moves them, summed over the set.

    Attributes:
        hook: the SAE; kind: "refusal" or "harm"; selection: how the latents were chosen.
        latents: each latent's change.
        plain, wrapped: the set's mean activation (over latents and prompts), plain and wrapped.
        change: wrapped − plain; relative: change / plain (0 when plain is 0).
    """

    hook: str
    kind: str
    selection: str
    latents: list[LatentChange]
    plain: float
    wrapped: float
    change: float
    relative: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentSet:
        return cls(**{**data, "latents": [LatentChange.from_dict(d) for d in data["latents"]]})


@dataclass(frozen=True)
class SaeExtremes:
    """One SAE's most suppressed and most boosted latents under a wrapper, strongest first."""

    hook: str
    suppressed: list[LatentChange]
    boosted: list[LatentChange]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SaeExtremes:
        return cls(
            str(data["hook"]),
            [LatentChange.from_dict(d) for d in data["suppressed"]],
            [LatentChange.from_dict(d) for d in data["boosted"]],
        )


def latent_set(
    hook: str,
    kind: str,
    selection: str,
    latents: list[int],
    plain: PostActivations,
    wrapped: PostActivations,
    labels: list[str] | None,
) -> LatentSet:
    """How a wrapper moves a set of latents of `hook` (plain and wrapped activations of the same prompts)."""
    before = float(plain.latents[hook][:, latents].double().mean())
    after = float(wrapped.latents[hook][:, latents].double().mean())
    changes = latent_changes(plain.latents[hook], wrapped.latents[hook], latents, labels)
    relative = (after - before) / before if before > 1e-9 else 0.0
    return LatentSet(hook, kind, selection, changes, before, after, after - before, relative)


def chosen_latents(
    lens: Lensable, selection: Selection, refusal_k: int, harm_k: int
) -> tuple[tuple[str, list[int]] | None, list[tuple[str, list[int]]]]:
    """The main SAE's refusal latents as (selection used, latents): `selection` of
    `explorer.steering.search.candidate_latents`, "cosine" when the cache lacks what it needs, None without
    a cache; and the harm latents (`harm_latents`) of the earliest SAE, then of the main SAE, as (hook,
    latents), for those with a cache."""
    refusal = None
    main = lens.main
    if main is not None and main in lens.caches:
        for chosen in dict.fromkeys([selection, "cosine"]):
            try:
                refusal = (chosen, candidate_latents(lens.caches[main], chosen, refusal_k))  # pyright: ignore[reportArgumentType]
                break
            except SearchError as e:
                log.warning("no refusal latents by %s: %s", chosen, e)
    harm: list[tuple[str, list[int]]] = []
    if not lens.saes:
        return refusal, harm
    hooks = [earliest_hook(list(lens.saes), lens.loaded.n_layers)] + ([main] if main else [])
    for hook in dict.fromkeys(hooks):
        if hook in lens.caches:
            try:
                harm.append((hook, harm_latents(lens.caches[hook], harm_k)))
            except SearchError as e:
                log.warning("no harm latents at %s: %s", hook, e)
    return refusal, harm
