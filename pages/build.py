"""Build: the offline default's build while it runs in the background, stage by stage, and what each
page needs from it; starts the build when none runs."""

import streamlit as st

from explorer.ui.build_widgets import build_panel
from explorer.ui.loaders import through_app_navigation

through_app_navigation()
st.title("Build")
st.caption(
    "`make demo` serves the app at once and builds the offline default in the background: the model, its "
    "safety fine-tune, the refusal direction, the SAEs and their latent caches. Each page opens as soon as "
    "the stage that brings its data is done. Stages already complete are skipped, so a stopped or failed "
    "build resumes where it was."
)
build_panel()
