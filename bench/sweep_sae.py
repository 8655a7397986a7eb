"""Which SAE recipe for the offline default: variants trained side by side on the same stored activations.

Each variant trains on the main layer's stored training activations with SAELens's trainer and is measured
on the same held-out tokens: explained variance, L0, dead and dense fractions, training time, and the
explained variance on each text source held out whole (genres it never trained on; the lowest is the
issue's floor). This is how the default recipe (`SAETrainConfig`) was chosen; the README records the
numbers.

Needs the SAE stage's activations (`explorer sae train` or `explorer build`). Takes ~1 min per variant.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from explorer.core.models import ORGANISM_NAME
from explorer.saes.activations import activations_dir, load_activations
from explorer.saes.build import read_index
from explorer.saes.corpus import corpus_dir, load_corpus
from explorer.saes.loading import wrap_sae
from explorer.saes.quality import by_source, reconstruction_metrics, source_groups
from explorer.saes.training import SAETrainConfig, train_sae

BASE = SAETrainConfig(k=32, training_samples=600_000)
VARIANTS = {
    "topk 4096, k 32 (the earlier recipe)": BASE,
    "decoder bias starts at zero": replace(BASE, init_b_dec_mean=False),
    "batchtopk 4096, k 32": replace(BASE, architecture="batchtopk"),
    "topk 8192, k 32": replace(BASE, d_sae=8192),
    "topk 4096, k 64": replace(BASE, k=64),
    "topk 4096, k 64, batch 512": replace(BASE, k=64, batch_size=512),
    "topk 8192, k 64": replace(BASE, k=64, d_sae=8192),
    "topk 4096, k 64, 1M samples (default)": SAETrainConfig(),
    "topk 4096, k 64, 1.2M samples": replace(BASE, k=64, training_samples=1_200_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only variants whose name contains this")
    args = parser.parse_args()
    hook = read_index(ORGANISM_NAME)["main"]
    directory = activations_dir(ORGANISM_NAME)
    train = load_activations(directory, hook, "train").acts
    heldout = load_activations(directory, hook, "heldout")
    corpus = load_corpus(corpus_dir(ORGANISM_NAME))
    groups, names = source_groups(heldout, corpus)
    print(f"{hook}: {len(train)} training activations, {len(heldout)} held-out")
    print(f"{'variant':40} {'EV':>6} {'L0':>6} {'dead':>6} {'dense':>6} {'time':>6}  unseen genres (EV)")
    for name, config in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        start = time.perf_counter()
        sae, _ = train_sae(train, config, hook=hook, model_name=ORGANISM_NAME)
        seconds = time.perf_counter() - start
        m = reconstruction_metrics(wrap_sae(sae.eval(), name, name), heldout.acts, groups=groups)
        sources = by_source(m, names, corpus.train_sources())
        unseen = " ".join(
            f"{source} {s['explained_variance']:.3f}" for source, s in sources.items() if not s["trained_on"]
        )
        print(
            f"{name:40} {m['explained_variance']:6.3f} {m['l0']['mean']:6.1f} {m['dead_fraction']:6.1%} "
            f"{m['dense_fraction']:6.1%} {seconds:5.0f}s  {unseen}",
            flush=True,
        )


if __name__ == "__main__":
    main()
