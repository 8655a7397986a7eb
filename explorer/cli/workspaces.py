"""`explorer build` (the offline default, or any model and its SAEs) and `explorer workspaces`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from explorer.cli.options import add_model_args, emit, model_config


def cmd_build(args: argparse.Namespace) -> int:
    if args.model == "default":
        if args.sae or args.harmful or args.harmless or args.layer is not None:
            raise ValueError("--sae, --harmful, --harmless and --layer build a workspace: give --model too")
        if args.background:
            return _start_background(args)
        return _build_default(args)
    if args.background:
        raise ValueError("--background builds the offline default; a workspace build runs in the foreground")
    from explorer.latents.schema import CacheConfig
    from explorer.refusal.candidates import RefusalConfig
    from explorer.saes.corpus import CorpusConfig
    from explorer.workspace_build import WorkspaceRequest, build_workspace

    request = WorkspaceRequest(
        replace(model_config(args), trust_remote_code=args.trust_remote_code),
        tuple(args.sae or ()),
        harmful=args.harmful,
        harmless=args.harmless,
        layer=args.layer,
        refusal=RefusalConfig(n_val=args.n_val),
        corpus=CorpusConfig(
            seq_len=args.seq_len,
            text_tokens=args.text_tokens,
            prompts_per_label=args.prompts_per_label,
            text_dataset=args.text_dataset,
        ),
        cache=CacheConfig(k=args.k),
    )
    emit(build_workspace(request, args.only, force=args.force))
    return 0


def _start_background(args: argparse.Namespace) -> int:
    """`explorer build --background` (what `make demo` runs): start the build detached and return."""
    from explorer.build import default_complete
    from explorer.build_watch import LOG_FILE, start_background, stderr_fd
    from explorer.core.paths import cache_dir

    if not args.only and not args.force and default_complete():
        sys.stderr.write("[build] the offline default is built: nothing to do\n")
        return 0
    stages = [option for name in args.only or () for option in ("--only", name)]
    launch = start_background([*stages, *(["--force"] if args.force else [])], terminal=stderr_fd())
    if launch.started:
        sys.stderr.write(
            f"[build] started in the background (pid {launch.pid}); one line per stage here, the full log in "
            f"{cache_dir() / LOG_FILE}, live progress on the app's Build page; `kill {launch.pid}` stops it\n"
        )
    else:
        sys.stderr.write(f"[build] {launch.message}: follow it on the app's Build page\n")
    return 0


def _build_default(args: argparse.Namespace) -> int:
    from explorer.build import build_default
    from explorer.build_watch import LOG_FILE, duration_text, echo_stages
    from explorer.core.paths import cache_dir

    start = time.monotonic()
    with echo_stages(args.terminal_fd) as say:
        try:
            report = build_default(args.only, force=args.force, lock_fd=args.lock_fd)
        except BaseException as e:
            say(
                f"failed ({type(e).__name__}: {e}); run `make demo` (or `explorer build`) again to resume "
                f"where it stopped; full log: {cache_dir() / LOG_FILE}"
            )
            raise
        say(f"finished in {duration_text(time.monotonic() - start)}")
    emit(report)
    return 0


def cmd_workspaces(args: argparse.Namespace) -> int:
    from explorer.manifest import disk_size, list_workspaces

    workspaces, problems = list_workspaces()
    rows = [
        {
            "name": m.name,
            "model": m.model.spec,
            "saes": [e.hook for e in m.saes],
            "widths": [e.d_sae for e in m.saes],
            "direction": "none"
            if "location" not in m.refusal
            else ("validated" if m.validated else "unvalidated"),
            "built": m.built,
            "size_mb": round(disk_size(m) / 2**20, 1),
            "path": str(m.root / "workspaces" / m.name),
        }
        for m in workspaces
    ]
    if args.json:
        emit({"workspaces": rows, "problems": problems})
        return 0
    if not rows:
        sys.stdout.write(
            "no workspaces yet: run `explorer build` (the offline default) or `explorer build "
            "--model SPEC --sae SAE`\n"
        )
    for row in rows:
        saes = ", ".join(
            f"{hook} ({width:,})" for hook, width in zip(row["saes"], row["widths"], strict=True)
        )
        sys.stdout.write(
            f"{row['name']}\t{row['model']}\tSAEs: {saes or 'none'}\tdirection {row['direction']}\t"
            f"built {row['built'] or '?'}\t{row['size_mb']} MB\n"
        )
    for problem in problems:
        sys.stderr.write(f"unreadable: {problem}\n")
    return 0


def add_workspace_parsers(sub: Any) -> None:
    """Register `explorer build` and `explorer workspaces` on the top-level subparsers."""
    from explorer.latents.schema import CacheConfig
    from explorer.refusal.candidates import RefusalConfig
    from explorer.saes.corpus import CorpusConfig

    p = sub.add_parser(
        "build",
        help="build the offline default into cache/, or with --model and --sae the workspace of any chat "
        "model and SAEs (skips complete stages)",
    )
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild stages even when complete")
    p.add_argument(
        "--background",
        action="store_true",
        help="start the offline default's build as a detached process and return at once (log: "
        "cache/build.log; one line per stage on this terminal); does nothing while a build runs",
    )
    # Handed down by --background to the detached build: the build lock it already holds, the terminal.
    p.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--terminal-fd", type=int, help=argparse.SUPPRESS)
    add_model_args(p)
    group = p.add_argument_group("workspace (any model: give --model and --sae)")
    group.add_argument(
        "--sae", action="append", metavar="SAE", help="an SAELens SAE: directory or release:sae_id (repeat)"
    )
    group.add_argument("--trust-remote-code", action="store_true", help="for hub models that need it")
    group.add_argument(
        "--harmful", metavar="FILE", help="harmful prompts (JSONL/CSV) instead of the built-in set"
    )
    group.add_argument("--harmless", metavar="FILE", help="harmless prompts instead of the built-in set")
    group.add_argument(
        "--layer",
        type=int,
        help="if no direction passes the behavioural filters, keep the one read at this location "
        "(0..n_layers) instead of the best-separating one",
    )
    group.add_argument("--n-val", type=int, default=RefusalConfig.n_val, help="val prompts per label")
    corpus = CorpusConfig()
    group.add_argument("--seq-len", type=int, default=corpus.seq_len, help="tokens per corpus row")
    group.add_argument(
        "--text-tokens", type=int, default=corpus.text_tokens, help="general-text tokens in the corpus"
    )
    group.add_argument(
        "--text-dataset",
        metavar="NAME|FILE",
        help="general text from a hub dataset (name[:config[:split]], streamed) or a local JSON/CSV/text "
        "file, instead of the prose that ships with Python",
    )
    group.add_argument(
        "--prompts-per-label", type=int, help="built-in prompts per label in the corpus (default: all)"
    )
    group.add_argument("--k", type=int, default=CacheConfig.k, help="top examples per latent")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "workspaces", help="list the workspaces: model, SAEs, widths, when built, size on disk"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workspaces)
