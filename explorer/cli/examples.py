"""`explorer demo-examples`: measure the walkthrough's prompts and strengths, write them beside the
refusal direction, print what each strength did."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from explorer.cli.options import add_judge_arg, add_model_args, emit, load_workspace_for
from explorer.steering.examples import N_PROMPTS

if TYPE_CHECKING:
    from explorer.steering.examples import Measured, Trial


def _row(trial: Trial, chosen: bool) -> str:
    mark = "*" if chosen else " "
    return (
        f"{mark} {trial.strength:>8g}  {trial.flipped:>4d}/{trial.n:<4d} {trial.flip_rate:>5.0%}   "
        f"{trial.degenerate:>4d}/{trial.n:<4d} {trial.degenerate_rate:>5.0%}\n"
    )


def _table(measured: Measured, title: str) -> None:
    sys.stdout.write(f"\n{title}\n  strength  flipped            degenerate\n")
    for trial in measured.trials:
        sys.stdout.write(_row(trial, trial.strength == measured.chosen))
    if measured.chosen is None:
        sys.stdout.write("  no strength flipped a prompt: the walkthrough keeps its default\n")
    for example in measured.examples:
        sys.stdout.write(
            f"  example: {example.prompt}\n           -> {example.steered_reply.strip()[:100]!r}\n"
        )


def cmd_demo_examples(args: argparse.Namespace) -> int:
    from explorer.core.judge_models import make_judge
    from explorer.steering.examples import choose_examples, demo_latents, write_examples

    if args.n_prompts < 1:
        raise ValueError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    judge = make_judge(args.judge)  # checked before the model loads
    workspace = load_workspace_for(args)
    hook = workspace.main
    if hook is None or hook not in workspace.caches:
        raise ValueError(
            f"workspace {workspace.name} has no latent cache for its main SAE ({hook}): run `explorer build`"
        )
    latents = demo_latents(workspace.caches[hook])
    examples = choose_examples(
        workspace.steerer(judge),
        hook,
        latents,
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
        progress=True,
    )
    path = write_examples(examples)
    if args.json:
        emit({**examples.to_dict(), "path": str(path)})
        return 0
    where = f"{examples.split} prompts, {examples.max_new_tokens} tokens, {examples.judge} judge"
    latent_names = ", ".join(f"#{i}" for i in latents)
    sys.stdout.write(f"latents {latent_names} of {hook} on {examples.model} ({where})\n")
    _table(examples.induce, f"induce refusal: set to strength × max on {examples.induce.n_prompts} harmless")
    _table(examples.bypass, f"bypass refusal: multiply by strength on {examples.bypass.n_prompts} harmful")
    if examples.ablation is not None:
        a = examples.ablation
        sys.stdout.write(
            f"\nrefusal direction ablated: {a.flipped}/{a.n} flipped, {a.degenerate}/{a.n} degenerate\n"
        )
    sys.stdout.write(f"\nwrote {path}\n")
    return 0


def add_examples_parser(sub: Any) -> None:
    """Register `explorer demo-examples` on the top-level subparsers."""
    p = sub.add_parser(
        "demo-examples",
        help="measure the walkthrough's clearest prompts and strengths for inducing and bypassing refusal",
    )
    add_model_args(p)
    p.add_argument(
        "--n-prompts",
        type=int,
        default=N_PROMPTS,
        help=f"harmless and harmful test prompts each, spread over the categories (default: {N_PROMPTS})",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    add_judge_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo_examples)
