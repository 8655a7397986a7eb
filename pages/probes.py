"""Probes: do harmful-vs-harmless probes on refusal latents generalise better than on the raw residual?"""

import streamlit as st

from explorer.research.probes import ProbeResultError, load_probes, probes_path
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.probe_widgets import run_button, show_result

st.title("Probes")
st.caption(
    "Logistic-regression probes for harmful vs harmless on the raw residual where refusal is read, on all "
    "latents of the main SAE, and on its top-K refusal latents (K chosen on val), trained on plain train "
    "prompts and tested in distribution (test split) and out of distribution (jailbreak-wrapped harmful "
    "prompts, borderline harmless prompts, the separately written set). The second refusal paper claims "
    "the refusal-latent probe generalises better."
)
workspace = workspace_or_stop("probes")
name = workspace.loaded.name
if not probes_path(name).is_file():
    st.info(
        f"No probe result for `{name}` yet: `explorer probe --model {workspace.name}` makes it (minutes on "
        "the CPU), or run it here."
    )
    run_button(workspace)
    st.stop()
try:
    result = load_probes(name)
except ProbeResultError as e:
    st.error(str(e))
    run_button(workspace)
    st.stop()
    raise  # unreachable: st.stop() raises
show_result(result)
with st.expander("Run again"):
    run_button(workspace)
