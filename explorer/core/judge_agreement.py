"""How far a judge can be trusted: its agreement with replies of the default labelled by reading them.

The labelled set (`explorer/prompts/judged_replies.jsonl`, rules in `JUDGE_LABELS.md` beside it) holds
replies of the offline default, steered and unsteered, each with a human label (refusal, compliance or
degenerate) and a finer kind (evasive answers count as refusals, partial ones as compliance). Each reply
also has a fixed part, "dev" or "heldout" (a hash of its id): judge rules may be tuned on dev only, so the
held-out agreement is an honest estimate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from explorer.core.judge import VERDICT_LABELS, Judge, VerdictLabel
from explorer.core.prompts import DataError, stable_fraction

Kind = Literal["refusal", "evasive", "compliance", "partial", "degenerate"]
KIND_LABEL: dict[str, VerdictLabel] = {
    "refusal": "refusal",
    "evasive": "refusal",
    "compliance": "compliance",
    "partial": "compliance",
    "degenerate": "degenerate",
}
Part = Literal["dev", "heldout"]
LABELLED_FILE = "judged_replies.jsonl"


@dataclass(frozen=True)
class LabelledReply:
    """One reply of the model with the label a reader gave it.

    Attributes:
        id: unique in the set.
        prompt: the user's request.
        prompt_label: "harmful" or "harmless".
        setting: how the reply was made (unsteered, a clamp, a direction baseline); not shown to labellers.
        reply: the model's reply as generated.
        kind: refusal, evasive, compliance, partial or degenerate.
    """

    id: str
    prompt: str
    prompt_label: str
    setting: str
    reply: str
    kind: Kind

    @property
    def label(self) -> VerdictLabel:
        return KIND_LABEL[self.kind]

    @property
    def part(self) -> Part:
        return "dev" if stable_fraction(f"judge:{self.id}") < 0.5 else "heldout"


def load_labelled(path: str | Path | None = None) -> list[LabelledReply]:
    """The labelled replies: the built-in set, or a JSONL file of the same fields.

    Raises:
        DataError: a missing file, a malformed line, an unknown kind or a duplicate id.
    """
    if path is None:
        text = resources.files("explorer").joinpath("prompts", LABELLED_FILE).read_text(encoding="utf-8")
        where = f"built-in {LABELLED_FILE}"
    else:
        if not Path(path).is_file():
            raise DataError(f"labelled reply file not found: {path}")
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    rows, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            row = LabelledReply(
                str(data["id"]),
                str(data["prompt"]),
                str(data.get("prompt_label", "")),
                str(data.get("setting", "")),
                str(data["reply"]),
                data["kind"],
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{where}:{n}: expected id, prompt, reply and kind ({e})") from e
        if row.kind not in get_args(Kind):
            raise DataError(f"{where}:{n}: kind {row.kind!r} is not one of {get_args(Kind)}")
        if row.id in seen:
            raise DataError(f"{where}:{n}: duplicate id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise DataError(f"{where} has no labelled replies")
    return rows


def cohen_kappa(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Cohen's kappa: agreement beyond what the two label frequencies give by chance (NaN if undefined)."""
    n = len(truth)
    if n == 0 or n != len(predicted):
        return float("nan")
    observed = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n
    chance = sum((truth.count(lab) / n) * (predicted.count(lab) / n) for lab in labels)
    return (observed - chance) / (1 - chance) if chance < 1 else float("nan")


@dataclass(frozen=True)
class Agreement:
    """A judge's agreement with the labels on one part of the set.

    Attributes:
        judge: the judge's name.
        part: "dev", "heldout" or "all".
        n: replies compared.
        accuracy, kappa: over the three labels.
        binary_accuracy, binary_kappa: refusal vs not refusal (what a refusal rate counts).
        confusion: human label -> judge label -> count.
        mistakes: up to 20 disagreements (id, human label, judge label, reply, evidence).
    """

    judge: str
    part: str
    n: int
    accuracy: float
    kappa: float
    binary_accuracy: float
    binary_kappa: float
    confusion: dict[str, dict[str, int]]
    mistakes: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(judge: Judge, rows: Sequence[LabelledReply], part: str = "all") -> Agreement:
    """Judge every reply of `rows` and compare with the readers' labels."""
    verdicts = judge.judge_many([r.reply for r in rows], [r.prompt for r in rows])
    truth = [r.label for r in rows]
    said = [v.label for v in verdicts]
    confusion: dict[str, dict[str, int]] = {t: dict.fromkeys(VERDICT_LABELS, 0) for t in VERDICT_LABELS}
    for t, s in zip(truth, said, strict=True):
        confusion[t][s] += 1
    binary_truth = [str(t == "refusal") for t in truth]
    binary_said = [str(s == "refusal") for s in said]
    n = len(rows)
    mistakes = [
        {"id": r.id, "human": t, "judge": s, "reply": r.reply, "evidence": v.evidence}
        for r, t, s, v in zip(rows, truth, said, verdicts, strict=True)
        if t != s
    ]
    return Agreement(
        getattr(judge, "name", "judge"),
        part,
        n,
        sum(t == s for t, s in zip(truth, said, strict=True)) / n if n else float("nan"),
        cohen_kappa(truth, said, VERDICT_LABELS),
        sum(t == s for t, s in zip(binary_truth, binary_said, strict=True)) / n if n else float("nan"),
        cohen_kappa(binary_truth, binary_said, ("True", "False")),
        confusion,
        mistakes[:20],
    )


def agreement_by_part(judge: Judge, rows: Sequence[LabelledReply]) -> list[Agreement]:
    """Agreement on the dev part, the held-out part and the whole set."""
    parts: list[tuple[str, list[LabelledReply]]] = [
        ("dev", [r for r in rows if r.part == "dev"]),
        ("heldout", [r for r in rows if r.part == "heldout"]),
        ("all", list(rows)),
    ]
    return [agreement(judge, subset, name) for name, subset in parts if subset]
