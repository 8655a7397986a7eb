"""The `cache` stage of the default build: a latent cache for every SAE the SAE stage trained."""

from __future__ import annotations

import logging
import time
from typing import Any

from explorer.activations import activations_dir
from explorer.cache_reader import CacheError, LatentCache
from explorer.corpus import corpus_dir, load_corpus
from explorer.latent_cache import CacheConfig, build_latent_cache, latent_cache_dir
from explorer.models import ORGANISM_NAME, load_model
from explorer.paths import cache_dir, write_json_atomic
from explorer.refusal_build import RefusalCacheError, load_refusal
from explorer.sae import SAEError, load_sae_dir, load_sae_for
from explorer.sae_build import read_index, sae_dir

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"


def build_caches(model: str = ORGANISM_NAME, config: CacheConfig | None = None) -> dict[str, Any]:
    """Build the latent cache of every SAE listed in the SAE stage's index for `model`.

    Returns:
        The stage index written to `cache/latents/<model>/index.json` (hooks, timings).
    """
    config = config or CacheConfig()
    start = time.perf_counter()
    loaded = load_model(model)
    sae_index = read_index(loaded.name)
    corpus = load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    try:
        refusal = load_refusal(loaded.name)
    except RefusalCacheError:
        refusal = None
    built: dict[str, Any] = {}
    for hook in sae_index["hooks"]:
        sae = load_sae_for(loaded, str(sae_dir(loaded.name, hook)))
        manifest = build_latent_cache(
            loaded, sae, corpus, activations_dir(loaded.name), refusal, config=config
        )
        built[hook] = {
            "seconds": manifest["seconds"],
            "n_tokens": manifest["n_tokens"],
            "fingerprint": sae.fingerprint,
        }
    index = {
        "model": loaded.name,
        "main": sae_index["main"],
        "hooks": sae_index["hooks"],
        "caches": built,
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
