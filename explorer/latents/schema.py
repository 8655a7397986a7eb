"""The on-disk format of a latent cache: its files, schema version, build config and location.

One directory per SAE (`cache/latents/<model>/<sae>/`): `latents.safetensors` (per-latent arrays),
`tokens.safetensors` (the corpus rows the examples point into), `vocab.json` (each token id's text) and
`manifest.json` (schema version, fingerprints, config, timings). The builder writes it; the reader, the
table and the exports read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from explorer.core.paths import cache_dir

SCHEMA_VERSION = 2
ARRAYS_FILE = "latents.safetensors"
TOKENS_FILE = "tokens.safetensors"
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.json"
LABELS = ("harmful", "harmless")


@dataclass(frozen=True)
class CacheConfig:
    """How the latent cache is built.

    Attributes:
        k: top-activating examples kept per latent.
        samples_per_bin: interval-sample candidates kept per latent and sample bin.
        n_intervals: activation intervals between 0 and each latent's max.
        examples_per_interval: examples drawn per interval.
        n_post_instruction: post-instruction positions (the chat template's tail after the user turn).
        batch_tokens: activations encoded per SAE batch.
        seed: seeds interval sampling.
    """

    k: int = 20
    samples_per_bin: int = 8
    n_intervals: int = 10
    examples_per_interval: int = 5
    n_post_instruction: int = 6
    batch_tokens: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_intervals < 1 or self.examples_per_interval < 1:
            raise ValueError("k, n_intervals and examples_per_interval must be >= 1")
        if self.examples_per_interval > self.samples_per_bin:
            raise ValueError("examples_per_interval cannot exceed samples_per_bin")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


QUANTILES = (0.5, 0.9, 0.99)


def latent_cache_dir(model_name: str, sae_name: str) -> Path:
    """`cache/latents/<model>/<sae>/`; the default's SAEs are named by their hook, registry SAEs by
    `release:sae_id` (path separators and colons become `__`)."""
    return cache_dir() / "latents" / model_name / sae_name.replace("/", "__").replace(":", "__")
