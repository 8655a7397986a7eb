"""Options and helpers shared by the command groups: the model options, JSON output, opening a cache."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from explorer.core.models import ModelConfig
    from explorer.latents.reader import LatentCache


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The `--model`, `--device`, `--dtype`, `--device-map` and `--chat-template` options."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="default",
        help="'default' (offline SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument("--device-map", choices=["auto"], help="spread a large model over all GPUs")
    group.add_argument("--chat-template", help="Jinja file replacing the tokenizer's chat template")


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model options of `add_model_args` as a `ModelConfig`."""
    from explorer.core.models import ModelConfig

    return ModelConfig(
        spec=args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        chat_template=args.chat_template,
    )


def emit(data: Any) -> None:
    """Print `data` as indented JSON."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def open_cache(model: str, sae: str | None) -> LatentCache:
    """The latent cache of `sae` (default: the model's main SAE) built for `model`."""
    from explorer.latents.reader import LatentCache
    from explorer.latents.schema import latent_cache_dir
    from explorer.saes.build import read_index

    return LatentCache(latent_cache_dir(model, sae or read_index(model)["main"]))
