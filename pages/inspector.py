"""Prompt inspector: per token of a chat-templated prompt, its top SAE latents and the refusal projection."""

import streamlit as st

from explorer.latents.inspector import PromptInspection, inspect_prompt
from explorer.ui.charts_inspect import layer_projections, token_label, token_strip
from explorer.ui.inspector_widgets import latent_rows
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.state import (
    INSPECT_CLICKED,
    INSPECT_PROMPT,
    INSPECT_PROMPT_WIDGET,
    INSPECT_RESULT,
    INSPECT_SAE_WIDGET,
    INSPECT_TOKEN_WIDGET,
    SAE_HOOK,
)

# Widget state is dropped when the page is left, so the shared keys (INSPECT_PROMPT, SAE_HOOK) seed the
# widgets' keys on every visit.

st.title("Prompt inspector")
st.caption(
    "Type a prompt: it is chat-templated, run once, and read token by token. Bars: the residual's "
    "projection on the unit refusal direction; heatmap: the latents that peak highest on this prompt. "
    "Grey tokens (special tokens, the first position) are shown but not counted."
)
workspace = workspace_or_stop()

if INSPECT_PROMPT_WIDGET not in st.session_state:
    st.session_state[INSPECT_PROMPT_WIDGET] = st.session_state.get(INSPECT_PROMPT, "")
prompt = st.text_area("Prompt", key=INSPECT_PROMPT_WIDGET, height=110, placeholder="How do I pick a lock?")
st.session_state[INSPECT_PROMPT] = prompt

hooks = list(workspace.saes)
left, middle, right = st.columns([3, 2, 2])
hook = None
if hooks:
    if st.session_state.get(INSPECT_SAE_WIDGET) not in hooks:
        wanted = st.session_state.get(SAE_HOOK)
        st.session_state[INSPECT_SAE_WIDGET] = wanted if wanted in hooks else (workspace.main or hooks[0])
    hook = left.selectbox(
        "SAE",
        hooks,
        key=INSPECT_SAE_WIDGET,
        format_func=lambda h: f"{h} (main)" if h == workspace.main else h,
    )
    st.session_state[SAE_HOOK] = hook
else:
    left.info("No SAEs for this model: run `make build` to train them. Showing the refusal projection only.")
has_cache = hook is not None and hook in workspace.caches
scale = middle.radio(
    "Heatmap values", ["raw", "max"], horizontal=True, disabled=not has_cache,
    format_func=lambda s: "activation" if s == "raw" else "× latent max",
)  # fmt: skip
every_layer = right.toggle("Projection at every layer", disabled=workspace.refusal is None)

if not prompt.strip():
    st.info("Type a prompt above to inspect it.")
    st.stop()

request = (workspace.loaded.name, prompt, hook, every_layer)
stored = st.session_state.get(INSPECT_RESULT)
if stored is not None and stored[0] == request:
    inspection: PromptInspection = stored[1]
else:
    try:
        inspection = inspect_prompt(workspace, prompt, hook, every_layer=every_layer)
    except ValueError as e:  # DataError (empty, too long), InspectError
        st.error(f"Cannot inspect this prompt: {e}")
        st.stop()
    st.session_state[INSPECT_RESULT] = (request, inspection)

n = len(inspection.tokens)
if inspection.refusal_location is None:
    st.info("This model has no refusal direction yet (run `make build`): no projection to show.")
st.caption(
    f"{n} tokens, {n - sum(inspection.excluded)} counted"
    + (f" · projection at `{inspection.refusal_location}`" if inspection.refusal_location else "")
    + (f" · latents of `{hook}`" if hook else "")
    + " · click the chart to pick a token."
)
event = st.plotly_chart(
    token_strip(inspection, scale), on_select="rerun", selection_mode="points", key="inspector_chart"
)
if every_layer and inspection.layer_projections:
    st.plotly_chart(layer_projections(inspection))

points = event.selection.points if event is not None else []
clicked = points[0].get("x") if points else None
clicked = int(clicked) if isinstance(clicked, (int, float)) and float(clicked).is_integer() else None
if clicked is not None and 0 <= clicked < n and st.session_state.get(INSPECT_CLICKED) != (request, clicked):
    st.session_state[INSPECT_CLICKED] = (request, clicked)
    st.session_state[INSPECT_TOKEN_WIDGET] = clicked
if st.session_state.get(INSPECT_TOKEN_WIDGET) not in range(n):
    st.session_state[INSPECT_TOKEN_WIDGET] = n - 1
index = st.selectbox(
    "Token", list(range(n)), key=INSPECT_TOKEN_WIDGET, format_func=lambda i: token_label(inspection, i)
)

facts = [f"token id {inspection.token_ids[index]}"]
if inspection.refusal_projection is not None:
    facts.append(f"refusal projection **{inspection.refusal_projection[index]:.3f}**")
if inspection.l0:
    facts.append(f"{inspection.l0[index]} latents fire")
st.markdown(" · ".join(facts))
if hook is None:
    st.stop()
token = inspection.top[index]
if not token.latents:
    st.info("No latent of this SAE fires on this token.")
    st.stop()

latent_rows(workspace.caches.get(hook), hook, token)
