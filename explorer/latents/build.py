"""Building latent caches: the default build's `cache` stage, one SAE on any model, sharded builds and merges.

The default stage reads the SAE stage's stored activations (no forward pass) for every trained SAE.
Any other SAE runs the model to its hook over the model's corpus. `--shard i/n` builds one slice of the
corpus and stores its accumulators; `merge` combines all n exactly and writes the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from explorer.core.models import ORGANISM_NAME, LoadedModel, load_model, model_fingerprint
from explorer.core.paths import cache_dir, write_json_atomic
from explorer.core.progress import tqdm
from explorer.core.prompts import builtin_prompts
from explorer.latents.attribution import latent_attributions
from explorer.latents.budget import encode_batch_tokens
from explorer.latents.builder import (
    accumulate,
    base_manifest,
    build_latent_cache,
    cache_rows,
    finalize,
    finished_manifest,
    model_batches,
    stored_batches,
    write_cache,
)
from explorer.latents.context import Codes, encode_codes
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import LABELS, CacheConfig, latent_cache_dir
from explorer.latents.shards import SHARDS_DIR, merge_shards, save_shard, shard_path
from explorer.refusal.candidates import refusal_token_ids
from explorer.refusal.direction import RefusalCacheError, RefusalDirection, load_refusal
from explorer.saes.activations import ActivationError, activations_dir, read_manifest
from explorer.saes.build import read_index, sae_dir
from explorer.saes.corpus import Corpus, corpus_dir, load_corpus
from explorer.saes.loading import LoadedSAE, SAEError, load_sae_dir, load_sae_for

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
Source = Literal["auto", "stored", "model"]
AttributionChoice = Literal["grad", "ig", "none"]


def refusal_attributions(
    loaded: LoadedModel,
    saes: list[LoadedSAE],
    refusal: RefusalDirection | None,
    method: AttributionChoice = "grad",
    n_prompts: int = 64,
) -> dict[str, dict[str, torch.Tensor]]:
    """hook -> label -> [d_sae] attribution of each latent on the refusal score, over the first
    `n_prompts` built-in val prompts of each label (never the test split the app's proofs use)."""
    if method == "none" or refusal is None or not saes:
        return {}
    strings = refusal.selection.get("config", {}).get("refusal_tokens", ["I", "Sorry"])
    token_ids = refusal_token_ids(loaded, strings)
    out: dict[str, dict[str, torch.Tensor]] = {sae.hook: {} for sae in saes}
    for label in LABELS:
        prompts = [r.text for r in builtin_prompts(label, "val")][:n_prompts]  # pyright: ignore[reportArgumentType]
        for hook, values in latent_attributions(loaded, saes, prompts, token_ids, method=method).items():
            out[hook][label] = values
    return out


def _optional_refusal(loaded: LoadedModel) -> RefusalDirection | None:
    try:
        return load_refusal(loaded.name)
    except RefusalCacheError:
        log.warning("no refusal direction for %s: the cache will have no refusal alignment", loaded.name)
        return None


def build_caches(
    model: str = ORGANISM_NAME, config: CacheConfig | None = None, attribution: AttributionChoice = "grad"
) -> dict[str, Any]:
    """The default build's stage: the latent cache of every SAE the SAE stage trained for `model`.

    Returns:
        The stage index written to `cache/latents/<model>/index.json` (hooks, timings).
    """
    config = config or CacheConfig()
    start = time.perf_counter()
    loaded = load_model(model)
    sae_index = read_index(loaded.name)
    corpus = load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    refusal = _optional_refusal(loaded)
    saes = [load_sae_for(loaded, str(sae_dir(loaded.name, hook))) for hook in sae_index["hooks"]]
    mark = time.perf_counter()
    attributions = refusal_attributions(loaded, saes, refusal, attribution)
    t_attr = time.perf_counter() - mark
    built: dict[str, Any] = {}
    for sae in tqdm(saes, desc="latent caches", unit="SAE"):
        manifest = build_latent_cache(
            loaded,
            sae,
            corpus,
            activations_dir(loaded.name),
            refusal,
            attribution=attributions.get(sae.hook),
            config=config,
        )
        built[sae.hook] = {
            "seconds": manifest["seconds"],
            "n_tokens": manifest["n_tokens"],
            "fingerprint": sae.fingerprint,
        }
    index = {
        "model": loaded.name,
        "main": sae_index["main"],
        "hooks": sae_index["hooks"],
        "caches": built,
        "attribution": {"method": attribution, "seconds": round(t_attr, 1)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(cache_dir() / "latents" / loaded.name / INDEX_FILE, index)
    return index


def is_complete(model: str = ORGANISM_NAME) -> bool:
    """True when every SAE of the SAE stage has a readable cache built from its current weights."""
    try:
        for hook in read_index(model)["hooks"]:
            sae = load_sae_dir(sae_dir(model, hook))
            LatentCache(latent_cache_dir(model, hook), sae_fingerprint=sae.fingerprint)
    except (CacheError, SAEError):
        return False
    return True


def _has_stored(loaded: LoadedModel, corpus: Corpus, hook: str) -> bool:
    try:
        return all(
            hook in m["hooks"] and m["corpus"] == corpus.fingerprint()
            for m in (read_manifest(activations_dir(loaded.name), p) for p in ("train", "heldout"))
        )
    except (ActivationError, KeyError):
        return False


def build_sae_cache(
    loaded: LoadedModel,
    sae: LoadedSAE,
    corpus: Corpus,
    *,
    source: Source = "auto",
    shard: tuple[int, int] | None = None,
    directory: Path | None = None,
    attribution: AttributionChoice = "grad",
    config: CacheConfig | None = None,
) -> dict[str, Any]:
    """Build the cache of one SAE, or one shard of it.

    Args:
        source: "stored" reads the SAE stage's activations, "model" runs the model to the hook, "auto"
            reads stored activations when they exist for this hook and corpus.
        shard: (i, n) builds rows with row % n == i and stores only the accumulators under
            `<directory>/shards/`; `merge_sae_cache` turns n shards into the cache.

    Returns:
        The cache manifest, or for a shard the shard's identity and path.
    """
    config = config or CacheConfig()
    directory = directory or latent_cache_dir(loaded.name, sae.name)
    stored = _has_stored(loaded, corpus, sae.hook)
    if source == "stored" and not stored:
        raise CacheError(
            f"no stored activations of {sae.hook} for this corpus under {activations_dir(loaded.name)}; "
            "use --source model"
        )
    use_stored = source == "stored" or (source == "auto" and stored)
    refusal = _optional_refusal(loaded)
    if shard is None or shard[1] == 1:
        attributions = refusal_attributions(loaded, [sae], refusal, attribution)
        return build_latent_cache(
            loaded,
            sae,
            corpus,
            activations_dir(loaded.name) if use_stored else None,
            refusal,
            attribution=attributions.get(sae.hook),
            config=config,
            directory=directory,
        )
    start = time.perf_counter()
    keep = cache_rows(corpus)
    batches = (
        stored_batches(activations_dir(loaded.name), sae.hook, keep, shard)
        if use_stored
        else model_batches(loaded, corpus, sae.hook, keep, shard)
    )
    acc, means = accumulate(sae, batches, corpus, config)
    identity = base_manifest(loaded, sae, corpus, config)
    path = shard_path(directory, *shard)
    save_shard(path, acc, means, {**identity, "seconds": time.perf_counter() - start}, shard)
    log.info("shard %d/%d of %s: %d tokens -> %s", *shard, sae.hook, acc.n_tokens, path)
    return {**identity, "shard": list(shard), "path": str(path), "n_tokens": acc.n_tokens}


def merge_sae_cache(
    loaded: LoadedModel,
    sae: LoadedSAE,
    corpus: Corpus,
    n: int,
    *,
    directory: Path | None = None,
    attribution: AttributionChoice = "grad",
) -> dict[str, Any]:
    """Merge shards 0..n-1 of one SAE's cache into the finished cache (which replaces the directory,
    shards included, atomically).

    Raises:
        ShardError: a shard is missing, corrupt, or from another model, SAE, corpus or config.
        CacheError: the shards were built from other weights than the loaded model or SAE.
    """
    start = time.perf_counter()
    directory = directory or latent_cache_dir(loaded.name, sae.name)
    acc, means, identity = merge_shards(directory, n, corpus)
    for key, have in (
        ("model_fingerprint", model_fingerprint(loaded.model)),
        ("sae_fingerprint", sae.fingerprint),
        ("corpus", corpus.fingerprint()),
    ):
        if identity.get(key) != have:
            raise CacheError(
                f"shards in {directory / SHARDS_DIR} were built with {key} {identity.get(key)}, "
                f"but the loaded one is {have}"
            )
    config = CacheConfig.from_dict(identity["config"])
    refusal = _optional_refusal(loaded)
    attributions = refusal_attributions(loaded, [sae], refusal, attribution)
    stored = _has_stored(loaded, corpus, sae.hook)

    def codes(rows: torch.Tensor) -> Iterator[Codes]:
        # The shards kept no activations: read the stored ones again, or run one more forward pass,
        # over the rows holding examples only.
        batches = (
            stored_batches(activations_dir(loaded.name), sae.hook, rows)
            if stored
            else model_batches(loaded, corpus, sae.hook, rows & cache_rows(corpus))
        )
        return encode_codes(sae, batches, corpus.input_ids.shape[1], encode_batch_tokens(sae.d_sae, config))

    arrays = finalize(acc, means, sae, loaded, refusal, config, corpus, codes, attributions.get(sae.hook))
    seconds = {"merge": time.perf_counter() - start}
    manifest = finished_manifest(identity, acc, sae, refusal, seconds)
    manifest["source"] = f"merge of {n} shards"
    write_cache(directory, arrays, manifest, corpus, loaded.tokenizer)
    return manifest
