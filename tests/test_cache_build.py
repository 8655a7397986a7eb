"""Sharded cache builds merge into exactly the single-pass cache; a live forward pass matches stored
activations; bad shards are named in the error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from explorer.core.models import LoadedModel, model_fingerprint
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import builtin_prompts
from explorer.latents.build import build_sae_cache, merge_sae_cache
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import ARRAYS_FILE, CacheConfig
from explorer.latents.shards import ShardError, parse_shard, shard_path
from explorer.saes.activations import activations_dir, collect
from explorer.saes.corpus import Corpus, CorpusConfig, build_corpus
from explorer.saes.loading import LoadedSAE, wrap_sae
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
CONFIG = CacheConfig(k=5, samples_per_bin=6, n_groups=8, examples_per_group=5, batch_tokens=101)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel
) -> Iterator[tuple[Corpus, LoadedSAE, Path]]:
    root = tmp_path_factory.mktemp("cache-build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        prompts = builtin_prompts("harmful", "val")[:5] + builtin_prompts("harmless", "val")[:5]
        corpus = build_corpus(
            tiny,
            CorpusConfig(seq_len=48, response_tokens=5, text_tokens=2500, batch_size=10),
            prompts,
            root / "c",
        )
        for part in ("train", "heldout"):
            collect(tiny, corpus, [HOOK], activations_dir(tiny.name), part)  # pyright: ignore[reportArgumentType]
        sae = wrap_sae(tiny_sae("topk", d_in=64, d_sae=48, hook=HOOK, seed=1), "tiny", "tiny")
        yield corpus, sae, root


def _arrays(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / ARRAYS_FILE))


def _assert_same(a: Path, b: Path, recomputed: bool = False) -> None:
    """Equal arrays; with `recomputed`, the context activations came from a second forward pass (the
    merge's, batched differently), so they agree to float16 rounding rather than bit for bit."""
    left, right = _arrays(a), _arrays(b)
    assert set(left) == set(right)
    for name in left:
        if recomputed and name == "context_values":
            torch.testing.assert_close(left[name].float(), right[name].float(), rtol=1e-2, atol=1e-3)
        else:
            assert torch.equal(left[name], right[name]), name


@pytest.mark.parametrize("source", ["stored", "model"])
def test_shards_merge_into_the_single_pass_cache(
    setup: tuple[Corpus, LoadedSAE, Path], tiny: LoadedModel, source: str
) -> None:
    corpus, sae, root = setup
    whole, sharded = root / f"whole-{source}", root / f"sharded-{source}"
    options = {"source": source, "attribution": "none", "config": CONFIG}
    manifest = build_sae_cache(tiny, sae, corpus, directory=whole, **options)  # pyright: ignore[reportArgumentType]
    assert manifest["source"].startswith("stored" if source == "stored" else "model")
    for i in range(3):
        build_sae_cache(tiny, sae, corpus, shard=(i, 3), directory=sharded, **options)  # pyright: ignore[reportArgumentType]
    merged = merge_sae_cache(tiny, sae, corpus, 3, directory=sharded, attribution="none")
    assert merged["n_tokens"] == manifest["n_tokens"]
    _assert_same(whole, sharded, recomputed=source == "model")
    assert not (sharded / "shards").exists()
    cache = LatentCache(
        sharded, sae_fingerprint=sae.fingerprint, model_fingerprint=model_fingerprint(tiny.model)
    )
    assert cache.latent(0).top_examples


def test_live_forward_pass_matches_stored_activations(setup: tuple[Corpus, LoadedSAE, Path]) -> None:
    _, _, root = setup
    stored, live = _arrays(root / "whole-stored"), _arrays(root / "whole-model")
    # Stored activations are float16 copies of the same forward pass.
    torch.testing.assert_close(stored["max"], live["max"], rtol=2e-2, atol=2e-2)
    assert (stored["count"] - live["count"]).abs().sum() <= 0.01 * stored["count"].sum()


def test_merge_names_a_missing_or_foreign_shard(
    setup: tuple[Corpus, LoadedSAE, Path], tiny: LoadedModel
) -> None:
    corpus, sae, root = setup
    directory = root / "partial"
    build_sae_cache(tiny, sae, corpus, shard=(0, 2), directory=directory, source="stored", attribution="none")
    with pytest.raises(ShardError, match=r"missing .*1-of-2\.safetensors"):
        merge_sae_cache(tiny, sae, corpus, 2, directory=directory, attribution="none")
    other = CacheConfig(k=3)
    build_sae_cache(
        tiny,
        sae,
        corpus,
        shard=(1, 2),
        directory=directory,
        source="stored",
        attribution="none",
        config=other,
    )
    with pytest.raises(ShardError, match=r"1-of-2\.safetensors differs from shard 0 in config"):
        merge_sae_cache(tiny, sae, corpus, 2, directory=directory, attribution="none")
    shard_path(directory, 1, 2).write_bytes(b"not a safetensors file")
    with pytest.raises(ShardError, match="corrupt or truncated"):
        merge_sae_cache(tiny, sae, corpus, 2, directory=directory, attribution="none")
    retrained = wrap_sae(tiny_sae("topk", d_in=64, d_sae=48, hook=HOOK, seed=2), "tiny", "tiny")
    build_sae_cache(tiny, sae, corpus, shard=(1, 2), directory=directory, source="stored", attribution="none")
    with pytest.raises(CacheError, match="sae_fingerprint"):
        merge_sae_cache(tiny, retrained, corpus, 2, directory=directory, attribution="none")


def test_reader_refuses_a_cache_of_other_model_weights(setup: tuple[Corpus, LoadedSAE, Path]) -> None:
    _, _, root = setup
    with pytest.raises(CacheError, match="model_fingerprint"):
        LatentCache(root / "whole-stored", model_fingerprint="0" * 16)


def test_parse_shard() -> None:
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_stored_source_needs_stored_activations(
    setup: tuple[Corpus, LoadedSAE, Path], tiny: LoadedModel
) -> None:
    corpus, _, root = setup
    elsewhere = wrap_sae(tiny_sae("topk", d_in=64, d_sae=16, hook="blocks.1.hook_resid_pre"), "x", "x")
    with pytest.raises(CacheError, match=r"no stored activations of blocks\.1\.hook_resid_pre"):
        build_sae_cache(tiny, elsewhere, corpus, source="stored", directory=root / "x", attribution="none")
