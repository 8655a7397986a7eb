"""Per-latent statistics accumulated in one streaming pass, in memory bounded by the number of latents.

Every part is exact and mergeable, so shards of a corpus can be built independently and combined:

- top-k activations per latent with their token ids (ties broken by the smaller token id), at most one
  per corpus row when rows are given (a sequence's neighbouring tokens would otherwise fill the list);
- count of active tokens, sum and sum of squares of active values, max;
- a histogram of non-zero activations on a fixed log-spaced grid shared by every latent and shard;
- interval samples: for every latent and every sample bin (a coarser fixed log grid), the `m` active
  tokens with the smallest seeded hash of (latent, token). The smallest-m by a hash is a uniform
  sample that is reproducible and merges exactly (the smallest m of a union are among the smallest m
  of its parts), which is what lets interval examples be drawn without knowing a latent's max in advance.

Tokens are identified by a global id (row * seq_len + position) so shards never collide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GRID_LOW = 1e-3
"""Activations below this land in the first histogram bin (SAE activations are in residual units)."""
GRID_HIGH = 1e4
BINS_PER_DECADE = 40
SAMPLE_BINS_PER_DECADE = 20
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Grid:
    """The fixed log-spaced bin edges every accumulator shares.

    Bin i of the histogram covers [edges[i], edges[i+1]); values below GRID_LOW go to bin 0 and values
    at or above GRID_HIGH to the last bin. Sample bins group `BINS_PER_DECADE // SAMPLE_BINS_PER_DECADE`
    histogram bins.
    """

    low: float = GRID_LOW
    high: float = GRID_HIGH
    bins_per_decade: int = BINS_PER_DECADE
    sample_bins_per_decade: int = SAMPLE_BINS_PER_DECADE

    def __post_init__(self) -> None:
        if self.bins_per_decade % self.sample_bins_per_decade:
            raise ValueError("bins_per_decade must be a multiple of sample_bins_per_decade")

    @property
    def n_bins(self) -> int:
        return round(math.log10(self.high / self.low) * self.bins_per_decade)

    @property
    def n_sample_bins(self) -> int:
        return self.n_bins // (self.bins_per_decade // self.sample_bins_per_decade)

    def edges(self) -> torch.Tensor:
        """[n_bins + 1] histogram bin edges."""
        return torch.logspace(
            math.log10(self.low), math.log10(self.high), self.n_bins + 1, dtype=torch.float64
        )

    def bin_of(self, values: torch.Tensor) -> torch.Tensor:
        """Histogram bin of each positive value."""
        scaled = (torch.log10(values.double() / self.low) * self.bins_per_decade).floor().long()
        return scaled.clamp(0, self.n_bins - 1)

    def sample_bin_of(self, bins: torch.Tensor) -> torch.Tensor:
        return bins // (self.bins_per_decade // self.sample_bins_per_decade)


def token_hash(latents: torch.Tensor, tokens: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded hash of (latent, token) pairs, uniform in [0, 1) as float64 (splitmix64 finaliser)."""
    x = (tokens.long() * 0x9E3779B1 + latents.long() * 0x85EBCA77 + seed * 0xC2B2AE3D) & _MASK63
    x = ((x ^ (x >> 30)) * 0x5851F42D4C957F2D) & _MASK63
    x = ((x ^ (x >> 27)) * 0x2545F4914F6CDD1D) & _MASK63
    x = x ^ (x >> 31)
    return (x >> 10).double() / float(1 << 53)


def rank_within_groups(groups: torch.Tensor) -> torch.Tensor:
    """For a tensor sorted by group, each element's rank within its group (0 for the first)."""
    n = groups.numel()
    if n == 0:
        return groups
    starts = torch.ones(n, dtype=torch.bool, device=groups.device)
    starts[1:] = groups[1:] != groups[:-1]
    index = torch.arange(n, device=groups.device)
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=0).values
    return index - first


