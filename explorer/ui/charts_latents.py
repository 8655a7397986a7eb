"""Plotly figures and highlighted-example HTML built from latent records (lists and floats; no tensors)."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go

from explorer.core.hooks import HookError
from explorer.latents.reader import LatentRecord
from explorer.latents.table import COLUMN_TITLES, LatentTable
from explorer.saes.quality import refusal_location_index

_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
DENSITY_FLOOR = 1e-7
"""Dead latents are coloured as if at this density (log scale has no zero)."""


MAX_POINTS = 10_000
"""Above this many latents the scatter shows a sample (a browser draws ~10k WebGL points smoothly, and the
figure sent stays under a megabyte)."""
HEAD_POINTS = 2_000
"""A sampled scatter always keeps this many of the first rows in the table's order."""


def scatter_sample(rows: npt.NDArray[np.int64], limit: int = MAX_POINTS) -> npt.NDArray[np.int64]:
    """`rows` if there are at most `limit`, else the first `HEAD_POINTS` rows and an even spread of the
    rest, `limit` in all (deterministic, so a rerun shows the same points)."""
    if len(rows) <= limit:
        return rows
    head = min(HEAD_POINTS, limit // 2)
    rest = rows[head:]
    spread = np.linspace(0, len(rest) - 1, limit - head).round().astype(np.int64)
    return np.concatenate([rows[:head], rest[spread]])


def latent_scatter(table: LatentTable, rows: npt.NDArray[np.int64] | list[int], x: str, y: str) -> go.Figure:
    """One WebGL point per latent in `rows`, `x` against `y`, coloured by log10 density; customdata is the
    latent (a click on a point opens it). Above `MAX_POINTS` rows it draws a sample (`scatter_sample`)
    and its title says so."""
    # numeric numpy arrays: plotly validates and deep-copies lists (and object arrays) element by element,
    # which costs ~100 ms for 4,096 latents
    every = np.asarray(rows, dtype=np.int64)
    index = scatter_sample(every)
    density = np.asarray(table.density)[index]
    figure = go.Figure(
        go.Scattergl(
            x=np.asarray(table.values(x))[index],
            y=np.asarray(table.values(y))[index],
            mode="markers",
            customdata=np.stack([np.asarray(table.latent)[index], density], axis=1),
            text=np.asarray(table.top_logits)[index].astype(str),
            marker={
                "size": 7 if len(index) <= 2_000 else 4,
                "color": np.log10(np.maximum(density, DENSITY_FLOOR)),
                "colorscale": "Viridis",
                "colorbar": {"title": "log10 density"},
            },
            hovertemplate=(
                "latent %{customdata[0]}<br>"
                f"{COLUMN_TITLES[x]} %{{x:.3g}}<br>{COLUMN_TITLES[y]} %{{y:.3g}}<br>"
                "density %{customdata[1]:.3%}<br>%{text}<extra></extra>"
            ),
        )
    )
    sampled = len(index) < len(every)
    figure.update_layout(
        title=(
            f"{len(index):,} of {len(every):,} latents shown: the first {min(HEAD_POINTS, len(index)):,} "
            "in the table's order and an even spread of the rest"
            if sampled
            else None
        ),
        title_font_size=13,
        xaxis_title=COLUMN_TITLES[x],
        yaxis_title=COLUMN_TITLES[y],
        height=420,
        margin={**_MARGIN, "t": 40} if sampled else _MARGIN,
        clickmode="event+select",
        dragmode="pan",
    )
    return figure


def activation_histogram(record: LatentRecord) -> go.Figure:
    """The latent's non-zero activations in log-spaced bins, on a log x axis, quantiles marked."""
    edges, counts = record.histogram
    bins = list(pairwise(edges))
    centres = [math.sqrt(lo * hi) for lo, hi in bins]
    figure = go.Figure(
        go.Bar(
            x=centres,
            y=counts,
            customdata=[list(b) for b in bins],
            hovertemplate="%{customdata[0]:.3g} – %{customdata[1]:.3g}: %{y} tokens<extra></extra>",
            marker_color="#4c78a8",
        )
    )
    marks = [_vline(value, name, log=True) for name, value in record.quantiles.items() if value > 0]
    figure.update_layout(
        shapes=[shape for shape, _ in marks],
        annotations=[note for _, note in marks],
        xaxis={"type": "log", "title": "activation (raw)"},
        yaxis_title="tokens",
        bargap=0,
        height=300,
        margin=_MARGIN,
    )
    return figure


def logit_effects(record: LatentRecord) -> go.Figure:
    """Tokens whose logits the latent's decoder row raises most (top, green) and lowers most (bottom,
    red); token names on the axis in readable type (the values are in the tables beside it)."""
    figure = go.Figure()
    for name, pairs, colour, mark in (
        ("promoted", record.logits_top, "#54a24b", "+"),
        ("suppressed", record.logits_bottom, "#e45756", "−"),
    ):
        figure.add_trace(
            go.Bar(
                x=[v for _, v in pairs],
                y=[f"{mark} {t!r} ({i + 1})" for i, (t, _) in enumerate(pairs)],
                orientation="h",
                name=name,
                marker_color=colour,
                hovertemplate="%{y}: %{x:.4f}<extra>" + name + "</extra>",
            )
        )
    figure.update_layout(
        yaxis={"autorange": "reversed", "tickfont": {"size": 12}},
        xaxis_title="logit effect (decoder row · unembedding)",
        height=80 + 24 * (len(record.logits_top) + len(record.logits_bottom)),
        margin=_MARGIN,
        legend={"orientation": "h", "y": 1.08},
        font={"size": 12},
    )
    return figure


def layer_cosines(cosines: list[float], hook: str, refusal_hook: str | None) -> go.Figure:
    """Cosine of the latent's decoder row with the refusal direction at every layer location.

    Args:
        cosines: one per location: resid_pre of layer 0..n-1, then the final resid_post.
        hook: the SAE's own hook (starred when it is a residual hook of this model).
        refusal_hook: where the refusal direction was selected (a dotted line), or None.
    """
    n_layers = len(cosines) - 1
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]
    figure = go.Figure(
        go.Scatter(
            x=list(range(len(cosines))),
            y=cosines,
            mode="lines+markers",
            customdata=names,
            hovertemplate="%{customdata}<br>cosine %{y:.3f}<extra></extra>",
            name="cosine",
        )
    )
    own, refusal_location = _location(hook, n_layers), _location(refusal_hook, n_layers)
    if own is not None:
        figure.add_trace(
            go.Scatter(
                x=[own],
                y=[cosines[own]],
                mode="markers",
                marker={"symbol": "star", "size": 16, "color": "#e45756"},
                name="this SAE's layer",
                hovertemplate=f"this SAE: {names[own]}<br>cosine %{{y:.3f}}<extra></extra>",
            )
        )
    marks = [] if refusal_location is None else [_vline(refusal_location, "direction")]
    zero = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "y0": 0,
        "y1": 0,
        "line": {"color": "lightgrey"},
    }
    figure.update_layout(
        shapes=[zero, *(shape for shape, _ in marks)],
        annotations=[note for _, note in marks],
        xaxis_title="layer (input of; the last point is the final resid_post)",
        yaxis_title="cosine with refusal direction",
        height=300,
        margin=_MARGIN,
        legend={"orientation": "h", "y": 1.12},
    )
    return figure


