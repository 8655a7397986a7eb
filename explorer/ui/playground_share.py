"""The steering playground's share link (kept in the address bar) and its preset files."""

from __future__ import annotations

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.steering.share import ShareError, encode_setup, preset_json, read_preset
from explorer.steering.spec import SteeringSpec
from explorer.ui.playground_state import remember_link, replace_setup, session_setup
from explorer.ui.state import Q_SPEC


def share_section(spec: SteeringSpec | None, sampling: SamplingConfig, prompt: str) -> None:
    """Keep the setup's share link in the URL, show it, and offer the spec as a preset file."""
    st.subheader("Save, load and share")
    if spec is None:
        return
    link = encode_setup(session_setup(spec, sampling, prompt))
    if st.query_params.get(Q_SPEC) != link:
        st.query_params[Q_SPEC] = link
    remember_link(link)
    base = (st.context.url or "").split("?")[0]
    st.caption(
        "The address bar holds this setup's share link (steering, sampling, both columns' chat and prompt):"
    )
    st.code(f"{base}?{Q_SPEC}={link}", language=None, wrap_lines=True)
    st.download_button(
        "Save preset (JSON)",
        preset_json(spec, sampling),
        "steering-preset.json",
        "application/json",
        key="steer_preset_save",
        on_click="ignore",
    )


def preset_section(sampling: SamplingConfig, prompt: str) -> None:
    """Load a preset from a file or pasted JSON; the chat and prompt are kept, a bad preset is an error."""
    upload = st.file_uploader("Load a preset file", type=["json"], key="steer_preset_file")
    pasted = st.text_area("…or paste a preset's JSON", key="steer_preset_text")
    if not st.button("Load preset", key="steer_preset_load"):
        return
    text = upload.getvalue().decode("utf-8", errors="replace") if upload is not None else pasted
    try:
        loaded_spec, loaded_sampling = read_preset(text)
    except ShareError as e:
        st.error(f"Could not load the preset: {e}")
        return
    replace_setup(session_setup(loaded_spec, loaded_sampling or sampling, prompt))
    st.rerun()
