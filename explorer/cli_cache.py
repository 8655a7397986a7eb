"""`explorer cache ...`: build the latent caches, list latents by a column, show one latent."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any


def _open(model: str, hook: str | None) -> Any:
    from explorer.cache_reader import LatentCache
    from explorer.latent_cache import latent_cache_dir
    from explorer.sae_build import read_index

    return LatentCache(latent_cache_dir(model, hook or read_index(model)["main"]))


def cmd_cache_build(args: argparse.Namespace) -> int:
    from explorer.cache_build import build_caches

    index = build_caches(args.model)
    sys.stdout.write(json.dumps(index, indent=2) + "\n")
    return 0


def cmd_cache_top(args: argparse.Namespace) -> int:
    cache = _open(args.model, args.hook)
    table = cache.table()
    if args.by not in table:
        raise ValueError(f"no column {args.by!r}; columns are {sorted(table)}")
    order = sorted(range(cache.d_sae), key=lambda i: table[args.by][i], reverse=not args.ascending)[: args.n]
    columns = [c for c in ("latent", args.by, "density", "max", "refusal_cos", "post_diff") if c in table]
    columns = list(dict.fromkeys(columns))
    sys.stdout.write("\t".join(columns) + "\n")
    for i in order:
        sys.stdout.write("\t".join(f"{table[c][i]:.4g}" if c != "latent" else str(i) for c in columns) + "\n")
    return 0


def cmd_cache_show(args: argparse.Namespace) -> int:
    record = _open(args.model, args.hook).latent(args.latent, window=args.window)
    if args.json:
        sys.stdout.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        return 0
    out = [
        f"latent {record.latent}: density {record.density:.3%}, max {record.max:.3g}, "
        f"mean when active {record.mean_active:.3g} (raw activation units)",
        f"  refusal cosine (decoder row vs direction at this layer): {record.refusal_cos}",
        "  harmful / harmless mean activation: "
        + ", ".join(f"{k} {h:.3g} / {s:.3g}" for k, (h, s) in record.harmful_vs_harmless.items()),
        "  promotes: " + " ".join(f"{t!r}" for t, _ in record.logits_top),
        "  suppresses: " + " ".join(f"{t!r}" for t, _ in record.logits_bottom),
        "  top examples:",
    ]
    for e in record.top_examples[: args.n]:
        text = "".join(f"[[{t}]]" if i == e.focus else t for i, t in enumerate(e.context))
        out.append(f"    {e.value:8.3f}  {text!r}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def add_cache_parser(sub: Any) -> None:
    """Register `explorer cache {build,top,show}` on the top-level subparsers."""
    from explorer.models import ORGANISM_NAME

    cache = sub.add_parser("cache", help="build latent caches; list and show latents from them")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")

    p = cache_sub.add_parser("build", help="build the latent cache of every trained SAE")
    p.add_argument("--model", default=ORGANISM_NAME)
    p.set_defaults(func=cmd_cache_build)

    p = cache_sub.add_parser(
        "top", help="latents sorted by a column (refusal_cos, post_diff, density, max, ...)"
    )
    p.add_argument("--model", default=ORGANISM_NAME)
    p.add_argument("--hook", help="SAE hook (default: the refusal layer's)")
    p.add_argument("--by", default="refusal_cos")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--ascending", action="store_true")
    p.set_defaults(func=cmd_cache_top)

    p = cache_sub.add_parser("show", help="one latent: statistics, logit effects, top examples")
    p.add_argument("latent", type=int)
    p.add_argument("--model", default=ORGANISM_NAME)
    p.add_argument("--hook", help="SAE hook (default: the refusal layer's)")
    p.add_argument("--window", type=int, default=10, help="context tokens on each side")
    p.add_argument("-n", type=int, default=10, help="examples to print")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache_show)
