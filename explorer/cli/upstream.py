"""`explorer upstream`: which latents of an earlier SAE drive the main SAE's refusal latents, checked by
ablation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.options import add_model_args, emit, load_workspace_for
from explorer.core.paths import write_text_atomic

if TYPE_CHECKING:
    from explorer.research.upstream import UpstreamConfig
    from explorer.workspace import Workspace

SELECTIONS = ("cosine+attribution", "cosine", "attribution")


def upstream_config(
    workspace: Workspace,
    *,
    upstream: str | None = None,
    latents: list[int] | None = None,
    selection: str = "cosine+attribution",
    downstream_k: int = 5,
    **options: Any,
) -> UpstreamConfig:
    """The graph to trace on `workspace`: the main SAE downstream, `upstream` (default: the SAE nearest
    before it) upstream, `latents` or the top `downstream_k` by `selection`; `options` are the rest of
    `UpstreamConfig` (per_latent, split, n, check, batch_size)."""
    from explorer.research.upstream import UpstreamConfig, UpstreamError, default_upstream
    from explorer.steering.search import candidate_latents

    main = workspace.main
    if main is None or main not in workspace.saes:
        raise UpstreamError("the workspace has no main SAE: build one (`explorer build`)")
    upstream = upstream or default_upstream(list(workspace.saes), main, workspace.loaded.n_layers)
    if latents is None:
        if main not in workspace.caches:
            raise UpstreamError(f"no latent cache for {main}: build it, or name latents with --latents")
        latents = candidate_latents(workspace.caches[main], selection, downstream_k)  # pyright: ignore[reportArgumentType]
    else:
        selection = "named"
    return UpstreamConfig(upstream, main, tuple(latents), selection, **options)  # pyright: ignore[reportArgumentType]


def _named(text: str, main: str | None) -> list[int]:
    """`HOOK:I,...` -> the latents, all of which must be the main SAE's."""
    from explorer.research.upstream import UpstreamError

    latents = []
    for part in text.split(","):
        hook, _, latent = part.strip().rpartition(":")
        if hook != main or not latent.isdigit():
            raise UpstreamError(f"--latents entry {part!r} is not {main}:LATENT (a latent of the main SAE)")
        latents.append(int(latent))
    return latents


def cmd_upstream(args: argparse.Namespace) -> int:
    from explorer.core.progress import tqdm
    from explorer.research.upstream import store_graph, upstream_graph

    workspace = load_workspace_for(args)
    config = upstream_config(
        workspace,
        upstream=args.upstream,
        latents=_named(args.latents, workspace.main) if args.latents else None,
        selection=args.selection,
        downstream_k=args.downstream_k,
        per_latent=args.per_latent,
        split=args.split,
        n=args.n,
        check=not args.no_check,
        batch_size=args.batch_size,
    )
    with tqdm(
        total=1.0, desc="upstream graph", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}"
    ) as bar:

        def progress(done: float, what: str) -> None:
            bar.set_description(what, refresh=False)
            bar.update(done - bar.n)

        graph = upstream_graph(workspace.loaded, workspace.saes, workspace.caches, config, progress=progress)
    store_graph(graph)
    document = graph.to_dict()
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        emit(document)
        return 0
    labels = {(n.hook, n.latent): n.label for n in graph.nodes}
    sys.stdout.write(
        f"{config.upstream} -> {config.downstream} on {graph.n_prompts} harmful {config.split} prompts "
        f"({graph.seconds:.0f} s); attribution = mean over prompts of the sum over positions of f_u * "
        "d a_d / d f_u, a_d summed over the post-instruction positions\n"
    )
    sys.stdout.write("downstream  upstream  attribution  predicted   measured  upstream label\n")
    for e in graph.edges:
        measured = "" if e.measured is None else f"{e.measured:+10.4f}"
        sys.stdout.write(
            f"L{e.downstream:<9d} L{e.upstream:<7d} {e.attribution:+11.4f} {e.predicted:+10.4f} "
            f"{measured:>10s}  {labels.get((config.upstream, e.upstream), '')}\n"
        )
    if graph.sign_agreement is not None:

        def shown(value: float | None) -> str:
            return "undefined" if value is None else f"{value:.3f}"

        sys.stdout.write(
            f"predicted vs measured over {len(graph.edges)} edges: Pearson {shown(graph.pearson)}, "
            f"Spearman {shown(graph.spearman)}, same sign {graph.sign_agreement:.0%}\n"
        )
    return 0


def add_upstream_parser(sub: Any) -> None:
    """Register `explorer upstream` on the top-level subparsers."""
    p = sub.add_parser(
        "upstream", help="the earlier SAE's latents that drive the refusal latents, checked by ablation"
    )
    add_model_args(p)
    p.add_argument(
        "--upstream", metavar="HOOK", help="the earlier SAE (default: the SAE nearest before main)"
    )
    p.add_argument("--downstream-k", type=int, default=5, help="refusal latents of the main SAE to trace")
    p.add_argument(
        "--selection", default="cosine+attribution", choices=SELECTIONS, help="how they are ranked"
    )
    p.add_argument("--latents", metavar="HOOK:I,...", help="trace these main-SAE latents instead")
    p.add_argument("--per-latent", type=int, default=8, help="upstream latents kept per downstream latent")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="harmful prompts' split")
    p.add_argument("--n", type=int, help="prompts, spread over the categories (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-check", action="store_true", help="skip the ablation check of each edge")
    p.add_argument("--out", metavar="FILE", help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_upstream)
