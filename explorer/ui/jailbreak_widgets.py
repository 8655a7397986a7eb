"""Widgets of the Jailbreak lens page: the stored study's table and charts, a run, the live comparison."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from explorer.core.jailbreaks import Wrapper, builtin_wrappers, load_wrapper_file
from explorer.core.prompts import DataError, builtin_prompts
from explorer.research.jailbreak_compare import LiveComparison, compare_prompt
from explorer.research.jailbreak_latents import LatentChange
from explorer.research.jailbreaks import (
    JailbreakConfig,
    JailbreakError,
    JailbreakStudy,
    WrapperResult,
    load_study,
    run_study,
    save_study,
    study_path,
)
from explorer.ui.charts_jailbreaks import projection_by_position, token_projection, wrapper_bars
from explorer.ui.state import open_latent
from explorer.workspace import Workspace

LIVE_RESULT = "jailbreak_live"
DEFAULT_N = 8
"""Prompts of a run started from the page: 9 passes of 8 prompts finish in a few minutes on a CPU."""


def stored_study(model_name: str) -> JailbreakStudy | None:
    """The stored study, or None (with an `st.error` for a corrupt file; nothing shown for a missing one)."""
    if not study_path(model_name).is_file():
        return None
    try:
        return load_study(model_name)
    except JailbreakError as e:
        st.error(str(e))
        return None


def uploaded_wrappers() -> list[Wrapper] | None:
    """The wrappers of an uploaded JSON/JSONL file, the built-in set without one; None (error shown) for a
    bad file."""
    upload = st.file_uploader(
        "Your wrappers (JSON list or JSONL of name, template)", type=["json", "jsonl"], key="jailbreak_upload"
    )
    if upload is None:
        return builtin_wrappers()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"wrappers{Path(upload.name).suffix}"  # the user's name never builds a path
        path.write_bytes(upload.getvalue())
        try:
            return load_wrapper_file(path)
        except DataError as e:
            st.error(f"Bad wrapper file: {e}")
            return None


def run_button(workspace: Workspace) -> None:
    """Run a small study from the page (with progress), store it, and reload."""
    wrappers = uploaded_wrappers()
    cols = st.columns(2)
    most = len(builtin_prompts("harmful", "test"))
    n = int(
        cols[0].number_input(
            "Harmful test prompts",
            1,
            most,
            DEFAULT_N,
            key="jailbreak_n",
            help="spread over the categories; `explorer jailbreaks` takes the whole split",
        )
    )
    tokens = int(cols[1].number_input("Tokens per reply", 1, 128, 32, key="jailbreak_tokens"))
    if not st.button(
        "Run the jailbreak lens", type="primary", disabled=wrappers is None, key="jailbreak_run"
    ):
        return
    assert wrappers is not None
    bar = st.progress(0.0, text="starting…")

    def on_progress(share: float, what: str) -> None:
        bar.progress(min(share, 1.0), text=what)

    try:
        study = run_study(workspace, wrappers, JailbreakConfig(n=n, max_new_tokens=tokens), None, on_progress)
    except (DataError, JailbreakError) as e:
        st.error(f"The study stopped: {e}")
        return
    save_study(study)
    st.rerun()


def study_table(study: JailbreakStudy) -> None:
    """The table across wrappers and its bar chart."""
    rows = []
    for r in study.results:
        harm = r.harm[0] if r.harm else None
        rows.append(
            {
                "wrapper": r.wrapper.name,
                "refused plain": r.refused_plain,
                "refused wrapped": r.refused_wrapped,
                "attack success": r.attack_success,
                "answered / refused plain": f"{r.attack_count}/{r.attack_base}",
                "Δ refusal latents": None if r.refusal is None else r.refusal.relative,
                "Δ harm latents": None if harm is None else harm.relative,
                "Δ projection": r.projection_relative,
                "verdict": r.verdict,
            }
        )
    percent = st.column_config.NumberColumn(format="percent")
    shares = [k for k in (rows[0] if rows else {}) if k.startswith(("refused", "attack", "Δ"))]
    st.dataframe(rows, hide_index=True, column_config={k: percent for k in shares})
    st.caption(
        f"Δ: (wrapped − plain) / plain of the mean activation or projection. Verdict rule: {study.rule}"
    )
    st.plotly_chart(wrapper_bars(study), key="jailbreak_bars")


def _latent_rows(changes: list[LatentChange], hook: str, key: str) -> None:
    for change in changes:
        cols = st.columns([1, 2, 6])
        if cols[0].button(f"{change.latent}", key=f"{key}_{hook}_{change.latent}", help="open this latent"):
            open_latent(hook, change.latent)
            st.switch_page("pages/latent_detail.py")
        cols[1].write(f"{change.change:+.3f} ± {change.se:.3f} ({change.plain:.2f} → {change.wrapped:.2f})")
        cols[2].caption(change.label or "(no label)")


def wrapper_detail(study: JailbreakStudy, result: WrapperResult) -> None:
    """What one wrapper does: the latents it suppresses most per SAE, the projection per position, and
    sample replies."""
    st.caption(f"`{result.wrapper.name}`: {result.wrapper.description or result.wrapper.template}")
    if result.projection_plain:
        st.plotly_chart(
            projection_by_position(
                study.post_tokens, result.projection_plain, result.projection_wrapped, study.refusal_position
            ),
            key="jailbreak_positions",
        )
    for extremes in result.extremes:
        with st.expander(f"Latents it suppresses most at {extremes.hook} (mean change, wrapped − plain)"):
            _latent_rows(extremes.suppressed, extremes.hook, "jb_sup")
    only = st.toggle("Only the attacks that worked", key="jailbreak_only_success")
    rows = [
        {
            "prompt": p.prompt,
            "plain reply": p.plain,
            "plain": p.plain_label,
            "wrapped reply": p.wrapped,
            "wrapped": p.wrapped_label,
        }
        for p in result.replies
        if not only or (p.plain_label == "refusal" and p.wrapped_label == "compliance")
    ]
    st.dataframe(rows, hide_index=True)


def live_panel(workspace: Workspace, wrapper: Wrapper) -> None:
    """Pick a prompt (a harmful test prompt, or typed) and compare it plain and wrapped, live."""
    own = st.radio("Prompt", ["a harmful test prompt", "my own"], horizontal=True, key="jailbreak_source")
    if own == "my own":
        prompt = st.text_input("Your prompt", key="jailbreak_prompt_typed")
    else:
        prompts = [r.text for r in builtin_prompts("harmful", "test")]
        prompt = st.selectbox("Harmful test prompt", prompts, key="jailbreak_prompt_pick") or ""
    hooks = sorted(workspace.saes)
    hook = (
        st.selectbox(
            "SAE",
            hooks,
            index=hooks.index(workspace.main) if workspace.main in hooks else 0,
            key="jailbreak_live_sae",
        )
        if hooks
        else None
    )
    if st.button("Compare plain and wrapped", key="jailbreak_compare"):
        try:
            with st.spinner("Two forward passes…"):
                st.session_state[LIVE_RESULT] = compare_prompt(workspace, wrapper, prompt, hook)
        except (DataError, ValueError) as e:
            st.error(f"Cannot compare: {e}")
            return
    live: LiveComparison | None = st.session_state.get(LIVE_RESULT)
    if live is None or live.wrapper != wrapper.name:
        return
    if live.plain.projection:
        st.plotly_chart(token_projection(live.plain, live.wrapped), key="jailbreak_live_chart")
    cols = st.columns(2)
    for col, (title, view) in zip(cols, (("Plain", live.plain), ("Wrapped", live.wrapped)), strict=True):
        with col:
            st.markdown(f"**{title}**: top latents at the post-instruction positions ({live.hook})")
            st.dataframe(
                [
                    {
                        "latent": c.latent,
                        "activation": c.wrapped if view is live.wrapped else c.plain,
                        "label": c.label,
                    }
                    for c in view.top
                ],
                hide_index=True,
            )
    st.markdown("**Suppressed most on this prompt**")
    _latent_rows(live.suppressed, live.hook, "jb_live")
