"""A memory budget changes how the cache is built, never what it holds: chunked decoder cosines, logit
effects, encoding batches and finalize chunks give the unchunked arrays, and a tiny budget never forms a
[d_sae, d_sae] or [d_sae, vocab] tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from explorer.core.models import LoadedModel
from explorer.latents.budget import accumulator_bytes_per_latent, encode_batch_tokens
from explorer.latents.builder import build_latent_cache
from explorer.latents.effects import logit_effects, nearest_latents
from explorer.latents.schema import ARRAYS_FILE, CacheConfig
from explorer.refusal.direction import RefusalDirection
from explorer.saes.loading import LoadedSAE, wrap_sae
from tests.helpers import build_tiny_latent_cache, tiny_sae

HOOK = "blocks.2.hook_resid_pre"
CONFIG = CacheConfig(k=4, samples_per_bin=6, n_groups=8, examples_per_group=5, batch_tokens=256)
WIDE = 192
"""Latents of the SAE whose allocations are watched: more than d_model (64), so a [d_sae, d_sae] block
cannot be mistaken for a weight matrix."""


class Shapes(TorchFunctionMode):
    """Records the shape of every tensor a torch function returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, ...]] = set()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor):
                self.seen.add(tuple(value.shape))
        return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> tuple[Any, Path, LoadedSAE, Path]:
    return build_tiny_latent_cache(tiny, tmp_path_factory.mktemp("budget"), HOOK, CONFIG)


@pytest.fixture(scope="module")
def wide() -> LoadedSAE:
    return wrap_sae(tiny_sae("topk", d_in=64, d_sae=WIDE, hook=HOOK, seed=3), "wide", "wide")


def _refusal() -> RefusalDirection:
    torch.manual_seed(0)
    return RefusalDirection(torch.randn(64), HOOK, 2, -1, torch.randn(5, 6, 64), {})


def _build(
    tiny: LoadedModel, sae: LoadedSAE, built: tuple[Any, Path, LoadedSAE, Path], target: Path, budget: int
) -> None:
    corpus, acts, _, _ = built
    build_latent_cache(tiny, sae, corpus, acts, _refusal(), config=CONFIG, directory=target, budget=budget)


def test_a_tiny_budget_builds_the_same_cache(
    tiny: LoadedModel, built: tuple[Any, Path, LoadedSAE, Path], tmp_path: Path
) -> None:
    _, _, sae, directory = built
    # 2 KiB: 4-token encoding batches, one latent per finalize chunk, one-row logit and cosine blocks.
    assert encode_batch_tokens(sae.d_sae, CONFIG, 2048) == 4
    _build(tiny, sae, built, tmp_path / "chunked", 2048)
    whole, chunked = (
        load_file(str(directory / ARRAYS_FILE)),
        load_file(str(tmp_path / "chunked" / ARRAYS_FILE)),
    )
    assert set(whole) == set(chunked)
    for name, array in whole.items():
        if array.is_floating_point():
            # The SAE encodes 4 tokens at a time instead of 256: the matmul rounds differently (last bit).
            torch.testing.assert_close(array, chunked[name], rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(array, chunked[name]), name


@pytest.mark.parametrize("budget", [64, 4096, 100_000, 1 << 30])
def test_chunked_cosines_and_logits_equal_the_unchunked_ones(
    tiny: LoadedModel, wide: LoadedSAE, budget: int
) -> None:
    w = torch.nn.functional.normalize(wide.sae.W_dec.detach().float(), dim=-1)
    sim = w @ w.T
    sim.fill_diagonal_(-2.0)
    expected = sim.topk(10, dim=1)
    ids, cos = nearest_latents(wide, budget=budget)
    assert torch.equal(ids, expected.indices)
    torch.testing.assert_close(cos, expected.values, rtol=0, atol=1e-6)

    unembed = tiny.model.get_output_embeddings().weight.detach().float()  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
    scale = tiny.model.model.norm.weight.detach().float()  # pyright: ignore[reportAttributeAccessIssue, reportCallIssue]
    logits = (wide.sae.W_dec.detach().float() * scale) @ unembed.T
    top_ids, top, bottom_ids, bottom = logit_effects(wide, tiny.model, budget=budget)
    assert torch.equal(top_ids, logits.topk(10, dim=1).indices)
    assert torch.equal(bottom_ids, (-logits).topk(10, dim=1).indices)
    torch.testing.assert_close(top, logits.topk(10, dim=1).values, rtol=0, atol=1e-6)
    torch.testing.assert_close(bottom, -(-logits).topk(10, dim=1).values, rtol=0, atol=1e-6)


def test_a_small_budget_never_forms_a_latents_by_latents_or_vocab_tensor(
    tiny: LoadedModel, wide: LoadedSAE, built: tuple[Any, Path, LoadedSAE, Path], tmp_path: Path
) -> None:
    vocab = tiny.model.get_output_embeddings().weight.shape[0]  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue, reportOptionalMemberAccess]
    with Shapes() as shapes:
        _build(tiny, wide, built, tmp_path / "wide", 64 * 1024)
    assert (tmp_path / "wide" / ARRAYS_FILE).is_file()
    assert any(WIDE in shape for shape in shapes.seen)  # the watcher saw the build
    forbidden = [s for s in shapes.seen if s.count(WIDE) >= 2 or (WIDE in s and vocab in s)]
    assert forbidden == []
    # The same build with room to spare does form the full [d_sae, d_sae] cosine block.
    with Shapes() as shapes:
        nearest_latents(wide, budget=1 << 30)
    assert (WIDE, WIDE) in shapes.seen


def test_the_accumulator_budget_per_latent_matches_its_tensors() -> None:
    from explorer.latents.stats import LatentAccumulator

    acc = LatentAccumulator(10, k=CONFIG.k, samples_per_bin=CONFIG.samples_per_bin)
    held = sum(t.numel() * t.element_size() for name, t in acc.state().items() if name != "n_tokens")
    label_sums = 2 * 2 * 8
    assert accumulator_bytes_per_latent(CONFIG) * 10 == held + label_sums * 10
