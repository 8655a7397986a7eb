"""Steering playground: clamp picked latents and compare the default and steered replies side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import DataError
from explorer.steering.decode import TokenStep, generate_side_by_side
from explorer.steering.share import (
    MAX_SEED,
    PlaygroundSetup,
    ShareError,
    decode_setup,
    encode_setup,
    preset_json,
    provenance_mismatches,
    read_preset,
    read_sampling,
    read_spec,
)
from explorer.steering.spec import MAX_FACTOR, MAX_RAW, Clamp, SteeringError, SteeringSpec, validate
from explorer.ui.charts_steering import Column, reply_strip
from explorer.ui.loaders import workspace_or_stop
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
    add_to_steering,
    picked_clamps,
)
from explorer.workspace import Workspace

MODES = ("set", "multiply", "add")
DEFAULT_VALUE = {"set": 1.0, "multiply": 0.0, "add": 1.0}
SCOPES = {"all": "whole sequence", "prompt": "prompt only", "generated": "generated tokens only"}
SLIDERS = {  # sampling setting -> (label, low, high, step), within SamplingConfig's limits
    "temperature": ("temperature (0 = greedy)", 0.0, 5.0, 0.05),
    "top_p": ("top-p", 0.01, 1.0, 0.01),
    "repetition_penalty": ("repetition penalty (1 = off)", 0.5, 3.0, 0.05),
    "frequency_penalty": ("frequency penalty (0 = off)", 0.0, 2.0, 0.05),
}
DIRECTIONS = {"none": "none", "ablate": "ablate (every layer)", "add": "add (at its layer)"}


def _key(name: str) -> str:
    return f"steer{st.session_state.get(STEER_GENERATION, 0)}_{name}"


def _replace(setup: PlaygroundSetup) -> None:
    """Make `setup` the playground's state and have every widget re-read it."""
    spec = setup.spec
    st.session_state[STEER_CLAMPS] = [asdict(c) for c in spec.clamps]
    st.session_state[STEER_SCOPE] = spec.scope
    st.session_state[STEER_TRIGGER] = asdict(spec.trigger) if spec.trigger else None
    st.session_state[STEER_DIRECTION] = asdict(spec.direction) if spec.direction else None
    st.session_state[STEER_SAMPLING] = setup.sampling.to_dict()
    st.session_state[CHAT_HISTORY] = [dict(m) for m in setup.chat]
    st.session_state[STEER_PROMPT] = setup.prompt
    st.session_state.pop(LAST_RESULT, None)
    st.session_state[STEER_GENERATION] = st.session_state.get(STEER_GENERATION, 0) + 1


def _restore_from_link(ws: Workspace) -> None:
    """Apply a share link's setup once (an unreadable link leaves the current setup in place)."""
    value = st.query_params.get(Q_SPEC)
    if not value or value == st.session_state.get(STEER_LINK):
        return
    st.session_state[STEER_LINK] = value
    try:
        setup = decode_setup(value)
    except ShareError as e:
        st.error(f"This share link could not be read: {e}. The playground keeps your current setup.")
        return
    _replace(setup)
    fingerprints = {hook: sae.fingerprint for hook, sae in ws.saes.items()}
    mismatches = provenance_mismatches(setup.spec, ws.loaded.name, fingerprints)
    if mismatches:
        st.warning("The shared setup may not reproduce here: " + "; ".join(mismatches) + ".")
    st.info("Restored the shared steering setup, sampling settings and prompt.")


def _value_slider(clamp: dict[str, Any], latent_max: float | None, key: str) -> float:
    """A slider for a clamp's value in its stated units, ranging within the validated limits."""
    mode, units, value = clamp["mode"], clamp["units"], float(clamp["value"])
    if mode == "multiply":
        span, limit, step, label = 10.0, MAX_FACTOR, 0.1, "factor (× the latent's activation)"
    elif units == "max":
        span, limit, step = 10.0, MAX_FACTOR, 0.05
        label = "value (× the latent's max" + (f" {latent_max:.4g})" if latent_max is not None else ")")
    else:
        span = min(MAX_RAW, 10 * latent_max) if latent_max else 100.0
        limit, step = MAX_RAW, span / 200
        label = "value (raw activation" + (f"; its max {latent_max:.4g})" if latent_max else ")")
    low, high = max(-limit, min(-span, value)), min(limit, max(span, value))
    return float(st.slider(label, low, high, value, step, key=key))