def _vline(x: float, text: str, log: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A dotted vertical line with a label above it, as layout dicts (faster than `add_vline`)."""
    shape = {
        "type": "line",
        "xref": "x",
        "yref": "paper",
        "x0": x,
        "x1": x,
        "y0": 0,
        "y1": 1,
        "line": {"dash": "dot", "color": "grey"},
    }
    note = {
        "x": math.log10(x) if log else x,  # annotations on a log axis take log10 positions
        "xref": "x",
        "y": 1,
        "yref": "paper",
        "yanchor": "bottom",
        "text": text,
        "showarrow": False,
    }
    return shape, note


def _location(hook: str | None, n_layers: int) -> int | None:
    if hook is None:
        return None
    try:
        return refusal_location_index(hook, n_layers)
    except HookError:
        return None


def harmful_vs_harmless(record: LatentRecord) -> go.Figure:
    """Mean activation (zeros included) on harmful and harmless prompts, per scope."""
    scopes = list(record.harmful_vs_harmless)
    figure = go.Figure()
    for index, (label, colour) in enumerate((("harmful", "#e45756"), ("harmless", "#4c78a8"))):
        figure.add_trace(
            go.Bar(
                x=[scope.replace("_", "-") for scope in scopes],
                y=[record.harmful_vs_harmless[scope][index] for scope in scopes],
                name=label,
                marker_color=colour,
                hovertemplate=label + " %{x}: %{y:.4g}<extra></extra>",
            )
        )
    figure.update_layout(barmode="group", yaxis_title="mean activation (raw)", height=280, margin=_MARGIN)
    return figure
