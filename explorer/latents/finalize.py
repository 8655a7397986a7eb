"""Per-latent arrays read off the statistics pass's accumulators, a chunk of latents at a time on the
accumulators' device, so the working memory of the finalize step stays within a budget at any width."""

from __future__ import annotations

import torch

from explorer.latents.budget import MEMORY_BUDGET, rows_within
from explorer.latents.groups import quantile_groups
from explorer.latents.labels import characteristic_tokens
from explorer.latents.schema import QUANTILES, CacheConfig
from explorer.latents.stats import LatentAccumulator

BYTES_PER_SAMPLE = 96
"""Working bytes per interval-sample candidate while finalizing (the quantile groups' masked keys and
the labels' per-sample indices and masses, int64 and float64)."""
BYTES_PER_BIN = 32
"""Working bytes per histogram bin (the quantiles' cumulative counts and comparisons)."""


def quantiles_from_histogram(hist: torch.Tensor, edges: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """[d_sae, len(qs)] quantiles of each latent's non-zero activations, read off its log-grid histogram.

    Each is the geometric centre of the bin holding the quantile, so within half a bin (about 3% at 40
    bins per decade) of the exact value; 0 for a latent that never fires. Runs on `hist`'s device.
    """
    cumulative = hist.double().cumsum(1)
    total = cumulative[:, -1:]
    edges = edges.to(hist.device)
    centres = (edges[:-1] * edges[1:]).sqrt()
    out = torch.zeros(hist.shape[0], len(qs), device=hist.device)
    for j, q in enumerate(qs):
        index = (cumulative < q * total).sum(1).clamp(max=hist.shape[1] - 1)
        out[:, j] = torch.where(total[:, 0] > 0, centres[index], 0.0).float()
    return out


def finalize_bytes_per_latent(acc: LatentAccumulator) -> int:
    """Working bytes per latent of `latent_statistics` (before chunking)."""
    return acc.grid.n_sample_bins * acc.m * BYTES_PER_SAMPLE + acc.grid.n_bins * BYTES_PER_BIN


def latent_statistics(
    acc: LatentAccumulator,
    config: CacheConfig,
    input_ids: torch.Tensor,
    frequencies: torch.Tensor,
    budget: int = MEMORY_BUDGET,
) -> dict[str, torch.Tensor]:
    """Every per-latent array that comes from the accumulators alone: examples, counts, moments,
    quantiles, histogram, quantile groups and characteristic tokens, on the accumulators' device.

    Args:
        input_ids: [n_rows, seq_len] the corpus rows the global token ids point into.
        frequencies: [vocab_size] each token's count over the cached corpus.
        budget: working bytes; latents are processed in chunks of `finalize_bytes_per_latent` each.
    """
    input_ids, frequencies = input_ids.to(acc.device), frequencies.to(acc.device)
    rows = rows_within(budget, finalize_bytes_per_latent(acc), acc.d_sae)
    parts = [
        _chunk_statistics(acc.part(lo, min(lo + rows, acc.d_sae)), config, input_ids, frequencies)
        for lo in range(0, acc.d_sae, rows)
    ]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _chunk_statistics(
    acc: LatentAccumulator, config: CacheConfig, input_ids: torch.Tensor, frequencies: torch.Tensor
) -> dict[str, torch.Tensor]:
    count = acc.count.clamp_min(1)
    var = (acc.sum_sq / count - (acc.sum / count) ** 2).clamp_min(0)
    return {
        "top_values": acc.top_values.clamp_min(0),  # -inf marks a missing example; stored as 0 with token -1
        "top_tokens": acc.top_tokens,
        "count": acc.count,
        "density": acc.count.double() / max(acc.n_tokens, 1),
        "max": acc.max,
        "mean_active": (acc.sum / count).float(),
        "std_active": var.sqrt().float(),
        "quantiles": quantiles_from_histogram(acc.hist, acc.grid.edges(), QUANTILES),
        "hist": acc.hist.int(),
        **quantile_groups(acc, config.n_groups, config.examples_per_group),
        "label_fires_ids": characteristic_tokens(acc, input_ids, frequencies),
    }
