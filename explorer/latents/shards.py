"""Sharded latent-cache builds: each shard stores its accumulators; a merge combines them exactly.

Shard i of n covers corpus rows with row % n == i. Its file holds the accumulators' tensors (top-k,
counts, sums, histograms, interval samples, harmful/harmless sums) and, in the safetensors metadata, the
identity every shard must share (schema, model, SAE and corpus fingerprints, config, grid). Top-k,
histograms, counts and the hash-ranked interval samples all merge losslessly, so a merged cache equals
the cache built in one pass.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from explorer.latents.builder import LabelMeans
from explorer.latents.schema import CacheConfig
from explorer.latents.stats import Grid, LatentAccumulator
from explorer.saes.corpus import Corpus

SHARDS_DIR = "shards"
# Fields of the shard metadata that must agree before shards can be merged.
IDENTITY = ("schema_version", "model_fingerprint", "sae_fingerprint", "hook", "corpus", "config")


class ShardError(ValueError):
    """A shard that is missing, corrupt, or built from something other than its siblings."""


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `i/n` (0 <= i < n) as given to `--shard`."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None:
        raise ValueError(f"shard {text!r} is not of the form i/n (e.g. 0/4)")
    index, n = int(match.group(1)), int(match.group(2))
    if not 0 <= index < n:
        raise ValueError(f"shard {text!r}: index must be in 0..n-1")
    return index, n


def shard_path(directory: Path, index: int, n: int) -> Path:
    return directory / SHARDS_DIR / f"{index}-of-{n}.safetensors"


def save_shard(
    path: Path, acc: LatentAccumulator, means: LabelMeans, identity: dict[str, Any], shard: tuple[int, int]
) -> None:
    """Write one shard's accumulators atomically (temporary file, then rename)."""
    tensors = {f"acc.{k}": v.contiguous() for k, v in acc.state().items()}
    tensors["means.sums"], tensors["means.counts"] = means.sums, means.counts
    metadata = {
        "identity": json.dumps({k: identity[k] for k in IDENTITY}, sort_keys=True),
        "manifest": json.dumps(identity, sort_keys=True),
        "grid": json.dumps(asdict(acc.grid)),
        "shard": f"{shard[0]}/{shard[1]}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_shard(path: Path, corpus: Corpus) -> tuple[LatentAccumulator, LabelMeans, dict[str, Any]]:
    """Read one shard back into accumulators.

    Returns:
        (accumulator, label means, the identity manifest the shard was built with).

    Raises:
        ShardError: the file is missing or corrupt.
    """
    if not path.is_file():
        raise ShardError(f"shard {path} is missing; build it with `explorer cache build --shard i/n`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no iterator
        manifest = json.loads(metadata["manifest"])
        grid = Grid(**json.loads(metadata["grid"]))
        config = CacheConfig.from_dict(manifest["config"])
        acc = LatentAccumulator.from_state(
            {k.removeprefix("acc."): v for k, v in tensors.items() if k.startswith("acc.")},
            config.seed,
            grid,
            row_width=corpus.input_ids.shape[1],
        )
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError, ValueError) as e:
        raise ShardError(f"shard {path} is corrupt or truncated ({e}); rebuild that shard") from e
    means = LabelMeans(corpus, acc.d_sae, config.n_post_instruction)
    means.sums, means.counts = tensors["means.sums"], tensors["means.counts"]
    return acc, means, manifest


def merge_shards(
    directory: Path, n: int, corpus: Corpus
) -> tuple[LatentAccumulator, LabelMeans, dict[str, Any]]:
    """Merge shards 0..n-1 of a cache directory exactly.

    Raises:
        ShardError: a shard is missing or corrupt, or the shards disagree on model, SAE, corpus or config
            (the message names the file and the field).
    """
    if n < 1:
        raise ShardError(f"number of shards must be >= 1, got {n}")
    missing = [
        str(shard_path(directory, i, n)) for i in range(n) if not shard_path(directory, i, n).is_file()
    ]
    if missing:
        raise ShardError(f"cannot merge {n} shards: missing {', '.join(missing)}")
    acc, means, manifest = load_shard(shard_path(directory, 0, n), corpus)
    for i in range(1, n):
        path = shard_path(directory, i, n)
        other_acc, other_means, other = load_shard(path, corpus)
        for key in IDENTITY:
            if other.get(key) != manifest.get(key):
                raise ShardError(
                    f"shard {path} differs from shard 0 in {key} ({other.get(key)!r} vs "
                    f"{manifest.get(key)!r}); rebuild it with the same model, SAE, corpus and config"
                )
        acc.merge(other_acc)
        means.merge(other_means)
    return acc, means, manifest
