"""Jailbreak lens: does a jailbreak stop the model from recognising harm, or from acting on it?"""

import streamlit as st

from explorer.ui.jailbreak_widgets import live_panel, run_button, stored_study, study_table, wrapper_detail
from explorer.ui.loaders import workspace_or_stop

st.title("Jailbreak lens")
st.caption(
    "Each jailbreak wrapper on the harmful test prompts: refusal plain and wrapped, and what the wrapper "
    "does to the SAE latents and to the refusal direction at the post-instruction positions."
)
workspace = workspace_or_stop("jailbreaks")
study = stored_study(workspace.loaded.name)
if study is None:
    st.info(
        "No jailbreak study is stored for this model yet. `explorer jailbreaks` makes it (the whole test "
        "split, as the README reports); or run a smaller one here."
    )
    run_button(workspace)
    st.stop()
st.markdown(
    f"{study.n_prompts} harmful **{study.config.split}** prompts, {study.judge} judge, "
    f"{study.config.max_new_tokens}-token greedy replies."
)
study_table(study)
names = [r.wrapper.name for r in study.results]
name = st.selectbox("Wrapper", names, key="jailbreak_wrapper")
result = study.results[names.index(name)]
overview, live = st.tabs(["What it does", "Live comparison"])
with overview:
    wrapper_detail(study, result)
with live:
    live_panel(workspace, result.wrapper)
with st.expander("Run the study again"):
    run_button(workspace)
