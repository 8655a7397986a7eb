"""The steering playground's setup widgets: the picked-latent editor, where and how to steer, sampling."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.steering.share import MAX_SEED, ShareError, read_sampling
from explorer.steering.spec import FACTOR_MODES, MAX_FACTOR, MAX_RAW, Clamp, SteeringError
from explorer.ui.playground_state import widget_key
from explorer.ui.state import (
    ADD_TO_STEERING,
    STEER_DIRECTION,
    STEER_SAMPLING,
    STEER_SCOPE,
    STEER_TRIGGER,
    add_to_steering,
    picked_clamps,
)
from explorer.workspace import Workspace

MODES = ("set", "multiply", "add", "cap", "floor", "scale")
DEFAULT_VALUE = {"set": 1.0, "multiply": 0.0, "add": 1.0, "cap": 0.0, "floor": 1.0, "scale": 0.0}
PROJECTION_MODES = ("cap", "floor")
"""Modes whose value is a residual projection: one "× max" is the projection a max-firing latent adds."""
SCOPES = {"all": "whole sequence", "prompt": "prompt only", "generated": "generated tokens only"}
SLIDERS = {  # sampling setting -> (label, low, high, step), within SamplingConfig's limits
    "temperature": ("temperature (0 = greedy)", 0.0, 5.0, 0.05),
    "top_p": ("top-p", 0.01, 1.0, 0.01),
    "repetition_penalty": ("repetition penalty (1 = off)", 0.5, 3.0, 0.05),
    "frequency_penalty": ("frequency penalty (0 = off)", 0.0, 2.0, 0.05),
}
DIRECTIONS = {
    "none": "none",
    "ablate": "ablate (every layer)",
    "scale": "scale (every layer)",
    "add": "add (at its layer)",
    "cap": "cap (at its layer)",
    "floor": "floor (at its layer)",
}
DIRECTION_DEFAULT = {"ablate": 1.0, "scale": 0.0, "add": 1.0, "cap": 0.0, "floor": 0.0}


def _value_slider(clamp: dict[str, Any], unit: float | None, key: str) -> float:
    """A slider for a clamp's value in its stated units, ranging within the validated limits.

    Args:
        unit: what one "× max" is in raw units: the latent's max activation, or for cap and floor the
            projection a max-firing latent contributes (None when there is no latent cache).
    """
    mode, units, value = clamp["mode"], clamp["units"], float(clamp["value"])
    projection = mode in PROJECTION_MODES
    if mode in FACTOR_MODES:
        span, limit, step = 10.0, MAX_FACTOR, 0.1
        label = (
            "factor (× the latent's activation)"
            if mode == "multiply"
            else "factor (× the component along the latent's direction)"
        )
    elif units == "max":
        span, limit, step = 10.0, MAX_FACTOR, 0.05
        what = "projection (× a max-firing latent's" if projection else "value (× the latent's max"
        label = what + (f" {unit:.4g})" if unit is not None else ")")
    else:
        span = min(MAX_RAW, 10 * unit) if unit else 100.0
        limit, step = MAX_RAW, span / 200
        if projection:
            label = "projection (raw" + (f"; a max-firing latent adds {unit:.4g})" if unit else ")")
        else:
            label = "value (raw activation" + (f"; its max {unit:.4g})" if unit else ")")
    low, high = max(-limit, min(-span, value)), min(limit, max(span, value))
    return float(st.slider(label, low, high, value, step, key=key))


def latent_label(ws: Workspace, hook: object, latent: object) -> str:
    """The build's heuristic label of a latent ("" when its SAE has no cache or the latent is unknown)."""
    cache = ws.caches.get(str(hook))
    if cache is None or not isinstance(latent, int) or not 0 <= latent < cache.d_sae:
        return ""
    return cache.labels(slice(latent, latent + 1))[0]


