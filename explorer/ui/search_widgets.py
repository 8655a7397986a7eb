"""The Evaluate page's Search tab: set a steering search up, run it with live progress, re-measure its
front on prompts it never saw beside the baselines, and load a stored study, as `explorer search-steering`
does (the same library functions, the same study file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import streamlit as st

from explorer.cli.search import studies_file
from explorer.core.judge import Judge
from explorer.core.prompts import builtin_prompts
from explorer.steering.evaluation import EvalConfig
from explorer.steering.search import (
    DEFAULT_EVALUATION,
    DEFAULT_MODES,
    DEFAULT_OBJECTIVES,
    RANGES,
    Goal,
    Objective,
    SearchConfig,
    SearchError,
    default_study_name,
)
from explorer.steering.search_setup import (
    auto_trigger,
    check_search,
    load_stored,
    parse_candidates,
    resolve_candidates,
    stored_studies,
    trigger_max,
)
from explorer.steering.search_study import (
    MAX_DEGENERATE,
    TrialRecord,
    open_study,
    run_search,
    trials,
    val_measure,
)
from explorer.steering.spec import Scope
from explorer.ui.search_remeasure import corpus_for, remeasure_form
from explorer.ui.search_results import open_setting, show_remeasured, show_trials, trial_table
from explorer.ui.state import SEARCH_RESULT
from explorer.workspace import Workspace

GOALS = {"refuse": "refuse more (a safety setting)", "bypass": "refuse less (red-teaming)"}
CANDIDATES = {
    "cosine": "top K by refusal cosine",
    "attribution": "top K by attribution",
    "cosine+attribution": "top K by cosine, then attribution",
    "listed": "my list",
}
SCOPES: dict[Scope, str] = {
    "all": "every position",
    "prompt": "the prompt only",
    "generated": "generated tokens only",
}
TRIALS, BUDGET_MINUTES = 20, 20.0
MAX_DEGENERATE_KEY = "search_max_degenerate"
FAILURES = (ValueError,)
"""What a bad setting or a failing judge raises (SearchError, SteeringError, CacheError, DataError,
JudgeError and LLMError are all ValueErrors): shown with st.error, the page kept."""


@dataclass(frozen=True)
class SearchRequest:
    """A search the form set up and checked: what to run, where to store it, when to stop."""

    config: SearchConfig
    chosen_by: str
    hook: str
    study: str
    n_trials: int
    budget_s: float


def search_tab(ws: Workspace, judge: Judge | None) -> None:
    """The whole Search tab: the form and its run, a stored study's loader, then the result on show."""
    st.caption(
        "Search which latents to clamp, how and how hard: each trial is measured on the val split, and the "
        "settings on the trade-off's Pareto front are kept. Studies are stored, so the same settings resume."
    )
    if not ws.caches:
        st.info(
            "The search picks and scales latents by their latent cache, and this model has none: run "
            "`explorer cache build` (or `make build`)."
        )
        return
    path = studies_file(ws.loaded.name)
    names, problem = _stored(path)
    request = search_form(ws, names)
    clicked = st.button(
        "Run search", type="primary", key="search_run", disabled=judge is None or request is None
    )
    if clicked and judge is not None and request is not None:
        run_search_now(ws, request, judge, path)
        names, problem = _stored(path)  # the new study is listed at once
    stored_section(ws, path, names, problem)
    result = st.session_state.get(SEARCH_RESULT)
    if result is None:
        st.info(
            "Run a search or load a stored one to see its trials and front; it stays here while you explore."
        )
        return
    show_trials(result)
    if result["records"]:
        remeasure_form(ws, judge, result)
    result = st.session_state[SEARCH_RESULT]
    show_remeasured(result)
    open_setting(result)


def _stored(path: Path) -> tuple[list[str], str | None]:
    """The studies stored in `path`, or why they cannot be read."""
    try:
        return stored_studies(path), None
    except SearchError as e:
        return [], str(e)


