"""What a latent writes, read off its decoder row: logit effects, refusal alignment, nearest latents.

Everything runs on the SAE's device, a block of latents at a time, within a memory budget: a full
[d_sae, vocab] logit matrix or [d_sae, d_sae] cosine matrix (25 GB and 69 GB at 131,072 latents) is
never formed; each block keeps its running top-k.
"""

from __future__ import annotations

import torch
from torch import nn

from explorer.latents.budget import MEMORY_BUDGET, rows_within
from explorer.saes.loading import LoadedSAE

SELF_COSINE = -2.0
"""A latent's cosine with itself is replaced by this (below any real cosine) so it is never its own
nearest latent."""


def sae_device(sae: LoadedSAE) -> torch.device:
    """The device the SAE's weights live on (where the build's tensors are created)."""
    return sae.sae.W_dec.device


def final_norm_scale(model: nn.Module) -> torch.Tensor:
    """[d_model] the elementwise scale of the model's final norm (Gemma's RMSNorm scales by 1 + weight),
    on the norm's device.

    The norm's division by the RMS is a positive per-token scalar, so it does not change which tokens a
    direction promotes; the elementwise scale does, and is applied.
    """
    norm = _final_norm(model)
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None:
        unembed = model.get_output_embeddings().weight  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
        return torch.ones(unembed.shape[1], device=unembed.device)
    scale = weight.detach().float()
    return scale + 1 if "Gemma" in type(norm).__name__ else scale


_BODIES = ("model", "model.language_model", "transformer", "gpt_neox", "model.decoder")
_FINAL_NORMS = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f")


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The norm before the unembedding, where Llama/Gemma/Qwen (`model.norm`), GPT-2 (`transformer.ln_f`),
    GPT-NeoX (`gpt_neox.final_layer_norm`) or OPT (`model.decoder.final_layer_norm`) keep it."""
    for body in _BODIES:
        module: object = model
        for attr in body.split("."):
            module = getattr(module, attr, None)
        for name in _FINAL_NORMS:
            norm = getattr(module, name, None)
            if isinstance(norm, nn.Module):
                return norm
    return None


@torch.no_grad()
def logit_effects(
    sae: LoadedSAE, model: nn.Module, top: int = 10, budget: int = MEMORY_BUDGET
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top and bottom tokens of each latent's decoder direction through the final norm's scale and the
    unembedding, a block of latents at a time (a block's [rows, vocab] logits and their negation fit
    `budget` bytes).

    Returns:
        (top_ids [d_sae, top], top_logits, bottom_ids [d_sae, top], bottom_logits), logits in the
        unembedding's units per unit of latent activation, on the SAE's device.
    """
    device = sae_device(sae)
    unembed = model.get_output_embeddings().weight.detach().to(device, torch.float32)  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
    scale = final_norm_scale(model).to(device)[None, :]
    w_dec = sae.sae.W_dec.detach()
    rows = rows_within(budget, unembed.shape[0] * 4 * 3, w_dec.shape[0])
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, w_dec.shape[0], rows):
        logits = (w_dec[i : i + rows].float() * scale) @ unembed.T  # [rows, vocab]
        hi, lo = logits.topk(top, dim=1), (-logits).topk(top, dim=1)
        for store, value in zip(outs, (hi.indices, hi.values, lo.indices, -lo.values), strict=True):
            store.append(value)
        del logits
    top_ids, top_logits, bottom_ids, bottom_logits = (torch.cat(o) for o in outs)
    return top_ids, top_logits, bottom_ids, bottom_logits


@torch.no_grad()
def direction_cosines(sae: LoadedSAE, directions: torch.Tensor, budget: int = MEMORY_BUDGET) -> torch.Tensor:
    """[d_sae, n] cosine of each decoder row with each of n directions ([n, d_model]), on the SAE's device."""
    device = sae_device(sae)
    w_dec = sae.sae.W_dec.detach()
    d = torch.nn.functional.normalize(directions.to(device, torch.float32), dim=-1)
    rows = rows_within(budget, 4 * 2 * w_dec.shape[1], w_dec.shape[0])
    parts = [
        torch.nn.functional.normalize(w_dec[i : i + rows].float(), dim=-1) @ d.T
        for i in range(0, w_dec.shape[0], rows)
    ]
    return torch.cat(parts)


@torch.no_grad()
def nearest_latents(
    sae: LoadedSAE, top: int = 10, budget: int = MEMORY_BUDGET
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top` other latents with the highest decoder cosine to each latent: (ids, cosines) [d_sae, top],
    on the SAE's device.

    Cosines are computed in [rows, cols] blocks of 8 bytes per entry (the block and its top-k workspace)
    within `budget`; each row block keeps a running top-k over its column blocks.
    """
    device = sae_device(sae)
    w_dec = sae.sae.W_dec.detach()
    d_sae = w_dec.shape[0]
    n = min(top, d_sae - 1)
    per_block = max(budget // 8, 1)
    cols = min(d_sae, max(per_block, 2 * max(n, 1)))
    rows = rows_within(per_block, cols, d_sae)
    keys = [torch.nn.functional.normalize(w_dec[j : j + cols].float(), dim=-1) for j in range(0, d_sae, cols)]
    ids, cos = [], []
    for i in range(0, d_sae, rows):
        query = torch.nn.functional.normalize(w_dec[i : i + rows].float(), dim=-1)
        best_values = torch.full((len(query), n), -torch.inf, device=device)
        best_ids = torch.zeros((len(query), n), dtype=torch.long, device=device)
        for block, key in enumerate(keys):
            j = block * cols
            sim = query @ key.T  # [rows, cols]
            own = torch.arange(i, i + len(query), device=device)
            inside = (own >= j) & (own < j + len(key))
            sim[inside.nonzero()[:, 0], own[inside] - j] = SELF_COSINE  # not itself
            found = sim.topk(min(n, len(key)), dim=1)
            merged = torch.cat([best_values, found.values], dim=1).topk(n, dim=1)
            best_ids = torch.cat([best_ids, found.indices + j], dim=1).gather(1, merged.indices)
            best_values = merged.values
            del sim
        ids.append(best_ids)
        cos.append(best_values)
    return torch.cat(ids), torch.cat(cos)
