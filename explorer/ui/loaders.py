"""Cached loaders: a workspace (and so its model) loads once per process and is shared by every browser
session; every page, the Overview included, takes its model from `workspace_or_stop`, which also draws the
sidebar's workspace picker."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from explorer.build import BUILD_MANIFEST
from explorer.build_watch import BuildView, build_state
from explorer.core.models import ORGANISM_NAME, ModelError
from explorer.core.paths import cache_dir
from explorer.latents.reader import CacheError, LatentCache
from explorer.manifest import (
    DEFAULT_WORKSPACE,
    DEVICE_ENV,
    DTYPE_ENV,
    MANIFEST_FILE,
    WORKSPACE_ENV,
    WORKSPACES_DIR,
    Manifest,
    WorkspaceError,
    find_workspace,
    list_workspaces,
    manifest_path,
    read_manifest,
)
from explorer.refusal.direction import REPORT_FILE, SELECTION_FILE, refusal_dir
from explorer.saes.build import INDEX_FILE as SAE_INDEX_FILE
from explorer.saes.build import REPORT_FILE as SAE_REPORT_FILE
from explorer.saes.loading import SAEError, sae_root
from explorer.ui.build_gate import wait_for_stages
from explorer.ui.state import MODEL_ENV, PER_WORKSPACE, Q_WORKSPACE, STEER_GENERATION, WORKSPACE_CHOICE
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


@st.cache_resource(show_spinner="Loading model, SAEs and latent caches…", max_entries=4)
def cached_workspace(key: str, cache_root: str, device: str, dtype: str) -> Workspace:
    """The model with its SAEs, latent caches and refusal direction, loaded once per process for each
    workspace (`key`: a manifest path, or `spec:` and a model spec without one), cache root and
    device/dtype override.

    Shared by every browser session: callers must not mutate it (steering never does; it derives new
    tensors and attaches hooks only for the duration of its own forward calls).
    """
    del cache_root, device, dtype  # part of the cache key; load_workspace reads them from the environment
    if key.startswith(SPEC_KEY):
        workspace = load_workspace(key.removeprefix(SPEC_KEY))
    else:
        workspace = load_workspace(read_manifest(Path(key)))
    # The model, SAEs and caches live as long as the process: moved out of the garbage collector's scans,
    # a full collection no longer walks them (it cost a page rerun ~300 ms every ~15 reruns).
    gc.freeze()
    return workspace


SPEC_KEY = "spec:"


@st.cache_data(show_spinner=False)
def workspace_choices(
    cache_root: str, stamp: tuple[tuple[str, int], ...]
) -> tuple[dict[str, str], list[str]]:
    """label -> key of every workspace the picker offers (`$EXPLORER_WORKSPACE` and `$EXPLORER_MODEL`
    first, then those under the cache root), and the problems of those that could not be read.

    Cached per cache root and `stamp` (every manifest's path and modification time, and the default
    build's record), so a workspace built while the app runs shows up at the next rerun."""
    del cache_root, stamp  # the cache key: list_workspaces reads the cache root from the environment
    choices: dict[str, str] = {}
    problems: list[str] = []
    given = os.environ.get(WORKSPACE_ENV)
    if given:
        try:
            manifest = read_manifest(Path(given))
            choices[f"{manifest.name} ({WORKSPACE_ENV})"] = _choice_key(manifest)
        except WorkspaceError as e:
            problems.append(str(e))
    spec = os.environ.get(MODEL_ENV)
    if spec:
        try:
            manifest = find_workspace(spec)
            choices[manifest.name] = _choice_key(manifest)
        except WorkspaceError:
            choices[f"{spec} ({MODEL_ENV})"] = SPEC_KEY + spec
    workspaces, unreadable = list_workspaces()
    for manifest in workspaces:
        choices.setdefault(manifest.name, _choice_key(manifest))
    if not choices:
        choices["default"] = SPEC_KEY + "default"
    return choices, problems + unreadable


def _choice_key(manifest: Manifest) -> str:
    """The picker's key for a workspace: its manifest file, or (for the offline default built before
    builds wrote one) its name, which `find_workspace` derives the manifest for."""
    path = manifest_path(manifest.name, manifest.root)
    return str(path) if path.is_file() else SPEC_KEY + manifest.name


def workspace_picker() -> str:
    """The sidebar's workspace picker; returns the chosen workspace's key. The choice is kept in the
    session; a link's `workspace` query parameter (a picker label) opens a workspace first."""
    root = cache_dir()
    files = [*(root / WORKSPACES_DIR).glob(f"*/{MANIFEST_FILE}"), root / BUILD_MANIFEST]
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files if f.is_file())
    choices, problems = workspace_choices(str(root), stamp)
    labels = list(choices)
    wanted = st.session_state.get(WORKSPACE_CHOICE) or st.query_params.get(Q_WORKSPACE)
    if wanted not in labels:
        wanted = labels[0]
    label = st.sidebar.selectbox(
        "Workspace",
        labels,
        index=labels.index(wanted),
        help="A model with its refusal direction and SAE caches. Build one with "
        "`explorer build --model SPEC --sae SAE`; `explorer workspaces` lists them.",
    )
    if st.session_state.get(WORKSPACE_CHOICE) not in (None, label):
        for key in PER_WORKSPACE:  # hooks, latents and results of the other workspace mean nothing here
            st.session_state.pop(key, None)
        st.session_state[STEER_GENERATION] = st.session_state.get(STEER_GENERATION, 0) + 1  # fresh widgets
    st.session_state[WORKSPACE_CHOICE] = label
    for problem in problems:
        st.sidebar.warning(problem)
    return choices[label]


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


