"""Which SAE recipe for the offline default: variants trained side by side on the same stored activations.

Each variant trains on the main layer's stored training activations with SAELens's trainer and is measured
on the same 100k held-out tokens: explained variance, L0, dead and dense fractions, training time. This is
how the default recipe (`SAETrainConfig`) was chosen; the README records the numbers.

Needs the SAE stage's activations (`explorer sae train` or `explorer build`). Takes ~1 min per variant.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from explorer.core.models import ORGANISM_NAME
from explorer.saes.activations import activations_dir, load_activations
from explorer.saes.build import read_index
from explorer.saes.loading import wrap_sae
from explorer.saes.quality import reconstruction_metrics
from explorer.saes.training import SAETrainConfig, train_sae

BASE = SAETrainConfig(training_samples=500_000)
VARIANTS = {
    "default recipe (topk 4096, k 32)": BASE,
    "decoder bias starts at zero": replace(BASE, init_b_dec_mean=False),
    "batch 4096, lr 4e-4 (SAELens-like)": replace(BASE, batch_size=4096, lr=4e-4),
    "batchtopk 4096, k 32": replace(BASE, architecture="batchtopk"),
    "topk 8192, k 32": replace(BASE, d_sae=8192),
    "topk 4096, k 48": replace(BASE, k=48),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only variants whose name contains this")
    args = parser.parse_args()
    hook = read_index(ORGANISM_NAME)["main"]
    directory = activations_dir(ORGANISM_NAME)
    train = load_activations(directory, hook, "train").acts
    heldout = load_activations(directory, hook, "heldout").acts[:100_000]
    print(f"{hook}: {len(train)} training activations, {len(heldout)} held-out")
    print(f"{'variant':40} {'EV':>6} {'L0':>6} {'dead':>6} {'dense':>6} {'time':>6}")
    for name, config in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        start = time.perf_counter()
        sae, _ = train_sae(train, config, hook=hook, model_name=ORGANISM_NAME)
        seconds = time.perf_counter() - start
        m = reconstruction_metrics(wrap_sae(sae.eval(), name, name), heldout)
        print(
            f"{name:40} {m['explained_variance']:6.3f} {m['l0']['mean']:6.1f} {m['dead_fraction']:6.1%} "
            f"{m['dense_fraction']:6.1%} {seconds:5.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