def _clamp_rows(ws: Workspace) -> None:
    """The picked latents, each with mode, units, value and a remove button."""
    maxima = ws.max_activations()
    clamps = picked_clamps()
    for index, clamp in enumerate(list(clamps)):
        name = f"{index}_{clamp.get('hook')}:{clamp.get('latent')}"  # unique even for a duplicate
        cols = st.columns([3, 2, 2, 6, 1], vertical_alignment="bottom")
        cols[0].markdown(f"`{clamp.get('hook')}`  \nlatent **{clamp.get('latent')}**")
        cols[0].caption(latent_label(ws, clamp.get("hook"), clamp.get("latent")))
        if cols[4].button(":material/close:", key=f"steer_remove_{name}", help="remove this latent"):
            clamps.remove(clamp)
            st.rerun()
        try:
            Clamp(**clamp)
        except (SteeringError, TypeError) as e:
            cols[3].error(f"Unusable clamp {clamp}: {e}")
            continue
        mode = cols[1].selectbox(
            "mode", MODES, index=MODES.index(clamp["mode"]), key=widget_key(f"{name}_mode")
        )
        units = cols[2].radio(
            "units",
            ["max", "raw"],
            index=["max", "raw"].index(clamp["units"]),
            format_func={"max": "× max", "raw": "raw"}.get,
            horizontal=True,
            disabled=mode in FACTOR_MODES,
            key=widget_key(f"{name}_units"),
        )
        hook, latent = clamp["hook"], clamp["latent"]
        in_range = hook in maxima and latent < len(maxima[hook])
        unit = float(maxima[hook][latent]) if in_range else None
        if unit is not None and mode in PROJECTION_MODES and hook in ws.saes:
            unit *= float(ws.saes[hook].sae.W_dec.detach()[latent].float().norm())
        if (mode, units) != (clamp["mode"], clamp["units"]):
            scale = unit if units == "raw" and mode not in FACTOR_MODES and unit else 1.0
            clamp.update(mode=mode, units=units, value=DEFAULT_VALUE[mode] * scale)
        with cols[3]:
            clamp["value"] = _value_slider(clamp, unit, widget_key(f"{name}_{mode}_{units}_value"))


def _add_latent(ws: Workspace) -> None:
    """An SAE hook, a latent number and an Add button that refuses a latent the SAE does not have.

    The number field has no bounds on purpose: a bounded field clamps an out-of-range entry silently
    and Add would pick a latent the user never typed.
    """
    hooks = sorted(ws.saes)
    cols = st.columns([4, 2, 1], vertical_alignment="bottom")
    main = hooks.index(ws.main) if ws.main in hooks else 0
    hook = cols[0].selectbox("SAE hook", hooks, index=main, key="steer_add_hook")
    d_sae = ws.saes[hook].d_sae
    latent = cols[1].number_input(
        "latent", value=0, step=1, key=f"steer_add_latent_{hook}", help=f"0..{d_sae - 1}"
    )
    if not cols[2].button("Add", key="steer_add"):
        return
    if not 0 <= latent < d_sae:
        st.error(
            f"Latent {latent} is out of range: the SAE at `{hook}` has latents 0..{d_sae - 1}. "
            "Nothing was added."
        )
    elif not add_to_steering(hook, int(latent), units="max" if hook in ws.caches else "raw"):
        st.warning(f"Latent {latent} at `{hook}` is already picked.")


def latents_section(ws: Workspace) -> None:
    """The picked latents and how to add one (or why there are none to add)."""
    st.subheader("Latents")
    if not ws.saes:
        st.info(
            "This model has no SAEs yet, so there are no latents to clamp: run `make build` (or "
            "`explorer sae train` then `explorer cache build`). The refusal-direction baselines below work "
            "without them."
        )
        _clamp_rows(ws)
        return
    _add_latent(ws)
    if not picked_clamps():
        st.caption(f"No latents picked: add one here, or use “{ADD_TO_STEERING}” on the Latent detail page.")
    _clamp_rows(ws)


