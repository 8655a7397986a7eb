"""The Prompt inspector's widgets: running an inspection once per request, the token chart (windowed,
a click picks a token) with the token picker, and the table of one token's latents."""

from __future__ import annotations

import zlib
from typing import Any

import streamlit as st

from explorer.latents.inspector import (
    MAX_TOKENS,
    PromptInspection,
    TokenLatents,
    inspect_prompt,
    latent_summaries,
)
from explorer.latents.reader import CacheError, LatentCache
from explorer.ui.charts_inspect import WINDOW, layer_projections, token_label, token_strip
from explorer.ui.latent_data import picked_point
from explorer.ui.state import (
    INSPECT_PROMPT,
    INSPECT_PROMPT_WIDGET,
    INSPECT_SAE_WIDGET,
    INSPECT_TOKEN_WIDGET,
    INSPECT_WINDOW_WIDGET,
    Q_PROMPT,
    Q_SAE,
    SAE_HOOK,
    add_to_steering,
    open_latent,
)
from explorer.workspace import Workspace

WIDTHS = [1, 1.2, 1, 4, 1, 1]
CHART_KEY = "inspector_chart"
"""Prefix of the token chart's key; the rest names the request, window and selected token, so a chart
whose click was applied is replaced by a fresh one (a second click on a selected bar would unselect it)."""


def inspection_for(
    workspace: Workspace,
    request: tuple[Any, ...],
    key: str,
    *,
    hook: str | None,
    every_layer: bool = False,
    name: str = "this prompt",
) -> PromptInspection | None:
    """The inspection of `request` (model name, prompt, ...), from session state under `key` when it was
    already run, else run now (with a spinner) and stored. None, with an `st.error` naming the prompt as
    `name`, when it cannot run."""
    stored = st.session_state.get(key)
    if stored is not None and stored[0] == request:
        return stored[1]
    prompt = request[1]
    try:
        with st.spinner(f"Running the model on {len(prompt):,} characters…"):
            inspection = inspect_prompt(
                workspace, prompt, hook, every_layer=every_layer, max_tokens=MAX_TOKENS, score=True
            )
    except ValueError as e:  # DataError (empty, over the context), InspectError (over the cap, ...)
        st.error(f"Cannot inspect {name}: {e}")
        return None
    st.session_state[key] = (request, inspection)
    return inspection


def clicked_token(event: Any, n: int) -> int | None:
    """The token a `st.plotly_chart(on_select=...)` event on the token chart picked (its customdata
    starts with the token index), or None: no point, or an index outside the prompt's `n` tokens."""
    index = picked_point(event)
    return index if index is not None and 0 <= index < n else None


