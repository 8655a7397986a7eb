"""Plotly figures for the steering pages, built from stored side-by-side and sweep records (no tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.steering.evaluation import SweepPoint
from explorer.steering.multiturn import MultiTurnPoint

Column = Literal["default", "steered"]


def _token_label(text: str) -> str:
    return repr(text)[1:-1] or "∅"


def _span(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    lo, hi = min(values), max(values)
    return (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)


def reply_strip(result: dict[str, Any], column: Column) -> go.Figure | None:
    """Per-token strips of one column of a side-by-side result: a heatmap of the clamped latents'
    activations (tokens × latents, before clamping) over the refusal projection of each token.

    Both columns share colour and axis ranges, so the two figures can be compared by eye.

    Args:
        result: `SideBySide.to_dict()` output.
        column: which reply to draw.

    Returns:
        The figure, or None when there is nothing to draw (no tokens, or neither latents nor projection).
    """
    steps = result[column]["steps"]
    labels = list(result["latent_labels"])
    both = [s for c in ("default", "steered") for s in result[c]["steps"]]
    projections = [s["refusal_projection"] for s in both if s["refusal_projection"] is not None]
    has_projection = any(s["refusal_projection"] is not None for s in steps)
    if not steps or (not labels and not has_projection):
        return None
    x = list(range(len(steps)))
    ticks = [_token_label(s["text"]) for s in steps]
    rows = int(bool(labels)) + int(has_projection)
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.65, 0.35] if rows == 2 else [1.0],
    )
    row = 1
    if labels:
        z = [[s["latents"][j] if j < len(s["latents"]) else None for s in steps] for j in range(len(labels))]
        z_span = _span([v for s in both for v in s["latents"]])
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=labels,
                customdata=[ticks] * len(labels),
                colorscale="Viridis",
                zmin=z_span[0] if z_span else None,
                zmax=z_span[1] if z_span else None,
                colorbar={
                    "title": "activation",
                    "len": 0.6 if rows == 2 else 1.0,
                    "y": 0.7 if rows == 2 else 0.5,
                },
                hovertemplate="token %{x} %{customdata}<br>%{y}<br>activation %{z:.4g}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        row = 2
    if has_projection:
        values = [s["refusal_projection"] for s in steps]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=values,
                customdata=ticks,
                mode="lines+markers",
                name="refusal projection",
                line={"color": "#d62728"},
                hovertemplate="token %{x} %{customdata}<br>projection %{y:.4g}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        span = _span(projections)
        if span is not None:
            pad = 0.05 * (span[1] - span[0])
            fig.update_yaxes(range=[span[0] - pad, span[1] + pad], row=row, col=1)
        fig.update_yaxes(title_text="refusal proj.", row=row, col=1)
    fig.update_xaxes(tickvals=x, ticktext=ticks, tickangle=-45, row=rows, col=1)
    fig.update_layout(
        title={"text": f"{column} reply, per token", "font": {"size": 13}},
        height=170 + 40 * len(labels) + (120 if has_projection else 0),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=False,
    )
    return fig


def setting_bars(points: Sequence[SweepPoint]) -> go.Figure:
    """Refusal and over-refusal of each setting as grouped bars (for sweeps with no strength axis, such
    as direction ablation, where the trade-off plot has nothing to draw along x)."""
    labels = [p.label for p in points]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=[p.refusal_harmful for p in points], name="refusal on harmful"))
    fig.add_trace(
        go.Bar(x=labels, y=[p.refusal_harmless for p in points], name="refusal on harmless (over-refusal)")
    )
    fig.update_layout(
        barmode="group",
        yaxis={"title": "refusal rate", "range": [0, 1.02]},
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def _wilson_bars(rates: Sequence[float], intervals: Sequence[tuple[float, float]]) -> dict[str, Any]:
    return {
        "type": "data",
        "symmetric": False,
        "array": [hi - r for r, (_, hi) in zip(rates, intervals, strict=True)],
        "arrayminus": [r - lo for r, (lo, _) in zip(rates, intervals, strict=True)],
    }


def multi_turn_bars(points: Sequence[MultiTurnPoint]) -> go.Figure:
    """Per setting, refusal at the final turn of the escalations beside the same requests asked alone,
    with 95% Wilson intervals: the gap is what the conversation bought the attacker."""
    labels = [p.label for p in points]
    fig = go.Figure()
    final = [p.refusal_final for p in points]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=final,
            name="refused at the final turn",
            error_y=_wilson_bars(final, [p.refusal_final_ci for p in points]),
        )
    )
    asked = [p for p in points if p.refusal_direct == p.refusal_direct]  # NaN when not measured
    if asked:
        alone = [p.refusal_direct for p in asked]
        fig.add_trace(
            go.Bar(
                x=[p.label for p in asked],
                y=alone,
                name="the final request asked alone",
                error_y=_wilson_bars(alone, [p.refusal_direct_ci for p in asked]),
            )
        )
    fig.update_layout(
        barmode="group",
        yaxis={"title": "refusal rate", "range": [0, 1.05]},
        height=340,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig
