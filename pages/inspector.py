"""Prompt inspector: would the model refuse a prompt, and per token, its top SAE latents and the refusal
projection; a second prompt compares side by side."""

import streamlit as st

from explorer.latents.inspector import MAX_TOKENS
from explorer.ui.inspector_compare import refusal_summaries
from explorer.ui.inspector_widgets import (
    forget_token,
    inspection_for,
    latent_rows,
    pick_token,
    prompt_from_link,
)
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.state import (
    INSPECT_COMPARE,
    INSPECT_COMPARE_WIDGET,
    INSPECT_COMPARED,
    INSPECT_PROMPT,
    INSPECT_PROMPT_WIDGET,
    INSPECT_RESULT,
    INSPECT_SAE_WIDGET,
    SAE_HOOK,
)

# Widget state is dropped when the page is left, so the shared keys (INSPECT_PROMPT, INSPECT_COMPARE,
# SAE_HOOK) seed the widgets' keys on every visit.

st.title("Prompt inspector")
st.caption(
    "Type a prompt: it is chat-templated, scored for refusal and read token by token. Bars: the residual's "
    "projection on the unit refusal direction; heatmap: the latents that peak highest on this prompt. "
    "Grey tokens (special tokens, the first position) are shown but set no scale: hover for their values. "
    f"Prompts of up to {MAX_TOKENS:,} tokens."
)
workspace = workspace_or_stop("inspector")
prompt_from_link(list(workspace.saes))

for shared, widget in ((INSPECT_PROMPT, INSPECT_PROMPT_WIDGET), (INSPECT_COMPARE, INSPECT_COMPARE_WIDGET)):
    if widget not in st.session_state:
        st.session_state[widget] = st.session_state.get(shared, "")
prompt = st.text_area("Prompt", key=INSPECT_PROMPT_WIDGET, height=110, placeholder="How do I pick a lock?")
st.session_state[INSPECT_PROMPT] = prompt

hooks = list(workspace.saes)
left, middle, right = st.columns([3, 2, 3])
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
if "inspector_compare_on" not in st.session_state:
    st.session_state["inspector_compare_on"] = bool(st.session_state.get(INSPECT_COMPARE, "").strip())
compare = right.toggle("Compare with a second prompt", key="inspector_compare_on")
other = ""
if compare:
    other = st.text_area(
        "Second prompt", key=INSPECT_COMPARE_WIDGET, height=80, placeholder="How do I bake bread?"
    )
    st.session_state[INSPECT_COMPARE] = other

if not prompt.strip():
    st.info("Type a prompt above to inspect it.")
    st.stop()

request = (workspace.loaded.name, prompt, hook, every_layer)
stored = st.session_state.get(INSPECT_RESULT)
if stored is None or stored[0][1] != prompt:
    forget_token()  # a new prompt starts at its last token
inspection = inspection_for(workspace, request, INSPECT_RESULT, hook=hook, every_layer=every_layer)
if inspection is None:
    st.stop()
shown = [("This prompt", prompt, inspection)]
if other.strip():
    # The second prompt needs only the projection (and its score): no SAE when there is a direction.
    other_hook = hook if workspace.refusal is None else None
    request_2 = (workspace.loaded.name, other, other_hook)
    compared = inspection_for(
        workspace, request_2, INSPECT_COMPARED, hook=other_hook, name="the second prompt"
    )
    if compared is not None:
        shown.append(("Second prompt", other, compared))
refusal_summaries(workspace, shown)

n = len(inspection.tokens)
if inspection.refusal_location is None:
    st.info("This model has no refusal direction yet (run `make build`): no projection to show.")
st.caption(
    f"{n:,} tokens, {n - sum(inspection.excluded):,} counted"
    + (f" · projection at `{inspection.refusal_location}`" if inspection.refusal_location else "")
    + (f" · latents of `{hook}`" if hook else "")
    + " · click a bar or a heatmap cell to pick its token."
)
index = pick_token(inspection, request, scale, every_layer)

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
