"""Quantile groups: each latent's non-zero activations split from the top down into groups holding about
equal shares of them, each with a uniform sample of its examples.

Group edges fall on the accumulator's sample bins, so a group is a union of whole sample bins and the
examples with the smallest seeded hash among those bins' candidates are exactly a uniform draw from the
group (the smallest n of a union are among the smallest n of each part). A bin holding more than one
group's share makes the groups it covers empty (their share is 0).
"""

from __future__ import annotations

import torch

from explorer.latents.stats import LatentAccumulator


def sample_bin_counts(acc: LatentAccumulator) -> torch.Tensor:
    """[d_sae, n_sample_bins] non-zero activations per sample bin (histogram bins summed)."""
    per = acc.grid.bins_per_decade // acc.grid.sample_bins_per_decade
    return acc.hist.view(acc.d_sae, acc.grid.n_sample_bins, per).sum(-1)


def bin_groups(counts: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[d_sae, n_bins] the group of each sample bin (0 holds the highest activations; -1 for empty bins).

    A bin joins the group its highest activation falls in when activations are counted from the top.
    """
    total = counts.sum(1, keepdim=True).clamp_min(1)
    above = counts.flip(1).cumsum(1).flip(1) - counts  # activations in higher bins
    group = (above * n_groups // total).clamp(max=n_groups - 1)
    return torch.where(counts > 0, group, -1)


def quantile_groups(acc: LatentAccumulator, n_groups: int, per_group: int) -> dict[str, torch.Tensor]:
    """Every latent's quantile groups.

    Returns:
        group_low, group_high, group_share: [d_sae, n_groups] each group's activation range (sample-bin
            edges; the top group ends at the latent's max) and its share of the latent's non-zero
            activations (0 for an empty group).
        group_tokens, group_values: [d_sae, n_groups, per_group] the examples' global token ids (-1 where
            the group has fewer) and activations.
    """
    d_sae, n_bins, m = acc.d_sae, acc.grid.n_sample_bins, acc.m
    counts = sample_bin_counts(acc)
    groups = bin_groups(counts, n_groups)
    per = acc.grid.bins_per_decade // acc.grid.sample_bins_per_decade
    device = acc.hist.device
    edges = (
        acc.grid.edges()[::per].float().to(device)
    )  # [n_bins + 1]; bin 0 also holds everything below the grid
    low_edges, high_edges = edges[:-1].clone(), edges[1:]
    low_edges[0] = 0.0
    total = counts.sum(1).clamp_min(1).double()
    keys = acc.sample_keys.view(d_sae, n_bins, m)
    values = acc.sample_values.view(d_sae, n_bins, m)
    tokens = acc.sample_tokens.view(d_sae, n_bins, m)
    out = {
        "group_low": torch.zeros(d_sae, n_groups, device=device),
        "group_high": torch.zeros(d_sae, n_groups, device=device),
        "group_share": torch.zeros(d_sae, n_groups, device=device),
        "group_tokens": torch.full((d_sae, n_groups, per_group), -1, dtype=torch.long, device=device),
        "group_values": torch.zeros(d_sae, n_groups, per_group, device=device),
    }
    bins = torch.arange(n_bins, device=device)
    for g in range(n_groups):
        member = groups == g  # [d_sae, n_bins]
        present = member.any(1)
        lowest = torch.where(member, bins, n_bins).min(1).values.clamp(max=n_bins - 1)
        highest = torch.where(member, bins, -1).max(1).values.clamp_min(0)
        out["group_low"][:, g] = torch.where(present, low_edges[lowest], 0.0)
        out["group_high"][:, g] = torch.where(present, torch.minimum(high_edges[highest], acc.max), 0.0)
        out["group_share"][:, g] = ((counts * member).sum(1).double() / total).float()
        eligible = member[:, :, None] & (tokens >= 0)
        masked = torch.where(eligible, keys, torch.inf).view(d_sae, n_bins * m)
        best = masked.topk(per_group, dim=1, largest=False, sorted=True)
        found = torch.isfinite(best.values)
        out["group_tokens"][:, g] = torch.where(found, tokens.view(d_sae, -1).gather(1, best.indices), -1)
        out["group_values"][:, g] = torch.where(found, values.view(d_sae, -1).gather(1, best.indices), 0.0)
    return out
