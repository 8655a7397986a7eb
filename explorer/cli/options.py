"""Options and helpers shared by the command groups: the model options, JSON output, opening a cache."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from explorer.core.models import ModelConfig
    from explorer.latents.reader import LatentCache
    from explorer.workspace import Workspace


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The `--model`, `--device`, `--dtype`, `--device-map` and `--chat-template` options."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="default",
        help="'default' (offline SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id",
    )
    group.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default: the workspace's, else cpu)")
    group.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="parameter dtype (default: the workspace's, else float32)",
    )
    group.add_argument("--device-map", choices=["auto"], help="spread a large model over all GPUs")
    group.add_argument("--chat-template", help="Jinja file replacing the tokenizer's chat template")


def add_judge_arg(parser: argparse.ArgumentParser, *, repeatable: bool = False) -> None:
    """The `--judge SPEC` option: which judge labels replies (see `explorer.core.judge_models`)."""
    parser.add_argument(
        "--judge",
        action="append" if repeatable else "store",
        default=None if repeatable else "substring",
        metavar="SPEC",
        help="substring (offline default), substring-v1, classifier:MODEL or llm:ENDPOINT[#MODEL]"
        + (" (repeatable)" if repeatable else ""),
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model options of `add_model_args` as a `ModelConfig`."""
    from explorer.core.models import ModelConfig

    return ModelConfig(
        spec=args.model,
        device=args.device or "cpu",
        dtype=args.dtype or "float32",
        device_map=args.device_map,
        chat_template=args.chat_template,
    )


def load_workspace_for(args: argparse.Namespace) -> Workspace:
    """The workspace `--model` names, on its manifest's device and dtype unless `--device`/`--dtype` say
    otherwise; with `--sae`, or for a model without a workspace, the model and the SAEs given."""
    from dataclasses import replace

    from explorer.manifest import WorkspaceError, find_workspace
    from explorer.workspace import load_workspace

    if getattr(args, "sae", None) is None:
        try:
            manifest = find_workspace(args.model)
        except WorkspaceError:
            manifest = None
        if manifest is not None:
            config = manifest.model_config()
            config = replace(config, device=args.device or config.device, dtype=args.dtype or config.dtype)
            return load_workspace(manifest, config=config)
    return load_workspace(model_config(args), getattr(args, "sae", None))


def rate_ci(rate: float, interval: Sequence[float]) -> str:
    """A rate with its 95% interval as the tables print it: ` 97.2% [93%-99%]`."""
    low, high = interval
    return f"{rate:>6.1%} [{low:.0%}-{high:.0%}]"


def emit(data: Any) -> None:
    """Print `data` as indented JSON."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def open_cache(model: str, sae: str | None) -> LatentCache:
    """The latent cache of `sae` (a hook or an SAE name; default: the main SAE) of the workspace that
    `model` names (a workspace name, model spec or model name), else of the SAEs trained for `model`.

    Raises:
        WorkspaceError: neither a workspace nor trained SAEs exist for `model`.
        CacheError: the workspace has no such SAE, or its cache is missing or corrupt.
    """
    from explorer.latents.reader import CacheError, LatentCache
    from explorer.latents.schema import latent_cache_dir
    from explorer.manifest import WorkspaceError, find_workspace
    from explorer.saes.build import read_index
    from explorer.saes.loading import SAEError

    try:
        manifest = find_workspace(model)
    except WorkspaceError:
        try:
            return LatentCache(latent_cache_dir(model, sae or read_index(model)["main"]))
        except SAEError:
            raise WorkspaceError(
                f"no workspace for {model!r} and no SAEs trained for it: build one with "
                f"`explorer build --model {model} --sae SAE` (`explorer workspaces` lists those that exist)"
            ) from None
    wanted = sae or manifest.main
    for entry in manifest.saes:
        if wanted in (entry.hook, entry.name):
            return LatentCache(manifest.path(entry.cache))
    known = ", ".join(f"{e.hook} ({e.name})" for e in manifest.saes) or "none"
    raise CacheError(f"workspace {manifest.name!r} has no SAE {wanted!r}; its SAEs: {known}")


def main_hook(model: str) -> str:
    """The hook of the main SAE of the workspace (or trained SAEs) of `model`."""
    from explorer.manifest import WorkspaceError, find_workspace
    from explorer.saes.build import read_index
    from explorer.saes.loading import SAEError

    try:
        main = find_workspace(model).main
    except WorkspaceError:
        try:
            main = read_index(model)["main"]
        except (SAEError, KeyError):
            main = None
    if main is None:
        raise ValueError(
            f"no --hook given and no main SAE known for {model}: pass --hook or build a workspace"
        )
    return main
