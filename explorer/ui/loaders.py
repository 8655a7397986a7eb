"""Cached loaders: the model loads once per process and is shared by every browser session."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from explorer.build import BUILD_MANIFEST
from explorer.models import LoadedModel, ModelConfig, load_model
from explorer.paths import cache_dir


@st.cache_resource(show_spinner="Loading model…")
def cached_model(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a model once per (spec, device, dtype); callers must not mutate it."""
    return load_model(ModelConfig(spec=spec, device=device, dtype=dtype))  # pyright: ignore[reportArgumentType]


@st.cache_data(ttl=5)
def build_manifest() -> dict[str, Any] | None:
    """The last build's manifest (cache/build.json), or None if nothing was built yet."""
    path = cache_dir() / BUILD_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); run `explorer build` again") from e
