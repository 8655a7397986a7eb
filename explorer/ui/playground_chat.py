"""The steering playground's chat: each column's own conversation, the prompt box, a turn streamed into
both columns, and the latest replies' verdicts and per-token strips."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import DataError
from explorer.steering.decode import TokenStep, generate_side_by_side
from explorer.steering.spec import SteeringError, SteeringSpec
from explorer.ui.charts_steering import Column, reply_strip
from explorer.ui.playground_state import Message, add_turn, chat_histories, clear_chat, widget_key
from explorer.ui.state import LAST_RESULT, STEER_PROMPT
from explorer.workspace import Workspace

COLUMNS: tuple[Column, Column] = ("default", "steered")
TITLES: dict[Column, str] = {"default": "Default", "steered": "Steered"}


def _show_text(slot: Any, text: str, streaming: bool = False) -> None:
    """A reply as markdown, with a cursor while it streams; a blank one says so."""
    shown = text.strip() or ("_(nothing but whitespace yet)_" if streaming else "_(nothing but whitespace)_")
    slot.markdown(shown + (" ▌" if streaming else ""))


def _history(column: Any, name: Column, messages: Sequence[Message]) -> None:
    """One column's conversation so far, under the column's title."""
    column.subheader(TITLES[name])
    for message in messages:
        _show_text(column.chat_message(message["role"]), message["content"])


def _generate(
    ws: Workspace,
    prompt: str,
    spec: SteeringSpec,
    sampling: SamplingConfig,
    pending: Sequence[Any],
) -> bool:
    """Stream the next turn into both columns, each continuing its own history; on success add the turn
    to both histories and keep the result. False (with an error shown) if nothing could be generated."""
    turn = {"role": "user", "content": prompt}
    slots = []
    for box in pending:
        _show_text(box.chat_message("user"), prompt)
        slots.append(box.chat_message("assistant").empty())
    texts = ["", ""]

    def on_step(_step: int, events: list[TokenStep | None]) -> None:
        for row, event in enumerate(events):
            if event is not None:
                texts[row] += event.text
                _show_text(slots[row], texts[row], streaming=True)

    default, steered = chat_histories()
    try:
        result = generate_side_by_side(
            ws.steerer(),
            [*default, turn],
            spec,
            sampling,
            steered_conversation=[*steered, turn],
            on_step=on_step,
        )
    except (DataError, SteeringError) as e:
        st.error(f"Could not generate: {e}")
        return False
    st.session_state[LAST_RESULT] = result.to_dict()
    add_turn(prompt, result.default.text, result.steered.text)
    return True


def _verdict(column: Any, result: dict[str, Any], name: Column) -> None:
    """The judge's verdict on a column's latest reply, its evidence, and the reply's per-token strip."""
    verdict = result[name]["verdict"]
    with column:
        said = ":red[refused]" if verdict["refused"] else ":green[answered]"
        st.markdown(f"**Verdict:** {said} · {verdict['judge']}")
        st.caption(f"Evidence: {verdict['evidence']}")
        figure = reply_strip(result, name)
        if figure is not None:
            st.plotly_chart(figure, key=f"steer_strip_{name}")


def _notes(result: dict[str, Any], spec: SteeringSpec | None, sampling: SamplingConfig) -> None:
    """How to read the strips, and whether the setup changed since the latest replies."""
    if result["latent_labels"]:
        st.caption(
            "Heatmaps: each clamped latent's activation before clamping, at the position that produced "
            "each token (raw units). Line: the residual's projection on the unit refusal direction, after "
            "steering."
        )
    if (
        spec is None
        or SteeringSpec.from_dict(result["spec"]) != spec
        or result["sampling"] != sampling.to_dict()
    ):
        st.caption("The setup changed since these replies were generated: press Generate to update them.")


def chat_section(
    ws: Workspace, spec: SteeringSpec | None, problem: str | None, sampling: SamplingConfig
) -> str:
    """Both columns' conversations side by side, the prompt box and Generate (which adds a turn to both).

    Args:
        spec: the steering the widgets describe (None if it cannot be read).
        problem: why `spec` cannot run (None if it can); Generate then refuses.

    Returns:
        The prompt box's text (the next user turn).
    """
    default, steered = chat_histories()
    st.subheader("Chat")
    pending, verdicts = [], []
    for column, name, messages in zip(st.columns(2), COLUMNS, (default, steered), strict=True):
        _history(column, name, messages)
        pending.append(column.container())
        verdicts.append(column.container())
    notes = st.container()
    if default:
        st.caption(
            "Each column continues its own conversation: the default one from its unsteered replies, the "
            "steered one from its steered replies."
        )
        if st.button("Clear chat", key="steer_clear_chat"):
            clear_chat()
            st.rerun()
    label = "Next message" if default else "Prompt"
    # Keyed by the turn count, so the box comes back empty once a turn is added.
    prompt = str(
        st.text_area(label, st.session_state.get(STEER_PROMPT, ""), key=widget_key(f"prompt{len(default)}"))
    )
    st.session_state[STEER_PROMPT] = prompt
    if st.button("Generate", type="primary", key="steer_generate"):
        if spec is None or problem is not None:
            st.error("Nothing was generated: fix the steering setup above first.")
        elif not prompt.strip():
            st.error("Type a prompt first.")
        elif _generate(ws, prompt, spec, sampling, pending):
            st.rerun()
    result = st.session_state.get(LAST_RESULT)
    if result is not None:
        for column, name in zip(verdicts, COLUMNS, strict=True):
            _verdict(column, result, name)
        with notes:
            _notes(result, spec, sampling)
    return prompt
