"""The Latents and Latent detail pages' session helpers: the cached latent table and the chosen latent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import streamlit as st

from explorer.latents.reader import LatentCache
from explorer.latents.schema import MANIFEST_FILE
from explorer.latents.table import LatentTable, build_table
from explorer.ui.state import LATENT, Q_LATENT, Q_SAE, SAE_HOOK, open_latent

DETAIL_PAGE = "pages/latent_detail.py"


PAGE_SIZES = (25, 50, 100, 250, 500)
"""Rows per page the Latents table offers (only one page of rows is sent to the browser)."""


def latent_table(cache: LatentCache) -> LatentTable:
    """The cache's latent table, built once per (cache directory, manifest mtime) and process."""
    manifest = cache.directory / MANIFEST_FILE
    return _cached_table(cache, str(cache.directory), manifest.stat().st_mtime_ns)


@st.cache_resource(show_spinner="Reading the latent table…", max_entries=16)
def _cached_table(_cache: LatentCache, directory: str, mtime_ns: int) -> LatentTable:
    """Keyed by `directory` and `mtime_ns` only (the cache object is not hashed): a rebuilt cache is
    read again. A resource, not data: every rerun gets the same table object instead of unpickling a
    copy (tens of milliseconds at 131,072 latents); nothing mutates it."""
    return build_table(_cache)


def page_picker(n_rows: int, key: str, reset_on: object) -> slice:
    """A rows-per-page selectbox and a page number input for a table of `n_rows` rows; back on page 1
    whenever `reset_on` (the filters, search and order) changes.

    Returns:
        The slice of the (filtered, sorted) rows to show.
    """
    size_key, number_key, seen_key = f"{key}_size", f"{key}_page", f"{key}_seen"
    digest = repr(reset_on)
    if st.session_state.get(seen_key) != digest:
        st.session_state[seen_key] = digest
        st.session_state[number_key] = 1
    cols = st.columns([1, 1, 3], vertical_alignment="bottom")
    size = int(cols[0].selectbox("Rows per page", PAGE_SIZES, index=PAGE_SIZES.index(100), key=size_key))
    n_pages = max(1, -(-n_rows // size))
    if int(st.session_state.get(number_key) or 1) > n_pages:
        st.session_state[number_key] = n_pages
    number = int(cols[1].number_input("Page", min_value=1, max_value=n_pages, step=1, key=number_key) or 1)
    start = (number - 1) * size
    stop = min(start + size, n_rows)
    cols[2].caption(f"Page {number} of {n_pages}: rows {start + 1}–{stop} of {n_rows}.")
    return slice(start, stop)


def chosen_hook(hooks: list[str], main: str | None) -> tuple[str | None, str | None]:
    """The SAE the pages show: session state, else the `sae` query parameter, else `main`.

    Returns:
        (hook, problem): `problem` says why a requested hook was not used (None when all is well).
    """
    wanted = st.session_state.get(SAE_HOOK) or st.query_params.get(Q_SAE)
    if wanted is None or wanted in hooks:
        return wanted or main, None
    return main, f"No SAE at `{wanted}`; this model has SAEs at {', '.join(hooks)}. Showing `{main}`."


@dataclass(frozen=True)
class LatentChoice:
    """The latent the detail page shows, and what was wrong with the one requested (None if nothing)."""

    latent: int
    problem: str | None


def chosen_latent(d_sae: int) -> LatentChoice:
    """The latent to show: session state, else the `latent` query parameter (a share link), else 0.

    A requested latent that is not an integer in 0..d_sae-1 falls back to 0 with a problem naming
    the value and the valid range.
    """
    valid = f"this SAE has latents 0..{d_sae - 1}"
    requested: Any = st.session_state.get(LATENT)
    if requested is None:
        requested = st.query_params.get(Q_LATENT)
    if requested is None:
        return LatentChoice(0, None)
    try:
        latent = int(str(requested).strip())
    except ValueError:
        return LatentChoice(0, f"Latent `{requested}` is not an integer: {valid}. Showing latent 0.")
    if not 0 <= latent < d_sae:
        return LatentChoice(0, f"Latent {latent} is out of range: {valid}. Showing latent 0.")
    return LatentChoice(latent, None)


def picked_row(event: Any) -> int | None:
    """The row a `st.dataframe(on_select=...)` event selected, or None."""
    rows = _selection(event).get("rows") or []
    return int(rows[0]) if rows else None


def picked_point(event: Any) -> int | None:
    """The latent of the point a `st.plotly_chart(on_select=...)` event selected (from its customdata)."""
    points = _selection(event).get("points") or []
    if not points:
        return None
    data = points[0].get("customdata")
    if isinstance(data, list | tuple):
        data = data[0] if data else None
    return None if data is None else int(data)


def _selection(event: Any) -> Mapping[str, Any]:
    selection = event.get("selection") if isinstance(event, Mapping) else getattr(event, "selection", None)
    return selection if isinstance(selection, Mapping) else {}


def sae_picker(hooks: list[str], main: str | None, key: str) -> str | None:
    """A selectbox of the workspace's SAEs showing the chosen one (an error names a bad requested hook);
    picking one makes it the pages' SAE."""
    current, problem = chosen_hook(hooks, main)
    if problem:
        st.error(problem)
    if current is None or current not in hooks:
        return current
    if st.session_state.get(key) != current:
        st.session_state[key] = current
    st.selectbox(
        "SAE",
        hooks,
        key=key,
        format_func=lambda h: f"{h} (main)" if h == main else h,
        on_change=_set_hook,
        args=(key,),
    )
    return current


def _set_hook(key: str) -> None:
    st.session_state[SAE_HOOK] = st.session_state[key]


def latent_picker(hook: str, d_sae: int, latent: int, key: str) -> None:
    """A number input showing `latent`; changing it opens the new latent (state and share link)."""
    if st.session_state.get(key) != latent:
        st.session_state[key] = latent
    st.number_input(
        f"Latent (0..{d_sae - 1})",
        min_value=0,
        max_value=d_sae - 1,
        step=1,
        key=key,
        on_change=_open_picked,
        args=(hook, key),
    )


def _open_picked(hook: str, key: str) -> None:
    open_latent(hook, int(st.session_state[key]))


def go_to_latent(hook: str, latent: int) -> None:
    """Open a latent on the Latent detail page, with its share link in the URL."""
    open_latent(hook, latent)
    st.switch_page(DETAIL_PAGE, query_params={Q_SAE: hook, Q_LATENT: str(int(latent))})