def workspace_or_stop(page: str | None = None) -> Workspace:
    """The app's workspace, or an `st.error` saying what to do and a stop (never a traceback).

    Every page calls it first, so it also puts a page run outside app.py back through its navigation
    (`through_app_navigation`).

    Args:
        page: the calling page's file name (a key of `PAGE_NEEDS`): on the offline default while it
            builds, the page waits for the stage that brings its data (`wait_for_stages`).
    """
    through_app_navigation()
    key = workspace_picker()
    if page is not None and _is_default(key):
        view = build_state()
        wait_for_stages(page, view)
        _forget_when_stages_land(view)
    environment = (os.environ.get(DEVICE_ENV, ""), os.environ.get(DTYPE_ENV, ""))
    try:
        workspace = cached_workspace(key, str(cache_dir()), *environment)
    except (ModelError, SAEError, CacheError, WorkspaceError) as e:
        st.error(f"Could not load the workspace `{key.removeprefix(SPEC_KEY)}`: {e}")
        st.info(
            "Run `make build` (or `explorer build`) for the offline default, `explorer build --model SPEC "
            f"--sae SAE` for another model, or pick another workspace; `{MODEL_ENV}` or `{WORKSPACE_ENV}` "
            "open one at start."
        )
        st.stop()
        raise  # unreachable: st.stop() raises
    info = workspace.loaded.describe()
    st.sidebar.caption(
        f"`{info['name']}` on {info['device']} / {info['dtype']} · "
        + (f"{len(workspace.saes)} SAE(s)" if workspace.saes else "no SAEs")
    )
    if workspace.refusal is not None and not workspace.validated:
        st.sidebar.warning(
            "Unvalidated refusal direction: no candidate passed the behavioural filters, so the build kept "
            "the one that best separates harmful from harmless prompts. Refusal cosines and direction "
            "baselines use it."
        )
    return workspace


def _is_default(key: str) -> bool:
    return key.removeprefix(SPEC_KEY) in (DEFAULT_WORKSPACE, ORGANISM_NAME) or key == str(
        manifest_path(DEFAULT_WORKSPACE)
    )


_landed: dict[str, tuple[str, ...]] = {}
"""The default build's complete stages when a page last looked, per cache root (this process)."""


def _forget_when_stages_land(view: BuildView) -> None:
    """Drop loaded workspaces when a stage of the default's build has landed since the last look: the
    default loaded before it (say, without its SAEs) would otherwise stay cached under the same key."""
    root = str(cache_dir())
    landed = (*view.landed, "running" if view.running else "idle")
    if _landed.setdefault(root, landed) != landed:
        _landed[root] = landed
        cached_workspace.clear()


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
