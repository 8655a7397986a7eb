"""`explorer jailbreaks`: the jailbreak lens on the harmful prompts of a split, stored and printed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.options import add_judge_arg, add_model_args, load_workspace_for

if TYPE_CHECKING:
    from explorer.research.jailbreaks import JailbreakStudy


def _signed(value: float | None, relative: float | None) -> str:
    if value is None or relative is None:
        return "-"
    return f"{value:+.3f} ({relative:+.0%})"


def study_table(study: JailbreakStudy) -> str:
    """The study as a text table: one row per wrapper."""
    lines = [
        f"{study.model}: {study.n_prompts} harmful {study.config.split} prompts, {study.judge} judge, "
        f"{study.config.max_new_tokens}-token greedy replies",
        f"{'wrapper':20s} {'refused plain':>13s} {'refused wrapped':>15s} {'attack success':>20s} "
        f"{'refusal latents':>18s} {'harm latents':>18s}  verdict",
    ]
    for r in study.results:
        harm = r.harm[0] if r.harm else None
        lines.append(
            f"{r.wrapper.name:20s} {r.refused_plain:>13.1%} {r.refused_wrapped:>15.1%} "
            f"{r.attack_success:>7.1%} ({r.attack_count:>3d}/{r.attack_base:<3d}) "
            f"{_signed(r.refusal and r.refusal.change, r.refusal and r.refusal.relative):>18s} "
            f"{_signed(harm and harm.change, harm and harm.relative):>18s}  {r.verdict}"
        )
    first = study.results[0] if study.results else None
    if first is not None and first.refusal is not None:
        lines.append(f"refusal latents: {first.refusal.hook} by {first.refusal.selection}")
    if first is not None and first.harm:
        lines.append(f"harm latents: {first.harm[0].hook} ({first.harm[0].selection})")
    lines.append(f"verdict rule: {study.rule}")
    return "\n".join(lines) + "\n"


def cmd_jailbreaks(args: argparse.Namespace) -> int:
    from explorer.core.jailbreaks import builtin_wrappers, load_wrapper_file, pick_wrappers
    from explorer.core.judge_models import make_judge
    from explorer.core.paths import write_text_atomic
    from explorer.research.jailbreaks import JailbreakConfig, run_study, save_study

    # Wrappers, config and judge are checked before the model loads.
    wrappers = load_wrapper_file(args.wrappers) if args.wrappers else builtin_wrappers()
    wrappers = pick_wrappers(
        wrappers, [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    )
    config = JailbreakConfig(
        args.split, args.n, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    judge = make_judge(args.judge)
    workspace = load_workspace_for(args)

    def on_progress(share: float, what: str) -> None:  # on stderr, so --json stays parseable
        sys.stderr.write(f"[{share:4.0%}] {what}\n")
        sys.stderr.flush()

    study = run_study(workspace, wrappers, config, judge, on_progress)
    path = save_study(study)
    document: dict[str, Any] = study.to_dict()
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return 0
    sys.stdout.write(study_table(study))
    sys.stdout.write(f"stored: {path}\n")
    return 0


def add_jailbreaks_parser(sub: Any) -> None:
    """Register `explorer jailbreaks` on the top-level subparsers."""
    p = sub.add_parser(
        "jailbreaks",
        help="what jailbreak wrappers do to refusal, to the SAE latents and to the refusal direction",
    )
    add_model_args(p)
    p.add_argument(
        "--wrappers", metavar="FILE", help="your wrappers (JSON list or JSONL) instead of the built-in set"
    )
    p.add_argument("--only", metavar="NAME,...", help="measure only these wrappers")
    p.add_argument("--split", default="test", choices=["val", "test"], help="the harmful prompts' split")
    p.add_argument(
        "--n", type=int, help="harmful prompts, spread over the categories (default: the whole split)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    add_judge_arg(p)
    p.add_argument("--json", action="store_true", help="print the whole study as JSON")
    p.add_argument("--out", metavar="FILE", help="also write the study's JSON here")
    p.set_defaults(func=cmd_jailbreaks)
