"""The Build page's widgets: the offline default's build as it runs (each stage's state, progress and
time, the whole build's time left, a failed stage's error, the log's tail) and what each page needs."""

from __future__ import annotations

import streamlit as st

from explorer.build_watch import LOG_FILE, BuildView, StageView, build_state, duration_text, log_tail
from explorer.core.paths import cache_dir
from explorer.ui.build_gate import PAGE_NEEDS, start_button

RUNNING_REFRESH = 2.0
"""Seconds between two looks at a running build."""
IDLE_REFRESH = 10.0
"""Seconds between two looks when none runs (one started from a terminal shows up by itself)."""
LOG_LINES = 40
STATES = {
    "pending": (":material/schedule:", "gray", "pending"),
    "running": (":material/progress_activity:", "blue", "running"),
    "skipped": (":material/skip_next:", "green", "skipped (already complete)"),
    "done": (":material/check_circle:", "green", "done"),
    "failed": (":material/error:", "red", "failed"),
    "not requested": (":material/remove_circle_outline:", "gray", "not requested"),
    "stopped": (":material/stop_circle:", "orange", "stopped (interrupted)"),
}
"""Each stage state's icon, colour and words."""


def build_panel() -> None:
    """Everything about the build, refreshed in a fragment (every 2 s while a build runs); when the build
    starts, ends or dies, the whole app reruns so the navigation's first page follows it."""
    view = build_state()
    refresh = RUNNING_REFRESH if view.running else IDLE_REFRESH
    st.fragment(_panel, run_every=refresh)(view.state)


def _panel(seen: str) -> None:
    view = build_state()
    if view.state != seen:
        st.rerun()
    _headline(view)
    _totals(view)
    st.subheader("Stages")
    for stage in view.stages:
        stage_row(stage)
    st.subheader("What each page needs")
    page_needs(view)
    st.subheader("Log")
    lines = log_tail(cache_dir() / LOG_FILE, LOG_LINES)
    if lines:
        st.caption(
            f"The last {len(lines)} lines of `{cache_dir() / LOG_FILE}` (progress bars as last drawn)."
        )
        st.code("\n".join(lines), language=None)
    else:
        st.caption(f"No log yet: a build started by `make demo` or the button above writes `{LOG_FILE}`.")


def _headline(view: BuildView) -> None:
    running = next((s for s in view.stages if s.state == "running"), None)
    failed = next((s for s in view.stages if s.state == "failed"), None)
    stopped = next((s for s in view.stages if s.state == "stopped"), None)
    if view.running:
        now = f"stage **{running.name}** ({running.title})" if running else "starting"
        st.info(f"Building (pid {view.pid or '?'}): {now}.", icon=":material/progress_activity:")
    elif view.state == "failed":
        name = failed.name if failed else "?"
        st.error(
            f"Stage **{name}** failed: {view.error or (failed and failed.error)}", icon=":material/error:"
        )
        st.info(
            "Fix the cause, then run `make demo` (or `explorer build`) again, or press the button: the build "
            "skips the stages already complete and resumes at this one."
        )
    elif view.state == "stopped":
        where = f" during stage **{stopped.name}**" if stopped else ""
        st.warning(
            f"The build stopped{where} (interrupted: its process is gone). Starting it again resumes there.",
            icon=":material/stop_circle:",
        )
    elif view.state == "none":
        st.info(
            "Nothing is built yet. `make demo` starts the build in the background (so does the button); "
            "`make build` runs it in the terminal. The pages open as their data lands.",
            icon=":material/construction:",
        )
    elif view.complete:
        st.success("The offline default is built: every page has its data.", icon=":material/check_circle:")
    else:
        st.warning("The last build did not run every stage.", icon=":material/construction:")
    start_button(view, key="start_build_page")


def _totals(view: BuildView) -> None:
    complete = sum(s.complete for s in view.stages)
    cols = st.columns(4)
    cols[0].metric("Stages complete", f"{complete} of {len(view.stages)}")
    cols[1].metric("Elapsed", duration_text(view.elapsed))
    left = view.remaining
    if not view.running and not view.complete:  # what a build started now would take
        left = sum(s.expected or 0.0 for s in view.stages if not s.complete)
    shown = duration_text(left)
    if view.overran:
        shown = f"> {shown}" if left else "unknown"
    cols[2].metric(
        "Left (estimate)",
        shown,
        help="Each stage's expected time is its last full run's, or a default measured on a 2-core CPU; "
        "a running stage's estimate also follows its progress bar.",
    )
    cols[3].metric("Started", _clock(view.started), help=view.started)
    if view.running:
        st.progress(view.fraction, text=f"{view.fraction:.0%} of the expected time")


def _clock(stamp: str | None) -> str:
    """`14:03 UTC` from a build record's ISO time."""
    return "—" if not stamp else f"{stamp[11:16]} UTC"


def stage_row(stage: StageView) -> None:
    """One stage: icon, name and state; its progress bar; its time (taken, elapsed, left or expected)."""
    icon, colour, words = STATES.get(stage.state, (":material/help:", "gray", stage.state))
    left, middle, right = st.columns([2, 5, 2], vertical_alignment="center")
    left.markdown(f"{icon} **{stage.name}**  \n:{colour}[{words}]")
    if stage.state == "running":
        text = stage.step or stage.title
        middle.progress(stage.fraction or 0.0, text=text)
        if stage.remaining is not None:
            remaining = f" · ~{duration_text(stage.remaining)} left"
        elif stage.expected is not None:
            remaining = f" · longer than the expected ~{duration_text(stage.expected)}"
        else:
            remaining = ""
        right.caption(f"{duration_text(stage.elapsed)} elapsed{remaining}")
    else:
        middle.progress(1.0 if stage.complete else 0.0, text=stage.title)
        if stage.state == "done":
            right.caption(f"took {duration_text(stage.seconds)}")
        elif stage.state == "failed":
            right.caption(f":red[failed after {duration_text(stage.seconds)}]")
        elif stage.expected is not None and not stage.complete:
            right.caption(f"expected ~{duration_text(stage.expected)}")
    if stage.state == "failed" and stage.error:
        middle.error(stage.error, icon=":material/error:")


def page_needs(view: BuildView) -> None:
    """A table: each page, the stage it opens with and the stage that completes it, with their states."""

    def cell(name: str) -> str:
        stage = view.stage(name)
        icon, colour, words = STATES.get(stage.state, (":material/help:", "gray", stage.state))
        return f"{icon} `{name}` :{colour}[{words}]"

    rows = ["| Page | Opens with | Complete with |", "| --- | --- | --- |"]
    for needs in PAGE_NEEDS.values():
        full = (
            cell(needs.full) + (f": {needs.later}" if needs.later else "")
            if needs.full != needs.opens
            else "—"
        )
        rows.append(f"| **{needs.title}** | {cell(needs.opens)}: {needs.shows} | {full} |")
    st.markdown("\n".join(rows))