def search_form(ws: Workspace, stored: list[str]) -> SearchRequest | None:
    """The search's settings; None (with the error shown) when they cannot run."""
    goal: Goal = st.radio("Goal", list(GOALS), format_func=GOALS.get, horizontal=True, key="search_goal")  # pyright: ignore[reportAssignmentType]
    hooks = sorted(ws.caches)
    cols = st.columns([2, 3, 1])
    hook = cols[0].selectbox(
        "SAE hook",
        hooks,
        index=hooks.index(ws.main) if ws.main in hooks else 0,
        key="search_hook",
        help="where selected candidates and the recipe baseline's latents come from",
    )
    source = cols[1].radio(
        "Candidates",
        list(CANDIDATES),
        index=2,
        format_func=CANDIDATES.get,
        horizontal=True,
        key="search_source",
    )
    listed, top = "", 0
    if source == "listed":
        listed = st.text_input(
            "Latents (HOOK:LATENT, comma-separated)", key="search_list", placeholder=f"{hook}:12, {hook}:40"
        )
    else:
        most = min(16, ws.saes[hook].d_sae)
        top = cols[2].number_input("K", 1, most, min(4, most), key="search_top")
    cols = st.columns(3)
    ranges = RANGES[goal]
    modes = cols[0].multiselect(
        "Modes",
        list(ranges),
        list(DEFAULT_MODES[goal]),
        format_func=lambda m: f"{m} ({ranges[m][0]:g} to {ranges[m][1]:g})",
        key=f"search_modes_{goal}",
        help="what a candidate may do besides staying off, and its range: set, add, cap and floor in units "
        "of the latent's max, multiply and scale as factors",
    )
    scopes = cols[1].multiselect(
        "Scopes", list(SCOPES), ["all"], format_func=lambda s: SCOPES[s], key="search_scopes"
    )
    objectives = cols[2].multiselect(
        "Objectives", list(get_args(Objective)), list(DEFAULT_OBJECTIVES), key="search_objectives"
    )
    gate = st.checkbox(
        "Gate on a harm latent",
        key="search_gate",
        help="trials may make their clamps act only where a harm latent fires (the most harm-selective "
        "latent of the earliest cached SAE at or before the candidates), at a threshold they choose",
    )
    cols = st.columns(5)
    n_val = max(len(builtin_prompts(label, "val")) for label in ("harmful", "harmless"))
    n = cols[0].number_input(
        "Prompts per label (val)", 1, n_val, min(DEFAULT_EVALUATION.n_harmful or n_val, n_val), key="search_n"
    )
    tokens = cols[1].number_input(
        "Tokens per reply", 1, 256, DEFAULT_EVALUATION.max_new_tokens, key="search_tokens"
    )
    rows = cols[2].number_input(
        "KL transcripts",
        0,
        256,
        DEFAULT_EVALUATION.loss_rows,
        key="search_loss_rows",
        help="held-out harmless transcripts for KL and CE per trial (0 drops kl and ce from the objectives)",
    )
    n_trials = cols[3].number_input("Trials", 1, 1000, TRIALS, key="search_trials")
    minutes = cols[4].number_input(
        "Time budget (minutes)",
        0.5,
        24 * 60.0,
        BUDGET_MINUTES,
        key="search_budget",
        help="the search stops at the trial count or the budget, whichever comes first (the trial in "
        "flight finishes)",
    )
    name = st.text_input(
        "Study name", key="search_study", placeholder="blank: the goal and a fingerprint of the settings"
    )
    st.number_input(
        "Most degenerate replies on the front",
        0.0,
        1.0,
        MAX_DEGENERATE,
        0.05,
        key=MAX_DEGENERATE_KEY,
        help="a trial with a larger share of broken-text replies (on either label) breaks the model: it is "
        "kept, but never on the front, however little it over-refuses",
    )
    if not rows:  # no transcripts, nothing to measure KL and CE on
        objectives = [o for o in objectives if o not in ("kl", "ce")]
    try:
        for what, chosen in (("mode", modes), ("scope", scopes), ("objective", objectives)):
            if not chosen:
                raise SearchError(f"choose at least one {what}")
        if source == "listed":
            chosen_by, candidates = "listed", parse_candidates(listed)
            if not candidates:
                st.info(f"List the latents to search over, e.g. `{hook}:12, {hook}:40`.")
                return None
        else:
            chosen_by, candidates = resolve_candidates(ws.caches, source, hook, int(top))
        trigger = auto_trigger(ws.caches, ws.loaded.n_layers, [h for h, _ in candidates]) if gate else None
        evaluation = EvalConfig("val", int(n), int(n), int(tokens), loss_rows=int(rows))
        config = SearchConfig(
            goal,
            tuple(candidates),
            tuple(modes),
            tuple(scopes),
            trigger,
            trigger_max(ws.caches, trigger) if trigger else 0.0,
            tuple(objectives),
            evaluation,
        )
        check_search(config, ws.saes, ws.loaded.n_layers, ws.max_activations())
    except FAILURES as e:
        st.error(f"Cannot run this search: {e}.")
        return None
    study = name.strip() or default_study_name(config)
    st.caption(
        f"Candidates ({chosen_by}): {', '.join(f'`{h}:{i}`' for h, i in candidates)}"
        + (f"; trials may gate on `{trigger[0]}:{trigger[1]}`" if trigger else "")
        + f". Study `{study}`"
        + (" is stored: running resumes it." if study in stored else " is new.")
    )
    return SearchRequest(config, chosen_by, hook, study, int(n_trials), float(minutes) * 60)


