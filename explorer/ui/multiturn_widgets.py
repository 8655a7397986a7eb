"""The Evaluate page's multi-turn attacks: which escalations, playing them under each setting with progress,
and the result with every conversation."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import streamlit as st

from explorer.core.escalations import Escalation, builtin_escalations, load_escalation_file
from explorer.core.judge import Judge
from explorer.core.judge_models import JudgeError
from explorer.core.llm import LLMError
from explorer.core.prompts import DataError
from explorer.steering.multiturn import MultiTurnConfig, MultiTurnPoint, evaluate_multi_turn
from explorer.steering.spec import SteeringError
from explorer.ui.charts_steering import multi_turn_bars
from explorer.ui.evaluate_widgets import MODES, SPLITS, checked_settings
from explorer.ui.state import MULTITURN_RESULT
from explorer.workspace import Workspace


def choose_escalations() -> tuple[list[Escalation], str] | None:
    """The built-in escalations of a split, or an uploaded JSONL file; None (error shown) when the upload
    cannot be read.

    Returns:
        (escalations, where they come from in words).
    """
    cols = st.columns([1, 2])
    source = cols[0].radio(
        "Escalations", ["builtin", "upload"], format_func={"builtin": "built-in", "upload": "my file"}.get,
        key="mt_source",
    )  # fmt: skip
    if source == "builtin":
        split = cols[1].radio("Split", SPLITS, horizontal=True, key="mt_split")
        chosen = builtin_escalations(split)
        return chosen, f"the built-in escalations, {split} split"
    file = cols[1].file_uploader(
        "Escalations (JSONL, one object with 'turns' per line)", type=["jsonl"], key="mt_upload"
    )
    if file is None:
        st.info("Upload a file, or use the built-in escalations.")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        path.write_bytes(file.getvalue())
        try:
            return load_escalation_file(path), f"{file.name}"
        except (DataError, UnicodeDecodeError) as e:
            st.error(f"Cannot use {file.name}: {e}")
            return None


def multi_turn_section(
    ws: Workspace, mode: str, latents: list[tuple[str, int]], strengths: str, units: str, judge: Judge | None
) -> None:
    """The escalations, the reply lengths, the run button and the kept result."""
    chosen = choose_escalations()
    defaults = MultiTurnConfig()  # the same defaults as `explorer eval --multi-turn`
    cols = st.columns(2)
    tokens = cols[0].number_input(
        "Tokens of the final reply", 1, 256, defaults.max_new_tokens, key="mt_tokens"
    )
    history = cols[1].number_input(
        "Tokens of each earlier reply", 1, 256, defaults.history_tokens, key="mt_history",
        help="the model's own replies, made under the same steering, fill the earlier assistant turns",
    )  # fmt: skip
    if chosen is not None:
        st.caption(f"{len(chosen[0])} escalations from {chosen[1]}, every setting after the unsteered model.")
    if st.button(
        "Play the escalations", type="primary", key="mt_run", disabled=judge is None or chosen is None
    ):
        if not mode.startswith("direction") and not latents:
            st.error("Choose at least one latent to steer.")
        elif judge is not None and chosen is not None:
            config = MultiTurnConfig(max_new_tokens=int(tokens), history_tokens=int(history))
            _run(ws, mode, latents, strengths, units, judge, config, *chosen)
    result = st.session_state.get(MULTITURN_RESULT)
    if result is None:
        st.info("Play the escalations to see refusal at their final turn; the last result stays here.")
    else:
        show_multi_turn(result)


def _run(
    ws: Workspace,
    mode: str,
    latents: list[tuple[str, int]],
    strengths: str,
    units: str,
    judge: Judge,
    config: MultiTurnConfig,
    escalations: list[Escalation],
    source: str,
) -> None:
    try:
        settings = checked_settings(ws, mode, latents, strengths, units)
    except (ValueError, SteeringError) as e:
        st.error(f"Cannot play these settings: {e}. Nothing was run.")
        return
    bar = st.progress(0.0, text="unsteered model…")

    def on_progress(done: int, total: int, label: str) -> None:
        bar.progress(done / total, text=f"{label} done ({done}/{total})")

    try:
        points = evaluate_multi_turn(
            ws.steerer(judge), settings, escalations, config, on_progress=on_progress
        )
    except (DataError, JudgeError, LLMError) as e:
        st.error(f"The escalations stopped: {e}")
        return
    st.session_state[MULTITURN_RESULT] = {
        "model": ws.loaded.name,
        "mode": mode,
        "latents": [f"{h}:{i}" for h, i in latents],
        "escalations": source,
        "config": config.to_dict(),
        "judge": judge.name,
        "points": points,
    }


def _table(points: list[MultiTurnPoint]) -> list[dict[str, Any]]:
    return [
        {
            "setting": p.label,
            "refused at the final turn": p.refusal_final,
            "95% CI": "{:.0%}-{:.0%}".format(*p.refusal_final_ci),
            "asked alone": p.refusal_direct,
            "95% CI alone": "{:.0%}-{:.0%}".format(*p.refusal_direct_ci),
            "degenerate": p.degenerate_final,
            "refused per turn": ", ".join(f"{r:.0%}" for r in p.refusal_by_turn),
            "escalations": p.n,
            "seconds": p.seconds,
        }
        for p in points
    ]


def show_multi_turn(result: dict[str, Any]) -> None:
    """The kept result: bars with intervals, the table, every conversation, a JSON download."""
    points: list[MultiTurnPoint] = result["points"]
    what = " ".join([MODES[result["mode"]], ", ".join(result["latents"])]).strip()
    st.subheader("Refusal at the final turn")
    st.caption(
        f"{what} over {result['escalations']} ({result['judge']} judge). Error bars: 95% Wilson intervals; "
        "'asked alone' is the final request without the conversation before it."
    )
    st.plotly_chart(multi_turn_bars(points), key="mt_plot")
    st.dataframe(_table(points), hide_index=True)
    st.subheader("Conversations")
    cols = st.columns(2)
    at = cols[0].selectbox("Setting", range(len(points)), format_func=lambda i: points[i].label, key="mt_at")
    rows = points[at].conversations
    n = cols[1].selectbox(
        "Escalation",
        range(len(rows)),
        format_func=lambda i: f"{rows[i]['id']} ({rows[i]['verdict']})",
        key="mt_conv",
    )
    row = rows[n]
    for turn, reply in zip(row["turns"], row["replies"], strict=False):
        st.chat_message("user").write(turn)
        st.chat_message("assistant").write(reply)
    st.caption(f"Final turn: {row['verdict']} ({row['evidence']}).")
    if row["direct_reply"] is not None:
        st.caption(f"Asked alone ({row['direct_verdict']}): {row['direct_reply']}")
    document = {**{k: v for k, v in result.items() if k != "points"}, "points": [asdict(p) for p in points]}
    st.download_button(
        "Download JSON", json.dumps(document, indent=2, ensure_ascii=False), "multiturn.json",
        "application/json", key="mt_json", on_click="ignore",
    )  # fmt: skip