def _trigger(ws: Workspace) -> None:
    """The conditional trigger: steer only where a latent fires above a threshold."""
    trigger = st.session_state.get(STEER_TRIGGER)
    if not ws.saes or not st.toggle(
        "Only steer where a latent fires (conditional trigger)",
        trigger is not None,
        key=widget_key("trigger_on"),
    ):
        st.session_state[STEER_TRIGGER] = None
        return
    trigger = trigger or {"hook": ws.main or sorted(ws.saes)[0], "latent": 0, "threshold": 0.0}
    hooks = sorted(set(ws.saes) | {trigger["hook"]})
    cols = st.columns(3)
    hook = cols[0].selectbox("trigger hook", hooks, hooks.index(trigger["hook"]), key=widget_key("t_hook"))
    latent = cols[1].number_input(
        "trigger latent", 0, None, int(trigger["latent"]), key=widget_key("t_latent")
    )
    threshold = cols[2].number_input(
        "threshold (raw activation)",
        -MAX_RAW,
        MAX_RAW,
        float(trigger["threshold"]),
        key=widget_key("t_value"),
    )
    st.session_state[STEER_TRIGGER] = {"hook": hook, "latent": int(latent), "threshold": float(threshold)}


def _direction(ws: Workspace) -> None:
    """The refusal-direction baseline: none; ablated or its component scaled at every layer; added, or its
    projection capped or floored, at its layer."""
    direction = st.session_state.get(STEER_DIRECTION)
    kinds = list(DIRECTIONS)
    kind = st.radio(
        "Refusal-direction baseline",
        kinds,
        index=kinds.index(direction["kind"]) if direction else 0,
        format_func=DIRECTIONS.get,
        horizontal=True,
        disabled=ws.refusal is None,
        key=widget_key("direction"),
    )
    if ws.refusal is None:
        st.caption("No refusal direction for this model: run `explorer refusal` to use these baselines.")
    if kind == "none":
        st.session_state[STEER_DIRECTION] = None
        return
    # A value carries over only within a kind: an add alpha is no cap, nor a scale factor.
    kept = direction is not None and direction.get("kind") == kind
    alpha = float(direction["alpha"]) if kept and direction is not None else DIRECTION_DEFAULT[kind]
    if kind in ("add", "scale"):
        low, high = max(-MAX_FACTOR, min(-10.0, alpha)), min(MAX_FACTOR, max(10.0, alpha))
        label = (
            "alpha (× the difference in means)"
            if kind == "add"
            else "factor (× the component along the refusal direction; 0 ablates)"
        )
        alpha = float(st.slider(label, low, high, alpha, 0.1, key=widget_key(f"alpha_{kind}")))
    elif kind in ("cap", "floor") and ws.refusal is not None:
        separation = float(ws.refusal.direction.float().norm())
        alpha = float(
            st.number_input(
                f"{kind}: projection on the unit refusal direction (raw)",
                -MAX_RAW,
                MAX_RAW,
                max(-MAX_RAW, min(MAX_RAW, alpha)),
                key=widget_key(f"alpha_{kind}"),
                help=f"The harmful and harmless means differ by {separation:.4g} along the direction.",
            )
        )
    st.session_state[STEER_DIRECTION] = {"kind": kind, "alpha": alpha}


def where_section(ws: Workspace) -> None:
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
        key=widget_key("scope"),
    )
    _trigger(ws)
    _direction(ws)


def sampling_section() -> SamplingConfig:
    """The decoding settings both columns share (seed included), in an expander."""
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
            values[name] = cols[n % 2].slider(label, min(low, value), high, value, step, key=widget_key(name))
        values["max_new_tokens"] = cols[2].number_input(
            "max new tokens", 1, 4096, current.max_new_tokens, key=widget_key("max_new_tokens")
        )
        values["seed"] = cols[2].number_input("seed", 0, MAX_SEED, current.seed, key=widget_key("seed"))
    sampling = read_sampling(values)
    st.session_state[STEER_SAMPLING] = sampling.to_dict()
    return sampling
