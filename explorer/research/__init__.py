"""The refusal papers' research questions, measured: jailbreaks, upstream harm latents, probes.

Each module computes from the model and its SAEs and stores a JSON result under `research_dir`, which
the CLI prints and the pages read.
"""

from __future__ import annotations

from pathlib import Path

from explorer.core.paths import cache_dir


def research_dir(model_name: str) -> Path:
    """Where a model's research results are stored: `research/<model>/` under the cache root."""
    return cache_dir() / "research" / model_name
