"""Latent detail: one latent's examples, activations, logit effects, refusal alignment and neighbours."""

import streamlit as st

from explorer.ui.charts_latents import activation_histogram, harmful_vs_harmless, layer_cosines, logit_effects
from explorer.ui.latent_data import chosen_latent, latent_picker, sae_picker
from explorer.ui.latent_widgets import context_controls, examples_section, logit_tables, try_text
from explorer.ui.loaders import cache_or_stop, workspace_or_stop
from explorer.ui.notes_widgets import notes_panel
from explorer.ui.state import (
    ADD_TO_STEERING,
    DETAIL_LATENT_WIDGET,
    DETAIL_SAE_WIDGET,
    add_to_steering,
    open_latent,
)

st.title("Latent detail")
workspace = workspace_or_stop("latent_detail")
cols = st.columns([3, 1])
with cols[0]:
    hook = sae_picker(list(workspace.saes), workspace.main, key=DETAIL_SAE_WIDGET)
hook, cache = cache_or_stop(workspace, hook)
choice = chosen_latent(cache.d_sae)
if choice.problem:
    st.error(choice.problem)
else:
    open_latent(hook, choice.latent)  # keeps the URL a share link of what is shown
with cols[1]:
    latent_picker(hook, cache.d_sae, choice.latent, key=DETAIL_LATENT_WIDGET)
record = cache.latent(choice.latent)
peak = record.max

st.subheader(f"Latent {record.latent} of `{hook}`")
st.markdown(f":material/label: **{record.label}**")
st.caption(
    "Heuristic label from the build: the tokens it fires on most characteristically (activation weighed "
    "against token frequency) and the tokens its decoder row promotes."
)
cols = st.columns(5)
cols[0].metric("Density", f"{record.density:.3%}", help="Share of the cache's tokens on which it is active.")
cols[1].metric("Max", f"{peak:.4g}", help="Largest raw activation on the cache's corpus (= 1 × max).")
cols[2].metric(
    "Mean when active",
    f"{record.mean_active:.4g}",
    f"{record.mean_active / peak:.2f} × max" if peak > 0 else None,
    delta_color="off",
)
cols[3].metric("Std when active", f"{record.std_active:.4g}")
cols[4].metric("Cos refusal", "—" if record.refusal_cos is None else f"{record.refusal_cos:+.3f}")
st.caption(
    f"Units: {cache.manifest.get('units', 'raw latent activations')}. Over "
    f"{cache.manifest.get('n_tokens', '?')} cached tokens; × max is relative to this latent's max."
)
if st.button(ADD_TO_STEERING, type="primary"):
    if add_to_steering(hook, record.latent):
        st.toast(
            f"Latent {record.latent} of {hook} added to the steering playground.",
            icon=":material/check_circle:",
        )
    else:
        st.toast(
            f"Latent {record.latent} of {hook} is already in the steering playground.", icon=":material/info:"
        )
    st.page_link("pages/steering.py", label="Open the steering playground", icon=":material/tune:")
with st.expander("Star, note, lists and your label", icon=":material/edit_note:"):
    notes_panel(workspace, hook, record.latent)
if peak <= 0:
    st.info("This latent never fired on the cached corpus (dead): it has no examples or histogram.")

left, right = st.columns([3, 2])
with left:
    before, after = context_controls(cache, key="detail_context")
    examples_section(record, hook, before, after)
    try_text(workspace, hook, record)
with right:
    st.markdown("**Activation histogram** (non-zero activations, log-spaced bins)")
    if record.histogram[1]:
        st.plotly_chart(activation_histogram(record))
    st.dataframe(
        [
            {"quantile": q, "raw": v, "× max": v / peak if peak > 0 else 0.0}
            for q, v in record.quantiles.items()
        ],
        hide_index=True,
    )
    st.markdown("**Logit effects** (tokens promoted and suppressed by the decoder row)")
    st.plotly_chart(logit_effects(record))
    logit_tables(record)

left, right = st.columns(2)
with left:
    st.markdown("**Cosine with the refusal direction across layers** (:material/star: this SAE's layer)")
    if record.refusal_cos_layers is None:
        st.info("This cache was built without a refusal direction.")
    else:
        refusal_hook = (cache.manifest.get("refusal") or {}).get("location")
        st.plotly_chart(layer_cosines(record.refusal_cos_layers, hook, refusal_hook))
with right:
    st.markdown("**Harmful vs harmless prompts** (mean activation, zeros included)")
    st.plotly_chart(harmful_vs_harmless(record))
    post = record.harmful_vs_harmless["post_instruction"]
    if record.attribution is None:
        st.caption(f"Post-instruction difference {post[0] - post[1]:+.4g}. No attribution in this cache.")
    else:
        harmful, harmless = record.attribution
        st.caption(
            f"Post-instruction difference {post[0] - post[1]:+.4g}. Attribution on the refusal score "
            f"(activation × gradient): harmful {harmful:+.4g}, harmless {harmless:+.4g}."
        )
st.markdown("**Nearest latents** (decoder cosine; click to open)")
grid = st.columns(5)
for n, (other, cos) in enumerate(record.nearest):
    grid[n % 5].button(
        f"Latent {other} · cos {cos:+.2f}",
        key=f"nearest_{n}",
        help=cache.labels(slice(other, other + 1))[0],
        on_click=open_latent,
        args=(hook, other),
        width="stretch",
    )
