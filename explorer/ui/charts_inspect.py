"""Plotly figures for the prompt inspector, built from a `PromptInspection` record (no tensors here)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.latents.inspector import PromptInspection

_EXCLUDED_COLOR = "#b0b0b0"
_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}


def display_token(piece: str) -> str:
    """A token piece made visible: newlines as ↵, tabs as ⇥, spaces as ·, an empty piece as ▯."""
    if not piece:
        return "▯"
    return piece.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


def token_label(inspection: PromptInspection, index: int) -> str:
    """`index: token`, with "(not counted)" for special tokens and the first position."""
    suffix = " (not counted)" if inspection.excluded[index] else ""
    return f"{index}: {display_token(inspection.tokens[index])}{suffix}"


def _tick_text(inspection: PromptInspection) -> list[str]:
    return [
        f"<span style='color:{_EXCLUDED_COLOR}'>{display_token(t)}</span>" if excluded else display_token(t)
        for t, excluded in zip(inspection.tokens, inspection.excluded, strict=True)
    ]


def token_strip(inspection: PromptInspection, scale: str = "raw") -> go.Figure:
    """The refusal projection per token (bars, clickable) above tokens × the prompt's top latents.

    Args:
        inspection: the record.
        scale: "raw" activations, or "max": fractions of each latent's corpus max (when known).

    Grey bars and tick labels mark tokens left out of statistics (special tokens, the first position).
    Each bar carries its token index as `customdata`, which is what a click selects.
    """
    n = len(inspection.tokens)
    has_bar = inspection.refusal_projection is not None
    has_heat = bool(inspection.prompt_latents)
    rows = int(has_bar) + int(has_heat) or 1
    figure = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        row_heights=[0.35, 0.65] if rows == 2 else None,
    )
    x = list(range(n))
    labels = [display_token(t) for t in inspection.tokens]
    if inspection.refusal_projection is not None:
        colors = [
            _EXCLUDED_COLOR if excluded else ("#d62728" if value > 0 else "#1f77b4")
            for value, excluded in zip(inspection.refusal_projection, inspection.excluded, strict=True)
        ]
        figure.add_trace(
            go.Bar(
                x=x,
                y=inspection.refusal_projection,
                marker_color=colors,
                customdata=x,
                text=labels,
                textposition="none",
                hovertemplate="%{x}: %{text}<br>refusal projection %{y:.3f}<extra></extra>",
                name="refusal projection",
            ),
            row=1,
            col=1,
        )
        figure.update_yaxes(title_text="refusal proj.", row=1, col=1)
    if has_heat:
        use_max = scale == "max" and inspection.prompt_fractions is not None
        z = inspection.prompt_fractions if use_max else inspection.prompt_activations
        figure.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=[f"#{latent}" for latent in inspection.prompt_latents],
                customdata=[labels] * len(inspection.prompt_latents),
                colorscale="Oranges",
                zmin=0,
                hovertemplate="%{x}: %{customdata}<br>latent %{y}<br>"
                + ("fraction of max" if use_max else "activation")
                + " %{z:.3f}<extra></extra>",
                colorbar={"title": "× max" if use_max else "act.", "len": 0.6, "y": 0.3},
            ),
            row=rows,
            col=1,
        )
        figure.update_yaxes(title_text="latent", type="category", autorange="reversed", row=rows, col=1)
    figure.update_xaxes(tickvals=x, ticktext=_tick_text(inspection), tickangle=-60, row=rows, col=1)
    figure.update_layout(
        height=220 + 22 * len(inspection.prompt_latents) if has_heat else 280,
        margin=_MARGIN,
        showlegend=False,
    )
    return figure


def layer_projections(inspection: PromptInspection) -> go.Figure:
    """Residual · the unit refusal direction at every location (rows) and token (columns)."""
    n = len(inspection.tokens)
    figure = go.Figure(
        go.Heatmap(
            z=inspection.layer_projections,
            x=list(range(n)),
            y=inspection.layer_locations,
            customdata=[[display_token(t) for t in inspection.tokens]] * len(inspection.layer_locations),
            colorscale="RdBu_r",
            zmid=0,
            hovertemplate="%{x}: %{customdata}<br>%{y}<br>projection %{z:.3f}<extra></extra>",
            colorbar={"title": "proj."},
        )
    )
    figure.update_xaxes(tickvals=list(range(n)), ticktext=_tick_text(inspection), tickangle=-60)
    figure.update_yaxes(type="category", autorange="reversed")
    figure.update_layout(height=160 + 18 * len(inspection.layer_locations), margin=_MARGIN)
    return figure
