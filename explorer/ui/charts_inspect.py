"""Plotly figures for the prompt inspector, built from `PromptInspection` records (no tensors here).

Tokens left out of statistics (special tokens, the first position) are drawn grey with their value on
hover, and never set an axis range or a colour scale: the first position's residual is an outlier (the
attention sink) that would flatten everything else. Figures take a window of token indices, so a long
prompt is drawn a readable (and quick: plotly lays out tick labels in quadratic time) slice at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.latents.inspector import PromptInspection

WINDOW = 50
"""Tokens drawn at a time, so their labels stay readable in a Streamlit column. Plotly also lays out tick
labels in quadratic time (in Chromium: +1.8 s for 256 labels, 57 s for 1,000, 231 s for 2,000)."""
_EXCLUDED_COLOR = "#b0b0b0"
_GREY_SCALE = [[0.0, _EXCLUDED_COLOR], [1.0, _EXCLUDED_COLOR]]
_SELECTED_FILL = "rgba(255, 213, 79, 0.25)"
_SELECTED_LINE = "#8a6d00"
_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
_KEEP_OPACITY = {"marker": {"opacity": 1.0}}


def display_token(piece: str) -> str:
    """A token piece made visible: newlines as ↵, tabs as ⇥, spaces as ·, an empty piece as ▯."""
    if not piece:
        return "▯"
    return piece.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


def token_label(inspection: PromptInspection, index: int) -> str:
    """`index: token`, with "(not counted)" for special tokens and the first position."""
    suffix = " (not counted)" if inspection.excluded[index] else ""
    return f"{index}: {display_token(inspection.tokens[index])}{suffix}"


def counted_range(
    rows: Sequence[Sequence[float | None]], excluded: Sequence[bool]
) -> tuple[float, float] | None:
    """(lowest, highest) value over the counted tokens of `rows` ([row][token]); None if there is none."""
    values = [v for row in rows for v, out in zip(row, excluded, strict=True) if not out and v is not None]
    return (min(values), max(values)) if values else None


def _padded(low: float, high: float, with_zero: bool) -> list[float]:
    if with_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    pad = 0.06 * (high - low) or max(abs(high), 1.0) * 0.1
    return [low - pad, high + pad]


def _split(row: Sequence[float | None], excluded: Sequence[bool]) -> tuple[list, list]:
    """A row as (counted values with gaps, excluded values with gaps): two traces, coloured apart."""
    counted = [None if out else v for v, out in zip(row, excluded, strict=True)]
    left_out = [v if out else None for v, out in zip(row, excluded, strict=True)]
    return counted, left_out


def _tick_text(inspection: PromptInspection, window: range) -> list[str]:
    return [
        f"<span style='color:{_EXCLUDED_COLOR}'>{display_token(inspection.tokens[i])}</span>"
        if inspection.excluded[i]
        else display_token(inspection.tokens[i])
        for i in window
    ]


def _status(excluded: bool) -> str:
    return " (not counted)" if excluded else ""


def token_strip(
    inspection: PromptInspection, scale: str = "raw", window: range | None = None, selected: int | None = None
) -> go.Figure:
    """The refusal projection per token (bars) above tokens × the prompt's top latents (heatmap).

    Args:
        inspection: the record.
        scale: "raw" activations, or "max": fractions of each latent's corpus max (when known).
        window: the token indices drawn (default: all); axis ranges and colours come from every counted
            token of the prompt, so they do not jump as the window moves.
        selected: a token index to highlight.

    Every bar and heatmap cell carries its token index first in `customdata`, which is what a click
    selects (the heatmap's cells are covered by invisible markers, since plotly cannot select heatmap
    cells).
    """
    window = window if window is not None else range(len(inspection.tokens))
    x = list(window)
    labels = [display_token(inspection.tokens[i]) for i in window]
    has_heat = bool(inspection.prompt_latents)
    rows = int(inspection.refusal_projection is not None) + int(has_heat) or 1
    figure = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        row_heights=[0.35, 0.65] if rows == 2 else None,
    )
    if inspection.refusal_projection is not None:
        _add_projection_bars(figure, inspection, window, labels)
    if has_heat:
        _add_latent_heatmap(figure, inspection, scale, window, labels, rows)
    figure.update_xaxes(range=[x[0] - 0.5, x[-1] + 0.5] if x else None)
    figure.update_xaxes(tickvals=x, ticktext=_tick_text(inspection, window), tickangle=-90, row=rows, col=1)
    if selected is not None and selected in window:
        figure.add_vrect(
            x0=selected - 0.5,
            x1=selected + 0.5,
            fillcolor=_SELECTED_FILL,
            line={"color": _SELECTED_LINE, "width": 1.5},
            layer="above",
        )
    figure.update_layout(
        height=240 + 22 * len(inspection.prompt_latents) if has_heat else 300,
        margin=_MARGIN,
        showlegend=False,
        clickmode="event+select",
        hovermode="closest",
    )
    return figure


def _add_projection_bars(
    figure: go.Figure, inspection: PromptInspection, window: range, labels: list[str]
) -> None:
    projection = inspection.refusal_projection or []
    values = [projection[i] for i in window]
    excluded = [inspection.excluded[i] for i in window]
    colors = [
        _EXCLUDED_COLOR if out else ("#d62728" if value > 0 else "#1f77b4")
        for value, out in zip(values, excluded, strict=True)
    ]
    figure.add_trace(
        go.Bar(
            x=list(window),
            y=values,
            marker_color=colors,
            customdata=[
                [i, label + _status(out)] for i, label, out in zip(window, labels, excluded, strict=True)
            ],
            hovertemplate="%{customdata[0]}: %{customdata[1]}<br>refusal projection %{y:.3f}<extra></extra>",
            selected=_KEEP_OPACITY,
            unselected=_KEEP_OPACITY,
            name="refusal projection",
        ),
        row=1,
        col=1,
    )
    span = counted_range([projection], inspection.excluded)
    figure.update_yaxes(
        title_text="refusal proj.", range=_padded(*span, with_zero=True) if span else None, row=1, col=1
    )


def _add_latent_heatmap(
    figure: go.Figure, inspection: PromptInspection, scale: str, window: range, labels: list[str], row: int
) -> None:
    use_max = scale == "max" and inspection.prompt_fractions is not None
    z_all: Sequence[Sequence[float | None]] = (
        inspection.prompt_fractions
        if use_max and inspection.prompt_fractions
        else inspection.prompt_activations
    )
    excluded = [inspection.excluded[i] for i in window]
    z = [[values[i] for i in window] for values in z_all]
    counted, left_out = zip(*(_split(values, excluded) for values in z), strict=True)
    names = [f"#{latent}" for latent in inspection.prompt_latents]
    span = counted_range(z_all, inspection.excluded)
    x = list(window)
    what = "× max" if use_max else "activation"
    figure.add_trace(
        go.Heatmap(
            z=list(counted),
            x=x,
            y=names,
            colorscale="Oranges",
            zmin=0,
            zmax=max(span[1], 1e-6) if span else None,
            hoverinfo="skip",
            colorbar={"title": "× max" if use_max else "act.", "len": 0.6, "y": 0.3},
        ),
        row=row,
        col=1,
    )
    figure.add_trace(
        go.Heatmap(z=list(left_out), x=x, y=names, colorscale=_GREY_SCALE, showscale=False, hoverinfo="skip"),
        row=row,
        col=1,
    )
    # Plotly cannot select a heatmap cell: invisible markers over the cells take the hover and the click.
    cells = [
        (i, n, value) for n, values in zip(names, z, strict=True) for i, value in zip(x, values, strict=True)
    ]
    figure.add_trace(
        go.Scatter(
            x=[i for i, _, _ in cells],
            y=[n for _, n, _ in cells],
            mode="markers",
            # Small markers: plotly's hover takes the nearest marker edge, so wide ones would tie.
            marker={"size": 2, "opacity": 0},
            customdata=[
                [i, labels[i - x[0]] + _status(inspection.excluded[i]), "–" if v is None else f"{v:.3f}"]
                for i, _, v in cells
            ],
            hovertemplate=f"%{{customdata[0]}}: %{{customdata[1]}}<br>latent %{{y}}<br>{what} "
            "%{customdata[2]}<extra></extra>",
            selected={"marker": {"opacity": 0}},
            unselected={"marker": {"opacity": 0}},
            name="latents",
        ),
        row=row,
        col=1,
    )
    figure.update_yaxes(title_text="latent", type="category", autorange="reversed", row=row, col=1)


def layer_projections(inspection: PromptInspection, window: range | None = None) -> go.Figure:
    """Residual · the unit refusal direction at every location (rows) and token (columns).

    A diverging scale centred on 0, symmetric about the largest counted magnitude at any location.
    """
    window = window if window is not None else range(len(inspection.tokens))
    x = list(window)
    excluded = [inspection.excluded[i] for i in window]
    rows = [[values[i] for i in window] for values in inspection.layer_projections]
    counted, left_out = zip(*(_split(values, excluded) for values in rows), strict=True) if rows else ((), ())
    span = counted_range(inspection.layer_projections, inspection.excluded)
    bound = max(abs(span[0]), abs(span[1]), 1e-6) if span else None
    hover = [
        [f"{i}: {display_token(inspection.tokens[i])}{_status(inspection.excluded[i])}" for i in window]
    ] * len(rows)
    figure = go.Figure(
        go.Heatmap(
            z=list(counted),
            x=x,
            y=inspection.layer_locations,
            customdata=hover,
            colorscale="RdBu_r",
            zmid=0,
            zmin=-bound if bound else None,
            zmax=bound,
            hovertemplate="%{customdata}<br>%{y}<br>projection %{z:.3f}<extra></extra>",
            colorbar={"title": "proj."},
        )
    )
    figure.add_trace(
        go.Heatmap(
            z=list(left_out),
            x=x,
            y=inspection.layer_locations,
            customdata=hover,
            colorscale=_GREY_SCALE,
            showscale=False,
            hovertemplate="%{customdata}<br>%{y}<br>projection %{z:.3f}<extra></extra>",
        )
    )
    figure.update_xaxes(tickvals=x, ticktext=_tick_text(inspection, window), tickangle=-90)
    figure.update_yaxes(type="category", autorange="reversed")
    figure.update_layout(height=180 + 18 * len(inspection.layer_locations), margin=_MARGIN)
    return figure


def projection_lines(inspections: Sequence[tuple[str, PromptInspection]]) -> go.Figure:
    """Several prompts' refusal projections on one chart, aligned at the end of the prompt.

    The x axis counts tokens back from the last one, so the post-instruction tokens (where the refusal
    direction was read, marked) line up whatever the prompts' lengths. Tokens left out of statistics are
    gaps in the lines and grey markers.
    """
    figure = go.Figure()
    spans = []
    for (name, inspection), color in zip(inspections, ("#d62728", "#1f77b4", "#2ca02c"), strict=False):
        projection = inspection.refusal_projection or []
        n = len(projection)
        x = [i - (n - 1) for i in range(n)]
        counted, left_out = _split(projection, inspection.excluded)
        hover = [f"{i}: {display_token(t)}" for i, t in enumerate(inspection.tokens)]
        template = "%{fullData.name}<br>%{customdata}<br>projection %{y:.3f}<extra></extra>"
        figure.add_trace(
            go.Scatter(
                x=x,
                y=counted,
                mode="lines+markers",
                name=name,
                line={"color": color},
                marker={"size": 4},
                customdata=hover,
                hovertemplate=template,
            )
        )
        figure.add_trace(
            go.Scatter(
                x=x,
                y=left_out,
                mode="markers",
                name=f"{name} (not counted)",
                showlegend=False,
                marker={"color": _EXCLUDED_COLOR, "size": 6},
                customdata=hover,
                hovertemplate=template,
            )
        )
        span = counted_range([projection], inspection.excluded)
        if span:
            spans.append(span)
    position = next((i.refusal_position for _, i in inspections if i.refusal_position is not None), None)
    if position is not None:
        figure.add_vline(x=position + 1, line_dash="dot", line_color="#777")
    if spans:
        figure.update_yaxes(range=_padded(min(s[0] for s in spans), max(s[1] for s in spans), with_zero=True))
    figure.update_xaxes(title_text="tokens before the end of the prompt")
    figure.update_yaxes(title_text="refusal proj.")
    figure.update_layout(height=300, margin=_MARGIN, legend={"orientation": "h", "y": 1.12})
    return figure
