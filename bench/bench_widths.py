"""Latent-cache build and page speed across SAE widths, on the built default's stored activations.

For each width (4,096 to 131,072 latents) a synthetic SAELens TopK SAE (random unit decoder rows, encoder =
decoder transpose, k = 32) is put at the default model's main hook in a scratch workspace beside the built
one (model, corpus, activations and refusal direction linked, never written). Then, each in its own process
so widths do not share memory:

- the cache build over the stored activations (no forward pass) of the same subset of the cache's tokens
  at every width: seconds (pass, finalize), seconds per latent, peak resident memory (the child's own
  `wait4` rusage), cache size;
- the Latents page at that width through Streamlit's `AppTest` (the server's script run, in process):
  server time per rerun for sort changes, filters, searches and page changes, and the rows it sent; the
  Latent detail page over a spread of latents. Target: p95 <= 150 ms per rerun.

Prints numbers; nothing is asserted. Needs `make build` first (it says so otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("models", "corpus", "activations", "refusal")
K = 32


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scratch_workspace(source: Path, target: Path, model: str) -> str:
    """A cache root holding links to the built default's model, corpus, activations and refusal direction
    and an SAE index with the main hook only; returns the main hook."""
    index = json.loads((source / "saes" / model / "index.json").read_text())
    hook = index["main"]
    for name in LINKED:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).symlink_to(source / name)
    saes = target / "saes" / model
    saes.mkdir(parents=True)
    one = {**index, "hooks": [hook], "saes": {hook: index["saes"][hook]}}
    (saes / "index.json").write_text(json.dumps(one))
    return hook


def synthetic_sae(d_in: int, d_sae: int, hook: str, model: str) -> Any:
    """A TopK SAE with random unit decoder rows and the decoder's transpose as encoder (seeded)."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=K, dtype="float32", device="cpu")
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = model
    sae = TopKSAE(cfg)
    generator = torch.Generator().manual_seed(d_sae)
    with torch.no_grad():
        decoder = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=generator), dim=-1)
        sae.W_dec.copy_(decoder)
        sae.W_enc.copy_(decoder.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def token_subset(corpus: Any, n_tokens: int | None) -> Any:
    """[n_rows] True for an even spread of the cache's rows holding about `n_tokens` counted tokens."""
    import torch

    from explorer.latents.builder import cache_rows

    keep = cache_rows(corpus)
    counted = (corpus.mask.sum(1) * keep).long()
    if n_tokens is None or n_tokens >= int(counted.sum()):
        return keep
    rows = keep.nonzero()[:, 0]
    step = int(counted.sum()) / n_tokens
    chosen = rows[(torch.arange(int(len(rows) / step)) * step).long()]
    subset = torch.zeros_like(keep)
    subset[chosen] = True
    return subset


def build_child(root: Path, width: int, n_tokens: int | None, budget: int) -> dict[str, Any]:
    from explorer.core.models import ORGANISM_NAME, load_model
    from explorer.latents.budget import accumulator_bytes_per_latent, encode_batch_tokens
    from explorer.latents.builder import build_latent_cache
    from explorer.latents.schema import ARRAYS_FILE, CacheConfig, latent_cache_dir
    from explorer.manifest import default_manifest, write_manifest
    from explorer.refusal.direction import load_refusal
    from explorer.saes.activations import activations_dir
    from explorer.saes.build import read_index, sae_dir
    from explorer.saes.corpus import corpus_dir, load_corpus
    from explorer.saes.loading import load_sae_for

    loaded = load_model(ORGANISM_NAME)
    hook = read_index(loaded.name)["main"]
    synthetic_sae(loaded.d_model, width, hook, loaded.name).save_model(sae_dir(loaded.name, hook))
    sae = load_sae_for(loaded, str(sae_dir(loaded.name, hook)))
    corpus = load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    config = CacheConfig()
    directory = latent_cache_dir(loaded.name, sae.name)
    manifest = build_latent_cache(
        loaded,
        sae,
        corpus,
        activations_dir(loaded.name),
        load_refusal(loaded.name),
        config=config,
        directory=directory,
        budget=budget,
        rows=token_subset(corpus, n_tokens),
    )
    write_manifest(default_manifest())  # the scratch cache's default workspace now holds this SAE
    return {
        "seconds": manifest["seconds"],
        "n_tokens": manifest["n_tokens"],
        "cache_bytes": (directory / ARRAYS_FILE).stat().st_size,
        "accumulator_bytes": accumulator_bytes_per_latent(config) * width,
        "batch_tokens": encode_batch_tokens(width, config, budget),
    }


def timed(app: Any, change: Any) -> float:
    change()
    start = time.perf_counter()
    app.run()
    seconds = (time.perf_counter() - start) * 1000
    if app.exception:
        raise RuntimeError(f"the page raised: {app.exception[0].value}")
    return seconds


def latents_page(hook: str, renders: int) -> dict[str, Any]:
    from streamlit.testing.v1 import AppTest

    from explorer.latents.table import COLUMN_TITLES
    from explorer.ui.state import SAE_HOOK

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    app.switch_page("pages/latents.py")
    app.session_state[SAE_HOOK] = hook
    start = time.perf_counter()
    app.run()  # loads the workspace and builds the table (cached for every later rerun and session)
    first = time.perf_counter() - start
    if app.exception or not app.dataframe:
        problem = [e.value for e in [*app.exception, *app.error, *app.info]]
        raise RuntimeError(f"pages/latents.py did not show the table: {problem}")

    def widget(kind: str, label: str) -> Any:
        return next(w for w in getattr(app, kind) if w.label.startswith(label))

    columns = widget("selectbox", "Sort by").options
    words = [w for w in " ".join(app.dataframe[0].value[COLUMN_TITLES["top_logits"]]).split() if w.isalpha()]
    searches = [*words[: renders // 2], "the", "ing", "zzqq-none"]
    steps: dict[str, list[Any]] = {
        "sort": [
            (
                lambda c=c, o=o: (
                    widget("selectbox", "Sort by").set_value(c),
                    widget("radio", "Order").set_value(o),
                )
            )
            for c in columns
            for o in ("descending", "ascending", "magnitude")
        ],
        "filter": [
            lambda: widget("checkbox", "Hide dense").check(),
            lambda: widget("checkbox", "Hide dense").uncheck(),
            lambda: widget("checkbox", "Hide dead").uncheck(),
            lambda: widget("checkbox", "Hide dead").check(),
            lambda: widget("selectbox", "Range on").set_value("density"),
            lambda: widget("number_input", "from").set_value(1e-4),
            lambda: widget("number_input", "to").set_value(1e-2),
            lambda: widget("selectbox", "Range on").set_value(None),
        ],
        "search": [(lambda s=s: app.text_input[0].input(s)) for s in searches]
        + [lambda: app.text_input[0].input("")],
        "page": [(lambda n=n: widget("number_input", "Page").set_value(n)) for n in range(2, renders + 2)],
    }
    out: dict[str, Any] = {"first_s": first}
    for name, changes in steps.items():
        times = [timed(app, change) for change in changes[: max(renders, 8)]]
        out[name] = {"p95": percentile(times, 0.95), "median": statistics.median(times), "n": len(times)}
    out["rows_sent"] = len(app.dataframe[0].value)
    out["caption"] = next(c.value for c in app.caption if c.value.startswith("Page "))
    return out


def detail_page(hook: str, d_sae: int, renders: int) -> dict[str, Any]:
    from streamlit.testing.v1 import AppTest

    from explorer.ui.state import LATENT, SAE_HOOK

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    app.switch_page("pages/latent_detail.py")
    app.session_state[SAE_HOOK] = hook
    app.session_state[LATENT] = 0
    app.run()
    latents = [round(i * (d_sae - 1) / (renders - 1)) for i in range(renders)]
    times = [timed(app, lambda x=x: app.session_state.__setitem__(LATENT, x)) for x in latents]
    return {"p95": percentile(times, 0.95), "median": statistics.median(times), "n": len(times)}


def pages_child(renders: int) -> dict[str, Any]:
    from explorer.core.models import ORGANISM_NAME
    from explorer.saes.build import read_index

    os.chdir(ROOT)
    index = read_index(ORGANISM_NAME)
    hook = index["main"]
    d_sae = json.loads(
        (Path(os.environ["EXPLORER_CACHE_DIR"]) / "saes" / ORGANISM_NAME / hook / "cfg.json").read_text()
    )["d_sae"]
    return {"latents": latents_page(hook, renders), "detail": detail_page(hook, d_sae, renders)}


def run_child(args: list[str], root: Path) -> tuple[dict[str, Any], float]:
    """Run this script as a child with the scratch workspace; (its JSON result, its peak RSS in MiB)."""
    env = {**os.environ, "EXPLORER_CACHE_DIR": str(root)}
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{args[0]} child failed ({process.returncode})")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # KiB on Linux


def report(width: int, built: dict[str, Any], peak_mb: float, pages: dict[str, Any], pages_mb: float) -> None:
    seconds = built["seconds"]
    total, passed = seconds["total"], seconds["pass"]
    print(
        f"{width:>7,} latents | build {total:6.1f} s ({total / width * 1e3:6.2f} ms per latent): pass "
        f"{passed:6.1f} s, finalize {total - passed:6.1f} s | peak RSS {peak_mb / 1024:5.2f} GiB "
        f"(accumulators {built['accumulator_bytes'] / 2**30:4.2f} GiB, {built['batch_tokens']} tokens "
        f"per SAE batch) | cache {built['cache_bytes'] / 2**20:7.1f} MiB "
        f"({built['cache_bytes'] / width / 1024:.2f} KiB per latent) | {built['n_tokens']:,} tokens"
    )
    latents = pages["latents"]
    parts = ", ".join(
        f"{k} p95 {latents[k]['p95']:.0f} ms (median {latents[k]['median']:.0f})"
        for k in ("sort", "filter", "search", "page")
    )
    print(
        f"{'':>7}   Latents page: first load {latents['first_s']:.1f} s, then {parts}; "
        f"{latents['rows_sent']} rows sent ({latents['caption']})"
    )
    detail = pages["detail"]
    print(
        f"{'':>7}   Latent detail: p95 {detail['p95']:.0f} ms, median {detail['median']:.0f} ms over "
        f"{detail['n']} latents; page process peak RSS {pages_mb / 1024:.2f} GiB (target: p95 <= 150 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", default="4096,16384,65536,131072", help="comma-separated SAE widths")
    parser.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="counted tokens to cover (an even spread of rows; all by default)",
    )
    parser.add_argument("--budget", type=int, default=None, help="working-memory budget in bytes")
    parser.add_argument("--renders", type=int, default=20, help="reruns timed per kind of change")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from explorer.core.models import ORGANISM_NAME
    from explorer.core.paths import cache_dir
    from explorer.latents.budget import MEMORY_BUDGET

    budget = args.budget or MEMORY_BUDGET
    if args.child:
        kind, *rest = args.child
        result = (
            build_child(Path(rest[0]), int(rest[1]), args.tokens, budget)
            if kind == "build"
            else pages_child(args.renders)
        )
        print(json.dumps(result))
        return
    source = cache_dir()
    if not (source / "saes" / ORGANISM_NAME / "index.json").is_file():
        print(f"skipped: the built default is needed under {source}; run `make build` first")
        return
    tokens = "all" if args.tokens is None else f"about {args.tokens:,}"
    print(
        f"cache build and pages per SAE width at the main hook of {ORGANISM_NAME} ({tokens} stored "
        f"tokens, budget {budget / 2**30:g} GiB, {os.cpu_count()} CPU cores)"
    )
    widths = [int(w) for w in args.widths.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-widths-") as tmp:
        for width in widths:
            root = Path(tmp) / str(width)
            scratch_workspace(source, root, ORGANISM_NAME)
            flags = [*(["--tokens", str(args.tokens)] if args.tokens else []), "--budget", str(budget)]
            built, peak_mb = run_child([*flags, "--child", "build", str(root), str(width)], root)
            pages, pages_mb = run_child(["--renders", str(args.renders), "--child", "pages"], root)
            report(width, built, peak_mb, pages, pages_mb)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
