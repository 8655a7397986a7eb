"""Plotly figures built from stored records (lists and floats); no computation on tensors here."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go


def selection_heatmap(selection: dict[str, Any], score: str) -> go.Figure:
    """One candidate score (induce, bypass or kl) over locations × post-instruction positions.

    Cells a filter skipped are blank; the selected candidate is circled.
    """
    tokens = [repr(t)[1:-1] for t in selection["post_instruction_tokens"]]
    n_pos = len(tokens)
    locations = selection["locations"]
    grid: list[list[float | None]] = [[None] * len(locations) for _ in range(n_pos)]
    for c in selection["candidates"]:
        grid[c["position"] + n_pos][c["layer"]] = c[score]
    chosen = selection["selected"]
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            x=list(range(len(locations))),
            y=[f"{p - n_pos} {t}" for p, t in enumerate(tokens)],
            colorscale="RdBu_r" if score != "kl" else "Viridis",
            zmid=0 if score != "kl" else None,
            hovertemplate="layer %{x}<br>position %{y}<br>" + score + " %{z:.3f}<extra></extra>",
            colorbar={"title": score},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[chosen["layer"]],
            y=[f"{chosen['position']} {tokens[chosen['position'] + n_pos]}"],
            mode="markers",
            marker={"symbol": "circle-open", "size": 18, "color": "black", "line": {"width": 3}},
            name="selected",
            hovertemplate=f"selected: {chosen['location']}<extra></extra>",
        )
    )
    figure.update_layout(
        xaxis_title="layer (input of; the last column is the final resid_post)",
        yaxis_title="post-instruction position",
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=False,
    )
    return figure


def l0_histograms(reports: dict[str, dict[str, Any]]) -> go.Figure:
    """Per-token L0 of each SAE on held-out tokens, one trace per hook."""
    fig = go.Figure()
    for hook, report in reports.items():
        hist = report["reconstruction"]["l0"]["histogram"]
        total = max(sum(hist["tokens"]), 1)
        fig.add_trace(go.Bar(x=hist["l0"], y=[c / total for c in hist["tokens"]], name=hook, opacity=0.7))
    fig.update_layout(
        barmode="overlay",
        xaxis_title="active latents per token (L0)",
        yaxis_title="fraction of held-out tokens",
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def source_quality(reports: dict[str, dict[str, Any]], target: float) -> go.Figure:
    """Explained variance of each SAE on each source of its held-out tokens, genres never trained on
    first, with the target as a line."""
    fig = go.Figure()
    for hook, report in reports.items():
        sources = report.get("by_source") or {}
        order = sorted(sources, key=lambda name: (sources[name]["trained_on"], name))
        fig.add_trace(
            go.Bar(
                x=[
                    f"{name} (never trained on)" if not sources[name]["trained_on"] else name
                    for name in order
                ],
                y=[sources[name]["explained_variance"] for name in order],
                customdata=[[sources[name]["tokens"], sources[name]["l0"]] for name in order],
                hovertemplate="%{x}<br>explained variance %{y:.3f}<br>%{customdata[0]} tokens, "
                "L0 %{customdata[1]:.1f}<extra>" + hook + "</extra>",
                name=hook,
            )
        )
    fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target}")
    fig.update_layout(
        barmode="group",
        yaxis_title="explained variance (held-out tokens)",
        yaxis_range=[0, 1],
        height=340,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig
