"""Overview: the loaded model, its provenance and the state of the build."""

import streamlit as st

from explorer.core.hooks import hook_names
from explorer.saes.quality import summary_row
from explorer.ui.charts import l0_histograms, selection_heatmap
from explorer.ui.loaders import build_manifest, refusal_records, sae_records, workspace_or_stop
from explorer.ui.overview_widgets import direction_summary, genre_quality, workspace_saes

st.title("refusal-explorer")
st.caption("Find, inspect and steer the SAE latents that mediate refusal in chat language models.")

workspace = workspace_or_stop("overview")
spec = workspace.loaded.config.spec
info = workspace.loaded.describe()  # the one copy of the model every page shares
st.subheader(f"Model: {info['name']} · workspace {workspace.name}")
for problem in workspace.problems:
    st.warning(problem)
cols = st.columns(4)
cols[0].metric("Layers", info["n_layers"])
cols[1].metric("d_model", info["d_model"])
cols[2].metric("Parameters", f"{info['n_parameters'] / 1e6:.1f} M")
cols[3].metric("Device / dtype", f"{info['device']} / {info['dtype']}")
st.markdown(f"**Architecture** `{info['architecture']}` · **source** `{info['source']}`")

with st.expander("Provenance", expanded=False):
    st.json(info["provenance"] or {"note": "no provenance.json beside this model"})
with st.expander(f"Residual hooks ({2 * info['n_layers']})", expanded=False):
    st.code("\n".join(hook_names(info["n_layers"])), language="text")

metrics = info["provenance"].get("metrics")
if metrics:
    st.subheader("Safety fine-tune (test split)")
    cols = st.columns(4)
    cols[0].metric("Harmful refused", f"{metrics['harmful_refusal_rate']:.1%}")
    cols[1].metric("Harmless refused", f"{metrics['harmless_refusal_rate']:.1%}")
    cols[2].metric("KL, first token", f"{metrics['kl_first_token']:.2f} nats")
    cols[3].metric("KL, over answer", f"{metrics['kl_answer']:.2f} nats")
    st.caption("Greedy generation, substring judge; KL(base ‖ tuned) on harmless test prompts.")

st.subheader("Refusal direction")
try:
    selection, report = refusal_records(info["name"])
except ValueError as e:
    st.error(str(e))
    selection, report = None, None
if selection is None:
    st.info(f"No refusal direction for this model yet: run `explorer refusal --model {spec}`.")
else:
    direction_summary(selection)
    if report is not None:
        cols = st.columns(3)
        cols[0].metric(
            "Harmful refused, direction ablated",
            f"{report['harmful_ablated_refusal_rate']:.1%}",
            f"{-report['ablation_drop_points']:.1f} points",
            delta_color="off",
        )
        cols[1].metric(
            "Harmless refused, direction added",
            f"{report['harmless_added_refusal_rate']:.1%}",
            f"from {report['harmless_baseline_refusal_rate']:.1%}",
            delta_color="off",
        )
        cols[2].metric("Added at", report["location"], f"alpha {report['alpha']}", delta_color="off")
    score = st.radio("Candidate score", ["induce", "bypass", "kl"], horizontal=True)
    st.plotly_chart(selection_heatmap(selection, score), width="stretch")
    st.caption(
        "Blank cells: not computed, as Arditi et al.'s filters would discard them (or a screen on four "
        "prompts found the direction far from inducing refusal). Scores on the val split."
    )

st.subheader("SAEs")
try:
    saes = sae_records(info["name"])
except ValueError as e:
    st.error(str(e))
    saes = None
if saes is None:
    workspace_saes(workspace)
else:
    sae_index, sae_reports = saes
    rows = [summary_row(rep, is_main=hook == sae_index.get("main")) for hook, rep in sae_reports.items()]
    st.dataframe(rows, hide_index=True)
    thresholds = sorted(
        {
            f"{r['reconstruction']['dense_threshold']:.0%}"
            for r in sae_reports.values()
            if r.get("reconstruction")
        }
    )
    st.caption(
        "Measured on held-out tokens (test-split transcripts and held-out text); first position and "
        "special tokens excluded. Dead: never active on held-out tokens; dense: active on > "
        f"{' / '.join(thresholds) or 'the report’s threshold'} of them. Loss recovered = (CE zero-ablated − "
        "CE spliced) / (CE zero-ablated − CE clean). Activations are raw latent values."
    )
    if sae_reports:
        st.plotly_chart(l0_histograms(sae_reports), width="stretch")
        genre_quality(sae_reports, sae_index.get("main"))

st.subheader("Build")
try:
    manifest = build_manifest()
except ValueError as e:
    st.error(str(e))
    manifest = None
if workspace.manifest is not None and workspace.manifest.stages:
    manifest = {"stages": workspace.manifest.stages, "finished": workspace.manifest.built, "explorer": "?"}
if manifest is None:
    st.info("Nothing built yet: run `make demo` or `explorer build`.")
else:
    st.dataframe(
        [{"stage": name, **stage} for name, stage in manifest["stages"].items()],
        hide_index=True,
    )
    st.caption(
        f"Last build finished {manifest.get('finished', '?')} (explorer {manifest.get('explorer', '?')})."
    )
