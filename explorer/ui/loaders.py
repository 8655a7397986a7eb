"""Cached loaders: the model loads once per process and is shared by every browser session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from explorer.build import BUILD_MANIFEST
from explorer.models import LoadedModel, ModelConfig, load_model
from explorer.paths import cache_dir
from explorer.refusal_build import REPORT_FILE, SELECTION_FILE, refusal_dir
from explorer.sae import sae_root
from explorer.sae_build import INDEX_FILE as SAE_INDEX_FILE
from explorer.sae_build import REPORT_FILE as SAE_REPORT_FILE


@st.cache_resource(show_spinner="Loading model…")
def cached_model(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a model once per (spec, device, dtype); callers must not mutate it."""
    return load_model(ModelConfig(spec=spec, device=device, dtype=dtype))  # pyright: ignore[reportArgumentType]


def refusal_records(model_name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The stored refusal-direction selection and test-split report of a model (None where missing)."""
    directory = refusal_dir(model_name)
    found = []
    for name in (SELECTION_FILE, REPORT_FILE):
        path = directory / name
        found.append(_read_json(str(path), path.stat().st_mtime_ns) if path.is_file() else None)
    return found[0], found[1]


def sae_records(model_name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """The SAE stage's index and each SAE's quality report for a model, or None if none were trained."""
    root = sae_root() / model_name
    index_path = root / SAE_INDEX_FILE
    if not index_path.is_file():
        return None
    index = _read_json(str(index_path), index_path.stat().st_mtime_ns)
    reports = {}
    for hook in index.get("hooks", []):
        path = root / hook / SAE_REPORT_FILE
        if path.is_file():
            reports[hook] = _read_json(str(path), path.stat().st_mtime_ns)
    return index, reports


def build_manifest() -> dict[str, Any] | None:
    """The last build's manifest (cache/build.json), or None if nothing was built yet."""
    path = cache_dir() / BUILD_MANIFEST
    if not path.is_file():
        return None
    return _read_json(str(path), path.stat().st_mtime_ns)


@st.cache_data
def _read_json(path: str, mtime_ns: int) -> dict[str, Any]:
    """Parsed JSON, cached per (path, mtime_ns): a rebuilt file is read again."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); run `explorer build` again") from e
