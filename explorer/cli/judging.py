"""`explorer judge --agreement` (each judge's agreement with replies labelled by reading them) and
`explorer judge --sample` (replies of a model to label)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from explorer.cli.options import emit, load_workspace_for


def print_agreement(path: str | None, judges: list[str], as_json: bool) -> None:
    """Agreement of every judge in `judges` on the dev part, the held-out part and the whole set."""
    from explorer.core.judge import VERDICT_LABELS
    from explorer.core.judge_agreement import agreement_by_part, load_labelled
    from explorer.core.judge_models import make_judge

    rows = load_labelled(path)
    results = {spec: agreement_by_part(make_judge(spec), rows) for spec in judges}
    if as_json:
        emit({spec: [a.to_dict() for a in parts] for spec, parts in results.items()})
        return
    kinds = {k: sum(r.kind == k for r in rows) for k in sorted({r.kind for r in rows})}
    sys.stdout.write(f"{len(rows)} labelled replies: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    sys.stdout.write("\n\njudge            part      n  accuracy  kappa  refusal-vs-not acc  kappa\n")
    for spec, parts in results.items():
        for a in parts:
            sys.stdout.write(
                f"{spec:16s} {a.part:8s} {a.n:3d}  {a.accuracy:8.3f} {a.kappa:6.3f} "
                f"{a.binary_accuracy:19.3f} {a.binary_kappa:6.3f}\n"
            )
    for spec, parts in results.items():
        held = next((a for a in parts if a.part == "heldout"), parts[-1])
        sys.stdout.write(f"\n{spec}, {held.part} part: rows are the readers' labels, columns the judge's\n")
        sys.stdout.write(" " * 12 + "".join(f"{lab:>12s}" for lab in VERDICT_LABELS) + "\n")
        for truth in VERDICT_LABELS:
            counts = "".join(f"{held.confusion[truth][lab]:12d}" for lab in VERDICT_LABELS)
            sys.stdout.write(f"{truth:12s}{counts}\n")


def write_sample(args: argparse.Namespace) -> None:
    """Replies of the model (steered and unsteered) to `args.sample`, as JSONL with an empty kind."""
    from explorer.core.paths import write_text_atomic
    from explorer.steering.judge_sample import sample_replies

    workspace = load_workspace_for(args)
    latents: list[tuple[str, int]] = []
    main = workspace.main
    if main is not None and main in workspace.caches and workspace.refusal is not None:
        latents = [(main, i) for i in workspace.caches[main].top_latents("refusal_cos", 3, active=True)]
    rows = sample_replies(workspace.steerer(), latents, per_setting=args.per_setting, progress=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(Path(args.sample), text)
    sys.stderr.write(
        f"{len(rows)} replies to label in {args.sample} (see explorer/prompts/JUDGE_LABELS.md)\n"
    )