def _clamp_rows(ws: Workspace) -> None:
    """The picked latents, each with mode, units, value and a remove button."""
    maxima = ws.max_activations()
    clamps = picked_clamps()
    for index, clamp in enumerate(list(clamps)):
        name = f"{index}_{clamp.get('hook')}:{clamp.get('latent')}"  # unique even for a duplicate
        cols = st.columns([3, 2, 2, 6, 1], vertical_alignment="bottom")
        cols[0].markdown(f"`{clamp.get('hook')}`  \nlatent **{clamp.get('latent')}**")
        if cols[4].button("✕", key=f"steer_remove_{name}", help="remove this latent"):
            clamps.remove(clamp)
            st.rerun()
        try:
            Clamp(**clamp)
        except (SteeringError, TypeError) as e:
            cols[3].error(f"Unusable clamp {clamp}: {e}")
            continue
        mode = cols[1].selectbox("mode", MODES, index=MODES.index(clamp["mode"]), key=_key(f"{name}_mode"))
        units = cols[2].radio(
            "units",
            ["max", "raw"],
            index=["max", "raw"].index(clamp["units"]),
            format_func={"max": "× max", "raw": "raw"}.get,
            horizontal=True,
            disabled=mode == "multiply",
            key=_key(f"{name}_units"),
        )
        hook, latent = clamp["hook"], clamp["latent"]
        in_range = hook in maxima and latent < len(maxima[hook])
        latent_max = float(maxima[hook][latent]) if in_range else None
        if (mode, units) != (clamp["mode"], clamp["units"]):
            scale = latent_max if units == "raw" and mode != "multiply" and latent_max else 1.0
            clamp.update(mode=mode, units=units, value=DEFAULT_VALUE[mode] * scale)
        with cols[3]:
            clamp["value"] = _value_slider(clamp, latent_max, _key(f"{name}_{mode}_{units}_value"))


def _latents_section(ws: Workspace) -> None:
    st.subheader("Latents")
    if not ws.saes:
        st.info(
            "This model has no SAEs yet, so there are no latents to clamp: run `make build` (or "
            "`explorer sae train` then `explorer cache build`). The refusal-direction baselines below work "
            "without them."
        )
        _clamp_rows(ws)
        return
    hooks = sorted(ws.saes)
    cols = st.columns([4, 2, 1], vertical_alignment="bottom")
    main = hooks.index(ws.main) if ws.main in hooks else 0
    hook = cols[0].selectbox("SAE hook", hooks, index=main, key="steer_add_hook")
    latent = cols[1].number_input("latent", 0, ws.saes[hook].d_sae - 1, 0, 1, key=f"steer_add_latent_{hook}")
    if cols[2].button("Add", key="steer_add") and not add_to_steering(
        hook, int(latent), units="max" if hook in ws.caches else "raw"
    ):
        st.warning(f"Latent {latent} at `{hook}` is already picked.")
    if not picked_clamps():
        st.caption("No latents picked: add one here, or use “Steer” on the Latent detail page.")
    _clamp_rows(ws)


