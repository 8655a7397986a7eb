"""Streaming per-latent statistics equal brute force, and shards merge exactly."""

from __future__ import annotations

import torch

from explorer.latents.stats import Grid, LatentAccumulator, token_hash

D_SAE, K, M = 12, 5, 3


def sparse_batch(n: int, seed: int) -> torch.Tensor:
    """[n, D_SAE] activations, ~30% active, with deliberate ties and a dead latent (index 11)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, D_SAE, generator=g) * torch.logspace(-2, 2, D_SAE)[None, :]
    acts[torch.rand(n, D_SAE, generator=g) > 0.3] = 0
    acts[::7, 3] = 1.5  # ties
    acts[:, 11] = 0
    return acts


def run(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> LatentAccumulator:
    acc = LatentAccumulator(D_SAE, K, M, seed=7)
    for acts, tokens in batches:
        acc.update(acts, tokens)
    return acc


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.cat([sparse_batch(97, s) for s in range(4)])
    tokens = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[: len(acts)]
    return acts, tokens


def test_top_k_equals_brute_force_with_ties_broken_by_token() -> None:
    acts, tokens = corpus()
    acc = run([(acts[i : i + 50], tokens[i : i + 50]) for i in range(0, len(acts), 50)])
    for latent in range(D_SAE):
        active = acts[:, latent] > 0
        pairs = sorted(zip((-acts[active, latent]).tolist(), tokens[active].tolist(), strict=True))[:K]
        expected_tokens = [t for _, t in pairs] + [-1] * (K - len(pairs))
        assert acc.top_tokens[latent].tolist() == expected_tokens, latent
        assert acc.top_values[latent, : len(pairs)].tolist() == [-v for v, _ in pairs]
    assert (acc.top_values[11] == float("-inf")).all()


def test_top_k_with_rows_keeps_each_rows_best_token_only() -> None:
    # 400 tokens in rows of 25: neighbouring tokens of one row would otherwise crowd the top-k.
    acts, tokens = corpus()
    width = 25
    batches = [(acts[i : i + 60], tokens[i : i + 60]) for i in range(0, len(acts), 60)]
    acc = LatentAccumulator(D_SAE, K, M, seed=7, row_width=width)
    for batch in batches:
        acc.update(*batch)
    halves = [LatentAccumulator(D_SAE, K, M, seed=7, row_width=width) for _ in range(2)]
    for n, batch in enumerate(batches):
        halves[n % 2].update(*batch)
    halves[0].merge(halves[1])
    for latent in range(D_SAE):
        best: dict[int, tuple[float, int]] = {}
        for value, token in zip(acts[:, latent].tolist(), tokens.tolist(), strict=True):
            if value > 0:
                best[token // width] = min(best.get(token // width, (0.0, 1 << 60)), (-value, token))
        expected = sorted(best.values())[:K]
        expected_tokens = [t for _, t in expected] + [-1] * (K - len(expected))
        assert acc.top_tokens[latent].tolist() == expected_tokens, latent
        assert halves[0].top_tokens[latent].tolist() == expected_tokens, latent
    plain = run(batches)  # without rows, some latent's top-k repeats a row: the case above matters
    assert any(len(set((t // width).tolist())) < K for t in plain.top_tokens[:11])


def test_statistics_and_histogram_equal_brute_force() -> None:
    acts, tokens = corpus()
    acc = run([(acts[:200], tokens[:200]), (acts[200:], tokens[200:])])
    active = acts > 0
    assert acc.n_tokens == len(acts)
    assert acc.count.tolist() == active.sum(0).tolist()
    torch.testing.assert_close(acc.sum, (acts.double() * active).sum(0))
    torch.testing.assert_close(acc.max, acts.max(0).values)
    grid = Grid()
    for latent in (0, 3, 10):
        values = acts[active[:, latent], latent]
        expected = torch.bincount(grid.bin_of(values), minlength=grid.n_bins)
        assert torch.equal(acc.hist[latent], expected)
        # Each value lies in its bin's [low edge, high edge); values under the grid's low end go to bin 0.
        edges, inside = grid.edges(), values[values >= grid.low].double()
        bins = grid.bin_of(inside)
        assert ((edges[bins] <= inside * (1 + 1e-12)) & (inside < edges[bins + 1] * (1 + 1e-12))).all()
        assert (grid.bin_of(values[values < grid.low]) == 0).all()


def test_interval_samples_are_the_smallest_hashes_of_each_bin() -> None:
    acts, tokens = corpus()
    acc = run([(acts, tokens)])
    grid = acc.grid
    for latent in (2, 3, 9):
        active = acts[:, latent] > 0
        values, toks = acts[active, latent], tokens[active]
        bins = grid.sample_bin_of(grid.bin_of(values))
        keys = token_hash(torch.full_like(toks, latent), toks, seed=7)
        for b in bins.unique().tolist():
            in_bin = bins == b
            order = keys[in_bin].argsort()[:M]
            slot = latent * grid.n_sample_bins + b
            assert acc.sample_tokens[slot, : len(order)].tolist() == toks[in_bin][order].tolist()
            assert acc.sample_values[slot, : len(order)].tolist() == values[in_bin][order].tolist()


def test_shards_merge_exactly_into_the_single_pass_result() -> None:
    acts, tokens = corpus()
    whole = run([(acts, tokens)])
    first, second = run([(acts[:150], tokens[:150])]), run([(acts[150:], tokens[150:])])
    first.merge(second)
    for name, tensor in whole.state().items():
        if name in ("sum", "sum_sq"):
            torch.testing.assert_close(first.state()[name], tensor)
        else:
            assert torch.equal(first.state()[name], tensor), name
    restored = LatentAccumulator.from_state(first.state(), seed=7)
    assert torch.equal(restored.top_tokens, whole.top_tokens)


def test_the_sampling_hash_is_uniform_and_seeded() -> None:
    tokens = torch.arange(100_000)
    h = token_hash(torch.zeros_like(tokens), tokens, seed=1)
    assert float(h.min()) >= 0 and float(h.max()) < 1
    assert abs(float(h.mean()) - 0.5) < 0.01
    assert not torch.equal(h, token_hash(torch.zeros_like(tokens), tokens, seed=2))
