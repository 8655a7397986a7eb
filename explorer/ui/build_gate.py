"""While the offline default builds in the background: which stage brings each page's data, a page that
waits for its stage (saying which, with its state and time left, and opening by itself when it lands),
which page the app opens on, and the button that starts the build."""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from explorer.build_watch import BuildView, build_state, duration_text, start_background, stderr_fd
from explorer.core.paths import cache_dir
from explorer.manifest import DEFAULT_WORKSPACE, MANIFEST_FILE, WORKSPACE_ENV, WORKSPACES_DIR
from explorer.ui.state import MODEL_ENV

WAIT_REFRESH = 5.0
"""Seconds between two looks at the build from a page that waits for a stage."""


@dataclass(frozen=True)
class PageNeeds:
    """What a page shows of the offline default, and the build stages that bring it.

    Attributes:
        opens: the stage after which the page opens.
        full: the stage after which everything on it is there (the same stage, or a later one).
        later: what arrives with `full`, when it is a later stage than `opens`.
    """

    title: str
    shows: str
    opens: str
    full: str
    later: str = ""


PAGE_NEEDS = {
    "demo": PageNeeds(
        "Walkthrough",
        "the safety-tuned model's metrics and its refusal direction",
        "refusal",
        "cache",
        "the latents aligned with the direction and the steering steps",
    ),
    "overview": PageNeeds(
        "Overview",
        "the safety-tuned model",
        "organism",
        "saes",
        "the refusal direction and the SAEs' quality reports",
    ),
    "latents": PageNeeds("Latents", "every latent's statistics", "cache", "cache"),
    "latent_detail": PageNeeds("Latent detail", "each latent's examples and statistics", "cache", "cache"),
    "inspector": PageNeeds(
        "Prompt inspector", "the refusal projection of a prompt", "refusal", "cache", "per-token SAE latents"
    ),
    "steering": PageNeeds("Steering playground", "latents to clamp, in units of their max", "cache", "cache"),
    "evaluate": PageNeeds(
        "Evaluate", "sweeps of the refusal direction", "refusal", "cache", "sweeps of the top latents"
    ),
    "jailbreaks": PageNeeds("Jailbreak lens", "the SAEs' latents and their labels", "cache", "cache"),
    "upstream": PageNeeds("Upstream graph", "the refusal latents of the main SAE", "cache", "cache"),
    "probes": PageNeeds("Probes", "the refusal latents of the main SAE", "cache", "cache"),
}
"""By page file name (`pages/<name>.py`)."""


def serves_default() -> bool:
    """True when the app opens the offline default: no other model or workspace was asked for or built."""
    if os.environ.get(MODEL_ENV, "default").strip() not in ("", "default") or os.environ.get(WORKSPACE_ENV):
        return False
    manifests = (cache_dir() / WORKSPACES_DIR).glob(f"*/{MANIFEST_FILE}")
    return all(path.parent.name == DEFAULT_WORKSPACE for path in manifests)


def build_first() -> bool:
    """True when the app should open on the Build page: a build of the offline default runs, or the app
    serves the default and its build is not complete."""
    view = build_state()
    return view.running or (serves_default() and not view.complete)


def start_button(view: BuildView, key: str) -> None:
    """A button that starts the build in the background, when none runs and it is not complete. It takes
    the build lock like `make demo`, so it can never start a second build."""
    if view.running or view.complete:
        return
    label = "Resume the build" if any(s.complete for s in view.stages) else "Start the build"
    if st.button(label, key=key, icon=":material/play_arrow:", type="primary"):
        launch = start_background(terminal=stderr_fd())
        if launch.started:
            st.rerun()  # the whole app: the Build page opens first and refreshes faster while it runs
        st.warning(launch.message)


def wait_for_stages(page: str, view: BuildView) -> None:
    """Stop the page with a message naming the stage that brings its data (its state, time left) until
    that stage is complete, then rerun the app; once it opens, say what is still to come. `view` is the
    page run's first look at the build; every later one runs in a fragment, so a page that waits never
    reloads anything else."""
    needs = PAGE_NEEDS[page]
    if view.stage(needs.opens).complete:
        if not view.stage(needs.full).complete:
            st.fragment(_arriving, run_every=WAIT_REFRESH)(needs, view.landed)
        return
    st.fragment(_waiting, run_every=WAIT_REFRESH)(needs, page)
    st.stop()


def _arriving(needs: PageNeeds, landed: tuple[str, ...]) -> None:
    view = build_state()
    if view.landed != landed:
        st.rerun()
    full = view.stage(needs.full)
    if view.running:
        left = view.remaining_until(full.name)
        st.info(
            f"The build is still running: {needs.later} arrive with stage **{full.name}**"
            + (f", in about {duration_text(left)}" if left is not None else "")
            + ". This page refreshes itself when they land.",
            icon=":material/construction:",
        )
    else:
        st.warning(
            f"{needs.later.capitalize()} come with stage **{full.name}**, which has not run "
            f"({_state_words(view, full.name)}). Start the build again from the Build page.",
            icon=":material/construction:",
        )
    st.page_link("pages/build.py", label="Follow the build", icon=":material/construction:")


def _waiting(needs: PageNeeds, page: str) -> None:
    view = build_state()
    stage = view.stage(needs.opens)
    if stage.complete:
        st.rerun()
    message = (
        f"This page shows {needs.shows}, which the build's stage **{stage.name}** ({stage.title}) brings"
    )
    if stage.state == "failed":
        st.error(f"{message}, and that stage failed: {stage.error}", icon=":material/error:")
        st.info("Fix the cause and run `make demo` (or `explorer build`) again: the build resumes there.")
    elif view.running:
        st.info(
            f"{message}: {_state_words(view, stage.name)}. This page opens by itself when it is done.",
            icon=":material/hourglass_top:",
        )
        if stage.state == "running" and stage.fraction is not None:
            st.progress(stage.fraction, text=stage.step or stage.title)
    else:
        st.info(f"{message}: {_state_words(view, stage.name)}.", icon=":material/construction:")
        start_button(view, key=f"start_build_{page}")
    st.page_link("pages/build.py", label="Follow the build", icon=":material/construction:")


def _state_words(view: BuildView, name: str) -> str:
    """A stage's state in a few words: running with time left, pending with its expected start, ..."""
    stage = view.stage(name)
    if stage.state == "running":
        left = f", about {duration_text(stage.remaining)} left" if stage.remaining is not None else ""
        return f"running for {duration_text(stage.elapsed)}{left}"
    if stage.state == "pending" and view.running:
        left = view.remaining_until(name)
        return "waiting for the stages before it" + (
            f"; expected done in about {duration_text(left)}" if left is not None else ""
        )
    if stage.state == "stopped":
        return "the build stopped while it ran (interrupted)"
    if view.state == "none":
        return "nothing is built yet"
    return f"the last build ({view.state}) did not reach it"
