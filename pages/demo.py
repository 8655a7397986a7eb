"""Walkthrough: a short curated tour of the refusal direction, its top SAE latents, and steering them."""

from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.state import DEMO_RESULTS, DEMO_TOKENS_WIDGET
from explorer.ui.walkthrough import (
    N_CLAMPED,
    direction_step,
    induce_step,
    jailbreak_step,
    latents_step,
    stored_examples,
)

NEW_TOKENS = 48

st.title("Walkthrough")
st.caption(
    "Five steps through refusal-explorer: the refusal direction, the SAE latents aligned with it, and what "
    "happens when those latents are steered. Each generation runs only when you click its button."
)
workspace = workspace_or_stop("demo")
results: dict[str, Any] = st.session_state.setdefault(DEMO_RESULTS, {})

st.header("1 · The refusal direction")
direction_step(workspace)

st.header("2 · The latents that write it")
hook = workspace.main
clamped = latents_step(workspace)[:N_CLAMPED]
new_tokens = st.number_input(
    "Tokens to generate", 1, 256, NEW_TOKENS, key=DEMO_TOKENS_WIDGET, help="for steps 3 and 4"
)
sampling = SamplingConfig(max_new_tokens=int(new_tokens))

st.header("3 · Induce refusal")
examples, note = stored_examples(workspace, hook, clamped)
if hook is None or not clamped:
    st.info("Needs the main SAE's latent cache (step 2).")
else:
    induce_step(workspace, hook, clamped, sampling, results, examples, note)

st.header("4 · Jailbreak")
if workspace.refusal is None and not clamped:
    st.info("Needs the refusal direction (step 1) or the main SAE's latent cache (step 2).")
else:
    jailbreak_step(workspace, hook, clamped, sampling, results, examples, note)

st.header("5 · Explore further")
st.page_link(
    "pages/latents.py", label="Latents: browse, sort and filter every latent", icon=":material/table_rows:"
)
st.page_link(
    "pages/steering.py", label="Steering playground: clamp any latents, chat", icon=":material/tune:"
)
st.page_link(
    "pages/evaluate.py",
    label="Evaluate: refusal and capability cost over a sweep",
    icon=":material/monitoring:",
)
