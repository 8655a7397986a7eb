"""`explorer generate` with steering: default and steered replies side by side, verdicts, the spec."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from explorer.cli.options import load_workspace_for
from explorer.core.generation import SamplingConfig
from explorer.steering.spec import DirectionBaseline, SteeringError, SteeringSpec, Trigger, parse_clamp

_TRIGGER = re.compile(r"^(?P<hook>[^:>]+):(?P<latent>\d+)>(?P<threshold>[-+.\deE]+)$")


def add_steering_args(parser: argparse.ArgumentParser) -> None:
    """Steering options of `explorer generate`; any of them turns on side-by-side output."""
    group = parser.add_argument_group("steering (prints the default and the steered reply side by side)")
    group.add_argument(
        "--clamp",
        action="append",
        default=[],
        metavar="HOOK:LATENT=MODE:VALUE[:max]",
        help=(
            "modes set, multiply, add (the latent's activation) and cap, floor (the residual's projection "
            "on the latent's decoder direction, raw or :max), scale (a factor on that component); e.g. "
            "blocks.23.hook_resid_pre:3357=set:8, ...=multiply:-3, ...=add:2:max, ...=cap:0:max, "
            "...=floor:1:max, ...=scale:0 (repeatable)"
        ),
    )
    group.add_argument("--scope", choices=["all", "prompt", "generated"], default="all")
    group.add_argument(
        "--trigger", metavar="HOOK:LATENT>THRESHOLD", help="steer only where this latent fires"
    )
    group.add_argument(
        "--direction",
        metavar="KIND[:ALPHA]",
        help=(
            "refusal-direction baseline: ablate (every layer), scale:FACTOR (the component along it, every "
            "layer), add[:ALPHA] (× the difference in means, at its layer), cap:VALUE or floor:VALUE (its "
            "projection on the unit direction, raw, at its layer)"
        ),
    )
    group.add_argument("--spec", metavar="FILE", help="a saved steering spec (JSON); --clamp etc. add to it")
    group.add_argument(
        "--sae",
        action="append",
        metavar="SPEC",
        help="SAEs to steer (default: the build's SAEs for the model)",
    )
    group.add_argument("--frequency-penalty", type=float, default=0.0)


def wants_steering(args: argparse.Namespace) -> bool:
    return bool(args.clamp or args.trigger or args.direction or args.spec)


def spec_from_args(args: argparse.Namespace) -> SteeringSpec:
    """The spec the options describe (a `--spec` file first, then `--clamp` and friends on top)."""
    base = SteeringSpec()
    if args.spec:
        try:
            base = SteeringSpec.from_json(Path(args.spec).read_text(encoding="utf-8"))
        except OSError as e:
            raise SteeringError(f"cannot read --spec {args.spec}: {e}") from e
    trigger = base.trigger
    if args.trigger:
        match = _TRIGGER.match(args.trigger.strip())
        if match is None:
            raise SteeringError(f"--trigger {args.trigger!r} is not of the form HOOK:LATENT>THRESHOLD")
        trigger = Trigger(match.group("hook"), int(match.group("latent")), float(match.group("threshold")))
    direction = base.direction
    if args.direction:
        kind, _, alpha = args.direction.partition(":")
        if kind in ("cap", "floor", "scale") and not alpha:
            raise SteeringError(f"--direction {kind} needs a value, e.g. {kind}:0")
        try:
            direction = DirectionBaseline(kind, float(alpha) if alpha else 1.0)  # pyright: ignore[reportArgumentType]
        except ValueError as e:
            raise SteeringError(f"--direction {args.direction!r}: {e}") from e
    return SteeringSpec(
        base.clamps + tuple(parse_clamp(c) for c in args.clamp),
        args.scope if args.scope != "all" else base.scope,
        trigger,
        direction,
        base.provenance,
    )


def run_steered(
    args: argparse.Namespace, prompts: list[str], ids: list[str], sampling: SamplingConfig
) -> dict[str, Any]:
    """Side-by-side generation for every prompt; returns the JSON document `explorer generate` prints."""
    from explorer.core.judge_models import make_judge
    from explorer.steering.decode import generate_side_by_side

    spec = spec_from_args(args)  # malformed options fail before the model loads
    judge = make_judge(getattr(args, "judge", None) or "substring")
    workspace = load_workspace_for(args)
    steerer = workspace.steerer(judge)
    provenance = {
        "model": workspace.loaded.name,
        "saes": {hook: sae.fingerprint for hook, sae in workspace.saes.items()},
        "caches": {hook: cache.manifest.get("sae_fingerprint") for hook, cache in workspace.caches.items()},
    }
    spec = SteeringSpec(
        spec.clamps, spec.scope, spec.trigger, spec.direction, {**spec.provenance, **provenance}
    )
    results, spec_dict = [], spec.to_dict()
    for rid, prompt in zip(ids, prompts, strict=True):
        pair = generate_side_by_side(steerer, prompt, spec, sampling, system=args.system)
        results.append(
            {
                "id": rid,
                "prompt": prompt,
                "default": _brief(pair.default.to_dict()),
                "steered": _brief(pair.steered.to_dict()),
            }
        )
        spec_dict = pair.spec
    return {
        "model": workspace.loaded.name,
        "sampling": sampling.to_dict(),
        "spec": spec_dict,
        "results": results,
    }


def _brief(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without its per-token records, which `--json` leaves to the library and the app."""
    return {k: v for k, v in reply.items() if k != "steps"} | {"n_new_tokens": len(reply["token_ids"])}


def print_steered(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return
    for row in document["results"]:
        sys.stdout.write(f"[{row['id']}] {row['prompt']}\n")
        for column in ("default", "steered"):
            tag = "REFUSED" if row[column]["verdict"]["refused"] else "answered"
            sys.stdout.write(f"  {column:8s} ({tag}) {row[column]['text']}\n")
        sys.stdout.write("\n")