class LatentAccumulator:
    """Streaming per-latent statistics for one SAE.

    Args:
        d_sae: number of latents.
        k: top examples kept per latent.
        samples_per_bin: interval-sample candidates kept per latent and sample bin.
        seed: seeds the sampling hash.
        grid: the shared bin grid.
        row_width: tokens per corpus row (global id = row * row_width + position): the top-k then keeps
            each latent's best token of a row only. None keeps every token.
        device: where the statistics live (the SAE's device; updates must come on it too).
    """

    def __init__(
        self,
        d_sae: int,
        k: int = 20,
        samples_per_bin: int = 8,
        seed: int = 0,
        grid: Grid | None = None,
        row_width: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.d_sae, self.k, self.m, self.seed = d_sae, k, samples_per_bin, seed
        self.grid = grid or Grid()
        self.row_width = row_width
        self.device = torch.device(device)
        self.n_tokens = 0
        self.top_values = torch.full((d_sae, k), -math.inf, device=self.device)
        self.top_tokens = torch.full((d_sae, k), -1, dtype=torch.long, device=self.device)
        self.count = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=self.device)
        self.sum_sq = torch.zeros(d_sae, dtype=torch.float64, device=self.device)
        self.max = torch.zeros(d_sae, device=self.device)
        self.hist = torch.zeros(d_sae, self.grid.n_bins, dtype=torch.long, device=self.device)
        slots = d_sae * self.grid.n_sample_bins
        self.sample_keys = torch.full((slots, self.m), math.inf, dtype=torch.float64, device=self.device)
        self.sample_values = torch.zeros(slots, self.m, device=self.device)
        self.sample_tokens = torch.full((slots, self.m), -1, dtype=torch.long, device=self.device)

    def to(self, device: torch.device | str) -> LatentAccumulator:
        """The accumulator on `device` (itself when it is already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        out = LatentAccumulator.__new__(LatentAccumulator)
        out.__dict__.update(self.__dict__)
        out.device = device
        for name, value in self.state().items():
            if name != "n_tokens":
                setattr(out, name, value.to(device))
        return out

    def part(self, lo: int, hi: int) -> LatentAccumulator:
        """Latents lo..hi-1 as an accumulator of their own, sharing this one's memory (for finalizing in
        chunks; never update it)."""
        out = LatentAccumulator.__new__(LatentAccumulator)
        out.__dict__.update(self.__dict__)
        out.d_sae = hi - lo
        for name in ("top_values", "top_tokens", "count", "sum", "sum_sq", "max", "hist"):
            setattr(out, name, getattr(self, name)[lo:hi])
        n = self.grid.n_sample_bins
        for name in ("sample_keys", "sample_values", "sample_tokens"):
            setattr(out, name, getattr(self, name)[lo * n : hi * n])
        return out

    # [n_tokens, d_sae] activations of one batch, and the global id of each token.
    def update(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add a batch of latent activations (dense [n, d_sae]; zeros are inactive)."""
        if acts.shape[1] != self.d_sae:
            raise ValueError(f"activations have {acts.shape[1]} latents, accumulator has {self.d_sae}")
        self.n_tokens += acts.shape[0]
        where = (acts > 0).nonzero()
        values = acts[where[:, 0], where[:, 1]].float()
        self.update_sparse(where[:, 1], tokens.to(acts.device)[where[:, 0]], values, n_tokens=0)

    def update_sparse(
        self, latents: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor, n_tokens: int
    ) -> None:
        """Add active entries given as parallel (latent, token, value) lists; `n_tokens` counts the tokens
        (active or not) the entries came from."""
        self.n_tokens += n_tokens
        if latents.numel() == 0:
            return
        latents, tokens, values = latents.long(), tokens.long(), values.float()
        self.count += torch.bincount(latents, minlength=self.d_sae)
        self.sum.index_add_(0, latents, values.double())
        self.sum_sq.index_add_(0, latents, values.double() ** 2)
        self.max.scatter_reduce_(0, latents, values, "amax")  # max starts at 0 and values are positive
        bins = self.grid.bin_of(values)
        self.hist.view(-1).index_add_(0, latents * self.grid.n_bins + bins, torch.ones_like(latents))
        self._update_top(latents, tokens, values)
        groups = latents * self.grid.n_sample_bins + self.grid.sample_bin_of(bins)
        self._update_samples(groups, tokens, values, token_hash(latents, tokens, self.seed))

    def _update_top(self, latents: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> None:
        # An entry below its latent's current k-th value can never enter the top k (that value only
        # rises): once the lists fill, most of a batch is dropped before sorting.
        could = values >= self.top_values[latents, -1]
        latents, tokens, values = latents[could], tokens[could], values[could]
        if latents.numel() == 0:
            return
        # Sort by (latent, value desc, token asc); keep the first k of each latent; merge with the running k.
        order = torch.argsort(tokens, stable=True)
        order = order[torch.argsort(-values[order], stable=True)]
        order = order[torch.argsort(latents[order], stable=True)]
        lat, tok, val = latents[order], tokens[order], values[order]
        if self.row_width is not None:
            # Within a (latent, row) the first entry is the best: drop the rest before ranking.
            rows = tok // self.row_width
            key = lat * (int(rows.max()) + 1) + rows
            group = torch.argsort(key, stable=True)
            repeat = torch.zeros_like(lat, dtype=torch.bool)
            repeat[group[1:]] = key[group[1:]] == key[group[:-1]]
            lat, tok, val = lat[~repeat], tok[~repeat], val[~repeat]
        rank = rank_within_groups(lat)
        keep = rank < self.k
        lat, tok, val, rank = lat[keep], tok[keep], val[keep], rank[keep]
        # Only the latents this batch touched are merged: at a real width a batch touches a fraction.
        touched, row = torch.unique(lat, return_inverse=True)
        new_values = torch.full((len(touched), self.k), -math.inf, device=self.device)
        new_tokens = torch.full((len(touched), self.k), -1, dtype=torch.long, device=self.device)
        new_values[row, rank] = val
        new_tokens[row, rank] = tok
        self.top_values[touched], self.top_tokens[touched] = _merge_top(
            self.top_values[touched], self.top_tokens[touched], new_values, new_tokens, self.k, self.row_width
        )

    def _update_samples(
        self, groups: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor, keys: torch.Tensor
    ) -> None:
        # Likewise an entry whose hash is above its slot's current m-th smallest never enters the slot.
        could = keys <= self.sample_keys[groups, -1]
        groups, tokens, values, keys = groups[could], tokens[could], values[could], keys[could]
        if groups.numel() == 0:
            return
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(groups[order], stable=True)]
        grp, key, tok, val = groups[order], keys[order], tokens[order], values[order]
        rank = rank_within_groups(grp)
        keep = rank < self.m
        grp, key, tok, val, rank = grp[keep], key[keep], tok[keep], val[keep], rank[keep]
        # Only the (latent, bin) slots this batch touched are merged: a batch touches a few percent of them.
        slots, row = torch.unique(grp, return_inverse=True)
        new_keys = torch.full((len(slots), self.m), math.inf, dtype=torch.float64, device=self.device)
        new_values = torch.zeros(len(slots), self.m, device=self.device)
        new_tokens = torch.full((len(slots), self.m), -1, dtype=torch.long, device=self.device)
        new_keys[row, rank], new_values[row, rank], new_tokens[row, rank] = key, val, tok
        self._merge_samples(new_keys, new_values, new_tokens, slots)

    def _merge_samples(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        tokens: torch.Tensor,
        slots: torch.Tensor | None = None,
    ) -> None:
        """Keep, per slot, the m entries with the smallest keys among the current ones and the given ones."""
        index = slice(None) if slots is None else slots
        all_keys = torch.cat([self.sample_keys[index], keys], dim=1)
        smallest = torch.topk(all_keys, self.m, dim=1, largest=False, sorted=True)
        self.sample_keys[index] = smallest.values
        self.sample_values[index] = torch.cat([self.sample_values[index], values], dim=1).gather(
            1, smallest.indices
        )
        self.sample_tokens[index] = torch.cat([self.sample_tokens[index], tokens], dim=1).gather(
            1, smallest.indices
        )

    def merge(self, other: LatentAccumulator) -> None:
        """Fold another accumulator (another shard of the corpus) into this one, exactly."""
        same = (other.d_sae, other.k, other.m, other.seed, other.grid, other.row_width) == (
            self.d_sae,
            self.k,
            self.m,
            self.seed,
            self.grid,
            self.row_width,
        )
        if not same:
            raise ValueError(
                "accumulators differ in d_sae, k, samples per bin, seed, grid or row width; cannot merge"
            )
        self.n_tokens += other.n_tokens
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.max = torch.maximum(self.max, other.max)
        self.hist += other.hist
        self.top_values, self.top_tokens = _merge_top(
            self.top_values, self.top_tokens, other.top_values, other.top_tokens, self.k, self.row_width
        )
        self._merge_samples(other.sample_keys, other.sample_values, other.sample_tokens)

    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor of the accumulator, for saving a shard (safetensors)."""
        return {
            "n_tokens": torch.tensor([self.n_tokens]),
            "top_values": self.top_values,
            "top_tokens": self.top_tokens,
            "count": self.count,
            "sum": self.sum,
            "sum_sq": self.sum_sq,
            "max": self.max,
            "hist": self.hist,
            "sample_keys": self.sample_keys,
            "sample_values": self.sample_values,
            "sample_tokens": self.sample_tokens,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, torch.Tensor], seed: int, grid: Grid | None = None, row_width: int | None = None
    ) -> LatentAccumulator:
        d_sae, k = state["top_values"].shape
        acc = cls(d_sae, k, state["sample_keys"].shape[1], seed, grid, row_width, state["top_values"].device)
        if state["hist"].shape[1] != acc.grid.n_bins:
            raise ValueError(f"histogram has {state['hist'].shape[1]} bins, the grid {acc.grid.n_bins}")
        acc.n_tokens = int(state["n_tokens"][0])
        for name in ("top_values", "top_tokens", "count", "sum", "sum_sq", "max", "hist"):
            setattr(acc, name, state[name].clone())
        acc.sample_keys = state["sample_keys"].clone()
        acc.sample_values = state["sample_values"].clone()
        acc.sample_tokens = state["sample_tokens"].clone()
        return acc


def _merge_top(
    values_a: torch.Tensor,
    tokens_a: torch.Tensor,
    values_b: torch.Tensor,
    tokens_b: torch.Tensor,
    k: int,
    row_width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of two [d_sae, k] top lists; equal values are ordered by the smaller token id; with
    `row_width`, a row's best token only."""
    values = torch.cat([values_a, values_b], dim=1)
    tokens = torch.cat([tokens_a, tokens_b], dim=1)
    # Order by token first (missing entries, id -1, last), then stably by value: ties keep token order.
    token_key = torch.where(tokens < 0, torch.full_like(tokens, torch.iinfo(torch.long).max), tokens)
    order = torch.argsort(token_key, dim=1, stable=True)
    values, tokens = values.gather(1, order), tokens.gather(1, order)
    order = torch.argsort(-values, dim=1, stable=True)
    values, tokens = values.gather(1, order), tokens.gather(1, order)
    if row_width is not None:
        # Best first now; a stable sort by row puts each row's best first within its run of equal rows.
        rows = torch.where(
            tokens < 0, -1 - torch.arange(tokens.shape[1], device=tokens.device), tokens // row_width
        )
        by_row = torch.argsort(rows, dim=1, stable=True)
        sorted_rows = rows.gather(1, by_row)
        repeat = torch.zeros_like(tokens, dtype=torch.bool)
        repeat[:, 1:] = sorted_rows[:, 1:] == sorted_rows[:, :-1]
        dropped = torch.zeros_like(repeat).scatter(1, by_row, repeat)
        values = torch.where(dropped, -math.inf, values)
        tokens = torch.where(dropped, -1, tokens)
    order = torch.argsort(-values, dim=1, stable=True)[:, :k]
    return values.gather(1, order), tokens.gather(1, order)
