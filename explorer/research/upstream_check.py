"""The forward passes of the upstream graph: an earlier SAE spliced in with its error term, the downstream
latents read at the main hook, and the ablation check of each edge.

At the upstream hook the residual x becomes decode(f) + err with f = encode(x) and err = x - decode(f) held
constant, so the pass is unchanged (faithful) while f can be differentiated or edited. At the downstream
hook the forward stops, after reading each downstream latent's activation summed over the post-instruction
positions (the last positions of a left-padded chat batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress

import torch
from transformers import BatchEncoding

from explorer.core.hooks import HookFn, StopForward, forward, parse_hook_name
from explorer.core.models import LoadedModel
from explorer.saes.loading import LoadedSAE

Edit = Callable[[torch.Tensor], torch.Tensor]
"""Changes the upstream latents f [batch, pos, d_sae] (returns a new tensor; never edits in place)."""


def spliced_pass(
    loaded: LoadedModel,
    upstream: LoadedSAE,
    downstream: LoadedSAE,
    latents: Sequence[int],
    batch: BatchEncoding,
    n_post: int,
    *,
    edit: Edit | None = None,
    leaf: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass to the downstream hook with the upstream SAE spliced in (error term kept).

    Args:
        upstream: the earlier SAE; its hook must not come after the downstream SAE's.
        downstream: the SAE whose latents are read.
        latents: downstream latents to read.
        batch: a left-padded chat batch (`encode_chats`).
        n_post: how many last positions are post-instruction positions.
        edit: changes f before it is decoded (an ablation); the error term stays the unedited pass's.
        leaf: make f a leaf that requires grad (call inside `torch.enable_grad()` to differentiate).

    Returns:
        (f [batch, pos, d_sae_up] as spliced in, a [batch, len(latents)] the downstream latents' activations
        summed over the last `n_post` positions).
    """
    n_layers = loaded.n_layers
    if parse_hook_name(upstream.hook, n_layers).depth > parse_hook_name(downstream.hook, n_layers).depth:
        raise ValueError(
            f"upstream hook {upstream.hook} comes after the downstream hook {downstream.hook}; "
            "expected an earlier (or the same) hook"
        )
    out: dict[str, torch.Tensor] = {}
    index = torch.tensor(list(latents), dtype=torch.long)

    def splice(act: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
        sae = upstream.sae
        x = act.detach().to(sae.dtype)
        with torch.no_grad():
            f = sae.encode(x)
            error = x - sae.decode(f)
        if leaf:
            f = f.requires_grad_(True)
        out["f"] = f
        edited = f if edit is None else edit(f)
        return (sae.decode(edited) + error).to(act.dtype)

    def read(act: torch.Tensor) -> None:  # [batch, pos, d_model]
        sae = downstream.sae
        acts = sae.encode(act[:, -n_post:].to(sae.dtype))  # [batch, n_post, d_sae]
        out["a"] = acts[..., index.to(acts.device)].float().sum(1)
        raise StopForward

    def hook(act: torch.Tensor, name: str) -> torch.Tensor | None:
        new = splice(act) if name == upstream.hook else None
        if name == downstream.hook:
            read(act if new is None else new)
        return new

    hooks: Mapping[str, HookFn] = dict.fromkeys({upstream.hook, downstream.hook}, hook)
    with suppress(StopForward):
        forward(loaded.model, hooks, **batch, use_cache=False)
    return out["f"], out["a"]


def ablate(latent: int, mask: torch.Tensor) -> Edit:
    """An edit that sets upstream latent `latent` to 0 where `mask` [batch, pos] is True."""

    def edit(f: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(f)
        keep[..., latent] = (~mask).to(f.dtype)
        return f * keep

    return edit


@torch.no_grad()
def ablation_changes(
    loaded: LoadedModel,
    upstream: LoadedSAE,
    downstream: LoadedSAE,
    latents: Sequence[int],
    ablated: Sequence[int],
    batch: BatchEncoding,
    mask: torch.Tensor,
    n_post: int,
) -> dict[int, torch.Tensor]:
    """How each downstream latent changes when one upstream latent is ablated, per prompt.

    Args:
        latents: downstream latents read.
        ablated: upstream latents, each set to 0 (at the `mask` positions) in its own pass.
        mask: [batch, pos] the upstream positions ablated (the ones attribution sums over).

    Returns:
        upstream latent -> [batch, len(latents)] ablated minus plain activation (summed over the
        post-instruction positions).
    """
    _, plain = spliced_pass(loaded, upstream, downstream, latents, batch, n_post)
    changes = {}
    for u in dict.fromkeys(ablated):
        _, edited = spliced_pass(loaded, upstream, downstream, latents, batch, n_post, edit=ablate(u, mask))
        changes[u] = edited - plain
    return changes


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float, float]:
    """Pearson and Spearman correlation of predicted and measured changes, and the share with one sign.

    A correlation is NaN when fewer than two edges or either side is constant; the sign share counts an
    edge as agreeing when both are zero or both have the same sign.

    Raises:
        ValueError: the lengths differ or there are no edges.
    """
    if len(predicted) != len(measured) or not predicted:
        raise ValueError(
            f"agreement needs equally many predicted and measured changes, at least one; got "
            f"{len(predicted)} and {len(measured)}"
        )
    p = torch.tensor(predicted, dtype=torch.float64)
    m = torch.tensor(measured, dtype=torch.float64)
    signs = float((p.sign() == m.sign()).double().mean())
    return _pearson(p, m), _pearson(_ranks(p), _ranks(m)), signs


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else math.nan


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their mean rank (as Spearman's coefficient needs)."""
    order = values.argsort(stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
