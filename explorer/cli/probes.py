"""`explorer probe`: train harmful-vs-harmless probes and test how they generalise out of distribution."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from explorer.cli.options import add_model_args, emit, load_workspace_for
from explorer.steering.search import Selection

if TYPE_CHECKING:
    from explorer.research.probes import ProbeResult


def probe_table(result: ProbeResult) -> str:
    """The result as text: per evaluation set, each probe's accuracy and AUC; then the K chosen."""
    from explorer.research.probes import PROBE_TITLES, PROBES, claim

    width = max(len(s.name) for s in result.sets) + 2
    head = "".join(f"{PROBE_TITLES[p]:>26s}" for p in PROBES)
    lines = [f"{'set':{width}s}{'n':>6s}{head}", f"{'':{width}s}{'':6s}" + "   accuracy     AUC     " * 3]
    for info in result.sets:
        cells = []
        for probe in PROBES:
            score = result.score(probe, info.name)
            cells.append(f"{score.accuracy:>14.1%}{score.auc:>9.3f}   ")
        n = result.score(PROBES[0], info.name).n
        lines.append(f"{info.name:{width}s}{n:>6d}" + "".join(cells))
    fit = result.fit("refusal_latents")
    lines += [
        "",
        f"K chosen on val: {fit.k} refusal latents by {result.config.selection} "
        f"(C = {fit.c:g}; val accuracy {fit.val_accuracy:.1%}, AUC {fit.val_auc:.3f})",
        "C chosen on val: " + ", ".join(f"{PROBE_TITLES[f.probe]} {f.c:g}" for f in result.fits),
        f"features: {result.sites['note']}",
        claim(result),
    ]
    return "\n".join(lines) + "\n"


def cmd_probe(args: argparse.Namespace) -> int:
    from explorer.core.jailbreaks import builtin_wrappers, load_wrapper_file
    from explorer.core.prompts import DataError
    from explorer.research.probes import ProbeConfig, run_probes, store_probes

    config = ProbeConfig(
        k_max=args.k_max, selection=args.selection, limit=args.limit, batch_size=args.batch_size
    )
    wrappers = builtin_wrappers()
    if args.wrappers:  # checked before the model loads
        extra = load_wrapper_file(args.wrappers)
        clash = sorted({w.name for w in wrappers} & {w.name for w in extra})
        if clash:
            raise DataError(f"{args.wrappers}: wrapper name(s) {clash} are built in; rename them")
        wrappers += extra
    workspace = load_workspace_for(args)
    hook = workspace.main
    if workspace.refusal is None:
        raise ValueError(f"{workspace.loaded.name} has no refusal direction: run `explorer refusal` first")
    if hook is None or hook not in workspace.saes or hook not in workspace.caches:
        raise ValueError(
            f"{workspace.loaded.name} has no main SAE with a latent cache (main: {hook}): build the workspace"
        )
    result = run_probes(
        workspace.loaded,
        workspace.saes[hook],
        workspace.caches[hook],
        workspace.refusal,
        wrappers,
        config,
        progress=True,  # on stderr; --json writes stdout only
    )
    path = store_probes(result)
    document: dict[str, Any] = {**result.to_dict(), "stored": str(path)}
    if args.out:
        from explorer.core.paths import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        emit(document)
        return 0
    sys.stdout.write(probe_table(result) + f"stored in {path} ({result.seconds:.0f} s)\n")
    return 0


def add_probe_parser(sub: Any) -> None:
    """Register `explorer probe` on the top-level subparsers."""
    p = sub.add_parser(
        "probe",
        help="harmful-vs-harmless probes on the residual, all latents and the top-K refusal latents, "
        "tested in and out of distribution",
    )
    add_model_args(p)
    p.add_argument("--k-max", type=int, default=256, help="largest K of the top-K probe (K = 1, 2, 4, ...)")
    p.add_argument(
        "--selection",
        default="cosine",
        choices=[s for s in get_args(Selection) if s != "attribution"],
        help="rank refusal latents by decoder cosine with the refusal direction, or cosine+attribution",
    )
    p.add_argument(
        "--wrappers", metavar="FILE", help="your jailbreak wrappers (JSON/JSONL), added to the built-in ones"
    )
    p.add_argument(
        "--limit", type=int, help="at most N prompts per label of each split and set (default: all)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    p.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_probe)
