"""A search's front re-measured on prompts it never saw, beside the baselines, and plotted.

The chosen front settings are measured on the **test** split and on the separately written "elsewhere"
set beside the unsteered model, the refusal direction ablated and added, and the papers' recipe (the top
latents by decoder cosine, one clamp; also on latents chosen by cosine + attribution, and gated on a harm
latent); `recipe_verdicts` says which front points beat each recipe on both rates at equal or lower KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from explorer.saes.corpus import Corpus
from explorer.steering.decode import Steerer
from explorer.steering.evaluation import EvalConfig, SweepPoint, evaluate, sweep_specs
from explorer.steering.search import Goal
from explorer.steering.search_study import TrialRecord
from explorer.steering.spec import SteeringSpec, Trigger, Units

MEASURED = ("refusal_harmful", "refusal_harmless", "kl", "ce_increase")
"""What two trials must share, to the last digit, to be one point of the front."""


def front_specs(records: Sequence[TrialRecord], limit: int, goal: Goal) -> list[TrialRecord]:
    """Up to `limit` distinct points of the front, spread evenly from the least to the most refusal.

    Trials that measured the same on val (a retried trial; settings whose gate never opens, which all
    measure as the unsteered model) are one point, shown by its simplest setting: the fewest clamps, then
    the earliest trial.
    """
    points: dict[tuple[float, ...], TrialRecord] = {}
    for r in sorted(
        (r for r in records if r.on_front), key=lambda r: (len(r.spec.get("clamps", ())), r.number)
    ):
        points.setdefault(tuple(round(r.values.get(k, math.nan), 9) for k in MEASURED), r)
    front = sorted(
        points.values(),
        key=lambda r: (r.values.get("refusal_harmful", 0.0), -r.values.get("refusal_harmless", 0.0)),
        reverse=goal == "bypass",
    )
    if len(front) <= limit:
        return front
    step = (len(front) - 1) / max(1, limit - 1)
    return [front[round(i * step)] for i in range(limit)]


def baselines(
    goal: Goal,
    recipe_latents: Sequence[tuple[str, int]],
    *,
    has_direction: bool,
    attributed: Sequence[tuple[str, int]] = (),
    gate: Trigger | None = None,
) -> list[tuple[str, float | None, SteeringSpec]]:
    """The settings a front is compared with (the unsteered model comes first in `evaluate` itself).

    - the refusal direction ablated, and added at alpha 0.5 and 1;
    - the papers' recipe: `recipe_latents` (the top latents by decoder cosine with the refusal direction)
      all clamped to one value: set to 1x and 4x max to refuse; multiplied by -3 and set to 0 to bypass;
    - with `attributed` (the top latents by cosine + attribution), the recipe's first setting on them;
    - with `gate`, the recipe's first setting gated on that trigger (conditional against always-on).
    """
    out: list[tuple[str, float | None, SteeringSpec]] = []
    if has_direction:
        out += sweep_specs("direction-ablate", [], [])
        out += sweep_specs("direction-add", [], [0.5, 1.0])
    if not recipe_latents:
        return out
    first, second = (("set", 1.0), ("set", 4.0)) if goal == "refuse" else (("multiply", -3.0), ("set", 0.0))

    def recipe(
        latents: Sequence[tuple[str, int]], selection: str, mode: str, value: float
    ) -> tuple[str, float | None, SteeringSpec]:
        units: Units = "raw" if mode == "multiply" else "max"
        [(label, strength, spec)] = sweep_specs(mode, latents, [value], units)  # pyright: ignore[reportArgumentType]
        return f"recipe: top-{len(latents)} {selection} {label}", strength, spec

    out += [recipe(recipe_latents, "cosine", *first), recipe(recipe_latents, "cosine", *second)]
    if attributed:
        out.append(recipe(attributed, "cosine+attribution", *first))
    if gate is not None:
        label, strength, spec = recipe(recipe_latents, "cosine", *first)
        out.append(
            (f"{label} gated on {gate.latent} > {gate.threshold:g}", strength, replace(spec, trigger=gate))
        )
    return out


@dataclass(frozen=True)
class Remeasured:
    """The front and the baselines measured on one prompt set (the unsteered model first)."""

    prompts: str
    front: list[SweepPoint]
    baselines: list[SweepPoint]


def remeasure(
    steerer: Steerer,
    corpus: Corpus | None,
    chosen: Sequence[TrialRecord],
    compare: Sequence[tuple[str, float | None, SteeringSpec]],
    config: EvalConfig,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    progress: bool = False,
) -> Remeasured:
    """Measure the chosen front settings and the baselines on another prompt set (the test split, the
    elsewhere set): prompts the search never saw."""
    settings = [(f"front: trial {r.number}", None, SteeringSpec.from_dict(r.spec)) for r in chosen]
    points = evaluate(
        steerer, [*settings, *compare], corpus, config, on_progress=on_progress, progress=progress
    )
    where = "the elsewhere set" if config.prompt_set == "elsewhere" else f"the {config.split} split"
    return Remeasured(where, points[1 : 1 + len(settings)], [points[0], *points[1 + len(settings) :]])


def dominates(a: SweepPoint, b: SweepPoint, goal: Goal) -> bool:
    """`a` is at least as good as `b` on refusal (in the goal's direction) and over-refusal at equal or
    lower KL, and strictly better on refusal or over-refusal."""
    sign = 1 if goal == "refuse" else -1
    refusal = sign * (a.refusal_harmful - b.refusal_harmful)
    over = b.refusal_harmless - a.refusal_harmless
    kl_ok = not (a.kl > b.kl) if math.isfinite(a.kl) and math.isfinite(b.kl) else True
    return refusal >= 0 and over >= 0 and kl_ok and (refusal > 0 or over > 0)


def recipe_verdicts(measured: Remeasured, goal: Goal) -> list[dict[str, Any]]:
    """For each recipe baseline, the front points that beat it (see `dominates`) on this prompt set."""
    out = []
    for base in measured.baselines:
        if not base.label.startswith("recipe"):
            continue
        winners = [p.label for p in measured.front if dominates(p, base, goal)]
        out.append({"recipe": base.label, "beaten_by": winners})
    return out


def with_replies_dropped(point: SweepPoint) -> dict[str, Any]:
    """A point as JSON for a summary (replies go to their own CSV)."""
    return {k: v for k, v in asdict(replace(point, replies=[])).items() if k != "replies"}


def front_figure(measured: Remeasured, goal: Goal, title: str | None = None) -> Any:
    """A plotly figure of refusal on harmful (y) against over-refusal on harmless (x), with 95% Wilson
    error bars: the front's points coloured by KL, the baselines as labelled markers on the same axes."""
    import plotly.graph_objects as go

    def bars(points: Sequence[SweepPoint], value: str, ci: str) -> dict[str, Any]:
        values = [getattr(p, value) for p in points]
        intervals = [getattr(p, ci) for p in points]
        return {
            "type": "data",
            "symmetric": False,
            "array": [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
            "arrayminus": [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
            "thickness": 1,
        }

    def hover(p: SweepPoint) -> str:
        spec = SteeringSpec.from_dict(p.spec)
        parts = [f"{c.latent} {c.mode} {c.value:g}{'' if c.mode in ('multiply', 'scale') else '×max'}"
                 for c in spec.clamps]  # fmt: skip
        if spec.trigger is not None:
            parts.append(f"gated by {spec.trigger.latent} > {spec.trigger.threshold:g}")
        if spec.direction is not None:
            parts.append(f"direction {spec.direction.kind} {spec.direction.alpha:g}")
        return (
            f"<b>{p.label}</b><br>{'<br>'.join(parts) or 'no steering'}<br>scope {spec.scope}<br>"
            f"refused harmful {p.refusal_harmful:.1%}, harmless {p.refusal_harmless:.1%}<br>"
            f"KL {p.kl:.3f}, CE {p.ce_increase:+.3f}"
        )

    fig = go.Figure()
    front = measured.front
    fig.add_trace(
        go.Scatter(
            x=[p.refusal_harmless for p in front],
            y=[p.refusal_harmful for p in front],
            mode="markers",
            name="search front",
            marker={
                "size": 11,
                "color": [p.kl for p in front],
                "colorscale": "Viridis",
                "colorbar": {"title": "KL (nats)"},
                "showscale": True,
            },
            error_x=bars(front, "refusal_harmless", "refusal_harmless_ci"),
            error_y=bars(front, "refusal_harmful", "refusal_harmful_ci"),
            text=[hover(p) for p in front],
            hoverinfo="text",
        )
    )
    symbols = {"unsteered": "x", "direction": "diamond", "recipe": "square"}
    for p in measured.baselines:
        kind = "recipe" if p.label.startswith("recipe") else p.label.split(" ")[0]
        fig.add_trace(
            go.Scatter(
                x=[p.refusal_harmless],
                y=[p.refusal_harmful],
                mode="markers+text",
                name=p.label,
                text=[p.label.replace("recipe: ", "")],
                textposition="top center",
                hovertext=[hover(p)],
                hoverinfo="text",
                marker={"size": 12, "symbol": symbols.get(kind, "circle-open"), "color": "gray"},
                error_x=bars([p], "refusal_harmless", "refusal_harmless_ci"),
                error_y=bars([p], "refusal_harmful", "refusal_harmful_ci"),
            )
        )
    aim = "higher is safer" if goal == "refuse" else "lower is a stronger bypass"
    fig.update_layout(
        title=title or f"Search front on {measured.prompts}",
        xaxis_title="over-refusal (refused harmless)",
        yaxis_title=f"refused harmful ({aim})",
        legend={"orientation": "h", "y": -0.25},
    )
    fig.update_xaxes(range=[-0.02, 1.02], tickformat=".0%")
    fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    return fig
