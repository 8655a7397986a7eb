"""The latent cache builder: every latent's examples, statistics and refusal alignment from one pass.

It reads the SAE stage's stored activations (no model forward pass), encodes them with the SAE batch by
batch, and folds each batch into mergeable accumulators (`explorer.latent_stats`), so memory is bounded
by the number of latents, not by the corpus. What it writes, per SAE, to `cache/latents/<model>/<hook>/`:

    latents.safetensors   per-latent arrays, read one latent at a time by `explorer.cache_reader`
    tokens.safetensors    the corpus rows the examples point into (for context windows)
    vocab.json            every token id rendered readably (newlines as ↵), so reading needs no tokenizer
    manifest.json         schema version, fingerprints (model, SAE, corpus, prompts), config, timings

The cache covers the chat transcripts of every prompt split and the held-out general text (the text
the SAE was trained on is left out).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from explorer import __version__
from explorer.corpus import Corpus
from explorer.latent_effects import direction_cosines, logit_effects, nearest_latents
from explorer.latent_stats import LatentAccumulator
from explorer.models import LoadedModel
from explorer.paths import atomic_directory, cache_dir, write_json_atomic
from explorer.refusal_build import RefusalDirection
from explorer.sae import LoadedSAE
from explorer.sae_quality import refusal_location_index

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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


def readable_vocab(tokenizer: Any) -> list[str]:
    """Each token id decoded on its own, with whitespace made visible (chat markers stay as written)."""
    return [str(tokenizer.decode([i])).replace("\n", "↵").replace("\t", "⇥") for i in range(len(tokenizer))]


def latent_cache_dir(model_name: str, hook: str) -> Path:
    return cache_dir() / "latents" / model_name / hook


def cache_rows(corpus: Corpus) -> torch.Tensor:
    """[n_rows] True for rows the cache covers: every chat transcript and the held-out text."""
    return torch.tensor([s.kind == "chat" or s.part == "heldout" for s in corpus.sequences])


class LabelMeans:
    """Harmful and harmless mean activation per latent, over the prompt and its post-instruction tail."""

    def __init__(self, corpus: Corpus, d_sae: int, n_post: int):
        seqs = corpus.sequences
        self.label = torch.tensor([LABELS.index(s.label) if s.label in LABELS else -1 for s in seqs])
        self.n_prompt = torch.tensor([s.n_prompt for s in seqs])
        self.n_post = n_post
        self.sums = torch.zeros(2, 2, d_sae, dtype=torch.float64)  # [prompt | post, label, latent]
        self.counts = torch.zeros(2, 2, dtype=torch.long)

    def update(self, acts: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor) -> None:
        label, n_prompt = self.label[rows], self.n_prompt[rows]
        in_prompt = (label >= 0) & (pos < n_prompt)
        post = in_prompt & (pos >= n_prompt - self.n_post)
        for scope, where in enumerate((in_prompt, post)):
            for lab in range(2):
                sel = where & (label == lab)
                if sel.any():
                    self.sums[scope, lab] += acts[sel].double().sum(0)
                    self.counts[scope, lab] += int(sel.sum())

    def means(self) -> torch.Tensor:
        """[2 (prompt, post), 2 (harmful, harmless), d_sae] mean activation over tokens (zeros included)."""
        return (self.sums / self.counts.clamp_min(1)[..., None]).float()


@torch.no_grad()
def accumulate(
    sae: LoadedSAE,
    batches: Any,
    corpus: Corpus,
    config: CacheConfig,
) -> tuple[LatentAccumulator, LabelMeans]:
    """Encode stored activations batch by batch and fold them into the accumulators.

    Args:
        batches: iterable of (acts [n, d_model], row [n], pos [n]) from the stored shards.
    """
    acc = LatentAccumulator(sae.d_sae, config.k, config.samples_per_bin, config.seed)
    means = LabelMeans(corpus, sae.d_sae, config.n_post_instruction)
    width = corpus.input_ids.shape[1]
    module = sae.sae
    for acts, row, pos in batches:
        for i in range(0, len(acts), config.batch_tokens):
            x = acts[i : i + config.batch_tokens].to(module.device, module.dtype)
            r, p = row[i : i + config.batch_tokens].long(), pos[i : i + config.batch_tokens].long()
            f = module.encode(x).float().cpu()
            acc.update(f, r * width + p)
            means.update(f, r, p)
    return acc, means


def stored_batches(
    activations: Path, hook: str, keep_rows: torch.Tensor, shard: tuple[int, int] = (0, 1)
) -> Any:
    """Yield (acts, row, pos) from the stored shards of `hook`, keeping rows in `keep_rows` (and, for a
    sharded build `shard=(i, n)`, only rows with row % n == i)."""
    index, n = shard
    for part in ("train", "heldout"):
        for path in sorted((activations / part / hook).glob("*.safetensors")):
            data = load_file(str(path))
            rows = data["row"].long()
            keep = keep_rows[rows] & (rows % n == index)
            if keep.any():
                yield data["acts"][keep], rows[keep], data["pos"][keep].long()


def intervals(
    acc: LatentAccumulator, n_intervals: int, per_interval: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval examples: [d_sae, n_intervals, per_interval] tokens (-1 where fewer exist) and values.

    Intervals split [0, max] of each latent into equal parts; within each, the examples are the interval
    samples with the smallest seeded hash, a uniform reproducible draw (exact for sample bins inside the
    interval; a bin straddling an interval edge contributes only its candidates on the right side).
    """
    d_sae, n_bins = acc.d_sae, acc.grid.n_sample_bins
    keys = acc.sample_keys.view(d_sae, n_bins * acc.m)
    values = acc.sample_values.view(d_sae, n_bins * acc.m)
    tokens = acc.sample_tokens.view(d_sae, n_bins * acc.m)
    top = acc.max.clamp_min(1e-12)[:, None]
    which = (values / top * n_intervals).floor().long().clamp(0, n_intervals - 1)
    out_tokens = torch.full((d_sae, n_intervals, per_interval), -1, dtype=torch.long)
    out_values = torch.zeros(d_sae, n_intervals, per_interval)
    for j in range(n_intervals):
        masked = torch.where((which == j) & (tokens >= 0), keys, torch.full_like(keys, torch.inf))
        best = masked.topk(per_interval, dim=1, largest=False, sorted=True)
        found = torch.isfinite(best.values)
        out_tokens[:, j] = torch.where(found, tokens.gather(1, best.indices), -1)
        out_values[:, j] = torch.where(found, values.gather(1, best.indices), 0.0)
    return out_tokens, out_values


