"""`explorer sae ...`: train the offline default's SAEs, print their quality, and check any SAELens SAE."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _offsets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--offsets takes comma-separated integers like -6,0,4, got {text!r}"
        ) from e


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_quality(report: dict[str, Any]) -> str:
    """A quality report as text: what a researcher checks before trusting an SAE."""
    sae, rec, loss, ref = (
        report["sae"],
        report["reconstruction"],
        report.get("loss") or {},
        report.get("refusal", {}),
    )
    targets = report.get("targets", {})

    def mark(key: str) -> str:
        return "" if key not in targets else ("  [meets target]" if targets[key] else "  [MISSES target]")

    lines = [
        f"SAE {sae['hook'] if sae['name'] == sae['hook'] else sae['name'] + ' at ' + sae['hook']}: "
        f"{sae['architecture']}, "
        f"{sae['d_sae']} latents, d_in {sae['d_in']}",
        f"  held-out tokens          {rec['tokens']}",
        f"  explained variance       {_fmt(rec['explained_variance'])}{mark('explained_variance')}",
        f"  L0 mean / median / max   {_fmt(rec['l0']['mean'], 1)} / {_fmt(rec['l0']['median'], 0)} / "
        f"{rec['l0']['max']}{mark('l0')}",
        f"  dead latents             {_fmt(100 * rec['dead_fraction'], 1)}% "
        f"(never active on held-out){mark('dead_fraction')}",
        f"  dense latents            {_fmt(100 * rec['dense_fraction'], 1)}% "
        f"(active on > {rec['dense_threshold']:.0%})",
    ]
    sources = report.get("by_source") or {}
    if sources:
        from explorer.saes.quality import TARGETS

        lines.append(
            f"  by source (held-out tokens; genres never trained on must reach explained variance "
            f"{TARGETS['explained_variance_min']}){mark('unseen_genres')}:"
        )
        lines.append(f"    {'source':<22} {'trained on':<10} {'tokens':>7} {'EV':>6} {'L0':>5} {'dead':>6}")
        for name, m in sorted(sources.items(), key=lambda kv: (kv[1]["trained_on"], kv[0])):
            lines.append(
                f"    {name:<22} {'yes' if m['trained_on'] else 'NEVER':<10} {m['tokens']:>7} "
                f"{_fmt(m['explained_variance']):>6} {_fmt(m['l0'], 1):>5} "
                f"{_fmt(100 * m['dead_fraction'], 1):>5}%"
            )
    if loss:
        lines += [
            f"  CE loss clean            {_fmt(loss['ce_clean'])} nats ({loss['tokens']} tokens)",
            f"  CE increase, SAE spliced {_fmt(loss['ce_increase_sae'])} nats",
            f"  CE increase, zero-ablate {_fmt(loss['ce_increase_zero_ablation'])} nats",
            f"  loss recovered           {_fmt(loss['fraction_recovered'])}",
        ]
    norm = report["decoder_norm"]
    lines.append(
        f"  decoder row norms        min {_fmt(norm['min'])} "
        f"mean {_fmt(norm['mean'])} max {_fmt(norm['max'])}"
        f" ({'unit norm' if norm['unit_norm'] else 'not unit norm'})"
    )
    if ref:
        recon = ref.get("reconstruction", {})
        lines.append(f"  refusal direction ({ref['direction_at']}):")
        if recon:
            lines.append(
                f"    cos(direction, harmful-harmless diff): raw {_fmt(recon['cos_direction_raw_diff'])}, "
                f"SAE reconstruction {_fmt(recon['cos_direction_sae_diff'])} "
                f"({recon['n_harmful']} harmful, {recon['n_harmless']} harmless transcripts)"
            )
        lines.append(
            f"    cos(direction, span of top-10 decoder rows): {_fmt(ref['cos_direction_top_latents_span'])}"
        )
        top = ", ".join(f"{t['latent']} ({t['cosine']:+.2f})" for t in ref["top_latents"])
        lines.append(f"    top latents by decoder cosine: {top}")
    return "\n".join(lines)


def cmd_sae_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from explorer.saes.build import SAEStageConfig, build_saes, read_report

    base = SAEStageConfig()
    main = replace(
        base.main, architecture=args.architecture, d_sae=args.d_sae, k=args.k, training_samples=args.samples
    )
    side = replace(
        base.side,
        architecture=args.architecture,
        d_sae=args.d_sae,
        k=args.k,
        training_samples=args.side_samples,
    )
    config = replace(base, main=main, side=side, layer_offsets=args.offsets)
    index = build_saes(args.model, config, force=args.force)
    if args.json:
        sys.stdout.write(json.dumps(index, indent=2) + "\n")
        return 0
    for hook in index["hooks"]:
        sys.stdout.write(format_quality(read_report(index["model"], hook)) + "\n\n")
    sys.stdout.write(f"stage timings (s): {json.dumps(index['seconds'])}\n")
    return 0


def cmd_sae_report(args: argparse.Namespace) -> int:
    from explorer.saes.build import read_index, read_report

    index = read_index(args.model)
    hooks = [args.hook] if args.hook else index["hooks"]
    reports = {hook: read_report(index["model"], hook) for hook in hooks}
    if args.json:
        sys.stdout.write(json.dumps(reports, indent=2) + "\n")
        return 0
    for hook in hooks:
        role = "main (refusal layer)" if hook == index["main"] else "comparison layer"
        sys.stdout.write(f"[{role}]\n{format_quality(reports[hook])}\n\n")
    return 0


def cmd_sae_info(args: argparse.Namespace) -> int:
    from explorer.core.models import load_model
    from explorer.saes.loading import check_compatible, load_sae

    sae = load_sae(args.sae, dtype=args.sae_dtype)
    info = sae.describe()
    if args.model:
        loaded = load_model(args.model)
        check_compatible(sae, loaded)
        info["compatible_with"] = loaded.name
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0


def add_sae_parser(sub: Any) -> None:
    """Register `explorer sae {train,report,info}` on the top-level subparsers."""
    from explorer.core.models import ORGANISM_NAME
    from explorer.saes.build import SAEStageConfig
    from explorer.saes.training import ARCHITECTURES

    stage = SAEStageConfig()  # the build stage's recipe, so `explorer sae train` with no flags is that stage
    defaults = stage.main
    sae = sub.add_parser("sae", help="train the default's SAEs, print quality reports, check an SAE")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")

    p = sae_sub.add_parser(
        "train", help="collect activations and train SAEs at the refusal layer and two others"
    )
    p.add_argument(
        "--model", default=ORGANISM_NAME, help="built model name (default: the safety-tuned default)"
    )
    p.add_argument("--architecture", choices=ARCHITECTURES, default=defaults.architecture)
    p.add_argument("--d-sae", type=int, default=defaults.d_sae, help="latents per SAE")
    p.add_argument("--k", type=int, default=defaults.k, help="active latents per token (topk, batchtopk)")
    p.add_argument(
        "--samples", type=int, default=defaults.training_samples, help="training samples, main SAE"
    )
    p.add_argument(
        "--side-samples",
        type=int,
        default=stage.side.training_samples,
        help="training samples, comparison SAEs",
    )
    p.add_argument(
        "--offsets", type=_offsets, default=stage.layer_offsets, help="layers relative to the refusal layer"
    )
    p.add_argument("--force", action="store_true", help="rebuild the corpus and activations too")
    p.add_argument("--json", action="store_true", help="print the stage index as JSON")
    p.set_defaults(func=cmd_sae_train)

    p = sae_sub.add_parser("report", help="print the stored quality reports of the built SAEs")
    p.add_argument("--model", default=ORGANISM_NAME)
    p.add_argument("--hook", help="only the SAE at this hook")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sae_report)

    p = sae_sub.add_parser("info", help="load any SAELens SAE and check it against a model")
    p.add_argument("sae", help="SAE directory, built SAE name (model/hook), or release:sae_id")
    p.add_argument("--model", help="model to check compatibility with (e.g. default)")
    p.add_argument("--sae-dtype", help="load the SAE in this dtype (default: its own)")
    p.set_defaults(func=cmd_sae_info)
