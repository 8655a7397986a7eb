"""What a steering result costs: refusal on harmful prompts, over-refusal on harmless ones, and capability.

A sweep evaluates a list of steering specs (a clamp strength each, or an alpha for the direction
baselines) and, first, the unsteered model:

- refusal rate on harmful prompts and over-refusal rate on harmless prompts of a split (greedy replies,
  judged by the refusal judge);
- capability cost on held-out harmless transcripts (the built-in prompts of the held-out split with the
  model's own replies): the increase in cross-entropy of the reply tokens, and the mean next-token
  KL(unsteered || steered) over them, both with every position steered as the spec's scope says;
- optionally, multiple-choice accuracy on a user's dataset (lm-eval style: the choice with the highest
  log-likelihood as the assistant's reply wins).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from explorer.core.generation import SamplingConfig
from explorer.core.hooks import forward
from explorer.core.judge import Verdict, refusal_rate
from explorer.core.prompts import (
    DataError,
    Split,
    builtin_prompts,
    chat_messages,
    format_chat,
    stratified_sample,
)
from explorer.refusal.candidates import kl_divergence
from explorer.saes.corpus import Corpus
from explorer.steering.decode import Steerer, decode_many
from explorer.steering.hooks import StepState
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec, Units

SweepKind = Literal["set", "multiply", "add", "direction-add", "direction-ablate"]


@dataclass(frozen=True)
class EvalConfig:
    """How a sweep is evaluated.

    Attributes:
        split: prompt split the refusal rates are measured on (never the train split the organism saw).
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

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.loss_rows < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, loss_rows >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: the index of the right choice in `choices`."""

    question: str
    choices: list[str]
    answer: int


@dataclass(frozen=True)
class SweepPoint:
    """The numbers of one steering setting."""

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


def sweep_specs(
    kind: SweepKind, latents: Sequence[tuple[str, int]], strengths: Sequence[float], units: Units = "raw"
) -> list[tuple[str, float | None, SteeringSpec]]:
    """One spec per strength: every latent clamped the same way, or a direction baseline.

    Returns:
        (label, strength, spec) triples.
    """
    if kind == "direction-ablate":
        return [("direction ablation", None, SteeringSpec(direction=DirectionBaseline("ablate")))]
    if kind == "direction-add":
        return [
            (f"direction add α={a:g}", a, SteeringSpec(direction=DirectionBaseline("add", a)))
            for a in strengths
        ]
    if not latents:
        raise ValueError("a latent sweep needs at least one latent")
    unit = "" if kind == "multiply" or units == "raw" else "×max"
    return [
        (
            f"{kind} {s:g}{unit}",
            s,
            SteeringSpec(tuple(Clamp(hook, latent, kind, s, units) for hook, latent in latents)),
        )
        for s in strengths
    ]


def load_mc_file(path: str | Path) -> list[MCItem]:
    """Read a JSONL multiple-choice file: {"question", "choices": [...], "answer": index}.

    Raises:
        DataError: a line is malformed (the message gives the line).
    """
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = MCItem(str(row["question"]), [str(c) for c in row["choices"]], int(row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}:{n}: expected question, choices and answer ({e})") from e
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise DataError(f"{path}:{n}: answer {item.answer} is not one of {len(item.choices)} choices")
        items.append(item)
    if not items:
        raise DataError(f"{path} has no questions")
    return items


def _state_for(spec: SteeringSpec, mask: torch.Tensor, n_prompt: torch.Tensor) -> StepState:
    """Teacher-forced steering masks (on `mask`'s device): the reply positions play the generated tokens."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    state = StepState(real=mask)
    if spec.scope == "prompt":
        state.mask = mask & (positions < n_prompt[:, None])
    elif spec.scope == "generated":
        state.mask = mask & (positions >= n_prompt[:, None])
    else:
        state.mask = mask.clone()
    return state


@torch.no_grad()
def capability_cost(
    steerer: Steerer, spec: SteeringSpec, corpus: Corpus, rows: Sequence[int], batch_size: int = 8
) -> tuple[float, float]:
    """(CE increase in nats, mean KL(unsteered || steered)) over the reply tokens of `rows`."""
    loaded, device = steerer.loaded, steerer.loaded.device
    total_ce = total_kl = 0.0
    count = 0
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start : start + batch_size])
        width = max(corpus.sequences[r].length for r in chunk)
        lengths = torch.tensor([corpus.sequences[r].length for r in chunk], device=device)
        n_prompt = torch.tensor([corpus.sequences[r].n_prompt for r in chunk], device=device)
        ids = corpus.input_ids[chunk, :width].long().to(device)
        positions = torch.arange(width, device=device)[None, :]
        attention = (positions < lengths[:, None]).long()
        real = attention.bool() & (positions > 0)
        # Position p predicts token p + 1: score predictions of reply tokens only.
        scored = (positions >= n_prompt[:, None] - 1) & (positions < lengths[:, None] - 1)
        inputs = {"input_ids": ids, "attention_mask": attention, "use_cache": False}
        clean = forward(loaded.model, **inputs).logits.float()
        hooks = steerer.hooks(spec, _state_for(spec, real, n_prompt), record=False)
        steered = forward(loaded.model, hooks, **inputs).logits.float()
        targets = ids[:, 1:]
        logp_clean = clean[:, :-1].log_softmax(-1)
        logp_steered = steered[:, :-1].log_softmax(-1)
        keep = scored[:, :-1]
        nll_clean = -logp_clean.gather(-1, targets[..., None])[..., 0][keep]
        nll_steered = -logp_steered.gather(-1, targets[..., None])[..., 0][keep]
        kl = kl_divergence(logp_clean, logp_steered)[keep]
        total_ce += float((nll_steered - nll_clean).sum())
        total_kl += float(kl.sum())
        count += int(keep.sum())
    return (total_ce / count, total_kl / count) if count else (math.nan, math.nan)


