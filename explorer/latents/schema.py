"""The on-disk format of a latent cache: its files, schema version, build config and location.

One directory per SAE (`cache/latents/<model>/<sae>/`): `latents.safetensors` (per-latent arrays),
`tokens.safetensors` (the corpus rows the examples point into, their lengths and where each chat
request starts), `vocab.json` (each token id's text) and
`manifest.json` (schema version, fingerprints, config, timings). The builder writes it; the reader, the
table and the exports read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from explorer.core.paths import cache_dir

SCHEMA_VERSION = 3
ARRAYS_FILE = "latents.safetensors"
TOKENS_FILE = "tokens.safetensors"
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.json"
LABELS = ("harmful", "harmless")


@dataclass(frozen=True)
class CacheConfig:
    """How the latent cache is built.

    Attributes:
        k: top-activating examples kept per latent (one per corpus row: its best token).
        samples_per_bin: sample candidates kept per latent and sample bin (the quantile groups draw
            from them).
        n_groups: quantile groups of each latent's non-zero activations, from the top down.
        examples_per_group: examples drawn per quantile group.
        context_before: tokens stored before each example's activating token.
        context_after: tokens stored after it.
        request_reach: a chat example's window reaches back to the start of the user's request when
            that starts at most this many tokens before the activating token (so the request is whole).
        n_post_instruction: post-instruction positions (the chat template's tail after the user turn).
        batch_tokens: activations encoded per SAE batch.
        seed: seeds the quantile groups' sampling.
    """

    k: int = 20
    samples_per_bin: int = 8
    n_groups: int = 10
    examples_per_group: int = 5
    context_before: int = 24
    context_after: int = 8
    request_reach: int = 64
    n_post_instruction: int = 6
    batch_tokens: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_groups < 1 or self.examples_per_group < 1:
            raise ValueError("k, n_groups and examples_per_group must be >= 1")
        if self.examples_per_group > self.samples_per_bin:
            raise ValueError("examples_per_group cannot exceed samples_per_bin")
        if min(self.context_before, self.context_after, self.request_reach) < 0:
            raise ValueError("context_before, context_after and request_reach must be >= 0")

    @property
    def n_examples(self) -> int:
        """Example slots per latent: the top k, then each group's examples."""
        return self.k + self.n_groups * self.examples_per_group

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
