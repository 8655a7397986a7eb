"""`explorer eval --multi-turn`: refusal at the final turn of escalating conversations, per setting."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.options import rate_ci
from explorer.core.paths import write_text_atomic

if TYPE_CHECKING:
    from explorer.core.escalations import Escalation
    from explorer.core.judge import Judge
    from explorer.steering.spec import SteeringSpec
    from explorer.workspace import Workspace

# Options of `explorer eval` that choose single-turn prompts or measure what a conversation does not have.
_SINGLE_TURN_ONLY = ("harmful", "harmless", "mc", "n_harmful", "n_harmless", "elsewhere")


def add_multi_turn_args(parser: argparse.ArgumentParser) -> None:
    """The `--multi-turn`, `--escalations` and `--history-tokens` options of `explorer eval`."""
    group = parser.add_argument_group("multi-turn attacks")
    group.add_argument(
        "--multi-turn",
        action="store_true",
        help="play the built-in escalations of --split (or --escalations) and judge the final turn",
    )
    group.add_argument(
        "--escalations", metavar="FILE", help="your escalations (JSONL with 'turns') instead of the built-in"
    )
    group.add_argument(
        "--history-tokens", type=int, default=48, help="tokens of each earlier reply in a conversation"
    )


def chosen_escalations(args: argparse.Namespace) -> list[Escalation]:
    """The escalations `--multi-turn` plays, checked before the model loads.

    Raises:
        ValueError: a single-turn option given with --multi-turn, or an empty selection.
        DataError: an unreadable escalation file.
    """
    from explorer.core.escalations import builtin_escalations, load_escalation_file

    given = [f"--{name.replace('_', '-')}" for name in _SINGLE_TURN_ONLY if getattr(args, name, None)]
    if given:
        raise ValueError(f"{', '.join(given)} measure single prompts; --multi-turn does not use them")
    if args.escalations:
        return load_escalation_file(args.escalations)
    chosen = builtin_escalations(args.split)
    if not chosen:
        raise ValueError(f"no built-in escalations in the {args.split} split")
    return chosen


def run_multi_turn(
    args: argparse.Namespace,
    workspace: Workspace,
    settings: list[tuple[str, float | None, SteeringSpec]],
    escalations: list[Escalation],
    judge: Judge,
) -> int:
    """Play `escalations` unsteered and under every setting; print a table, or JSON with --json."""
    from explorer.steering.multiturn import MultiTurnConfig, evaluate_multi_turn

    config = MultiTurnConfig(args.split, args.max_new_tokens, args.history_tokens, args.batch_size)

    def done(i: int, n: int, label: str) -> None:
        sys.stderr.write(f"[{i}/{n}] {label} played\n")

    points = evaluate_multi_turn(workspace.steerer(judge), settings, escalations, config, on_progress=done)
    source = args.escalations or f"the built-in escalations, {args.split} split"
    document: dict[str, Any] = {
        "model": workspace.loaded.name,
        "mode": args.mode,
        "escalations": source,
        "config": config.to_dict(),
        "judge": judge.name,
        "points": [asdict(p) for p in points],
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        write_text_atomic(Path(args.out) / "multiturn.json", text)
    if args.json:
        sys.stdout.write(text)
        return 0
    sys.stdout.write(f"{args.mode} over {len(escalations)} escalations ({source}; {judge.name} judge)\n")
    sys.stdout.write(
        "setting                     refused final turn [95% CI]  asked alone [95% CI]  degenerate\n"
    )
    for p in points:
        sys.stdout.write(
            f"{p.label:28s} {rate_ci(p.refusal_final, p.refusal_final_ci)} ({p.n:3d})    "
            f"{rate_ci(p.refusal_direct, p.refusal_direct_ci)}   {p.degenerate_final:>5.0%}\n"
        )
    return 0
