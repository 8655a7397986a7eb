"""Upstream graph: the latents of an earlier SAE that drive the main SAE's refusal latents, checked by
ablation."""

import streamlit as st

from explorer.research.upstream import UpstreamError, load_graph
from explorer.ui.loaders import workspace_or_stop
from explorer.ui.upstream_widgets import (
    PAGE_RUN_PROMPTS,
    clicked_node,
    edge_rows,
    graph_figure,
    node_picker,
    open_node,
    run_button,
    scatter_figure,
)

st.title("Upstream graph")
st.caption(
    "Which latents of an earlier SAE drive the refusal latents of the main SAE. Attribution of an upstream "
    "latent u to a refusal latent d: u's activation × the gradient of d's activation (summed over the "
    "post-instruction positions) with respect to it, through the model with the SAE's error term kept, "
    "summed over the prompt's positions and averaged over harmful prompts. Each edge is checked by "
    "ablating u."
)
workspace = workspace_or_stop("upstream")
try:
    graph = load_graph(workspace.loaded.name)
except UpstreamError as e:
    st.error(str(e))
    graph = None
if graph is None:
    st.info(
        f"No upstream graph is stored for `{workspace.loaded.name}`. `explorer upstream --model "
        f"{workspace.name}` traces one on the whole test split; the button traces a quick one on "
        f"{PAGE_RUN_PROMPTS} prompts."
    )
    run_button(workspace)
    st.stop()

config = graph.config
cols = st.columns(4)
cols[0].metric("Edges", len(graph.edges))
cols[1].metric("Prompts", graph.n_prompts, help=f"harmful prompts of the {config.split} split")
cols[2].metric("Pearson predicted vs measured", "—" if graph.pearson is None else f"{graph.pearson:.3f}")
cols[3].metric("Same sign", "—" if graph.sign_agreement is None else f"{graph.sign_agreement:.0%}")
st.caption(
    f"`{config.upstream}` → `{config.downstream}`; downstream latents by {config.selection}, "
    f"{config.per_latent} upstream latents kept per downstream latent by |attribution|; "
    f"traced in {graph.seconds:.0f} s. Click a latent to open it."
)
event = st.plotly_chart(
    graph_figure(graph),
    key="upstream_graph_chart",
    on_select="rerun",
    selection_mode="points",
    width="stretch",
)
clicked = clicked_node(event)
if clicked is not None:
    open_node(*clicked)
node_picker(graph)

scatter = scatter_figure(graph)
if scatter is None:
    st.info("The edges were not checked by ablation (`--no-check`): no predicted vs measured comparison.")
else:
    st.plotly_chart(scatter, key="upstream_scatter", width="stretch")
    st.caption(
        f"Spearman {'—' if graph.spearman is None else f'{graph.spearman:.3f}'}. Predicted = −attribution, "
        "the first-order change of the downstream latent when the upstream latent is set to 0 at every "
        "counted position; measured = that ablation, run."
    )
st.subheader("Edges")
st.dataframe(edge_rows(graph), hide_index=True, width="stretch")
with st.expander("Trace again"):
    st.caption(f"A quick graph on {PAGE_RUN_PROMPTS} prompts replaces the stored one.")
    run_button(workspace)
