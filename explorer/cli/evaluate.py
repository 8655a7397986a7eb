"""`explorer eval`: sweep a steering strength; print refusal, over-refusal and capability cost per point."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from explorer.cli.multiturn import add_multi_turn_args, chosen_escalations, run_multi_turn
from explorer.cli.options import add_judge_arg, add_model_args, load_workspace_for, rate_ci
from explorer.core.paths import write_text_atomic
from explorer.steering.evaluation import SweepKind

if TYPE_CHECKING:
    from explorer.steering.spec import Trigger


def _latents(text: str, workspace: Any, hook: str | None) -> list[tuple[str, int]]:
    """`top:N` (the N latents of the SAE most aligned with the refusal direction by decoder cosine),
    `attribution:N` or `cosine+attribution:N` (`explorer.steering.search.candidate_latents`), or
    `HOOK:LATENT,...`."""
    from explorer.steering.search import candidate_latents

    selection, _, n = text.partition(":")
    if selection in ("top", "cosine", "attribution", "cosine+attribution") and n.isdigit():
        hook = hook or workspace.main
        if hook is None or hook not in workspace.caches:
            raise ValueError(f"--latents {text}: no latent cache for {hook}; build it or name latents")
        chosen = "cosine" if selection == "top" else selection
        return [(hook, i) for i in candidate_latents(workspace.caches[hook], chosen, int(n))]  # pyright: ignore[reportArgumentType]
    out = []
    for part in text.split(","):
        name, _, latent = part.strip().rpartition(":")
        if not name or not latent.isdigit():
            raise ValueError(
                f"--latents entry {part!r} is not HOOK:LATENT, top:N, attribution:N or cosine+attribution:N"
            )
        out.append((name, int(latent)))
    return out


def _trigger(text: str | None) -> Trigger | None:
    """`HOOK:LATENT:THRESHOLD` -> a trigger gating every setting's clamps."""
    from explorer.steering.spec import SteeringError, Trigger

    if not text:
        return None
    hook, latent, threshold = [*text.rsplit(":", 2), "", ""][:3]
    try:
        return Trigger(hook, int(latent), float(threshold))
    except ValueError as e:
        raise SteeringError(f"--trigger {text!r} is not HOOK:LATENT:THRESHOLD ({e})") from e


