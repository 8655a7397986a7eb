"""The latent cache builder: every latent's examples, statistics and refusal alignment from one pass.

It reads the SAE stage's stored activations (or runs the model to the SAE's hook), encodes them with the
SAE batch by batch, and folds each batch into mergeable accumulators (`explorer.latents.stats`), so
memory is bounded by the number of latents, not by the corpus; the non-zero codes go to a temporary
file for the examples' context windows (`explorer.latents.context`). What it writes, per SAE, to
`cache/latents/<model>/<hook>/` (the format: `explorer.latents.schema`):

    latents.safetensors   per-latent arrays, read one latent at a time by `explorer.latents.reader`
    tokens.safetensors    the corpus rows the examples point into, their lengths, where requests start
    vocab.json            every token id rendered readably (newlines as ↵), so reading needs no tokenizer
    manifest.json         schema version, fingerprints (model, SAE, corpus, prompts), config, timings

The cache covers the chat transcripts of every prompt split and the held-out general text (the text
the SAE was trained on is left out).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from explorer import __version__
from explorer.core.hooks import run_to
from explorer.core.models import LoadedModel, model_fingerprint
from explorer.core.paths import atomic_directory, scratch_directory, write_json_atomic
from explorer.latents.budget import MEMORY_BUDGET, encode_batch_tokens
from explorer.latents.context import Batch, Codes, CodeSpill, gather_context, request_starts
from explorer.latents.effects import direction_cosines, logit_effects, nearest_latents, sae_device
from explorer.latents.finalize import latent_statistics
from explorer.latents.labels import token_frequencies
from explorer.latents.schema import (
    ARRAYS_FILE,
    LABELS,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TOKENS_FILE,
    VOCAB_FILE,
    CacheConfig,
    latent_cache_dir,
)
from explorer.latents.stats import LatentAccumulator
from explorer.refusal.direction import RefusalDirection
from explorer.saes.corpus import Corpus
from explorer.saes.loading import LoadedSAE
from explorer.saes.quality import refusal_location_index

log = logging.getLogger(__name__)


def readable_piece(tokenizer: Any, token: int) -> str:
    """A token id decoded on its own, with whitespace made visible (chat markers stay as written)."""
    return str(tokenizer.decode([token])).replace("\n", "↵").replace("\t", "⇥")


def readable_vocab(tokenizer: Any) -> list[str]:
    """Every token id rendered by `readable_piece`, as `vocab.json` stores them."""
    return [readable_piece(tokenizer, i) for i in range(len(tokenizer))]


def cache_rows(corpus: Corpus) -> torch.Tensor:
    """[n_rows] True for rows the cache covers: every chat transcript and the held-out text."""
    return torch.tensor([s.kind == "chat" or s.part == "heldout" for s in corpus.sequences])


class LabelMeans:
    """Harmful and harmless mean activation per latent, over the prompt and its post-instruction tail."""

    def __init__(self, corpus: Corpus, d_sae: int, n_post: int, device: torch.device | str = "cpu"):
        seqs = corpus.sequences
        label = [LABELS.index(s.label) if s.label in LABELS else -1 for s in seqs]
        self.label = torch.tensor(label, device=device)
        self.n_prompt = torch.tensor([s.n_prompt for s in seqs], device=device)
        self.n_post = n_post
        self.sums = torch.zeros(
            2, 2, d_sae, dtype=torch.float64, device=device
        )  # [prompt | post, label, latent]
        self.counts = torch.zeros(2, 2, dtype=torch.long, device=device)

    def update(
        self,
        rows: torch.Tensor,
        pos: torch.Tensor,
        token: torch.Tensor,
        latents: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Add a batch of tokens ([n] rows and positions) given by their non-zero activations only:
        parallel lists of the entry's token (index into `rows`), latent and value."""
        label, n_prompt = self.label[rows], self.n_prompt[rows]
        in_prompt = (label >= 0) & (pos < n_prompt)
        post = in_prompt & (pos >= n_prompt - self.n_post)
        for scope, where in enumerate((in_prompt, post)):
            for lab in range(2):
                sel = where & (label == lab)
                if sel.any():
                    entries = sel[token]
                    self.sums[scope, lab].index_add_(0, latents[entries], values[entries].double())
                    self.counts[scope, lab] += int(sel.sum())

    def means(self) -> torch.Tensor:
        """[2 (prompt, post), 2 (harmful, harmless), d_sae] mean activation over tokens (zeros included)."""
        return (self.sums / self.counts.clamp_min(1)[..., None]).float()

    def merge(self, other: LabelMeans) -> None:
        """Fold in another shard's sums (exact: sums and counts add)."""
        if other.sums.shape != self.sums.shape:
            raise ValueError(
                f"label means of shape {tuple(other.sums.shape)} cannot merge into {tuple(self.sums.shape)}"
            )
        self.sums += other.sums.to(self.sums.device)
        self.counts += other.counts.to(self.counts.device)


