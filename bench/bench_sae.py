"""SAE stage speed, measured side by side on this machine: collection dtypes, trainer autocast, the stage.

- activation collection to the deepest SAE hook: float32 vs bfloat16 forward (tokens/s and ratio), and
  both vs a full float32 forward;
- SAELens `SAETrainer` steps on the default recipe's shape: float32 vs bfloat16 autocast;
- with `--full`: the whole SAE stage into a temporary cache, its timings against the 15-minute budget.

Prints numbers and ratios; nothing is asserted. Run with `make bench` (the `--full` run takes ~10 min).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from explorer.core.hooks import run_to
from explorer.core.models import ORGANISM_NAME, ModelConfig, load_model, organism_dir
from explorer.saes.training import SAETrainConfig, train_sae

STAGE_BUDGET_S = 15 * 60


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def collection(spec: str) -> None:
    fp32 = load_model(ModelConfig(spec=spec))
    bf16 = load_model(ModelConfig(spec=spec, dtype="bfloat16"))
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in (17, 23, 27) if layer < fp32.n_layers]
    torch.manual_seed(0)
    ids = torch.randint(100, 40_000, (32, 128))
    n = ids.numel()

    def to_hooks(loaded: object) -> Callable[[], object]:
        return lambda: run_to(loaded.model, ids, hooks)  # pyright: ignore[reportAttributeAccessIssue]

    def full() -> None:
        with torch.no_grad():
            fp32.model(input_ids=ids, use_cache=False)

    t_full, t32, t16 = best_of(full, 2), best_of(to_hooks(fp32), 2), best_of(to_hooks(bf16), 2)
    print(
        f"collection over {n} tokens to {hooks[-1]}: "
        f"float32 {n / t32:.0f} tok/s, bfloat16 {n / t16:.0f} tok/s "
        f"(bf16 {t32 / t16:.2f}x faster); full float32 forward {n / t_full:.0f} tok/s "
        f"(stopping early {t_full / t32:.2f}x faster)"
    )
    a32 = run_to(fp32.model, ids[:4], hooks[1:2])[hooks[1]].float()
    a16 = run_to(bf16.model, ids[:4], hooks[1:2])[hooks[1]].float()
    rel = ((a32 - a16).norm(dim=-1) / a32.norm(dim=-1))[:, 1:]
    print(
        f"  bf16 vs fp32 activations at {hooks[1]}: "
        f"median relative error {rel.median():.4f} (position 0 excluded)"
    )


def training() -> None:
    torch.manual_seed(0)
    acts = torch.randn(40_960, 576).half()
    base = SAETrainConfig(training_samples=8 * 4096)
    for autocast in (False, True):
        config = replace(base, autocast=autocast)
        _, summary = train_sae(acts, config, hook="blocks.0.hook_resid_pre", model_name="bench")
        print(
            f"SAETrainer {config.architecture} d_sae={config.d_sae} k={config.k} batch={config.batch_size}, "
            f"autocast={autocast}: {summary['samples_per_second']} samples/s"
        )


def full_stage() -> None:
    from explorer.saes.build import build_saes

    real_cache = Path(os.environ.get("EXPLORER_CACHE_DIR", "cache")).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("models", "refusal"):
            (Path(tmp) / sub).symlink_to(real_cache / sub)
        os.environ["EXPLORER_CACHE_DIR"] = tmp
        start = time.perf_counter()
        index = build_saes(ORGANISM_NAME)
        total = time.perf_counter() - start
        shutil.rmtree(Path(tmp) / "activations", ignore_errors=True)
    print(json.dumps(index["seconds"], indent=1))
    print(f"whole SAE stage {total:.0f} s = {total / STAGE_BUDGET_S:.2f} of the {STAGE_BUDGET_S} s budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time the whole SAE stage (~10 min)")
    args = parser.parse_args()
    spec = ORGANISM_NAME if organism_dir().is_dir() else "default"
    collection(spec)
    training()
    if args.full:
        full_stage()


if __name__ == "__main__":
    main()
