"""The memory a latent-cache build may use: what its accumulators hold per latent, and how the working
memory budget sets the SAE batch size and the chunks the finalize step works in.

Two kinds of memory grow with the SAE's width. The accumulators (`explorer.latents.stats`) live for the
whole pass and take `accumulator_bytes_per_latent` bytes per latent (about 24 KiB with the default
config: 3.1 GiB at 131,072 latents). Everything else is transient working memory (a batch's dense
[tokens, d_sae] activations, a block of decoder cosines, a block of logits), and every such piece is
sized to stay within one budget, `MEMORY_BUDGET` bytes by default, so nothing is O(d_sae²) or
O(d_sae × vocab).
"""

from __future__ import annotations

from explorer.latents.schema import CacheConfig
from explorer.latents.stats import Grid

MEMORY_BUDGET = 2**30
"""Default bytes of transient working memory of one build (on the SAE's device), besides the
accumulators and the model, SAE and corpus themselves."""

BYTES_PER_DENSE_ACTIVATION = 16
"""Working bytes per (token, latent) of one encoded batch: the SAE's pre-activations and its dense
output (float32 each), the active mask, and the encoder's own temporaries."""


def accumulator_bytes_per_latent(config: CacheConfig, grid: Grid | None = None) -> int:
    """Bytes the statistics pass keeps per latent for the whole pass.

    Top-k values and tokens (4 + 8 bytes each of k), count, sum, sum of squares and max (28), the
    histogram (8 per bin), the interval samples (key, value and token: 20 bytes per candidate, m per
    sample bin) and the harmful/harmless sums (4 float64).
    """
    grid = grid or Grid()
    top = config.k * (4 + 8)
    scalars = 8 + 8 + 8 + 4
    hist = grid.n_bins * 8
    samples = grid.n_sample_bins * config.samples_per_bin * (8 + 4 + 8)
    label_sums = 2 * 2 * 8
    return top + scalars + hist + samples + label_sums


def rows_within(budget: int, bytes_per_row: int, total: int) -> int:
    """How many rows of `bytes_per_row` fit `budget` (at least 1, at most `total`)."""
    return max(1, min(total, budget // max(bytes_per_row, 1)))


def encode_batch_tokens(d_sae: int, config: CacheConfig, budget: int = MEMORY_BUDGET) -> int:
    """Tokens encoded per SAE batch: `config.batch_tokens`, or fewer when a batch's dense activations
    would not fit `budget` (e.g. 512 tokens at 131,072 latents with the default 1 GiB)."""
    return rows_within(budget, d_sae * BYTES_PER_DENSE_ACTIVATION, config.batch_tokens)
