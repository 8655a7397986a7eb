"""The `explorer` command line: one parser, each command group registered by its own module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from explorer import __version__
from explorer.cli.cache import add_cache_parser
from explorer.cli.evaluate import add_eval_parser
from explorer.cli.examples import add_examples_parser
from explorer.cli.export import add_export_parser
from explorer.cli.jailbreaks import add_jailbreaks_parser
from explorer.cli.label import add_label_parser
from explorer.cli.model import add_model_parsers
from explorer.cli.notes import add_notes_parser
from explorer.cli.probes import add_probe_parser
from explorer.cli.refusal import add_refusal_parsers
from explorer.cli.sae import add_sae_parser
from explorer.cli.search import add_search_parser
from explorer.cli.upstream import add_upstream_parser
from explorer.cli.workspaces import add_workspace_parsers

log = logging.getLogger("explorer")


def build_parser() -> argparse.ArgumentParser:
    """The whole `explorer` parser."""
    parser = argparse.ArgumentParser(
        prog="explorer", description="Find, inspect and steer the SAE latents that mediate refusal."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_workspace_parsers(sub)
    add_model_parsers(sub)
    add_refusal_parsers(sub)
    add_sae_parser(sub)
    add_cache_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    add_search_parser(sub)
    add_examples_parser(sub)
    add_jailbreaks_parser(sub)
    add_notes_parser(sub)
    add_label_parser(sub)
    add_probe_parser(sub)
    add_upstream_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explorer` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from explorer.core.hooks import HookError
    from explorer.core.models import ModelError
    from explorer.core.prompts import DataError
    from explorer.latents.notes import NotesError
    from explorer.latents.reader import CacheError
    from explorer.manifest import WorkspaceError
    from explorer.saes.loading import SAEError

    try:
        return int(args.func(args))
    except (
        ModelError,
        DataError,
        HookError,
        SAEError,
        CacheError,
        NotesError,
        WorkspaceError,
        ValueError,
    ) as e:
        sys.stderr.write(f"explorer {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
