"""Evaluate: sweep a steering strength, or search many settings, and weigh refusal against over-refusal and
capability cost."""

import streamlit as st

from explorer.core.prompts import builtin_prompts
from explorer.steering.evaluation import EvalConfig
from explorer.ui.evaluate_widgets import (
    MODES,
    STRENGTHS,
    choose_judge,
    choose_latents,
    choose_prompts,
    run_sweep,
    show_sweep,
)
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.multiturn_widgets import multi_turn_section
from explorer.ui.search_widgets import search_tab
from explorer.ui.state import EVAL_RESULT

st.title("Evaluate")
st.caption(
    "Sweep a steering strength, or search over latents, modes and strengths, and measure refusal on harmful "
    "prompts, over-refusal on harmless ones and the capability cost, the unsteered model first."
)
workspace = workspace_or_stop("evaluate")
modes = [
    m
    for m in MODES
    if (m.startswith("direction") and workspace.refusal) or (not m.startswith("direction") and workspace.saes)
]
if not modes:
    st.info(
        "Nothing to evaluate yet: this model has neither SAEs nor a refusal direction. Run `make build` "
        "(or `explorer refusal` and `explorer sae train`)."
    )
    st.stop()
judge = choose_judge()  # one judge for both tabs
sweep, search = st.tabs(["Sweep", "Search"])
with sweep:
    mode = st.selectbox("Mode", modes, format_func=lambda m: MODES[m], key="eval_mode")
    latents: list[tuple[str, int]] = []
    units = "raw"
    if not mode.startswith("direction"):
        latents = choose_latents(workspace)
        if mode not in ("multiply", "scale"):  # factors have no units
            units = st.radio(
                "Units",
                ["max", "raw"],
                format_func={"max": "× each latent's max", "raw": "raw activation"}.get,
                horizontal=True,
                key="eval_units",
            )
    strengths = ""
    if mode != "direction-ablate":
        label = "Factors" if mode == "multiply" else "Alphas" if mode == "direction-add" else "Strengths"
        strengths = st.text_input(f"{label} (comma-separated)", STRENGTHS[mode], key=f"eval_strengths_{mode}")
    kind = st.radio(
        "Measure on",
        ["prompts", "escalations"],
        format_func={"prompts": "single prompts", "escalations": "multi-turn escalations"}.get,
        horizontal=True,
        key="eval_kind",
    )
    if kind == "escalations":
        multi_turn_section(workspace, mode, latents, strengths, units, judge)
    else:
        prompt_set, split, uploaded = choose_prompts()
        cols = st.columns(3)
        n_split = max(len(builtin_prompts(label, split)) for label in ("harmful", "harmless"))
        n_prompts = cols[0].number_input(
            "Prompts per label",
            1,
            n_split,
            min(16, n_split),
            key="eval_n",
            help=f"spread evenly over the categories; {n_split} takes the whole split (as `explorer eval`)",
        )
        defaults = EvalConfig()  # the same defaults as `explorer eval`: the README's table reproduces here
        tokens = cols[1].number_input("Tokens per reply", 1, 256, defaults.max_new_tokens, key="eval_tokens")
        loss_rows = cols[2].number_input(
            "Capability transcripts",
            0,
            256,
            defaults.loss_rows,
            key="eval_loss_rows",
            help="held-out harmless transcripts for CE and KL (0 skips them)",
        )
        config = EvalConfig(
            split,
            int(n_prompts),
            int(n_prompts),
            int(tokens),
            loss_rows=int(loss_rows),
            prompt_set=prompt_set,
        )
        if st.button("Run sweep", type="primary", key="eval_run", disabled=judge is None):
            if not mode.startswith("direction") and not latents:
                st.error("Choose at least one latent to sweep.")
            elif judge is not None:
                run_sweep(workspace, mode, latents, strengths, units, config, judge, uploaded)
        result = st.session_state.get(EVAL_RESULT)
        if result is None:
            st.info("Run a sweep to see the trade-off; the last result stays here while you explore.")
        else:
            show_sweep(result)
with search:
    search_tab(workspace, judge)
