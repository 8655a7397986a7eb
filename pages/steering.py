"""Steering playground: clamp picked latents and compare the default and steered replies side by side."""

import streamlit as st

from explorer.ui.loaders import workspace_or_stop
from explorer.ui.playground import latents_section, sampling_section, where_section
from explorer.ui.playground_chat import chat_section
from explorer.ui.playground_share import preset_section, share_section
from explorer.ui.playground_state import current_spec, restore_from_link

st.title("Steering playground")
st.caption(
    "Clamp latents (or the refusal direction) and compare the default reply with the steered one. "
    "Both columns decode in one batch with the same seed, so they differ only by the steering."
)
workspace = workspace_or_stop("steering")
restore_from_link(workspace)
latents_section(workspace)
where_section(workspace)
sampling = sampling_section()
spec, problem = current_spec(workspace)
if problem is not None:
    st.error(f"This steering setup cannot run: {problem}. Nothing will be generated until it is fixed.")
elif spec is not None and spec.is_empty:
    st.info("No steering set: both columns will be the same. Pick a latent or a direction baseline.")
prompt = chat_section(workspace, spec, problem, sampling)
share_section(spec, sampling, prompt)
preset_section(sampling, prompt)
