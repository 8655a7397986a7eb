"""The Upstream graph page's figures and widgets, drawn from a stored `UpstreamGraph` (no tensors)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from explorer.research.upstream import Node, UpstreamGraph, store_graph, upstream_graph
from explorer.ui.state import open_latent
from explorer.workspace import Workspace

POSITIVE, NEGATIVE = "#1f77b4", "#d62728"
"""Edge colours: the upstream latent raises the downstream latent (positive attribution), or lowers it."""
LABEL_CHARS = 48
PAGE_RUN_PROMPTS = 8
"""Prompts the page's run button uses: a quick graph (the CLI's default takes the whole split)."""


def node_text(node: Node) -> str:
    """`L{latent}: {label}`, the label cut to `LABEL_CHARS`."""
    label = node.label if len(node.label) <= LABEL_CHARS else node.label[: LABEL_CHARS - 1] + "…"
    return f"L{node.latent}: {label}" if label else f"L{node.latent}"


def _positions(graph: UpstreamGraph) -> dict[tuple[str, int], tuple[float, float]]:
    """Upstream nodes on the left, downstream on the right, each column top to bottom in stored order."""
    where = {}
    for x, side in ((0.0, "upstream"), (1.0, "downstream")):
        column = [n for n in graph.nodes if n.side == side]
        for i, node in enumerate(column):
            where[(node.hook, node.latent)] = (x, 1.0 - (i + 0.5) / len(column))
    return where


def graph_figure(graph: UpstreamGraph) -> go.Figure:
    """Two columns of latents (upstream left, downstream right); an edge's width grows with |attribution|,
    its colour gives the sign; hovering an edge's midpoint shows the predicted and measured change.
    Node points carry [hook, latent] as customdata, so a click can open the latent."""
    where = _positions(graph)
    up, down = graph.config.upstream, graph.config.downstream
    widest = max((abs(e.attribution) for e in graph.edges), default=1.0) or 1.0
    figure = go.Figure()
    middle_x, middle_y, hovers, colours = [], [], [], []
    for e in graph.edges:
        (x0, y0), (x1, y1) = where[(up, e.upstream)], where[(down, e.downstream)]
        colour = POSITIVE if e.attribution >= 0 else NEGATIVE
        figure.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line={"width": 0.5 + 8 * abs(e.attribution) / widest, "color": colour},
                opacity=0.6,
                hoverinfo="skip",
                showlegend=False,
            )
        )
        middle_x.append((x0 + x1) / 2)
        middle_y.append((y0 + y1) / 2)
        colours.append(colour)
        measured = "not checked" if e.measured is None else f"{e.measured:+.4g}"
        hovers.append(
            f"L{e.upstream} → L{e.downstream}<br>attribution {e.attribution:+.4g}<br>"
            f"ablation: predicted {e.predicted:+.4g}, measured {measured}"
        )
    figure.add_trace(
        go.Scatter(
            x=middle_x,
            y=middle_y,
            mode="markers",
            marker={"size": 6, "color": colours, "symbol": "diamond"},
            hovertext=hovers,
            hoverinfo="text",
            name="edge (hover)",
        )
    )
    for side, hook, anchor in (("upstream", up, "middle left"), ("downstream", down, "middle right")):
        nodes = [n for n in graph.nodes if n.side == side]
        figure.add_trace(
            go.Scatter(
                x=[where[(n.hook, n.latent)][0] for n in nodes],
                y=[where[(n.hook, n.latent)][1] for n in nodes],
                mode="markers+text",
                text=[node_text(n) for n in nodes],
                textposition=anchor,
                customdata=[[n.hook, n.latent] for n in nodes],
                hovertemplate="%{text}<extra>" + hook + "</extra>",
                marker={"size": 14, "color": "#444" if side == "upstream" else "#ff7f0e"},
                name=f"{side}: {hook}",
            )
        )
    figure.update_layout(
        height=max(400, 28 * max(len([n for n in graph.nodes if n.side == "upstream"]), 1)),
        xaxis={"visible": False, "range": [-1.4, 2.4]},
        yaxis={"visible": False, "range": [-0.02, 1.02]},
        legend={"orientation": "h"},
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
    )
    return figure


def scatter_figure(graph: UpstreamGraph) -> go.Figure | None:
    """Predicted (-attribution) against measured ablation change per edge, with y = x; None unchecked."""
    checked = [e for e in graph.edges if e.measured is not None]
    if not checked:
        return None
    predicted = [e.predicted for e in checked]
    measured = [e.measured for e in checked if e.measured is not None]
    lo, hi = min(predicted + measured), max(predicted + measured)
    figure = go.Figure(
        [
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#888"}, name="y = x"
            ),
            go.Scatter(
                x=predicted,
                y=measured,
                mode="markers",
                marker={"color": [POSITIVE if e.attribution >= 0 else NEGATIVE for e in checked]},
                hovertext=[f"L{e.upstream} → L{e.downstream}" for e in checked],
                name="edge",
            ),
        ]
    )
    pearson = "undefined" if graph.pearson is None else f"{graph.pearson:.3f}"
    figure.update_layout(
        title=f"Ablation: predicted vs measured change (Pearson {pearson})",
        xaxis_title="predicted change of the downstream latent (−attribution)",
        yaxis_title="measured change",
        height=420,
    )
    return figure


def edge_rows(graph: UpstreamGraph) -> list[dict[str, Any]]:
    """One row per edge: the two latents with their labels, attribution, predicted and measured change."""
    labels = {(n.hook, n.latent): n.label for n in graph.nodes}
    up, down = graph.config.upstream, graph.config.downstream
    return [
        {
            "downstream": e.downstream,
            "downstream label": labels.get((down, e.downstream), ""),
            "upstream": e.upstream,
            "upstream label": labels.get((up, e.upstream), ""),
            "attribution": e.attribution,
            "predicted": e.predicted,
            "measured": e.measured,
        }
        for e in graph.edges
    ]


def clicked_node(event: Any) -> tuple[str, int] | None:
    """The (hook, latent) of the node a `st.plotly_chart` selection event names (edges carry none)."""
    points = (event or {}).get("selection", {}).get("points", [])
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list | tuple) and len(data) == 2:
            return str(data[0]), int(data[1])
    return None


def open_node(hook: str, latent: int) -> None:
    """Open a latent on the Latent detail page."""
    open_latent(hook, latent)
    st.switch_page("pages/latent_detail.py")


def node_picker(graph: UpstreamGraph) -> None:
    """A selectbox of every node and a button that opens it (for when a click on the figure is awkward)."""
    nodes = list(graph.nodes)
    cols = st.columns([4, 1])
    choice = cols[0].selectbox(
        "Open a latent",
        range(len(nodes)),
        format_func=lambda i: f"{nodes[i].side}: {nodes[i].hook} {node_text(nodes[i])}",
        key="upstream_pick",
    )
    if cols[1].button("Open", icon=":material/open_in_new:", key="upstream_open") and choice is not None:
        open_node(nodes[choice].hook, nodes[choice].latent)


def run_button(workspace: Workspace) -> None:
    """A button that traces a quick graph (`PAGE_RUN_PROMPTS` prompts) with progress and stores it."""
    from explorer.cli.upstream import upstream_config

    if not st.button("Trace a quick graph", type="primary", icon=":material/play_arrow:", key="upstream_run"):
        return
    bar = st.progress(0.0, text="starting…")
    try:
        config = upstream_config(workspace, n=PAGE_RUN_PROMPTS)
        graph = upstream_graph(
            workspace.loaded,
            workspace.saes,
            workspace.caches,
            config,
            progress=lambda done, what: _show(bar, done, what),
        )
        store_graph(graph)
    except ValueError as e:  # UpstreamError, a bad hook, a cache without the ranking columns
        st.error(f"Could not trace the graph: {e}")
        return
    st.rerun()


def _show(bar: Any, done: float, what: str) -> None:
    bar.progress(min(done, 1.0), text=what)
