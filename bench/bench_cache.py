"""Latent-cache speed, measured side by side on this machine, on the built default and its main SAE:

- the whole cache build (forward pass to the SAE hook, encoding, every statistic, quantile groups,
  heuristic labels, every example's activations across its context window, logit effects, nearest
  latents, writing) vs a bare forward pass to the same hook over the same tokens (target <= 1.3x);
- the cache's size per latent, and how much of it the context activations take;
- SAEDashboard's own `SaeVisRunner` (the real package, every latent) vs our builder on the same latents
  and tokens (target: ours >= 10x faster);
- the build's peak memory (resident set size of the process);
- reading one latent's record from the built cache, for every latent (target <= 20 ms).

Prints numbers and ratios; nothing is asserted. Needs `make build` first (it says so otherwise).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from explorer.core.hooks import model_lock, run_to
from explorer.core.models import ORGANISM_NAME, LoadedModel, load_model
from explorer.latents.build import build_sae_cache
from explorer.latents.builder import cache_rows
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import ARRAYS_FILE, latent_cache_dir
from explorer.saes.build import read_index, sae_dir
from explorer.saes.corpus import Corpus, corpus_dir, load_corpus
from explorer.saes.loading import LoadedSAE, SAEError, load_sae_for

sys.path.insert(0, str(Path(__file__).parent))
from saevis_baseline import run_saevis


def subset(corpus: Corpus, rows: list[int]) -> Corpus:
    """The corpus restricted to `rows` (same token rows, masks and descriptions)."""
    return Corpus(
        corpus.input_ids[rows], corpus.mask[rows], [corpus.sequences[r] for r in rows], corpus.manifest
    )


def bare_forward(loaded: LoadedModel, corpus: Corpus, hook: str, batch_size: int = 32) -> float:
    """Seconds for the forward pass alone, batched and trimmed exactly as the builder's model source."""
    start = time.perf_counter()
    for b in range(0, len(corpus.sequences), batch_size):
        chunk = list(range(b, min(b + batch_size, len(corpus.sequences))))
        lengths = torch.tensor([corpus.sequences[r].length for r in chunk])
        width = int(lengths.max())
        ids = corpus.input_ids[chunk, :width].long()
        attention = (torch.arange(width)[None, :] < lengths[:, None]).long()
        with model_lock(loaded.model), torch.no_grad():
            run_to(loaded.model, ids, [hook], attention_mask=attention)
    return time.perf_counter() - start


def build_once(loaded: LoadedModel, sae: LoadedSAE, corpus: Corpus) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = build_sae_cache(
            loaded, sae, corpus, source="model", attribution="none", directory=Path(tmp) / "c"
        )
        seconds = time.perf_counter() - start
        sizes(Path(tmp) / "c", sae.d_sae, "this build")
        return seconds, int(manifest["n_tokens"])


def sizes(directory: Path, d_sae: int, what: str) -> None:
    """Print the cache's bytes per latent, and the context activations' share of them."""
    arrays = directory / ARRAYS_FILE
    with safe_open(str(arrays), framework="pt") as f:
        context = sum(
            f.get_slice(name).get_shape()[0] * (4 if name == "context_index" else 2)
            for name in ("context_index", "context_values")
        )
        entries = f.get_slice("context_values").get_shape()[0]
    total = arrays.stat().st_size
    print(
        f"cache size ({what}): {total / d_sae / 1024:.2f} KiB per latent in {ARRAYS_FILE} "
        f"({total / 2**20:.1f} MiB for {d_sae} latents), of which context activations "
        f"{context / d_sae / 1024:.2f} KiB per latent ({entries / d_sae:.0f} non-zero entries of 6 bytes)"
    )


def versus_forward(loaded: LoadedModel, sae: LoadedSAE, corpus: Corpus, n_rows: int) -> None:
    keep = cache_rows(corpus)
    rows = [r for r in range(len(corpus.sequences)) if keep[r]]
    step = max(1, len(rows) // n_rows)
    part = subset(corpus, rows[::step][:n_rows])
    n_forward = sum(s.length for s in part.sequences)
    bare_forward(loaded, subset(part, list(range(8))), sae.hook)  # warm-up
    t_bare = bare_forward(loaded, part, sae.hook)
    t_build, n_counted = build_once(loaded, sae, part)
    print(
        f"whole build vs bare forward to {sae.hook} over {len(part.sequences)} rows "
        f"({n_forward} tokens forward, {n_counted} counted): build {t_build:.1f} s, "
        f"forward {t_bare:.1f} s, ratio {t_build / t_bare:.2f}x (target <= 1.3x)"
    )


def versus_saevis(loaded: LoadedModel, sae: LoadedSAE, corpus: Corpus, n_seq: int) -> None:
    # Full-length text rows, so SaeVisRunner (which wants one length) and ours read identical tokens.
    width = corpus.input_ids.shape[1]
    rows = [r for r in corpus.rows("heldout", "text") if corpus.sequences[r].length == width][:n_seq]
    part = subset(corpus, rows)
    t_ours, n_counted = build_once(loaded, sae, part)
    t_theirs, extra = run_saevis(loaded.model, sae.sae, part.input_ids.long(), hook_name=sae.hook)
    print(
        f"SaeVisRunner vs ours, all {sae.d_sae} latents, {len(rows)} x {width} tokens: "
        f"SaeVisRunner {t_theirs:.1f} s (plus {extra['convert_s']:.1f} s converting the model), "
        f"ours {t_ours:.1f} s, ours {t_theirs / t_ours:.1f}x faster (target >= 10x)"
    )
    del n_counted


def reads(directory: Path) -> None:
    cache = LatentCache(directory)
    cache.latent(0)  # open the memory maps
    times = []
    for latent in range(cache.d_sae):
        start = time.perf_counter()
        cache.latent(latent)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    print(
        f"latent record reads from {directory}: {len(times)} latents, "
        f"median {statistics.median(times):.2f} ms, p95 {p95:.2f} ms, max {times[-1]:.2f} ms (target 20 ms)"
    )
    peak = cache.manifest.get("peak_rss_mb")
    if peak is not None:
        print(f"peak resident memory of the process that built it: {peak:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256, help="corpus rows for the forward-pass ratio")
    parser.add_argument("--saevis-rows", type=int, default=16, help="128-token rows for the SaeVisRunner run")
    args = parser.parse_args()
    try:
        loaded = load_model(ORGANISM_NAME)
        main_hook = read_index(loaded.name)["main"]
        sae = load_sae_for(loaded, str(sae_dir(loaded.name, main_hook)))
        corpus = load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    except (SAEError, ValueError) as e:
        print(f"skipped: the built default is needed ({e}); run `make build` first")
        return
    torch.manual_seed(0)
    versus_forward(loaded, sae, corpus, args.rows)
    versus_saevis(loaded, sae, corpus, args.saevis_rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this benchmark: {peak_mb:.0f} MB")
    try:
        reads(latent_cache_dir(loaded.name, main_hook))
        sizes(latent_cache_dir(loaded.name, main_hook), sae.d_sae, "the built default")
    except CacheError as e:
        print(f"read timing skipped: {e}")


if __name__ == "__main__":
    main()
