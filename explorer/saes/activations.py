"""Residual activations of a corpus, collected once with the early-stopping forward and stored as fp16 shards.

Layout, one directory per model and corpus part (train or heldout):

    cache/activations/<model>/<part>/activations.json   manifest: hooks, counts, dtype, corpus fingerprint
    cache/activations/<model>/<part>/<hook>/NNNN.safetensors
        acts [n, d_model] float16, row [n] int32, pos [n] int32

Only counted positions (see `explorer.corpus.count_mask`) are stored, in corpus order, so the SAE trainer
and the latent cache builder reuse them instead of running the model again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from explorer.core.hooks import parse_hook_name, run_to
from explorer.core.models import LoadedModel
from explorer.core.paths import atomic_directory, cache_dir, write_json_atomic
from explorer.core.progress import tqdm
from explorer.saes.corpus import Corpus, Part

log = logging.getLogger(__name__)

MANIFEST_FILE = "activations.json"
SCHEMA_VERSION = 1


class ActivationError(ValueError):
    """Stored activations that are missing, corrupt, or for another hook or corpus."""


def activations_dir(model_name: str) -> Path:
    """Where the activations of `model_name` live."""
    return cache_dir() / "activations" / model_name


@dataclass(frozen=True)
class Activations:
    """Activations of one hook over one corpus part.

    Attributes:
        acts: [n_tokens, d_model] float16.
        row: [n_tokens] corpus row of each activation.
        pos: [n_tokens] position within the row.
    """

    acts: torch.Tensor
    row: torch.Tensor
    pos: torch.Tensor

    def __len__(self) -> int:
        return self.acts.shape[0]


def collect(
    loaded: LoadedModel,
    corpus: Corpus,
    hooks: Sequence[str],
    directory: Path,
    part: Part,
    *,
    batch_size: int = 32,
    shard_tokens: int = 1 << 16,
) -> dict[str, Any]:
    """Run one corpus part through the model up to the deepest hook and store counted activations.

    Every hook is captured in the same forward pass, which stops after the deepest one. `directory/part`
    is replaced atomically, so an interrupted collection leaves any previous one intact.

    Returns:
        The manifest written beside the shards (counts, dtype, timings, hooks).
    """
    for hook in hooks:
        parse_hook_name(hook, loaded.n_layers)
    start = time.perf_counter()
    rows = corpus.rows(part)
    buffers: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    index: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward_tokens = shard_no = pending = 0
    with atomic_directory(directory / part) as tmp:

        def flush() -> None:
            nonlocal shard_no, pending
            if not index:
                return
            row = torch.cat([r for r, _ in index]).to(torch.int32)
            pos = torch.cat([p for _, p in index]).to(torch.int32)
            for hook in hooks:
                (tmp / hook).mkdir(parents=True, exist_ok=True)
                acts = torch.cat(buffers[hook]).contiguous()
                save_file(
                    {"acts": acts, "row": row, "pos": pos}, str(tmp / hook / f"{shard_no:04d}.safetensors")
                )
                buffers[hook].clear()
            index.clear()
            shard_no += 1
            pending = 0

        batches = range(0, len(rows), batch_size)
        for b in tqdm(batches, desc=f"activations ({part})", unit="batch", disable=len(batches) < 2):
            chunk = rows[b : b + batch_size]
            lengths = torch.tensor([corpus.sequences[i].length for i in chunk])
            # Rows are right-padded: trim the batch to its longest row so padding costs nothing.
            width = max(int(lengths.max()), 1)
            ids = corpus.input_ids[chunk, :width].long().to(loaded.device)
            keep = corpus.mask[chunk, :width]
            attention = (torch.arange(width)[None, :] < lengths[:, None]).long().to(loaded.device)
            with torch.no_grad():
                acts = run_to(loaded.model, ids, hooks, attention_mask=attention)
            forward_tokens += int(attention.sum())
            where = keep.nonzero()
            index.append((torch.tensor(chunk)[where[:, 0]], where[:, 1]))
            for hook in hooks:
                buffers[hook].append(acts[hook][keep.to(acts[hook].device)].to("cpu", torch.float16))
            pending += where.shape[0]
            if pending >= shard_tokens:
                flush()
        flush()
        seconds = time.perf_counter() - start
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": loaded.name,
            "model_dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
            "part": part,
            "hooks": list(hooks),
            "d_model": loaded.d_model,
            "corpus": corpus.fingerprint(),
            "tokens": corpus.n_tokens(rows),
            "forward_tokens": forward_tokens,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(forward_tokens / max(seconds, 1e-9), 1),
            "stored_dtype": "float16",
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    log.info(
        "activations (%s): %d tokens in %.0f s -> %s", part, manifest["tokens"], seconds, directory / part
    )
    return manifest


def read_manifest(directory: Path, part: Part) -> dict[str, Any]:
    """The manifest of one collected part, or ActivationError naming what is missing."""
    path = directory / part / MANIFEST_FILE
    if not path.is_file():
        raise ActivationError(
            f"no activations at {directory} (missing {MANIFEST_FILE}); run `explorer sae train`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ActivationError(f"{path} is corrupt ({e}); delete {directory} and rebuild") from e
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ActivationError(f"{path} has a newer schema than this explorer reads; upgrade refusal-explorer")
    return manifest


def load_activations(directory: Path, hook: str, part: Part) -> Activations:
    """All stored activations of `hook` in `part`, concatenated in corpus order.

    Raises:
        ActivationError: the hook or part was not collected, or a shard is unreadable.
    """
    manifest = read_manifest(directory, part)
    if hook not in manifest["hooks"]:
        raise ActivationError(f"{directory} has no activations for {hook}; it holds {manifest['hooks']}")
    shards = sorted((directory / part / hook).glob("*.safetensors"))
    if not shards:
        raise ActivationError(f"{directory / part / hook} has no shards; rebuild the activations")
    acts, rows, pos = [], [], []
    for shard in shards:
        try:
            data = load_file(str(shard))
            acts.append(data["acts"])
            rows.append(data["row"])
            pos.append(data["pos"])
        except (OSError, SafetensorError, KeyError) as e:
            raise ActivationError(f"{shard} is corrupt ({e}); delete {directory} and rebuild") from e
    out = Activations(torch.cat(acts), torch.cat(rows), torch.cat(pos))
    expected = manifest["tokens"]
    if len(out) != expected:
        raise ActivationError(
            f"{directory / part / hook} holds {len(out)} activations, manifest says {expected}"
        )
    return out


def shuffled_batches(acts: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """An endless stream of float32 batches, each epoch a fresh seeded permutation of the rows."""
    if len(acts) < batch_size:
        raise ActivationError(f"{len(acts)} activations are fewer than one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield acts[order[i : i + batch_size]].float()