@torch.no_grad()
def mc_accuracy(steerer: Steerer, spec: SteeringSpec, items: Sequence[MCItem]) -> float:
    """Fraction of questions whose right choice has the highest summed log-likelihood as the reply."""
    loaded, device = steerer.loaded, steerer.loaded.device
    right = 0
    for item in items:
        prompt = format_chat(loaded.tokenizer, chat_messages(item.question))
        prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in item.choices:
            choice_ids = loaded.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([list(prompt_ids) + list(choice_ids)], device=device)  # pyright: ignore[reportArgumentType]
            real = torch.arange(ids.shape[1], device=device)[None, :] > 0
            n_prompt = torch.tensor([len(prompt_ids)], device=device)  # pyright: ignore[reportArgumentType]
            hooks = steerer.hooks(spec, _state_for(spec, real, n_prompt), record=False)
            logits = forward(loaded.model, hooks, input_ids=ids, use_cache=False).logits[0].float()
            n = len(prompt_ids)  # pyright: ignore[reportArgumentType]
            logp = logits[n - 1 : -1].log_softmax(-1).gather(-1, ids[0, n:, None])
            scores.append(float(logp.sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return right / len(items)


def evaluate(
    steerer: Steerer,
    settings: Sequence[tuple[str, float | None, SteeringSpec]],
    corpus: Corpus | None,
    config: EvalConfig | None = None,
    *,
    mc_items: Sequence[MCItem] | None = None,
    progress: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[SweepPoint]:
    """Evaluate the unsteered model and every setting; see the module docstring for what is measured.

    Args:
        corpus: the model's corpus (for the held-out harmless transcripts); None skips CE and KL.
        on_progress: called after each setting (the unsteered model first) with (settings done,
            settings in all, the label just done), e.g. to drive a progress bar in the app.
    """
    config = config or EvalConfig()
    harmful = [
        r.text
        for r in stratified_sample(builtin_prompts("harmful", config.split), config.n_harmful, config.seed)
    ]
    harmless = [
        r.text
        for r in stratified_sample(builtin_prompts("harmless", config.split), config.n_harmless, config.seed)
    ]
    rows: list[int] = []
    if corpus is not None and config.loss_rows:
        candidates = [r for r in corpus.rows("heldout", "chat") if corpus.sequences[r].label == "harmless"]
        step = max(1, len(candidates) // config.loss_rows)
        rows = candidates[::step][: config.loss_rows]
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
    points = []
    todo = [("unsteered", None, SteeringSpec()), *settings]
    for label, strength, spec in todo:
        start = time.perf_counter()
        verdicts = {}
        for name, prompts in (("harmful", harmful), ("harmless", harmless)):
            replies = decode_many(
                steerer, prompts, spec, sampling, batch_size=config.batch_size, progress=progress
            )
            verdicts[name] = [Verdict(**r.verdict) for r in replies]  # decode already judged each reply
        ce, kl = (
            capability_cost(steerer, spec, corpus, rows)
            if corpus is not None and rows
            else (math.nan, math.nan)
        )
        points.append(
            SweepPoint(
                label,
                strength,
                refusal_rate(verdicts["harmful"]),
                refusal_rate(verdicts["harmless"]),
                len(harmful),
                len(harmless),
                ce,
                kl,
                mc_accuracy(steerer, spec, mc_items) if mc_items else None,
                spec.to_dict(),
                round(time.perf_counter() - start, 1),
            )
        )
        if on_progress is not None:
            on_progress(len(points), len(todo), label)
    return points


def points_csv(points: Sequence[SweepPoint]) -> str:
    """A tidy CSV: one row per setting (the spec as JSON in its own column)."""
    out = io.StringIO()
    fields = [f for f in SweepPoint.__dataclass_fields__ if f != "spec"] + ["spec"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for p in points:
        writer.writerow({**asdict(p), "spec": json.dumps(p.spec, sort_keys=True)})
    return out.getvalue()


def trade_off_figure(points: Sequence[SweepPoint], title: str = "Refusal vs capability over strength") -> Any:
    """A plotly figure: refusal and over-refusal (left axis) and CE increase and KL (right axis) over the
    sweep's strengths, the unsteered model as dotted reference lines."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    swept = [p for p in points if p.strength is not None]
    x = [p.strength for p in swept]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, values, dash in (
        ("refusal on harmful", [p.refusal_harmful for p in swept], "solid"),
        ("refusal on harmless (over-refusal)", [p.refusal_harmless for p in swept], "solid"),
    ):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, mode="lines+markers", line={"dash": dash}))
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
