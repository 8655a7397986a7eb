"""The refusal direction at run time: its type, where it is stored, and its loader.

Steering, the latent cache and the app read the direction through this module; computing and selecting it
lives in `explorer.refusal.build`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from explorer.core.paths import cache_dir

DIRECTIONS_FILE = "directions.safetensors"
SELECTION_FILE = "selection.json"
REPORT_FILE = "report.json"


class RefusalCacheError(ValueError):
    """A missing or corrupt refusal-direction cache; the message names the file."""


def refusal_dir(model_name: str) -> Path:
    """Where a model's refusal directions are cached."""
    return cache_dir() / "refusal" / model_name


@dataclass(frozen=True)
class RefusalDirection:
    """The selected direction and everything needed to reuse it.

    Attributes:
        direction: [d_model] the raw difference in means (not normalised; addition uses it as is).
        location: hook name it was read at (resid_pre of `layer`).
        layer: the layer whose input it was read at.
        position: post-instruction position (negative index from the end of the prompt).
        directions: [n_layers + 1, n_positions, d_model] every candidate.
        selection: the stored selection record (candidates and their scores, config, simple recipe).
    """

    direction: torch.Tensor
    location: str
    layer: int
    position: int
    directions: torch.Tensor
    selection: dict[str, Any]

    @property
    def validated(self) -> bool:
        """False when no candidate passed the behavioural filters and the build kept the direction that
        best separates harmful from harmless prompts: it has not been shown to mediate refusal."""
        return bool(self.selection.get("validated", True))

    def at_layer(self, layer: int) -> torch.Tensor:
        """The candidate direction at the input of `layer`, at the selected position."""
        return self.directions[layer, self.position]


def location_names(n_layers: int) -> list[str]:
    """The n_layers + 1 distinct residual locations: every resid_pre, then the last resid_post."""
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]


def load_refusal(model_name: str, directory: Path | None = None) -> RefusalDirection:
    """Read a stored refusal direction (from `directory`, default the model's under the cache root).

    Raises:
        RefusalCacheError: the files are missing or corrupt (named in the message).
    """
    directory = directory or refusal_dir(model_name)
    selection_path, directions_path = directory / SELECTION_FILE, directory / DIRECTIONS_FILE
    for path in (selection_path, directions_path):
        if not path.is_file():
            raise RefusalCacheError(f"{path} is missing: run `explorer refusal` (or `explorer build`)")
    try:
        selection = json.loads(selection_path.read_text(encoding="utf-8"))
        directions = load_file(str(directions_path))["directions"]
        chosen = selection["selected"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, OSError, SafetensorError) as e:
        raise RefusalCacheError(f"{directory} is corrupt ({e}); run `explorer refusal --force`") from e
    layer, position = int(chosen["layer"]), int(chosen["position"])
    return RefusalDirection(
        directions[layer, position], chosen["location"], layer, position, directions, selection
    )
