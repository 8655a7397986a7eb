"""The Probes page's pieces: the result table, ROC and K-curve figures (plotly), the chosen refusal latents
with links to their detail page, and a button that runs `explorer probe`'s study with progress."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer.core.jailbreaks import builtin_wrappers
from explorer.core.prompts import DataError
from explorer.latents.reader import CacheError
from explorer.research.probes import (
    PROBE_TITLES,
    PROBES,
    ProbeResult,
    claim,
    run_probes,
    store_probes,
)
from explorer.steering.search import SearchError
from explorer.ui.state import open_latent
from explorer.workspace import Workspace

_COLOURS = {"residual": "#636efa", "latents": "#00cc96", "refusal_latents": "#ef553b"}


def probe_frame(result: ProbeResult) -> pd.DataFrame:
    """One row per evaluation set: its size, and each probe's accuracy and AUC."""
    rows = []
    for info in result.sets:
        row: dict[str, object] = {
            "set": info.name,
            "out of distribution": info.ood,
            "accuracy over": {"both": "both labels", "harmful": "harmful", "harmless": "harmless"}[
                info.scored
            ],
            "n": result.score(PROBES[0], info.name).n,
        }
        for probe in PROBES:
            score = result.score(probe, info.name)
            row[f"{PROBE_TITLES[probe]} accuracy"] = score.accuracy
            row[f"{PROBE_TITLES[probe]} AUC"] = score.auc
        rows.append(row)
    return pd.DataFrame(rows)


def roc_figure(result: ProbeResult, prompt_set: str) -> go.Figure:
    """The ROC curve of each probe on one set, its AUC in the legend."""
    figure = go.Figure()
    for probe in PROBES:
        score = result.score(probe, prompt_set)
        figure.add_trace(
            go.Scatter(
                x=score.fpr,
                y=score.tpr,
                mode="lines",
                name=f"{PROBE_TITLES[probe]} (AUC {score.auc:.3f})",
                line={"color": _COLOURS[probe]},
                hovertemplate="false positives %{x:.2f}<br>true positives %{y:.2f}<extra></extra>",
            )
        )
    figure.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")
    )
    info = next(s for s in result.sets if s.name == prompt_set)
    figure.update_layout(
        title=f"{prompt_set}: {info.description}",
        xaxis={"title": "false positive rate (harmless called harmful)", "range": [0, 1]},
        yaxis={"title": "true positive rate (harmful called harmful)", "range": [0, 1.02]},
        legend={"x": 0.45, "y": 0.05},
        height=380,
        margin={"t": 50, "b": 40},
    )
    return figure


def k_curve_figure(result: ProbeResult) -> go.Figure:
    """The top-K probe's val accuracy and val AUC against K, the chosen K marked."""
    ks = [p.k for p in result.k_curve]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=ks, y=[p.val_accuracy for p in result.k_curve], name="val accuracy",
                                mode="lines+markers"))  # fmt: skip
    figure.add_trace(go.Scatter(x=ks, y=[p.val_auc for p in result.k_curve], name="val AUC",
                                mode="lines+markers"))  # fmt: skip
    chosen = result.fit("refusal_latents").k
    figure.add_vline(x=chosen, line_dash="dash", annotation_text=f"chosen K = {chosen}")
    figure.update_layout(
        xaxis={"title": "K (top refusal latents)", "type": "log", "dtick": 0.30103},
        yaxis={"title": "on val"},
        height=320,
        margin={"t": 30, "b": 40},
    )
    return figure


def show_result(result: ProbeResult) -> None:
    """The stored study: what it says about the paper's claim, the table, ROC curves, K, the latents."""
    st.caption(
        f"`{result.model}`, made {result.created} in {result.seconds:.0f} s; trained on "
        f"{result.n_train['harmful']} harmful + {result.n_train['harmless']} harmless train prompts, C "
        f"and K chosen on {result.n_val['harmful']} + {result.n_val['harmless']} val prompts. Features: "
        f"{result.sites['note']}."
    )
    st.markdown(claim(result))
    st.dataframe(
        probe_frame(result),
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for p in PROBES
            for c in (f"{PROBE_TITLES[p]} accuracy", f"{PROBE_TITLES[p]} AUC")
        },
    )
    st.caption(
        "Jailbreak sets: accuracy is over the wrapped harmful prompts (recall); the plain harmless test "
        "prompts pair with them for the AUC. Borderline: accuracy over the borderline harmless prompts; "
        "the harmful test prompts pair with them."
    )
    main_sets = [s.name for s in result.sets if ":" not in s.name]
    for row in range(0, len(main_sets), 2):
        for column, name in zip(st.columns(2), main_sets[row : row + 2], strict=False):
            column.plotly_chart(roc_figure(result, name), key=f"probe_roc_{name}")
    with st.expander("ROC curves per jailbreak wrapper"):
        for info in result.sets:
            if ":" in info.name:
                st.plotly_chart(roc_figure(result, info.name), key=f"probe_roc_{info.name}")
    st.subheader("K of the refusal-latent probe")
    st.plotly_chart(k_curve_figure(result), key="probe_k_curve")
    latent_list(result)


def latent_list(result: ProbeResult) -> None:
    """The chosen refusal latents with their labels, each with a button that opens it."""
    fit = result.fit("refusal_latents")
    hook = result.sites["sae_hook"]
    title = f"The {fit.k} refusal latents the probe reads (`{hook}`, by {result.config.selection})"
    with st.expander(title, expanded=len(fit.latents) <= 16):
        for rank, (latent, label) in enumerate(zip(fit.latents, result.labels, strict=True), start=1):
            text, button = st.columns([5, 1])
            text.markdown(f"{rank}. latent **{latent}**: {label}")
            if button.button("Open", key=f"probe_open_{latent}", icon=":material/biotech:"):
                open_latent(hook, latent)
                st.switch_page("pages/latent_detail.py")


def run_button(workspace: Workspace) -> None:
    """A button that runs the study on this workspace (all prompts, default settings) with progress and
    stores it, as `explorer probe` does; failures are shown, not raised."""
    if not st.button("Run the probes", type="primary", key="probe_run", icon=":material/play_arrow:"):
        return
    hook = workspace.main
    if workspace.refusal is None or hook is None or hook not in workspace.caches:
        st.error(
            "The probes need a refusal direction and the main SAE's latent cache; this workspace has "
            f"{'no' if workspace.refusal is None else 'a'} refusal direction and main SAE `{hook}` "
            f"{'with' if hook in workspace.caches else 'without'} a cache. Run `explorer build`."
        )
        return
    bar = st.progress(0.0, text="reading features…")

    def on_batch(done: int, total: int) -> None:
        bar.progress(done / total, text=f"features of {done}/{total} prompts; then the probes are trained")

    try:
        result = run_probes(
            workspace.loaded,
            workspace.saes[hook],
            workspace.caches[hook],
            workspace.refusal,
            builtin_wrappers(),
            on_batch=on_batch,
        )
        store_probes(result)
    except (DataError, CacheError, SearchError, ValueError) as e:
        st.error(f"The probes could not run: {e}")
        return
    bar.progress(1.0, text="done")
    st.rerun()