def _where_section(ws: Workspace) -> None:
    """Scope, conditional trigger and refusal-direction baseline."""
    st.subheader("Where and how")
    scopes = list(SCOPES)
    scope = st.session_state.get(STEER_SCOPE) or "all"
    st.session_state[STEER_SCOPE] = st.radio(
        "Scope",
        scopes,
        index=scopes.index(scope) if scope in scopes else 0,
        format_func=SCOPES.get,
        horizontal=True,
        key=_key("scope"),
    )
    trigger = st.session_state.get(STEER_TRIGGER)
    if ws.saes and st.toggle(
        "Only steer where a latent fires (conditional trigger)", trigger is not None, key=_key("trigger_on")
    ):
        trigger = trigger or {"hook": ws.main or sorted(ws.saes)[0], "latent": 0, "threshold": 0.0}
        hooks = sorted(set(ws.saes) | {trigger["hook"]})
        cols = st.columns(3)
        hook = cols[0].selectbox("trigger hook", hooks, hooks.index(trigger["hook"]), key=_key("t_hook"))
        latent = cols[1].number_input("trigger latent", 0, None, int(trigger["latent"]), key=_key("t_latent"))
        threshold = cols[2].number_input(
            "threshold (raw activation)", -MAX_RAW, MAX_RAW, float(trigger["threshold"]), key=_key("t_value")
        )
        st.session_state[STEER_TRIGGER] = {"hook": hook, "latent": int(latent), "threshold": float(threshold)}
    else:
        st.session_state[STEER_TRIGGER] = None
    direction = st.session_state.get(STEER_DIRECTION)
    kinds = list(DIRECTIONS)
    kind = st.radio(
        "Refusal-direction baseline",
        kinds,
        index=kinds.index(direction["kind"]) if direction else 0,
        format_func=DIRECTIONS.get,
        horizontal=True,
        disabled=ws.refusal is None,
        key=_key("direction"),
    )
    if ws.refusal is None:
        st.caption("No refusal direction for this model: run `explorer refusal` to use these baselines.")
    if kind == "none":
        st.session_state[STEER_DIRECTION] = None
        return
    alpha = float(direction["alpha"]) if direction else 1.0
    if kind == "add":
        low, high = max(-MAX_FACTOR, min(-10.0, alpha)), min(MAX_FACTOR, max(10.0, alpha))
        alpha = float(
            st.slider("alpha (× the difference in means)", low, high, alpha, 0.1, key=_key("alpha"))
        )
    st.session_state[STEER_DIRECTION] = {"kind": kind, "alpha": alpha}


def _sampling_section() -> SamplingConfig:
    stored = st.session_state.get(STEER_SAMPLING) or {}
    try:
        current = read_sampling(stored)
    except ShareError as e:
        st.error(f"The stored sampling settings are unusable ({e}); using the defaults.")
        current = SamplingConfig()
    with st.expander("Sampling", expanded=False):
        cols = st.columns(3)
        values: dict[str, Any] = {}
        for n, (name, (label, low, high, step)) in enumerate(SLIDERS.items()):
            value = getattr(current, name)
            values[name] = cols[n % 2].slider(label, min(low, value), high, value, step, key=_key(name))
        values["max_new_tokens"] = cols[2].number_input(
            "max new tokens", 1, 4096, current.max_new_tokens, key=_key("max_new_tokens")
        )
        values["seed"] = cols[2].number_input("seed", 0, MAX_SEED, current.seed, key=_key("seed"))
    sampling = read_sampling(values)
    st.session_state[STEER_SAMPLING] = sampling.to_dict()
    return sampling


def _chat_section() -> tuple[list[dict[str, str]], str]:
    """The earlier turns (with a clear button) and the prompt box."""
    history = st.session_state.setdefault(CHAT_HISTORY, [])
    st.subheader("Chat")
    for message in history:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
    if history:
        st.caption("Earlier turns hold the steered column's replies; both columns continue from them.")
        if st.button("Clear chat", key="steer_clear_chat"):
            history.clear()
            st.session_state.pop(LAST_RESULT, None)
            st.rerun()
    prompt = st.text_area(
        "Next message" if history else "Prompt", st.session_state.get(STEER_PROMPT, ""), key=_key("prompt")
    )
    st.session_state[STEER_PROMPT] = prompt
    return history, str(prompt)


def _current_spec(ws: Workspace) -> tuple[SteeringSpec | None, str | None]:
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


def _show_text(slot: Any, text: str, streaming: bool = False) -> None:
    slot.markdown((text if text.strip() else "_(nothing but whitespace yet)_") + (" ▌" if streaming else ""))


def _generate(
    ws: Workspace,
    conversation: list[dict[str, str]],
    spec: SteeringSpec,
    sampling: SamplingConfig,
    slots: tuple[Any, Any],
) -> None:
    texts = ["", ""]

    def on_step(_step: int, events: list[TokenStep | None]) -> None:
        for row, event in enumerate(events):
            if event is not None:
                texts[row] += event.text
                _show_text(slots[row], texts[row], streaming=True)

    try:
        result = generate_side_by_side(ws.steerer(), conversation, spec, sampling, on_step=on_step)
    except (DataError, SteeringError) as e:
        st.error(f"Could not generate: {e}")
        return
    st.session_state[LAST_RESULT] = {**result.to_dict(), "conversation": conversation}


