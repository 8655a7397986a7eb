"""The refusal papers' research questions, measured: jailbreaks, upstream harm latents, probes.

Each module computes from the model and its SAEs and stores a JSON result under `research_dir`, which
the CLI prints and the pages read through `read_result`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from explorer.core.paths import cache_dir

T = TypeVar("T")


def research_dir(model_name: str) -> Path:
    """Where a model's research results are stored: `research/<model>/` under the cache root."""
    return cache_dir() / "research" / model_name


def read_result(
    path: Path, parse: Callable[[dict[str, Any]], T], what: str, command: str, error: type[ValueError]
) -> T:
    """A stored result parsed by `parse` (a record's `from_dict`).

    Raises:
        error: the file is missing (the message names `command`, which makes it) or is not a `what`.
    """
    if not path.is_file():
        raise error(f"no {what} at {path}: `{command}` makes it")
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise error(
            f"the {what} at {path} is corrupt, not the JSON `{command}` writes ({type(e).__name__}: {e}); "
            "run it again"
        ) from None
