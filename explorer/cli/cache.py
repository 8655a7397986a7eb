"""`explorer cache ...`: build the latent caches, list latents by a column, show one latent."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from explorer.cli.options import add_model_args, emit, model_config, open_cache


def _model_and_sae(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and the SAE, checked against it."""
    from explorer.core.models import load_model
    from explorer.saes.loading import load_sae_for

    loaded = load_model(model_config(args))
    return loaded, load_sae_for(loaded, args.sae)


def _existing_corpus(loaded: Any, args: argparse.Namespace) -> Any:
    """The stored corpus; shard jobs and merges never build it, since N jobs starting together would each
    build it into the same directory."""
    from explorer.saes.corpus import CorpusError, corpus_dir, load_corpus

    try:
        return load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    except CorpusError as e:
        raise CorpusError(
            f"shard jobs and merges read the corpus and never build it: build it once with "
            f"`explorer cache corpus --model {args.model}` before starting them ({e})"
        ) from e


def _cache_config(args: argparse.Namespace) -> Any:
    from explorer.latents.schema import CacheConfig

    return CacheConfig(
        k=args.k,
        n_groups=args.groups,
        examples_per_group=args.per_group,
        samples_per_bin=max(CacheConfig.samples_per_bin, args.per_group),
        context_before=args.context_before,
        context_after=args.context_after,
    )


def _check_sharding(args: argparse.Namespace) -> None:
    """Reject option combinations of the default stage, `--shard`, `--shards` and `--ray` before loading."""
    if args.sae is None and (args.shard or args.out or args.source != "auto" or args.ray is not None):
        raise ValueError("--shard, --ray, --out and --source need --sae (the default stage builds every SAE)")
    if args.ray is not None and args.shard:
        raise ValueError(
            "--ray builds every shard itself: drop --shard i/n (that builds one shard, e.g. in a Slurm array)"
        )
    if args.ray is not None and args.shards is None:
        raise ValueError("--ray needs --shards N: how many Ray tasks to split the corpus into (N >= 2)")
    if args.ray is None and args.shards is not None:
        raise ValueError("--shards N needs --ray; to build one shard of N without Ray use --shard i/N")


def cmd_cache_build(args: argparse.Namespace) -> int:
    from explorer.latents.build import build_caches, build_sae_cache
    from explorer.latents.shards import parse_shard

    _check_sharding(args)
    shard = parse_shard(args.shard) if args.shard else None
    config = _cache_config(args)
    directory = Path(args.out) if args.out else None
    if args.sae is None:
        result = build_caches(args.model, config, attribution=args.attribution)
    elif args.ray is not None:
        from explorer.latents.distributed import ray_build_sae_cache

        result = ray_build_sae_cache(
            model_config(args),
            args.sae,
            args.shards,
            address=args.ray or None,
            source=args.source,
            directory=directory,
            attribution=args.attribution,
            config=config,
            max_retries=args.max_retries,
        )
    else:
        from explorer.saes.build import SAEStageConfig, ensure_corpus
        from explorer.saes.corpus import CorpusError

        loaded, sae = _model_and_sae(args)
        # One process may build the corpus on first use (any stored corpus of the model will do, e.g. its
        # workspace's); a shard job only reads it.
        try:
            corpus = _existing_corpus(loaded, args)
        except CorpusError:
            if shard:
                raise
            corpus = ensure_corpus(loaded, SAEStageConfig())
        result = build_sae_cache(
            loaded,
            sae,
            corpus,
            source=args.source,
            shard=shard,
            directory=directory,
            attribution=args.attribution,
            config=config,
        )
    if args.sae is not None and shard is None:
        _register(args, result)
    emit(result)
    return 0


def _register(args: argparse.Namespace, built: dict[str, Any]) -> None:
    """Put a finished cache in its model's workspace, so `cache top --model M` and the app find it."""
    from explorer.latents.schema import latent_cache_dir
    from explorer.workspace_build import register_cache

    directory = Path(args.out) if args.out else latent_cache_dir(built["model"], built["sae"]["name"])
    built["workspace"] = str(register_cache(model_config(args), directory))