def _max_degenerate() -> float:
    return float(st.session_state.get(MAX_DEGENERATE_KEY, MAX_DEGENERATE))


def run_search_now(ws: Workspace, request: SearchRequest, judge: Judge, path: Path) -> None:
    """Run the trials with a progress bar and a live table, then keep the study's result."""
    config = request.config
    try:
        study = open_study(config, path, request.study)
    except FAILURES as e:
        st.error(f"Cannot open the study: {e}. Nothing was run.")
        return
    corpus = corpus_for(ws, config.evaluation.loss_rows)
    bar = st.progress(0.0, text=f"trial 1 of up to {request.n_trials}…")
    live = st.empty()
    done_now: list[TrialRecord] = []

    def on_trial(done: int, seconds: float, record: TrialRecord) -> None:
        done_now.append(record)
        share = min(1.0, max(done / request.n_trials, seconds / request.budget_s))
        bar.progress(
            share, text=f"trial {record.number} done ({done} of up to {request.n_trials}, {seconds:.0f} s)"
        )
        with live.container():
            trial_table(done_now, front=False)

    error = None
    try:
        measure = val_measure(ws.steerer(judge), corpus, config)
        run_search(
            config, study, measure, n_trials=request.n_trials, budget_s=request.budget_s, on_trial=on_trial
        )
    except FAILURES as e:
        error = e
    bar.empty()
    live.empty()
    records = trials(study, _max_degenerate())
    if error is not None:
        kept = f"; its {len(records)} finished trials are stored" if records else ""
        st.error(f"The search stopped: {error}{kept}.")
        if not records:
            return
    _keep(ws, request.study, path, config, request.chosen_by, request.hook, records)


def _keep(
    ws: Workspace,
    study: str,
    path: Path,
    config: SearchConfig,
    chosen_by: str,
    hook: str | None,
    records: list[TrialRecord],
) -> None:
    """Put a study on show (its re-measurements, from another study, dropped)."""
    st.session_state[SEARCH_RESULT] = {
        "model": ws.loaded.name,
        "study": study,
        "storage": str(path),
        "config": config,
        "candidates_by": chosen_by,
        "hook": hook,
        "records": records,
        "remeasured": [],
    }


def stored_section(ws: Workspace, path: Path, names: list[str], problem: str | None) -> None:
    """Pick a stored study and show its trials and front, running nothing."""
    if problem is not None:
        st.error(f"Cannot read the stored studies: {problem}.")
        return
    with st.expander("Load a stored study", icon=":material/history:"):
        if not names:
            st.caption(f"No study is stored in `{path}` yet.")
            return
        name = st.selectbox("Study", names, key="search_stored")
        if not st.button("Show this study", key="search_load") or name is None:
            return
        try:
            config, records = load_stored(path, name, _max_degenerate())
        except FAILURES as e:
            st.error(f"Cannot show study {name!r}: {e}.")
            return
        hook = config.candidates[0][0] if config.candidates[0][0] in ws.caches else ws.main
        _keep(ws, name, path, config, "as stored", hook, records)
