"""A complete tiny workspace for page tests: refusal direction, SAEs, latent caches, in a temporary cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

from explorer.core.models import load_model
from explorer.core.paths import CACHE_ENV
from explorer.latents.build import build_caches
from explorer.latents.schema import CacheConfig
from explorer.refusal.build import compute_refusal
from explorer.refusal.candidates import RefusalConfig
from explorer.saes.build import SAEStageConfig, build_saes
from explorer.saes.corpus import CorpusConfig
from explorer.saes.training import SAETrainConfig


def build_tiny_workspace(cache: Path, model_dir: Path) -> dict[str, object]:
    """Build, under `cache`, everything the app reads for the tiny model in `model_dir`.

    Returns:
        The latent-cache stage index (hooks, main hook).
    """
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    try:
        loaded = load_model(str(model_dir))
        relaxed = RefusalConfig(n_val=4, induce_threshold=-math.inf, kl_threshold=math.inf, kl_relaxation=())
        compute_refusal(loaded, relaxed, progress=False)
        small = SAETrainConfig(d_sae=64, k=4, training_samples=2000, batch_size=500, autocast=False)
        # Python prose only, 17% held out: the text the tiny SAE leaves some latents dead on, so the
        # pages' dead-latent filters are exercised (more varied text wakes all 64).
        corpus = CorpusConfig(
            seq_len=48,
            response_tokens=6,
            text_tokens=2000,
            heldout_fraction=0.17,
            prompts_per_label=8,
            batch_size=8,
            train_sources=("python-docs",),
            heldout_sources=(),
        )
        stage = SAEStageConfig(main=small, side=small, corpus=corpus, fast_dtype=None, loss_rows=4)
        build_saes(str(model_dir), stage)
        return build_caches(
            str(model_dir), CacheConfig(k=8, n_groups=8, examples_per_group=3, samples_per_bin=4)
        )
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous
