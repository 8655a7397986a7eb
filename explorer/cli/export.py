"""`explorer export`: a latent cache as SAEDashboard JSON, Neuronpedia batches or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from explorer.cli.options import open_cache

FORMATS = ("saedashboard", "neuronpedia", "csv")


def cmd_export(args: argparse.Namespace) -> int:
    from explorer.latents.export import export_csv, export_neuronpedia, parse_latents
    from explorer.latents.export_saedashboard import export_saedashboard

    exporters = {"saedashboard": export_saedashboard, "neuronpedia": export_neuronpedia, "csv": export_csv}
    latents = parse_latents(args.latents) if args.latents else None
    cache = open_cache(args.model, args.hook)
    out = exporters[args.format](cache, Path(args.out), latents, window=args.window)
    sys.stdout.write(f"{out}\n")
    return 0


def add_export_parser(sub: Any) -> None:
    """Register `explorer export --format {saedashboard,neuronpedia,csv} --out PATH ...` on `sub`."""
    from explorer.core.models import ORGANISM_NAME

    p = sub.add_parser("export", help="export a latent cache as sae_dashboard JSON, Neuronpedia JSON or CSV")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="file (csv, saedashboard .json) or directory (neuronpedia)")
    p.add_argument("--model", default=ORGANISM_NAME)
    p.add_argument("--hook", help="SAE hook (default: the refusal layer's)")
    p.add_argument("--latents", help="comma-separated latent indices, e.g. 0,5,7 (default: all)")
    p.add_argument(
        "--window",
        type=int,
        help="context tokens on each side of an example's activating token (default: the whole stored "
        "window; saedashboard caps it at the build's context_before/context_after)",
    )
    p.set_defaults(func=cmd_export)
