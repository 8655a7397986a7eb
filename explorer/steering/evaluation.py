"""What a steering result costs: refusal on harmful prompts, over-refusal on harmless ones, and capability.

A sweep evaluates a list of steering specs (a clamp strength each, or an alpha for the direction
baselines) and, first, the unsteered model:

- refusal rate on harmful prompts and over-refusal rate on harmless prompts (greedy replies judged by the
  steerer's judge), each with a 95% Wilson interval, the share of degenerate replies, and every reply
  with its verdict: prompts from a built-in split, the separately written "elsewhere" set, or a user's
  files;
- capability cost on held-out harmless transcripts (the built-in prompts of the held-out split with the
  model's own replies): the increase in cross-entropy of the reply tokens, and the mean next-token
  KL(unsteered || steered) over them, both with every position steered as the spec's scope says;
- optionally, multiple-choice accuracy on a user's dataset (`explorer.steering.capability`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from explorer.core.generation import SamplingConfig
from explorer.core.judge import Verdict, label_rate, refusal_rate, wilson_interval
from explorer.core.prompts import (
    DataError,
    Label,
    PromptRecord,
    Split,
    builtin_prompts,
    elsewhere_prompts,
    stratified_sample,
)
from explorer.saes.corpus import Corpus
from explorer.steering.capability import MCItem, capability_cost, mc_accuracy
from explorer.steering.decode import Steerer, decode_many
from explorer.steering.spec import Clamp, DirectionBaseline, DirectionKind, SteeringSpec, Units

PromptSet = Literal["builtin", "elsewhere"]
MIN_MEANINGFUL_PROMPTS = 20
"""Fewer prompts than this per label give a rate whose 95% interval spans more than ±20 points."""
MIN_MEANINGFUL_TOKENS = 8
"""Fewer new tokens than this rarely reach a refusal phrase or show broken text."""
SweepKind = Literal[
    "set",
    "multiply",
    "add",
    "cap",
    "floor",
    "scale",
    "direction-add",
    "direction-ablate",
    "direction-scale",
    "direction-cap",
    "direction-floor",
]


@dataclass(frozen=True)
class EvalConfig:
    """How a sweep is evaluated.

    Attributes:
        split: prompt split the refusal rates are measured on (never the train split the organism saw).
        prompt_set: "builtin" (the split of the built-in sets) or "elsewhere" (the separately written set,
            which has no splits); a user's prompt files passed to `evaluate` replace either.
        n_harmful, n_harmless: prompts per label, sampled evenly over the categories (None: the whole
            split).
        seed: which prompts a sample of `n_harmful` / `n_harmless` takes.
        max_new_tokens: reply length judged (refusals show in the first tokens).
        batch_size: prompts per generation batch.
        loss_rows: held-out harmless transcripts for the CE and KL measurements.
    """

    split: Split = "test"
    n_harmful: int | None = None
    n_harmless: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 32
    loss_rows: int = 32
    seed: int = 0
    prompt_set: PromptSet = "builtin"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.loss_rows < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, loss_rows >= 0")
        if self.prompt_set not in ("builtin", "elsewhere"):
            raise ValueError(f"prompt_set {self.prompt_set!r} is not 'builtin' or 'elsewhere'")
        for name in ("n_harmful", "n_harmless"):
            n = getattr(self, name)
            if n is not None and n < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {n}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SweepPoint:
    """The numbers of one steering setting.

    Attributes:
        refusal_harmful, refusal_harmless: refusal rates (the second is over-refusal).
        degenerate_harmful, degenerate_harmless: shares of replies the judge called degenerate (broken
            text counts as neither refusal nor compliance).
        refusal_harmful_ci, refusal_harmless_ci: 95% Wilson intervals of the refusal rates.
        replies: every reply: prompt label ("harmful"/"harmless"), prompt id and text, reply, the
            judge's label and evidence.
    """

    label: str
    strength: float | None
    refusal_harmful: float
    refusal_harmless: float
    n_harmful: int
    n_harmless: int
    ce_increase: float
    kl: float
    mc_accuracy: float | None
    spec: dict[str, Any]
    seconds: float
    degenerate_harmful: float = math.nan
    degenerate_harmless: float = math.nan
    refusal_harmful_ci: tuple[float, float] = (0.0, 1.0)
    refusal_harmless_ci: tuple[float, float] = (0.0, 1.0)
    replies: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPoint:
        """Rebuild a point from `asdict` output (intervals come back as tuples)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("refusal_harmful_ci", "refusal_harmless_ci"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def small_sample_warning(point: SweepPoint, max_new_tokens: int) -> str | None:
    """Why a point's rates mean little (too few prompts or tokens), or None."""
    reasons = []
    n = min(point.n_harmful, point.n_harmless)
    if n < MIN_MEANINGFUL_PROMPTS:
        low, high = wilson_interval(n // 2, n) if n else (0.0, 1.0)
        reasons.append(
            f"only {n} prompt(s) per label: a rate near 50% could lie anywhere in {low:.0%}-{high:.0%}"
        )
    if max_new_tokens < MIN_MEANINGFUL_TOKENS:
        reasons.append(f"only {max_new_tokens} new token(s): refusals and broken text rarely show that soon")
    return "; ".join(reasons) or None


def prompt_source(config: EvalConfig, given: str | None = None) -> str:
    """Where a sweep's prompts of one label come from, in words: `given` (a user's file or upload), else
    the configured built-in set."""
    if given is not None:
        return given
    return "the elsewhere set" if config.prompt_set == "elsewhere" else f"the {config.split} split"


def eval_prompts(
    label: Label, config: EvalConfig, records: Sequence[PromptRecord] | None = None
) -> list[PromptRecord]:
    """The prompts a sweep measures for `label`: a user's records, else the configured built-in set,
    sampled to `n_harmful`/`n_harmless` evenly over categories.

    Raises:
        DataError: a user's file with no prompt of that label, or an empty selection.
    """
    n = config.n_harmful if label == "harmful" else config.n_harmless
    if records is not None:
        chosen = [r for r in records if r.label in (label, None)]
        if not chosen:
            raise DataError(f"the {label} prompt file has no {label} prompts")
    elif config.prompt_set == "elsewhere":
        chosen = elsewhere_prompts(label)
    else:
        chosen = builtin_prompts(label, config.split)
    return stratified_sample(chosen, n, config.seed)


def sweep_specs(
    kind: SweepKind, latents: Sequence[tuple[str, int]], strengths: Sequence[float], units: Units = "raw"
) -> list[tuple[str, float | None, SteeringSpec]]:
    """One spec per strength: every latent clamped the same way, or a direction baseline.

    Strengths are a clamp's value (in `units`) or factor, a direction's alpha, factor (direction-scale) or
    raw projection (direction-cap, direction-floor).

    Returns:
        (label, strength, spec) triples.
    """
    if kind == "direction-ablate":
        return [("direction ablation", None, SteeringSpec(direction=DirectionBaseline("ablate")))]
    baselines: dict[str, DirectionKind] = {
        "direction-add": "add",
        "direction-scale": "scale",
        "direction-cap": "cap",
        "direction-floor": "floor",
    }
    if kind in ("direction-add", "direction-scale", "direction-cap", "direction-floor"):  # narrows `kind`
        name = baselines[kind]
        return [
            (
                f"direction {name} {'α=' if name == 'add' else ''}{a:g}",
                a,
                SteeringSpec(direction=DirectionBaseline(name, a)),
            )
            for a in strengths
        ]
    if not latents:
        raise ValueError("a latent sweep needs at least one latent")
    unit = "" if kind in ("multiply", "scale") or units == "raw" else "×max"
    return [
        (
            f"{kind} {s:g}{unit}",
            s,
            SteeringSpec(tuple(Clamp(hook, latent, kind, s, units) for hook, latent in latents)),
        )
        for s in strengths
    ]


def evaluate(
    steerer: Steerer,
    settings: Sequence[tuple[str, float | None, SteeringSpec]],
    corpus: Corpus | None,
    config: EvalConfig | None = None,
    *,
    mc_items: Sequence[MCItem] | None = None,
    harmful: Sequence[PromptRecord] | None = None,
    harmless: Sequence[PromptRecord] | None = None,
    progress: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[SweepPoint]:
    """Evaluate the unsteered model and every setting; see the module docstring for what is measured.

    Args:
        corpus: the model's corpus (for the held-out harmless transcripts); None skips CE and KL.
        harmful, harmless: a user's prompts, replacing the configured built-in set for that label.
        on_progress: called after each setting (the unsteered model first) with (settings done,
            settings in all, the label just done), e.g. to drive a progress bar in the app.
    """
    config = config or EvalConfig()
    prompts = {
        "harmful": eval_prompts("harmful", config, harmful),
        "harmless": eval_prompts("harmless", config, harmless),
    }
    rows = loss_rows(corpus, config.loss_rows)
    points = []
    todo = [("unsteered", None, SteeringSpec()), *settings]
    for label, strength, spec in todo:
        points.append(
            measure(
                steerer, label, strength, spec, prompts, corpus, rows, config, mc_items, progress=progress
            )
        )
        if on_progress is not None:
            on_progress(len(points), len(todo), label)
    return points


def loss_rows(corpus: Corpus | None, n: int) -> list[int]:
    """`n` held-out harmless transcripts of the corpus, spread evenly over them (none without a corpus)."""
    if corpus is None or n <= 0:
        return []
    candidates = [r for r in corpus.rows("heldout", "chat") if corpus.sequences[r].label == "harmless"]
    step = max(1, len(candidates) // n)
    return candidates[::step][:n]


def measure(
    steerer: Steerer,
    label: str,
    strength: float | None,
    spec: SteeringSpec,
    prompts: dict[str, list[PromptRecord]],
    corpus: Corpus | None,
    rows: Sequence[int],
    config: EvalConfig,
    mc_items: Sequence[MCItem] | None = None,
    *,
    progress: bool = False,
) -> SweepPoint:
    """One setting's numbers: greedy replies to `prompts` ("harmful" and "harmless" records) judged by
    the steerer's judge, CE and KL on the corpus's `rows` (NaN without them), and MC accuracy."""
    start = time.perf_counter()
    verdicts: dict[str, list[Verdict]] = {}
    shown: list[dict[str, Any]] = []
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
    for name, records in prompts.items():
        texts = [r.text for r in records]
        replies = decode_many(steerer, texts, spec, sampling, batch_size=config.batch_size, progress=progress)
        verdicts[name] = [Verdict.from_dict(r.verdict) for r in replies]  # decode judged each reply
        shown += [
            {
                "prompt_label": name,
                "id": record.id,
                "category": record.category,
                "prompt": record.text,
                "reply": reply.text,
                "verdict": verdict.label,
                "evidence": verdict.evidence,
            }
            for record, reply, verdict in zip(records, replies, verdicts[name], strict=True)
        ]
    ce, kl = (
        capability_cost(steerer, spec, corpus, list(rows)) if corpus is not None and rows else (math.nan,) * 2
    )
    return SweepPoint(
        label,
        strength,
        refusal_rate(verdicts["harmful"]),
        refusal_rate(verdicts["harmless"]),
        len(prompts["harmful"]),
        len(prompts["harmless"]),
        ce,
        kl,
        mc_accuracy(steerer, spec, mc_items) if mc_items else None,
        spec.to_dict(),
        round(time.perf_counter() - start, 1),
        label_rate(verdicts["harmful"], "degenerate"),
        label_rate(verdicts["harmless"], "degenerate"),
        wilson_interval(sum(v.refused for v in verdicts["harmful"]), len(verdicts["harmful"])),
        wilson_interval(sum(v.refused for v in verdicts["harmless"]), len(verdicts["harmless"])),
        shown,
    )


def points_csv(points: Sequence[SweepPoint]) -> str:
    """A tidy CSV: one row per setting (the spec as JSON in its own column)."""
    out = io.StringIO()
    fields = [f for f in SweepPoint.__dataclass_fields__ if f not in ("spec", "replies")] + ["spec"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for p in points:
        row = {k: v for k, v in asdict(p).items() if k != "replies"}
        writer.writerow({**row, "spec": json.dumps(p.spec, sort_keys=True)})
    return out.getvalue()


def replies_csv(points: Sequence[SweepPoint]) -> str:
    """Every reply of every setting with its verdict: one row per (setting, prompt)."""
    out = io.StringIO()
    fields = ["setting", "prompt_label", "id", "category", "prompt", "reply", "verdict", "evidence"]
    writer = csv.DictWriter(out, fieldnames=fields, restval="")
    writer.writeheader()
    for p in points:
        for reply in p.replies:
            writer.writerow({"setting": p.label, **reply})
    return out.getvalue()


def trade_off_figure(points: Sequence[SweepPoint], title: str = "Refusal vs capability over strength") -> Any:
    """A plotly figure: refusal and over-refusal with their 95% Wilson intervals as error bars (left axis)
    and CE increase and KL (right axis) over the sweep's strengths, the unsteered model as dotted
    reference lines."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    swept = [p for p in points if p.strength is not None]
    x = [p.strength for p in swept]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, values, intervals in (
        ("refusal on harmful", [p.refusal_harmful for p in swept], [p.refusal_harmful_ci for p in swept]),
        (
            "refusal on harmless (over-refusal)",
            [p.refusal_harmless for p in swept],
            [p.refusal_harmless_ci for p in swept],
        ),
    ):
        error = {
            "type": "data",
            "symmetric": False,
            "array": [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
            "arrayminus": [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
        }
        fig.add_trace(go.Scatter(x=x, y=values, name=name, mode="lines+markers", error_y=error))
    for name, values in (
        ("CE increase (nats)", [p.ce_increase for p in swept]),
        ("KL (nats)", [p.kl for p in swept]),
    ):
        fig.add_trace(
            go.Scatter(x=x, y=values, name=name, mode="lines+markers", line={"dash": "dot"}), secondary_y=True
        )
    base = next((p for p in points if p.label == "unsteered"), None)
    if base is not None:
        for value, text in (
            (base.refusal_harmful, "unsteered harmful"),
            (base.refusal_harmless, "unsteered harmless"),
        ):
            fig.add_hline(y=value, line_dash="dash", line_color="gray", annotation_text=text)
    fig.update_layout(title=title, xaxis_title="strength", legend={"orientation": "h", "y": -0.2})
    fig.update_yaxes(title_text="refusal rate", range=[0, 1.02], secondary_y=False)
    fig.update_yaxes(title_text="capability cost (nats)", secondary_y=True)
    return fig