@torch.no_grad()
def accumulate(
    sae: LoadedSAE,
    batches: Any,
    corpus: Corpus,
    config: CacheConfig,
    codes: CodeSpill | None = None,
    budget: int = MEMORY_BUDGET,
) -> tuple[LatentAccumulator, LabelMeans]:
    """Encode activations batch by batch and fold them into the accumulators, on the SAE's device.

    Args:
        batches: iterable of (acts [n, d_model], row [n], pos [n]) from the stored shards or the model.
        codes: where to keep the non-zero activations for the context pass (None: not kept).
        budget: working bytes: a batch's dense [tokens, d_sae] activations stay within it
            (`encode_batch_tokens`); only its non-zero entries are kept.
    """
    device = sae_device(sae)
    width = corpus.input_ids.shape[1]
    acc = LatentAccumulator(
        sae.d_sae, config.k, config.samples_per_bin, config.seed, row_width=width, device=device
    )
    means = LabelMeans(corpus, sae.d_sae, config.n_post_instruction, device=device)
    module = sae.sae
    step = encode_batch_tokens(sae.d_sae, config, budget)
    for acts, row, pos in batches:
        for i in range(0, len(acts), step):
            x = acts[i : i + step].to(device, module.dtype)
            r, p = row[i : i + step].to(device).long(), pos[i : i + step].to(device).long()
            f = module.encode(x)
            token, latents = (f > 0).nonzero(as_tuple=True)
            values = f[token, latents].float()
            del f  # the dense batch: only its non-zero entries go on
            tokens = (r * width + p)[token]
            acc.update_sparse(latents, tokens, values, n_tokens=len(x))
            means.update(r, p, token, latents, values)
            if codes is not None:
                codes.write(tokens.cpu(), latents.cpu(), values.cpu())
    return acc, means


