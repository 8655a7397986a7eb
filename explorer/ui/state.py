"""Every session-state and query-parameter key the app uses, in one place, and the steering selection
helpers that several pages share."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

MODEL_ENV = "EXPLORER_MODEL"
"""Environment variable naming the model spec the app loads (default: the offline default)."""
DEMO_ENV = "EXPLORER_DEMO"
"""Set to 1 (as `make demo` does) to open the app on the curated walkthrough."""

# Session-state keys.
SAE_HOOK = "sae_hook"
"""The hook of the SAE the Latents, Latent detail and Prompt inspector pages show."""
LATENT = "latent"
"""The latent the Latent detail page shows."""
STEER_CLAMPS = "steer_clamps"
"""The steering playground's picked latents: a list of Clamp dicts (hook, latent, mode, value, units)."""
STEER_SCOPE = "steer_scope"
STEER_TRIGGER = "steer_trigger"
"""None or a Trigger dict (hook, latent, threshold)."""
STEER_DIRECTION = "steer_direction"
"""None or a DirectionBaseline dict (kind, alpha)."""
STEER_SAMPLING = "steer_sampling"
"""A SamplingConfig dict."""
CHAT_HISTORY = "chat_history"
"""The default column's multi-turn conversation: a list of {"role", "content"} (its own replies)."""
STEERED_CHAT = "chat_history_steered"
"""The steered column's multi-turn conversation: the same user turns, with the steered replies."""
STEER_PROMPT = "steer_prompt"
"""The playground's prompt text, kept apart from its widget so it survives page switches."""
LAST_RESULT = "last_side_by_side"
EVAL_RESULT = "eval_result"
SEARCH_RESULT = "search_result"
MULTITURN_RESULT = "multiturn_result"
"""The multi-turn tab's result: model, mode, latents, escalations, config, judge and `MultiTurnPoint`s."""
"""The Search tab's study on show: a dict of model, study name, storage path, `SearchConfig`, how the
candidates were chosen, the recipe's hook, its `TrialRecord`s and the `Remeasured` prompt sets."""
INSPECT_PROMPT = "inspect_prompt"
INSPECT_RESULT = "inspector_result"
"""The inspector's last (request, PromptInspection), so reruns do not run the model again."""
INSPECT_COMPARE = "inspect_compare"
"""The inspector's second prompt, compared side by side with the first."""
INSPECT_COMPARED = "inspector_compared"
"""The inspector's last (request, PromptInspection) of the second prompt."""
INSPECT_REPLIES = "inspector_replies"
"""The inspector's judged greedy replies: (model name, prompt) -> JudgedReply, generated once each."""
DEMO_RESULTS = "demo_results"
"""The walkthrough's (prompt, result) per step, so reruns never regenerate."""
STEER_GENERATION = "_steer_gen"
"""Bumped when the playground's setup is replaced wholesale (link, preset), so every widget re-reads it."""
STEER_LINK = "_steer_links"
"""The `spec` query values the playground applied or wrote this session (newest last); any other value is
a new share link. Older ones count too: a click sent before the browser got the newest link carries one."""

# Widget keys whose values other code sets (the rest of the pages' widget keys are local to them).
INSPECT_PROMPT_WIDGET = "inspector_prompt_input"
INSPECT_SAE_WIDGET = "inspector_sae"
INSPECT_TOKEN_WIDGET = "inspector_token"
INSPECT_WINDOW_WIDGET = "inspector_window"
INSPECT_COMPARE_WIDGET = "inspector_compare_input"
DEMO_TOKENS_WIDGET = "demo_new_tokens"

LATENTS_SAE_WIDGET = "latents_sae"
DETAIL_SAE_WIDGET = "detail_sae"
DETAIL_LATENT_WIDGET = "detail_latent"
WORKSPACE_CHOICE = "workspace_choice"
"""The label of the workspace the sidebar's picker chose."""
PER_WORKSPACE = (
    SAE_HOOK,
    LATENT,
    STEER_CLAMPS,
    STEER_TRIGGER,
    STEER_DIRECTION,
    CHAT_HISTORY,
    STEERED_CHAT,
    LAST_RESULT,
    EVAL_RESULT,
    SEARCH_RESULT,
    MULTITURN_RESULT,
    INSPECT_RESULT,
    INSPECT_COMPARED,
    INSPECT_REPLIES,
    DEMO_RESULTS,
    INSPECT_SAE_WIDGET,
    INSPECT_TOKEN_WIDGET,
    LATENTS_SAE_WIDGET,
    DETAIL_SAE_WIDGET,
    DETAIL_LATENT_WIDGET,
)
"""Session keys that name a workspace's hooks, latents or results: cleared when the picker switches."""

ADD_TO_STEERING = "Add to steering"
"""The label of the Latent detail page's button that picks its latent for the playground."""

# Query parameters (share links).
Q_SAE = "sae"
Q_LATENT = "latent"
Q_SPEC = "spec"
Q_WORKSPACE = "workspace"
"""Opens the app on this workspace (its label in the sidebar's picker)."""
Q_PROMPT = "prompt"
"""The prompt inspector's link parameter: the prompt to open (with `sae`)."""
"""A steering spec as URL-safe base64 of its JSON, with sampling settings and the prompt beside it."""


def demo_mode() -> bool:
    return os.environ.get(DEMO_ENV, "").strip() not in ("", "0", "false")


def picked_clamps() -> list[dict[str, Any]]:
    """The playground's picked latents (created empty on first use)."""
    return st.session_state.setdefault(STEER_CLAMPS, [])


def add_to_steering(
    hook: str, latent: int, mode: str = "set", value: float = 1.0, units: str = "max"
) -> bool:
    """Pick a latent for the playground; False if it is already picked (one clamp per latent)."""
    clamps = picked_clamps()
    if any(c["hook"] == hook and c["latent"] == latent for c in clamps):
        return False
    clamps.append({"hook": hook, "latent": int(latent), "mode": mode, "value": float(value), "units": units})
    return True


def open_latent(hook: str, latent: int) -> None:
    """Select a latent for the Latent detail page (and the share link)."""
    st.session_state[SAE_HOOK] = hook
    st.session_state[LATENT] = int(latent)
    st.query_params[Q_SAE] = hook
    st.query_params[Q_LATENT] = str(int(latent))