def _start_for(selected: int, n: int) -> int:
    """The window start that puts `selected` in the middle of the window (clamped to the prompt)."""
    return max(0, min(n - WINDOW, selected - WINDOW // 2))


def _follow(n: int) -> None:
    """On a pick in the token box: move the window so the picked token is in view."""
    selected = st.session_state.get(INSPECT_TOKEN_WIDGET, n - 1)
    start = st.session_state.get(INSPECT_WINDOW_WIDGET, 0)
    if n > WINDOW and not start <= selected < start + WINDOW:
        st.session_state[INSPECT_WINDOW_WIDGET] = _start_for(selected, n)


def forget_token() -> None:
    """Drop the picked token and window (a new prompt starts at its last token)."""
    st.session_state.pop(INSPECT_TOKEN_WIDGET, None)
    st.session_state.pop(INSPECT_WINDOW_WIDGET, None)


def pick_token(inspection: PromptInspection, request: tuple[Any, ...], scale: str, every_layer: bool) -> int:
    """The token chart, a window slider for long prompts and the token box; returns the picked token.

    A click on a bar or a heatmap cell picks its token (the chart is replaced, so the next click counts
    too); picking in the box moves the window to the token.
    """
    n = len(inspection.tokens)
    if st.session_state.get(INSPECT_TOKEN_WIDGET) not in range(n):
        st.session_state[INSPECT_TOKEN_WIDGET] = n - 1
    selected: int = st.session_state[INSPECT_TOKEN_WIDGET]
    start = st.session_state.get(INSPECT_WINDOW_WIDGET)
    if not isinstance(start, int) or not 0 <= start <= max(0, n - WINDOW):
        start = st.session_state[INSPECT_WINDOW_WIDGET] = _start_for(selected, n)
    digest = f"{zlib.crc32(repr(request).encode()):08x}"
    clicked = clicked_token(st.session_state.get(f"{CHART_KEY}_{digest}_{start}_{selected}"), n)
    if clicked is not None and clicked != selected:
        selected = st.session_state[INSPECT_TOKEN_WIDGET] = clicked
    if n > WINDOW:
        start = st.slider(
            f"Tokens shown ({WINDOW} at a time, of {n:,})",
            0,
            n - WINDOW,
            key=INSPECT_WINDOW_WIDGET,
            help="Long prompts are drawn a window at a time; slide to move it.",
        )
    window = range(start, min(n, start + WINDOW))
    st.plotly_chart(
        token_strip(inspection, scale, window, selected),
        on_select="rerun",
        selection_mode="points",
        key=f"{CHART_KEY}_{digest}_{start}_{selected}",
    )
    if every_layer and inspection.layer_projections:
        st.plotly_chart(layer_projections(inspection, window))
    return st.selectbox(
        "Token",
        list(range(n)),
        key=INSPECT_TOKEN_WIDGET,
        format_func=lambda i: token_label(inspection, i),
        on_change=_follow,
        args=(n,),
    )


def prompt_from_link(hooks: list[str]) -> None:
    """Open the prompt (and SAE) a link names (`?prompt=…&sae=…`, e.g. an example's inspect link on the
    Latent detail page), once: the parameter is consumed, so later edits are the user's."""
    prompt = st.query_params.get(Q_PROMPT)
    if prompt is None:
        return
    st.session_state[INSPECT_PROMPT] = st.session_state[INSPECT_PROMPT_WIDGET] = prompt
    hook = st.query_params.get(Q_SAE)
    if hook in hooks:
        st.session_state[SAE_HOOK] = st.session_state[INSPECT_SAE_WIDGET] = hook
    del st.query_params[Q_PROMPT]


def latent_rows(cache: LatentCache | None, hook: str, token: TokenLatents) -> None:
    """A row per latent firing on `token`: its activation, × its max and its label (from `cache`,
    when the SAE has one), and open and steer buttons. Steer picks the latent at 1 × its max, or at this
    activation in raw units when there is no cache to give a max."""
    try:
        summaries = latent_summaries(cache, token.latents) if cache is not None else None
    except CacheError as e:
        st.error(str(e))
        summaries = None
    for column, title in zip(
        st.columns(WIDTHS), ["latent", "activation", "× max", "label", "", ""], strict=True
    ):
        if title:
            column.markdown(f"**{title}**")
    for row, (latent, value, fraction) in enumerate(
        zip(token.latents, token.activations, token.fractions, strict=True)
    ):
        cells = st.columns(WIDTHS)
        cells[0].markdown(f"`#{latent}`")
        cells[1].markdown(f"{value:.3g}")
        cells[2].markdown("–" if fraction is None else f"{fraction:.2f}")
        cells[3].markdown(summaries[row].label if summaries else "–")
        if cells[4].button("open", key=f"inspector_open_{latent}"):
            open_latent(hook, latent)
            st.switch_page("pages/latent_detail.py")
        if cells[5].button("steer", key=f"inspector_steer_{latent}"):
            added = (
                add_to_steering(hook, latent)
                if cache is not None
                else add_to_steering(hook, latent, "set", round(value, 4), "raw")
            )
            if added:
                st.success(f"Latent {latent} added to the steering playground.")
            else:
                st.info(f"Latent {latent} is already in the steering playground.")
    st.caption(
        "**steer** adds the latent to the Steering playground "
        + (
            "set to 1 × its corpus max; tune it there."
            if cache is not None
            else "set to this activation (raw units)."
        )
    )
