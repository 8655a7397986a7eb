"""The Prompt inspector's refusal summary: each prompt's refusal score, its greedy reply with the judge's
verdict, side by side for a second prompt, and both prompts' refusal projections on one chart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from explorer.latents.inspector import PromptInspection
from explorer.refusal.score import REPLY_TOKENS, JudgedReply, judged_replies, score_probability
from explorer.ui.charts_inspect import projection_lines
from explorer.ui.state import INSPECT_REPLIES
from explorer.ui.walkthrough import ANSWERED, REFUSED
from explorer.workspace import Workspace

Shown = tuple[str, str, PromptInspection]
"""A prompt on the page: its title, the prompt as typed, and its inspection."""


def _score_help(inspection: PromptInspection) -> str:
    opening = " or ".join(f"'{s}'" for s in inspection.refusal_strings)
    return (
        f"Log-odds that the reply opens with {opening}, read where the reply starts: the score the refusal "
        "direction was selected by. Above 0, a refusal opening is more likely than not."
    )


def _summary(column: Any, title: str, inspection: PromptInspection, reply: JudgedReply | None) -> None:
    column.markdown(f"**{title}**")
    if inspection.refusal_score is not None:
        column.metric(
            "Refusal score (log-odds)", f"{inspection.refusal_score:+.2f}", help=_score_help(inspection)
        )
        column.caption(
            f"p(refusal opening) = {score_probability(inspection.refusal_score):.2f} · "
            f"{len(inspection.tokens):,} tokens"
        )
    box = column.container(border=True)
    if reply is None:
        box.caption(f"Greedy reply not generated yet ({REPLY_TOKENS} new tokens): use the button below.")
        return
    box.markdown(reply.text.strip() or "_(empty reply)_")
    box.caption(
        (REFUSED if reply.refused else ANSWERED)
        + f" · {reply.evidence} · {reply.judge} judge"
        + ("" if reply.finished else f" · cut at {reply.n_new} tokens")
    )


def refusal_summaries(workspace: Workspace, shown: Sequence[Shown]) -> None:
    """Each prompt's refusal score and (on a button, once per prompt) its greedy reply and verdict, in
    columns; with two prompts, their refusal projections on one chart."""
    replies: dict[tuple[str, str], JudgedReply] = st.session_state.setdefault(INSPECT_REPLIES, {})
    model = workspace.loaded.name
    summaries, button = st.container(), st.empty()
    missing = [prompt for _, prompt, _ in shown if (model, prompt) not in replies]
    label = "Generate the greedy reply" if len(missing) == 1 else "Generate the greedy replies"
    if missing and button.button(label, icon=":material/chat:", key="inspector_generate"):
        try:
            with st.spinner(f"Generating {len(missing)} × {REPLY_TOKENS} tokens…"):
                for reply in judged_replies(workspace.loaded, missing):
                    replies[(model, reply.prompt)] = reply
            button.empty()
        except ValueError as e:  # DataError: a prompt that with the reply would exceed the context
            st.error(f"Cannot generate a reply: {e}")
    with summaries:
        for column, (title, prompt, inspection) in zip(st.columns(len(shown)), shown, strict=True):
            _summary(column, title, inspection, replies.get((model, prompt)))
    if len(shown) > 1 and all(i.refusal_projection is not None for _, _, i in shown):
        st.plotly_chart(projection_lines([(title, i) for title, _, i in shown]), key="inspector_lines")
        st.caption(
            "Both prompts' refusal projections, aligned at their last token; the dotted line marks the "
            "position the refusal direction was read at."
        )