def finalize(
    acc: LatentAccumulator,
    means: LabelMeans,
    sae: LoadedSAE,
    loaded: LoadedModel,
    refusal: RefusalDirection | None,
    config: CacheConfig,
) -> dict[str, torch.Tensor]:
    """Turn accumulators into the per-latent arrays stored in `latents.safetensors`."""
    count = acc.count.clamp_min(1)
    mean_active = (acc.sum / count).float()
    var = (acc.sum_sq / count - (acc.sum / count) ** 2).clamp_min(0)
    interval_tokens, interval_values = intervals(acc, config.n_intervals, config.examples_per_interval)
    top_ids, top_logits, bottom_ids, bottom_logits = logit_effects(sae, loaded.model)
    near_ids, near_cos = nearest_latents(sae)
    label_means = means.means()
    arrays = {
        "top_values": acc.top_values.clamp_min(0),  # -inf marks a missing example; stored as 0 with token -1
        "top_tokens": acc.top_tokens,
        "count": acc.count,
        "density": acc.count.double() / max(acc.n_tokens, 1),
        "max": acc.max,
        "mean_active": mean_active,
        "std_active": var.sqrt().float(),
        "hist": acc.hist.int(),
        "interval_tokens": interval_tokens,
        "interval_values": interval_values,
        "logit_top_ids": top_ids,
        "logit_top": top_logits,
        "logit_bottom_ids": bottom_ids,
        "logit_bottom": bottom_logits,
        "nearest_ids": near_ids,
        "nearest_cos": near_cos,
        "prompt_mean": label_means[0].T.contiguous(),  # [d_sae, 2 (harmful, harmless)]
        "post_mean": label_means[1].T.contiguous(),
    }
    if refusal is not None:
        per_layer = refusal.directions[:, refusal.position]  # [n_locations, d_model]
        arrays["refusal_cos_layers"] = direction_cosines(sae, per_layer).contiguous()
        index = refusal_location_index(sae.hook, loaded.n_layers)
        arrays["refusal_cos"] = arrays["refusal_cos_layers"][:, index].contiguous()
        arrays["refusal_cos_selected"] = direction_cosines(sae, refusal.direction[None, :])[:, 0].contiguous()
    return {k: v.contiguous() for k, v in arrays.items()}


def build_latent_cache(
    loaded: LoadedModel,
    sae: LoadedSAE,
    corpus: Corpus,
    activations: Path,
    refusal: RefusalDirection | None,
    *,
    config: CacheConfig | None = None,
    directory: Path | None = None,
) -> dict[str, Any]:
    """Build one SAE's latent cache from stored activations and write it atomically.

    Returns:
        The manifest written beside the arrays.
    """
    config = config or CacheConfig()
    start = time.perf_counter()
    batches = stored_batches(activations, sae.hook, cache_rows(corpus))
    acc, means = accumulate(sae, batches, corpus, config)
    t_pass = time.perf_counter() - start
    arrays = finalize(acc, means, sae, loaded, refusal, config)
    seconds = time.perf_counter() - start
    target = directory or latent_cache_dir(loaded.name, sae.hook)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "explorer": __version__,
        "model": loaded.name,
        "model_fingerprint": loaded.provenance.get("fingerprint") or loaded.source,
        "sae": sae.describe(),
        "sae_fingerprint": sae.fingerprint,
        "hook": sae.hook,
        "corpus": corpus.fingerprint(),
        "prompts": corpus.manifest.get("prompts"),
        "seq_len": int(corpus.input_ids.shape[1]),
        "n_tokens": acc.n_tokens,
        "config": config.to_dict(),
        "grid": asdict(acc.grid),
        "refusal": None if refusal is None else {"location": refusal.location, "position": refusal.position},
        "units": "raw latent activations (decoder rows unit norm: "
        + ("yes" if sae.decoder_unit_norm else "no")
        + "); logit effects are decoder row x final-norm scale x unembedding",
        "seconds": {"pass": round(t_pass, 2), "total": round(seconds, 2)},
    }
    with atomic_directory(target) as tmp:
        save_file(arrays, str(tmp / ARRAYS_FILE))
        save_file({"input_ids": corpus.input_ids, "mask": corpus.mask}, str(tmp / TOKENS_FILE))
        (tmp / VOCAB_FILE).write_text(json.dumps(readable_vocab(loaded.tokenizer), ensure_ascii=False))
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    log.info("latent cache for %s: %d tokens in %.1f s -> %s", sae.hook, acc.n_tokens, seconds, target)
    return manifest
