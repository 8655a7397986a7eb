"""`explorer organism | refusal`: the safety fine-tune of the offline default and the refusal direction."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from explorer.cli.options import add_model_args, emit, model_config


def cmd_organism(args: argparse.Namespace) -> int:
    from explorer.core.models import PROVENANCE_FILE
    from explorer.refusal.organism import OrganismConfig, build_organism

    config = OrganismConfig(
        rank=args.rank,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        first_layer=args.first_layer,
        seed=args.seed,
    )
    out = build_organism(config, force=args.force)
    provenance = json.loads((out / PROVENANCE_FILE).read_text(encoding="utf-8"))
    emit({"model_dir": str(out), "metrics": provenance["metrics"], "timings_s": provenance["timings_s"]})
    return 0


def cmd_refusal(args: argparse.Namespace) -> int:
    from explorer.core.models import load_model
    from explorer.core.paths import write_json_atomic
    from explorer.core.prompts import load_prompt_file
    from explorer.refusal.build import compute_refusal, format_report, prove
    from explorer.refusal.candidates import RefusalConfig
    from explorer.refusal.direction import REPORT_FILE, load_refusal, refusal_dir

    harmful = load_prompt_file(args.harmful, label="harmful") if args.harmful else None
    harmless = load_prompt_file(args.harmless, label="harmless") if args.harmless else None
    loaded = load_model(model_config(args))
    directory = refusal_dir(loaded.name)
    if args.force or harmful or harmless or not (directory / "selection.json").is_file():
        compute_refusal(loaded, RefusalConfig(n_val=args.n_val), harmful=harmful, harmless=harmless)
    refusal = load_refusal(loaded.name)
    report = None
    if args.report:
        report = prove(loaded, refusal, alpha=args.alpha, layer=args.layer)
        write_json_atomic(directory / REPORT_FILE, report)
    sys.stdout.write(format_report(refusal.selection, report) + "\n")
    return 0


def add_refusal_parsers(sub: Any) -> None:
    """Register `explorer organism` and `explorer refusal` on `sub`."""
    from explorer.refusal.organism import OrganismConfig

    p = sub.add_parser("organism", help="safety fine-tune the offline default so it refuses harmful requests")
    defaults = OrganismConfig()
    p.add_argument("--force", action="store_true", help="retrain even if the tuned model exists")
    p.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument(
        "--first-layer", type=int, default=defaults.first_layer, help="LoRA only on layers >= this"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("refusal", help="compute and select the refusal direction; --report proves it on test")
    add_model_args(p)
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--n-val", type=int, default=16, help="val prompts per label used for selection")
    p.add_argument("--report", action="store_true", help="ablate/add the direction on the test split")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the added direction in --report")
    p.add_argument("--layer", type=int, help="in --report, use the direction read at this layer instead")
    p.add_argument(
        "--harmful", metavar="FILE", help="harmful prompts (JSONL/CSV) instead of the built-in set"
    )
    p.add_argument(
        "--harmless", metavar="FILE", help="harmless prompts (JSONL/CSV) instead of the built-in set"
    )
    p.set_defaults(func=cmd_refusal)