def stored_batches(
    activations: Path, hook: str, keep_rows: torch.Tensor, shard: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
    """Yield (acts, row, pos) from the stored shards of `hook`, keeping rows in `keep_rows` (and, for a
    sharded build `shard=(i, n)`, only rows with row % n == i)."""
    index, n = shard
    for part in ("train", "heldout"):
        for path in sorted((activations / part / hook).glob("*.safetensors")):
            try:
                data = load_file(str(path))
            except (OSError, SafetensorError) as e:
                raise ValueError(
                    f"stored activations {path} are corrupt ({e}); rerun `explorer sae train`"
                ) from e
            rows = data["row"].long()
            keep = keep_rows[rows] & (rows % n == index)
            if keep.any():
                yield data["acts"][keep], rows[keep], data["pos"][keep].long()


def model_batches(
    loaded: LoadedModel,
    corpus: Corpus,
    hook: str,
    keep_rows: torch.Tensor,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 32,
) -> Iterator[Batch]:
    """Yield (acts, row, pos) at the counted positions of the corpus rows, running the model up to `hook`
    (the forward pass stops there). Rows are selected as in `stored_batches`."""
    index, n = shard
    rows = [r for r in range(len(corpus.sequences)) if keep_rows[r] and r % n == index]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        lengths = torch.tensor([corpus.sequences[r].length for r in chunk])
        width = max(int(lengths.max()), 1)  # right-padded rows: trim to the longest
        ids = corpus.input_ids[chunk, :width].long().to(loaded.device)
        attention = (torch.arange(width)[None, :] < lengths[:, None]).long().to(loaded.device)
        with torch.no_grad():
            acts = run_to(loaded.model, ids, [hook], attention_mask=attention)[hook]
        keep = corpus.mask[chunk, :width]
        where = keep.nonzero()
        yield acts[keep.to(acts.device)], torch.tensor(chunk)[where[:, 0]], where[:, 1]


def finalize(
    acc: LatentAccumulator,
    means: LabelMeans,
    sae: LoadedSAE,
    loaded: LoadedModel,
    refusal: RefusalDirection | None,
    config: CacheConfig,
    corpus: Corpus,
    codes: Callable[[torch.Tensor], Iterable[Codes]],
    attribution: dict[str, torch.Tensor] | None = None,
    budget: int = MEMORY_BUDGET,
) -> dict[str, torch.Tensor]:
    """Turn accumulators into the per-latent arrays stored in `latents.safetensors`.

    The work runs on the SAE's device in chunks of latents within `budget` working bytes (the
    accumulators are moved there first); the arrays come back on the CPU, ready to save.

    Args:
        codes: given the [n_rows] rows holding examples, the SAE's non-zero activations on (at least)
            those rows, for the examples' windows.
        attribution: optional label ("harmful", "harmless") -> [d_sae] attribution on the refusal score.
    """
    device = sae_device(sae)
    acc = acc.to(device)
    frequencies = token_frequencies(
        corpus.input_ids, corpus.mask & cache_rows(corpus)[:, None], len(loaded.tokenizer)
    )
    arrays = latent_statistics(acc, config, corpus.input_ids, frequencies, budget)
    top_ids, top_logits, bottom_ids, bottom_logits = logit_effects(sae, loaded.model, budget=budget)
    near_ids, near_cos = nearest_latents(sae, budget=budget)
    label_means = means.means().to(device)
    arrays |= {
        "logit_top_ids": top_ids,
        "logit_top": top_logits,
        "logit_bottom_ids": bottom_ids,
        "logit_bottom": bottom_logits,
        "nearest_ids": near_ids,
        "nearest_cos": near_cos,
        "prompt_mean": label_means[0].T,  # [d_sae, 2 (harmful, harmless)]
        "post_mean": label_means[1].T,
    }
    if refusal is not None:
        per_layer = refusal.directions[:, refusal.position]  # [n_locations, d_model]
        arrays["refusal_cos_layers"] = direction_cosines(sae, per_layer, budget)
        arrays["refusal_cos"] = arrays["refusal_cos_layers"][
            :, refusal_location_index(sae.hook, loaded.n_layers)
        ]
    arrays = {k: v.cpu().contiguous() for k, v in arrays.items()}
    examples = torch.cat([arrays["top_tokens"], arrays["group_tokens"].flatten(1)], dim=1)
    seq_len = corpus.input_ids.shape[1]
    rows = torch.zeros(len(corpus.sequences), dtype=torch.bool)
    rows[torch.unique(examples[examples >= 0] // seq_len)] = True
    lengths, starts = row_lengths(corpus), request_starts(corpus.input_ids, chat_rows(corpus))
    arrays |= gather_context(codes(rows), examples, lengths, starts, seq_len, config)
    if attribution:
        missing = [label for label in LABELS if label not in attribution]
        if missing:
            raise ValueError(f"attribution lacks labels {missing}")
        arrays["attribution"] = torch.stack([attribution[label] for label in LABELS], dim=1).float()
    return {k: v.contiguous() for k, v in arrays.items()}


def row_lengths(corpus: Corpus) -> torch.Tensor:
    """[n_rows] real tokens per row."""
    return torch.tensor([s.length for s in corpus.sequences], dtype=torch.long)


def chat_rows(corpus: Corpus) -> torch.Tensor:
    """[n_rows] True for chat transcripts."""
    return torch.tensor([s.kind == "chat" for s in corpus.sequences], dtype=torch.bool)


def write_cache(
    directory: Path,
    arrays: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    corpus: Corpus,
    tokenizer: Any,
) -> None:
    """Write one cache directory atomically: a killed build leaves the previous cache as it was."""
    with atomic_directory(directory) as tmp:
        save_file(arrays, str(tmp / ARRAYS_FILE))
        rows = {
            "input_ids": corpus.input_ids,
            "mask": corpus.mask,
            "lengths": row_lengths(corpus),
            "request_start": request_starts(corpus.input_ids, chat_rows(corpus)),
        }
        save_file(rows, str(tmp / TOKENS_FILE))
        (tmp / VOCAB_FILE).write_text(json.dumps(readable_vocab(tokenizer), ensure_ascii=False))
        write_json_atomic(tmp / MANIFEST_FILE, manifest)


def base_manifest(loaded: LoadedModel, sae: LoadedSAE, corpus: Corpus, config: CacheConfig) -> dict[str, Any]:
    """What identifies a cache (and each shard of one): schema, fingerprints, corpus and config."""
    return {
        "schema_version": SCHEMA_VERSION,
        "explorer": __version__,
        "model": loaded.name,
        "model_fingerprint": model_fingerprint(loaded.model),
        "sae": sae.describe(),
        "sae_fingerprint": sae.fingerprint,
        "hook": sae.hook,
        "corpus": corpus.fingerprint(),
        "prompts": corpus.manifest.get("prompts"),
        "seq_len": int(corpus.input_ids.shape[1]),
        "config": config.to_dict(),
    }


def build_latent_cache(
    loaded: LoadedModel,
    sae: LoadedSAE,
    corpus: Corpus,
    activations: Path | None,
    refusal: RefusalDirection | None,
    *,
    attribution: dict[str, torch.Tensor] | None = None,
    config: CacheConfig | None = None,
    directory: Path | None = None,
    budget: int = MEMORY_BUDGET,
    rows: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Build one SAE's latent cache and write it atomically.

    Args:
        activations: the SAE stage's stored activations (read, no forward pass), or None to run the
            model to the SAE's hook over the corpus.
        attribution: label -> [d_sae] attribution on the refusal score (`explorer.attribution`).
        budget: working bytes of the pass and the finalize step, besides the accumulators
            (`explorer.latents.budget`).
        rows: [n_rows] True for the corpus rows to cover (default and upper bound: `cache_rows`), e.g.
            the same subset at several SAE widths in a benchmark.

    Returns:
        The manifest written beside the arrays.
    """
    config = config or CacheConfig()
    start = time.perf_counter()
    keep = cache_rows(corpus) if rows is None else cache_rows(corpus) & rows
    target = directory or latent_cache_dir(loaded.name, sae.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_directory(target.parent, "codes") as tmp:
        batches = (
            model_batches(loaded, corpus, sae.hook, keep)
            if activations is None
            else stored_batches(activations, sae.hook, keep)
        )
        spill = CodeSpill(tmp, sae.d_sae)
        acc, means = accumulate(sae, batches, corpus, config, spill, budget)
        t_pass = time.perf_counter() - start
        arrays = finalize(
            acc, means, sae, loaded, refusal, config, corpus, lambda _: spill.read(), attribution, budget
        )
    seconds = time.perf_counter() - start
    manifest = finished_manifest(
        base_manifest(loaded, sae, corpus, config), acc, sae, refusal, {"pass": t_pass, "total": seconds}
    )
    manifest["source"] = "model forward pass" if activations is None else f"stored activations {activations}"
    write_cache(target, arrays, manifest, corpus, loaded.tokenizer)
    log.info("latent cache for %s: %d tokens in %.1f s -> %s", sae.hook, acc.n_tokens, seconds, target)
    return manifest


def finished_manifest(
    base: dict[str, Any],
    acc: LatentAccumulator,
    sae: LoadedSAE,
    refusal: RefusalDirection | None,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The manifest of a complete cache: identity plus counts, grid, units and timings."""
    return {
        **base,
        "n_tokens": acc.n_tokens,
        "grid": asdict(acc.grid),
        "refusal": None if refusal is None else {"location": refusal.location, "position": refusal.position},
        "units": "raw latent activations (decoder rows unit norm: "
        + ("yes" if sae.decoder_unit_norm else "no")
        + "); logit effects are decoder row x final-norm scale x unembedding",
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        # ru_maxrss is in KiB on Linux: the peak resident memory of the whole building process so far.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