def cmd_eval(args: argparse.Namespace) -> int:
    from explorer.core.judge_models import make_judge
    from explorer.core.prompts import load_prompt_file
    from explorer.saes.corpus import CorpusError, corpus_dir, load_corpus
    from explorer.steering.capability import load_mc_file
    from explorer.steering.evaluation import (
        EvalConfig,
        evaluate,
        points_csv,
        prompt_source,
        replies_csv,
        small_sample_warning,
        sweep_specs,
        trade_off_figure,
    )

    strengths = [float(s) for s in args.strengths.split(",")] if args.strengths else []
    config = EvalConfig(
        args.split,
        args.n_harmful,
        args.n_harmless,
        args.max_new_tokens,
        args.batch_size,
        **({} if args.seed is None else {"seed": args.seed}),
        prompt_set="elsewhere" if args.elsewhere else "builtin",
    )
    escalations = chosen_escalations(args) if args.multi_turn else None
    mc = load_mc_file(args.mc) if args.mc else None
    # Files and the judge are checked before the model loads.
    harmful = load_prompt_file(args.harmful, "harmful") if args.harmful else None
    harmless = load_prompt_file(args.harmless, "harmless") if args.harmless else None
    judge = make_judge(args.judge)
    workspace = load_workspace_for(args)
    latents = [] if args.mode.startswith("direction") else _latents(args.latents, workspace, args.hook)
    settings = sweep_specs(args.mode, latents, strengths, args.units)
    trigger = _trigger(args.trigger)
    if trigger is not None:
        if args.mode.startswith("direction"):
            raise ValueError("--trigger gates latent clamps; the direction baselines have none")
        settings = [(f"{label} gated", s, replace(spec, trigger=trigger)) for label, s, spec in settings]
    from explorer.steering.spec import validate

    for _, _, spec in settings:  # every spec is checked before the first one runs
        validate(spec, workspace.saes, workspace.loaded.n_layers, max_activations=workspace.max_activations(),
                 refusal=workspace.refusal)  # fmt: skip
    if escalations is not None:
        return run_multi_turn(args, workspace, settings, escalations, judge)
    try:
        corpus = load_corpus(corpus_dir(workspace.loaded.name), workspace.loaded.tokenizer)
    except CorpusError as e:
        sys.stderr.write(f"no capability cost: {e}\n")
        corpus = None
    points = evaluate(
        workspace.steerer(judge),
        settings,
        corpus,
        config,
        mc_items=mc,
        harmful=harmful,
        harmless=harmless,
        progress=True,
    )
    document = {
        "model": workspace.loaded.name,
        "latents": [f"{h}:{i}" for h, i in latents],
        "trigger": args.trigger,
        "mode": args.mode,
        "config": config.to_dict(),
        "judge": judge.name,
        "prompts": {
            "harmful": prompt_source(config, args.harmful),
            "harmless": prompt_source(config, args.harmless),
        },
        "points": [asdict(p) for p in points],
    }
    if args.out:
        out = Path(args.out)
        write_text_atomic(out / "eval.json", json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(out / "eval.csv", points_csv(points))
        write_text_atomic(out / "replies.csv", replies_csv(points))
        figure = trade_off_figure(points, f"{args.mode} sweep on {workspace.loaded.name}")
        write_text_atomic(out / "trade_off.html", figure.to_html(include_plotlyjs=True, full_html=True))
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return 0
    where = document["prompts"]
    sys.stdout.write(
        f"{args.mode} on {', '.join(document['latents']) or 'the refusal direction'} "
        f"(harmful: {where['harmful']}, harmless: {where['harmless']}; {judge.name} judge)\n"
    )
    warning = small_sample_warning(points[0], config.max_new_tokens)
    if warning:
        sys.stderr.write(f"warning: {warning}\n")
    sys.stdout.write(
        "setting                     refused harmful [95% CI]   refused harmless [95% CI]  degenerate  "
        "CE increase   KL      MC\n"
    )
    for p in points:
        mc_text = "" if p.mc_accuracy is None else f"{p.mc_accuracy:.3f}"
        sys.stdout.write(
            f"{p.label:28s} {rate_ci(p.refusal_harmful, p.refusal_harmful_ci)} ({p.n_harmful:3d}) "
            f"{rate_ci(p.refusal_harmless, p.refusal_harmless_ci)} ({p.n_harmless:3d}) "
            f"{p.degenerate_harmful:>5.0%}/{p.degenerate_harmless:<5.0%} "
            f"{p.ce_increase:>+8.3f} {p.kl:>7.3f}  {mc_text}\n"
        )
    return 0


def add_eval_parser(sub: Any) -> None:
    """Register `explorer eval` on the top-level subparsers."""
    p = sub.add_parser("eval", help="refusal, over-refusal and capability cost over a steering sweep")
    add_model_args(p)
    p.add_argument("--sae", action="append", metavar="SPEC", help="SAEs (default: the build's SAEs)")
    p.add_argument(
        "--mode",
        default="set",
        choices=get_args(SweepKind),
        help=(
            "clamp mode for the latents (set, multiply, add on the activation; cap, floor on the residual's "
            "projection on each latent's decoder direction; scale, a factor on that component), or a "
            "refusal-direction baseline (direction-add, -ablate, -scale; direction-cap and -floor take raw "
            "projections on the unit direction)"
        ),
    )
    p.add_argument(
        "--latents",
        default="top:3",
        help=(
            "top:N by decoder cosine with the refusal direction, attribution:N, cosine+attribution:N (the "
            "4N highest by cosine, then the N of them with most attribution), or HOOK:LATENT,..."
        ),
    )
    p.add_argument("--hook", help="SAE for top:N and the other selections (default: the main SAE)")
    p.add_argument(
        "--trigger",
        metavar="HOOK:LATENT:THRESHOLD",
        help="conditional steering: every setting's clamps act only where this latent exceeds the threshold",
    )
    p.add_argument(
        "--strengths", default="1,2,4,8", help="comma-separated values (factors for multiply, alphas)"
    )
    p.add_argument(
        "--units", default="max", choices=["raw", "max"], help="set/add values: raw, or x the latent's max"
    )
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument(
        "--elsewhere",
        action="store_true",
        help="measure on the separately written prompt set (other styles and topics) instead of a split",
    )
    p.add_argument("--harmful", metavar="FILE", help="your harmful prompts (JSONL or CSV) instead")
    p.add_argument("--harmless", metavar="FILE", help="your harmless prompts (JSONL or CSV) instead")
    p.add_argument(
        "--n-harmful", type=int, help="harmful prompts, spread over the categories (default: the whole split)"
    )
    p.add_argument(
        "--n-harmless",
        type=int,
        help="harmless prompts, spread over the categories (default: the whole split)",
    )
    p.add_argument("--seed", type=int, help="which prompts --n-harmful/--n-harmless take (default: 0)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--mc", metavar="FILE", help="multiple-choice JSONL (question, choices, answer) for accuracy"
    )
    p.add_argument(
        "--out", metavar="DIR", help="write eval.json, eval.csv, replies.csv and trade_off.html (plotly) here"
    )
    add_multi_turn_args(p)
    add_judge_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
