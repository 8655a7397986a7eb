"""Cached loaders: the workspace (and so the model) loads once per process and is shared by every browser
session; every page, the Overview included, takes its model from `workspace_or_stop`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from explorer.build import BUILD_MANIFEST
from explorer.core.models import ModelConfig, ModelError
from explorer.core.paths import cache_dir
from explorer.latents.reader import CacheError, LatentCache
from explorer.refusal.direction import REPORT_FILE, SELECTION_FILE, refusal_dir
from explorer.saes.build import INDEX_FILE as SAE_INDEX_FILE
from explorer.saes.build import REPORT_FILE as SAE_REPORT_FILE
from explorer.saes.loading import SAEError, sae_root
from explorer.ui.state import MODEL_ENV, model_spec_from_env
from explorer.workspace import Workspace, load_workspace


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


@st.cache_resource(show_spinner="Loading model, SAEs and latent caches…")
def cached_workspace(spec: str, cache_root: str, device: str = "cpu", dtype: str = "float32") -> Workspace:
    """The model with its SAEs, latent caches and refusal direction, loaded once per process and per
    cache root (`cache_root` is the resolved cache directory the files are read from).

    Shared by every browser session: callers must not mutate it (steering never does; it derives new
    tensors and attaches hooks only for the duration of its own forward calls).
    """
    return load_workspace(ModelConfig(spec=spec, device=device, dtype=dtype))  # pyright: ignore[reportArgumentType]


NAVIGATED = "_through_app_navigation"


def through_app_navigation() -> None:
    """Make a page that Streamlit ran on its own run again through app.py's navigation.

    A `pages/` folder beside app.py puts a fresh server in Streamlit's legacy multipage mode until some
    session runs app.py (which calls `st.navigation`). If the first visitor opens a share link
    (`/latent_detail?latent=…`), Streamlit runs that page file directly, without app.py: no wide layout,
    the file names as navigation, and the legacy mode stays for every later session. Leaving the mode and
    rerunning runs app.py, which routes to the same page with the same query parameters.
    """
    first_run = not st.session_state.get(NAVIGATED)
    st.session_state[NAVIGATED] = True
    if PagesManager.uses_pages_directory:  # Streamlit's own switch; st.navigation clears it the same way
        PagesManager.uses_pages_directory = False
        # Only on a session's first run: a later rerun would drop the widget event that started the run
        # (and Streamlit's test harness puts every run back in the legacy mode).
        if first_run:
            st.rerun()


def workspace_or_stop() -> Workspace:
    """The app's workspace, or an `st.error` saying what to do and a stop (never a traceback).

    Every page calls it first, so it also puts a page run outside app.py back through its navigation
    (`through_app_navigation`)."""
    through_app_navigation()
    spec = model_spec_from_env()
    try:
        return cached_workspace(spec, str(cache_dir()))
    except (ModelError, SAEError, CacheError) as e:
        st.error(f"Could not load `{spec}`: {e}")
        st.info(
            f"Run `make build` (or `explorer build`), or set `{MODEL_ENV}` to another model spec and restart."
        )
        st.stop()
        raise  # unreachable: st.stop() raises


def cache_or_stop(workspace: Workspace, hook: str | None) -> tuple[str, LatentCache]:
    """The latent cache of the SAE at `hook` (default: the main SAE), or an error and a stop."""
    hook = hook or workspace.main
    if hook is None or hook not in workspace.saes:
        st.error(f"No SAE at `{hook}`; this model has SAEs at {sorted(workspace.saes) or 'no hook'}.")
        st.info("Run `make build` to train the default's SAEs, or start the app with a model that has SAEs.")
        st.stop()
        raise AssertionError
    if hook not in workspace.caches:
        st.error(f"The SAE at `{hook}` has no usable latent cache. " + " ".join(workspace.problems))
        st.info("Run `explorer build` (or `explorer cache build --sae ...`) to build it.")
        st.stop()
        raise AssertionError
    return hook, workspace.caches[hook]