def _show_result(result: dict[str, Any], slots: tuple[Any, Any], columns: Sequence[Any]) -> None:
    names: tuple[Column, Column] = ("default", "steered")
    for column, slot, name in zip(columns, slots, names, strict=True):
        reply = result[name]
        _show_text(slot, reply["text"])
        verdict = reply["verdict"]
        with column:
            said = ":red[refused]" if verdict["refused"] else ":green[answered]"
            st.markdown(f"**Verdict:** {said} · {verdict['judge']}")
            st.caption(f"Evidence: {verdict['evidence']}")
            figure = reply_strip(result, name)
            if figure is not None:
                st.plotly_chart(figure, key=f"steer_strip_{name}")
    if result["latent_labels"]:
        st.caption(
            "Heatmaps: each clamped latent's activation before clamping, at the position that produced "
            "each token (raw units). Line: the residual's projection on the unit refusal direction, after "
            "steering."
        )


st.title("Steering playground")
st.caption(
    "Clamp latents (or the refusal direction) and compare the default reply with the steered one. "
    "Both columns decode in one batch with the same seed, so they differ only by the steering."
)
workspace = workspace_or_stop()
_restore_from_link(workspace)
_latents_section(workspace)
_where_section(workspace)
sampling = _sampling_section()
history, prompt = _chat_section()
spec, problem = _current_spec(workspace)
if problem is not None:
    st.error(f"This steering setup cannot run: {problem}. Nothing will be generated until it is fixed.")
elif spec is not None and spec.is_empty:
    st.info("No steering set: both columns will be the same. Pick a latent or a direction baseline.")
clicked = st.button("Generate", type="primary", key="steer_generate")
columns = st.columns(2)
columns[0].subheader("Default")
columns[1].subheader("Steered")
slots = (columns[0].empty(), columns[1].empty())
if clicked:
    if spec is None or problem is not None:
        st.error("Nothing was generated: fix the steering setup above first.")
    elif not prompt.strip():
        st.error("Type a prompt first.")
    else:
        conversation = [*history, {"role": "user", "content": prompt}]
        _generate(workspace, conversation, spec, sampling, slots)
result = st.session_state.get(LAST_RESULT)
if result is not None:
    _show_result(result, slots, columns)
    if (
        spec is None
        or SteeringSpec.from_dict(result["spec"]) != spec
        or result["sampling"] != sampling.to_dict()
    ):
        st.caption("The setup changed since these replies were generated: press Generate to update them.")
    if spec is not None and st.button("Continue the chat from the steered reply", key="steer_continue"):
        reply = {"role": "assistant", "content": result["steered"]["text"]}
        _replace(PlaygroundSetup(spec, sampling, "", (*result["conversation"], reply)))
        st.rerun()

st.subheader("Save, load and share")
if spec is not None:
    link = encode_setup(PlaygroundSetup(spec, sampling, prompt, tuple(history)))
    if st.query_params.get(Q_SPEC) != link:
        st.query_params[Q_SPEC] = link
    st.session_state[STEER_LINK] = link
    base = (st.context.url or "").split("?")[0]
    st.caption("The address bar holds this setup's share link (steering, sampling, chat and prompt):")
    st.code(f"{base}?{Q_SPEC}={link}", language=None, wrap_lines=True)
    st.download_button(
        "Save preset (JSON)",
        preset_json(spec, sampling),
        "steering-preset.json",
        "application/json",
        key="steer_preset_save",
        on_click="ignore",
    )
upload = st.file_uploader("Load a preset file", type=["json"], key="steer_preset_file")
pasted = st.text_area("…or paste a preset's JSON", key="steer_preset_text")
if st.button("Load preset", key="steer_preset_load"):
    text = upload.getvalue().decode("utf-8", errors="replace") if upload is not None else pasted
    try:
        loaded_spec, loaded_sampling = read_preset(text)
    except ShareError as e:
        st.error(f"Could not load the preset: {e}")
    else:
        _replace(PlaygroundSetup(loaded_spec, loaded_sampling or sampling, prompt, tuple(history)))
        st.rerun()
