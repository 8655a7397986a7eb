"""Plotly figures for the jailbreak lens, built from its stored records (no tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from explorer.research.jailbreak_compare import PromptView
from explorer.research.jailbreaks import JailbreakStudy


def _token_label(text: str) -> str:
    return repr(text)[1:-1] or "∅"


def wrapper_bars(study: JailbreakStudy) -> go.Figure:
    """Per wrapper: refusal plain and wrapped, and attack success, each with its 95% Wilson interval."""
    results = study.results
    names = [r.wrapper.name for r in results]
    figure = go.Figure()
    series = [
        ("refused plain", [r.refused_plain for r in results], [r.refused_plain_ci for r in results]),
        ("refused wrapped", [r.refused_wrapped for r in results], [r.refused_wrapped_ci for r in results]),
        ("attack success", [r.attack_success for r in results], [r.attack_ci for r in results]),
    ]
    for label, values, intervals in series:
        figure.add_bar(
            name=label,
            x=names,
            y=values,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
                "arrayminus": [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
            },
        )
    figure.update_layout(
        barmode="group",
        yaxis={"title": "share of harmful prompts", "tickformat": ".0%", "range": [0, 1.05]},
        height=380,
        margin={"t": 30, "b": 10},
        legend={"orientation": "h"},
    )
    return figure


def projection_by_position(
    tokens: Sequence[str], plain: Sequence[float], wrapped: Sequence[float], position: int | None
) -> go.Figure:
    """The mean refusal projection at each post-instruction position, plain vs wrapped; the direction's
    own position is marked."""
    labels = [f"{i - len(tokens)}: {_token_label(t)}" for i, t in enumerate(tokens)]
    figure = go.Figure()
    figure.add_scatter(x=labels, y=list(plain), name="plain", mode="lines+markers")
    figure.add_scatter(x=labels, y=list(wrapped), name="wrapped", mode="lines+markers")
    if position is not None and -len(labels) <= position < 0:
        figure.add_vline(x=len(labels) + position, line_dash="dot", annotation_text="direction's position")
    figure.update_layout(
        yaxis={"title": "projection on the refusal direction"},
        xaxis={"title": "post-instruction position"},
        height=320,
        margin={"t": 30, "b": 10},
    )
    return figure


def token_projection(plain: PromptView, wrapped: PromptView) -> go.Figure:
    """Per-token refusal projection of both prompts, aligned at their ends (the post-instruction tokens
    line up); the wrapped prompt's extra tokens extend to the left."""
    figure = go.Figure()
    for name, view in (("plain", plain), ("wrapped", wrapped)):
        n = len(view.tokens)
        figure.add_scatter(
            x=list(range(-n, 0)),
            y=view.projection,
            name=name,
            mode="lines+markers",
            text=[_token_label(t) for t in view.tokens],
            hovertemplate="%{text}<br>%{y:.3f}<extra>" + name + "</extra>",
        )
    post = len(plain.tokens) - plain.post_start
    figure.add_vrect(x0=-post - 0.5, x1=-0.5, opacity=0.1, line_width=0, annotation_text="post-instruction")
    figure.update_layout(
        xaxis={"title": "token (counted from the end of the prompt)"},
        yaxis={"title": "projection on the refusal direction"},
        height=340,
        margin={"t": 30, "b": 10},
    )
    return figure