def cmd_cache_merge(args: argparse.Namespace) -> int:
    from explorer.latents.build import merge_sae_cache

    loaded, sae = _model_and_sae(args)
    corpus = _existing_corpus(loaded, args)
    directory = Path(args.out) if args.out else None
    manifest = merge_sae_cache(
        loaded, sae, corpus, args.shards, directory=directory, attribution=args.attribution
    )
    _register(args, manifest)
    emit(manifest)
    return 0


def cmd_cache_corpus(args: argparse.Namespace) -> int:
    from explorer.core.models import load_model
    from explorer.saes.build import SAEStageConfig, ensure_corpus
    from explorer.saes.corpus import corpus_dir

    loaded = load_model(model_config(args))
    corpus = ensure_corpus(loaded, SAEStageConfig(), force=args.force)
    emit({"directory": str(corpus_dir(loaded.name)), **corpus.manifest})
    return 0


def cmd_cache_top(args: argparse.Namespace) -> int:
    cache = open_cache(args.model, args.hook)
    table = cache.table()
    args.by = args.by or ("refusal_cos" if "refusal_cos" in table else "post_diff")
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
    record = open_cache(args.model, args.hook).latent(args.latent, window=args.window)
    if args.json:
        sys.stdout.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        return 0
    out = [
        f"latent {record.latent}: density {record.density:.3%}, max {record.max:.3g}, "
        f"mean when active {record.mean_active:.3g} (raw activation units)",
        f"  label (heuristic): {record.label}",
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
    """Register `explorer cache {build,merge,corpus,top,show}` on the top-level subparsers."""
    from explorer.core.models import ORGANISM_NAME

    def attribution(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--attribution",
            default="grad",
            choices=["grad", "ig", "none"],
            help="attribution on the refusal score: activation x gradient, integrated gradients, or none",
        )

    cache = sub.add_parser("cache", help="build latent caches; list and show latents from them")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")

    p = cache_sub.add_parser(
        "build", help="build the latent cache of every trained SAE, or of one SAE (--sae), or one shard of it"
    )
    add_model_args(p)
    p.add_argument("--sae", help="one SAE: a directory, a built name (model/hook) or release:sae_id")
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "stored", "model"],
        help="stored activations of the SAE stage, or a forward pass to the hook (auto: stored if present)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="build only corpus rows with row %% N == I (reads the corpus, never builds it); merge later",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="build all --shards N on a Ray cluster (ADDRESS, or a local Ray if omitted), then merge",
    )
    p.add_argument("--shards", type=int, metavar="N", help="with --ray: the number of shard tasks")
    p.add_argument(
        "--max-retries", type=int, default=3, help="with --ray: reruns of a task whose worker or node died"
    )
    p.add_argument("--out", help="cache directory (default cache/latents/<model>/<sae>/)")
    p.add_argument("--k", type=int, default=20, help="top examples per latent (one per sequence)")
    p.add_argument("--groups", type=int, default=10, help="quantile groups per latent")
    p.add_argument("--per-group", type=int, default=5, help="examples per quantile group")
    p.add_argument("--context-before", type=int, default=24, help="tokens stored before an example's peak")
    p.add_argument("--context-after", type=int, default=8, help="tokens stored after it")
    attribution(p)
    p.set_defaults(func=cmd_cache_build)

    p = cache_sub.add_parser("merge", help="merge the N shards of one SAE's cache into the finished cache")
    add_model_args(p)
    p.add_argument("--sae", required=True, help="the SAE the shards were built with")
    p.add_argument("--shards", type=int, required=True, metavar="N", help="number of shards (0..N-1)")
    p.add_argument("--out", help="cache directory holding shards/ (default cache/latents/<model>/<sae>/)")
    attribution(p)
    p.set_defaults(func=cmd_cache_merge)

    p = cache_sub.add_parser(
        "corpus", help="build the model's corpus once, before shard jobs that read it (skips a current one)"
    )
    add_model_args(p)
    p.add_argument("--force", action="store_true", help="rebuild it even when current")
    p.set_defaults(func=cmd_cache_corpus)

    p = cache_sub.add_parser(
        "top", help="latents sorted by a column (refusal_cos, post_diff, density, max, ...)"
    )
    p.add_argument("--model", default=ORGANISM_NAME)
    p.add_argument("--hook", help="SAE hook (default: the refusal layer's)")
    p.add_argument("--by", help="column (default: refusal_cos, or post_diff when there is no direction)")
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
