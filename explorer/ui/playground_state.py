"""The steering playground's session state: widget keys, the two columns' chat histories, share-link
restores and the spec the widgets describe."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.steering.share import (
    PlaygroundSetup,
    ShareError,
    decode_setup,
    provenance_mismatches,
    read_spec,
)
from explorer.steering.spec import SteeringError, SteeringSpec, validate
from explorer.ui.state import (
    CHAT_HISTORY,
    LAST_RESULT,
    Q_SPEC,
    STEER_CLAMPS,
    STEER_DIRECTION,
    STEER_GENERATION,
    STEER_LINK,
    STEER_PROMPT,
    STEER_SAMPLING,
    STEER_SCOPE,
    STEER_TRIGGER,
    STEERED_CHAT,
    picked_clamps,
)
from explorer.workspace import Workspace

Message = dict[str, str]
MAX_KNOWN_LINKS = 64
"""How many of the session's own share links are remembered (a link is a few kB at most)."""


def widget_key(name: str) -> str:
    """A widget key that changes whenever the setup is replaced wholesale, so the widget re-reads it."""
    return f"steer{st.session_state.get(STEER_GENERATION, 0)}_{name}"


def chat_histories() -> tuple[list[Message], list[Message]]:
    """The default and steered columns' conversations so far (created empty on first use)."""
    return st.session_state.setdefault(CHAT_HISTORY, []), st.session_state.setdefault(STEERED_CHAT, [])


def session_setup(spec: SteeringSpec, sampling: SamplingConfig, prompt: str) -> PlaygroundSetup:
    """The playground as a `PlaygroundSetup`: both columns' histories (the steered one only where it
    differs from the default one), the prompt box, the steering and the sampling."""
    default, steered = chat_histories()
    own_steered = () if steered == default else tuple(dict(m) for m in steered)
    return PlaygroundSetup(spec, sampling, prompt, tuple(dict(m) for m in default), own_steered)


def add_turn(prompt: str, default_reply: str, steered_reply: str) -> None:
    """Append a user turn and each column's reply to that column's history, and empty the prompt box."""
    default, steered = chat_histories()
    default += [{"role": "user", "content": prompt}, {"role": "assistant", "content": default_reply}]
    steered += [{"role": "user", "content": prompt}, {"role": "assistant", "content": steered_reply}]
    st.session_state[STEER_PROMPT] = ""


def clear_chat() -> None:
    """Start the conversation over in both columns."""
    for history in chat_histories():
        history.clear()
    st.session_state.pop(LAST_RESULT, None)


def replace_setup(setup: PlaygroundSetup) -> None:
    """Make `setup` the playground's state and have every widget re-read it."""
    spec = setup.spec
    st.session_state[STEER_CLAMPS] = [asdict(c) for c in spec.clamps]
    st.session_state[STEER_SCOPE] = spec.scope
    st.session_state[STEER_TRIGGER] = asdict(spec.trigger) if spec.trigger else None
    st.session_state[STEER_DIRECTION] = asdict(spec.direction) if spec.direction else None
    st.session_state[STEER_SAMPLING] = setup.sampling.to_dict()
    st.session_state[CHAT_HISTORY] = [dict(m) for m in setup.chat]
    st.session_state[STEERED_CHAT] = [dict(m) for m in setup.steered_history]
    st.session_state[STEER_PROMPT] = setup.prompt
    st.session_state.pop(LAST_RESULT, None)
    st.session_state[STEER_GENERATION] = st.session_state.get(STEER_GENERATION, 0) + 1


def remember_link(value: str) -> None:
    """Note a share link this session applied or wrote, so it is never taken for a new one."""
    links = [link for link in st.session_state.get(STEER_LINK) or [] if link != value]
    st.session_state[STEER_LINK] = [*links, value][-MAX_KNOWN_LINKS:]


def restore_from_link(ws: Workspace) -> None:
    """Apply a share link's setup once (an unreadable link leaves the current setup in place).

    A link this session wrote itself is not applied: the browser may send an older one with a click
    made before the newest reached it, and restoring it would drop what the user just typed.
    """
    value = st.query_params.get(Q_SPEC)
    if not value or value in (st.session_state.get(STEER_LINK) or []):
        return
    remember_link(value)
    try:
        setup = decode_setup(value)
    except ShareError as e:
        st.error(f"This share link could not be read: {e}. The playground keeps your current setup.")
        return
    replace_setup(setup)
    fingerprints = {hook: sae.fingerprint for hook, sae in ws.saes.items()}
    mismatches = provenance_mismatches(setup.spec, ws.loaded.name, fingerprints)
    if mismatches:
        st.warning("The shared setup may not reproduce here: " + "; ".join(mismatches) + ".")
    st.info("Restored the shared steering setup, sampling settings and prompt.")


def current_spec(ws: Workspace) -> tuple[SteeringSpec | None, str | None]:
    """The spec the widgets describe, and why it cannot run (None if it can)."""
    clamps = picked_clamps()
    data = {
        "clamps": clamps,
        "scope": st.session_state.get(STEER_SCOPE) or "all",
        "trigger": st.session_state.get(STEER_TRIGGER),
        "direction": st.session_state.get(STEER_DIRECTION),
        "provenance": {
            "model": ws.loaded.name,
            "saes": {c["hook"]: ws.saes[c["hook"]].fingerprint for c in clamps if c.get("hook") in ws.saes},
        },
    }
    try:
        spec = read_spec(data)
    except ShareError as e:
        return None, str(e)
    try:
        validate(spec, ws.saes, ws.loaded.n_layers, max_activations=ws.max_activations(), refusal=ws.refusal)
    except SteeringError as e:
        return spec, str(e)
    return spec, None
