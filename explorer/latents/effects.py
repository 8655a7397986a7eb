"""What a latent writes, read off its decoder row: logit effects, refusal alignment, nearest latents."""

from __future__ import annotations

import torch
from torch import nn

from explorer.saes.loading import LoadedSAE


def final_norm_scale(model: nn.Module) -> torch.Tensor:
    """[d_model] the elementwise scale of the model's final norm (Gemma's RMSNorm scales by 1 + weight).

    The norm's division by the RMS is a positive per-token scalar, so it does not change which tokens a
    direction promotes; the elementwise scale does, and is applied.
    """
    inner = getattr(model, "model", model)
    norm = getattr(inner, "norm", None) or getattr(getattr(inner, "language_model", None), "norm", None)
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None:
        d_model = model.get_output_embeddings().weight.shape[1]  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
        return torch.ones(d_model)
    scale = weight.detach().float().cpu()
    return scale + 1 if "Gemma" in type(norm).__name__ else scale


@torch.no_grad()
def logit_effects(
    sae: LoadedSAE, model: nn.Module, top: int = 10, batch: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top and bottom tokens of each latent's decoder direction through the final norm's scale and the
    unembedding.

    Returns:
        (top_ids [d_sae, top], top_logits, bottom_ids [d_sae, top], bottom_logits), logits in the
        unembedding's units per unit of latent activation.
    """
    unembed = model.get_output_embeddings().weight.detach().float().cpu()  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
    w = sae.sae.W_dec.detach().float().cpu() * final_norm_scale(model)[None, :]
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, w.shape[0], batch):
        logits = w[i : i + batch] @ unembed.T
        hi, lo = logits.topk(top, dim=1), (-logits).topk(top, dim=1)
        for store, value in zip(outs, (hi.indices, hi.values, lo.indices, -lo.values), strict=True):
            store.append(value)
    top_ids, top_logits, bottom_ids, bottom_logits = (torch.cat(o) for o in outs)
    return top_ids, top_logits, bottom_ids, bottom_logits


@torch.no_grad()
def direction_cosines(sae: LoadedSAE, directions: torch.Tensor) -> torch.Tensor:
    """[d_sae, n] cosine of each decoder row with each of n directions ([n, d_model])."""
    w = torch.nn.functional.normalize(sae.sae.W_dec.detach().float().cpu(), dim=-1)
    d = torch.nn.functional.normalize(directions.float().cpu(), dim=-1)
    return w @ d.T


@torch.no_grad()
def nearest_latents(sae: LoadedSAE, top: int = 10, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top` other latents with the highest decoder cosine to each latent: (ids, cosines) [d_sae, top]."""
    w = torch.nn.functional.normalize(sae.sae.W_dec.detach().float().cpu(), dim=-1)
    ids, cos = [], []
    for i in range(0, w.shape[0], batch):
        sim = w[i : i + batch] @ w.T
        sim[torch.arange(sim.shape[0]), torch.arange(i, i + sim.shape[0])] = -2.0  # not itself
        best = sim.topk(min(top, w.shape[0] - 1), dim=1)
        ids.append(best.indices)
        cos.append(best.values)
    return torch.cat(ids), torch.cat(cos)
