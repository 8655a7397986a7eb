"""Steering against multi-turn attacks: refusal at the final turn of escalating conversations.

Each escalation (`explorer.core.escalations`) is played turn by turn: the model answers every user turn
with greedy replies made under the setting's steering, and those replies become the assistant turns of the
history the next user turn is asked in. The harmful request is the last turn; its reply is judged. For
comparison the same final request is also asked alone, without the conversation before it (the "direct"
rate): the gap between the two is what the escalation buys the attacker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from explorer.core.escalations import Escalation
from explorer.core.generation import SamplingConfig
from explorer.core.judge import Verdict, label_rate, refusal_rate, wilson_interval
from explorer.core.prompts import Split
from explorer.steering.decode import Reply, Steerer, decode_many
from explorer.steering.spec import SteeringSpec


@dataclass(frozen=True)
class MultiTurnConfig:
    """How the escalations are played.

    Attributes:
        split: which built-in escalations (a user's file replaces them).
        max_new_tokens: tokens of the judged final reply (as `EvalConfig.max_new_tokens`).
        history_tokens: tokens of each earlier reply, which the next turn sees as the assistant's turn.
        batch_size: conversations per generation batch.
        direct: also ask each final request alone, without the conversation before it.
    """

    split: Split = "test"
    max_new_tokens: int = 32
    history_tokens: int = 48
    batch_size: int = 16
    direct: bool = True

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.history_tokens, self.batch_size) < 1:
            raise ValueError("max_new_tokens, history_tokens and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MultiTurnPoint:
    """One steering setting's numbers over the escalations.

    Attributes:
        refusal_final: share of conversations whose final (harmful) turn was refused; its 95% Wilson
            interval in `refusal_final_ci`; `degenerate_final` the share of broken final replies.
        refusal_direct: the same final requests asked alone (NaN when not measured).
        refusal_by_turn: per turn index, the share of replies refused among conversations that have it.
        conversations: per escalation: id, category, the user turns, the replies, the final verdict and
            evidence, and the direct reply and verdict.
    """

    label: str
    strength: float | None
    spec: dict[str, Any]
    n: int
    refusal_final: float
    refusal_final_ci: tuple[float, float]
    degenerate_final: float
    refusal_direct: float
    refusal_direct_ci: tuple[float, float]
    refusal_by_turn: list[float]
    seconds: float
    conversations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiTurnPoint:
        values = dict(data)
        for key in ("refusal_final_ci", "refusal_direct_ci"):
            values[key] = tuple(values[key])
        return cls(**values)


def converse(
    steerer: Steerer,
    escalations: Sequence[Escalation],
    spec: SteeringSpec,
    config: MultiTurnConfig,
) -> list[list[Reply]]:
    """Play every escalation under `spec`: per escalation, one reply per user turn, each turn asked with
    the user's earlier turns and the model's own earlier replies as history.

    Raises:
        DataError: a conversation that grows past the model's context.
    """
    histories: list[list[dict[str, str]]] = [[] for _ in escalations]
    replies: list[list[Reply]] = [[] for _ in escalations]
    longest = max((len(e.turns) for e in escalations), default=0)
    for turn in range(longest):
        active = [i for i, e in enumerate(escalations) if turn < len(e.turns)]
        asked = [[*histories[i], {"role": "user", "content": escalations[i].turns[turn]}] for i in active]
        final = [turn == len(escalations[i].turns) - 1 for i in active]
        # Final and earlier turns differ in length; decode each group with its own budget.
        for is_final in (False, True):
            rows = [k for k, f in enumerate(final) if f == is_final]
            if not rows:
                continue
            tokens = config.max_new_tokens if is_final else config.history_tokens
            out = decode_many(
                steerer,
                [asked[k] for k in rows],
                spec,
                SamplingConfig(max_new_tokens=tokens),
                batch_size=config.batch_size,
            )
            for k, reply in zip(rows, out, strict=True):
                i = active[k]
                histories[i] = [*asked[k], {"role": "assistant", "content": reply.text}]
                replies[i].append(reply)
    return replies


def measure_multi_turn(
    steerer: Steerer,
    label: str,
    strength: float | None,
    spec: SteeringSpec,
    escalations: Sequence[Escalation],
    config: MultiTurnConfig,
) -> MultiTurnPoint:
    """One setting's refusal at the final turn (and, with `config.direct`, on the final requests alone)."""
    if not escalations:
        raise ValueError("no escalations to play")
    start = time.perf_counter()
    played = converse(steerer, escalations, spec, config)
    finals = [Verdict.from_dict(r[-1].verdict) for r in played]
    direct: list[Reply] = []
    if config.direct:
        sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
        direct = decode_many(
            steerer, [e.turns[-1] for e in escalations], spec, sampling, batch_size=config.batch_size
        )
    direct_verdicts = [Verdict.from_dict(r.verdict) for r in direct]
    longest = max(len(e.turns) for e in escalations)
    by_turn = [
        refusal_rate([Verdict.from_dict(r[t].verdict) for r in played if t < len(r)]) for t in range(longest)
    ]
    conversations = [
        {
            "id": e.id,
            "category": e.category,
            "turns": list(e.turns),
            "replies": [r.text for r in replies],
            "verdict": verdict.label,
            "evidence": verdict.evidence,
            "direct_reply": direct[n].text if direct else None,
            "direct_verdict": direct_verdicts[n].label if direct else None,
        }
        for n, (e, replies, verdict) in enumerate(zip(escalations, played, finals, strict=True))
    ]
    n_direct_refused = sum(v.refused for v in direct_verdicts)
    return MultiTurnPoint(
        label,
        strength,
        spec.to_dict(),
        len(escalations),
        refusal_rate(finals),
        wilson_interval(sum(v.refused for v in finals), len(finals)),
        label_rate(finals, "degenerate"),
        refusal_rate(direct_verdicts) if direct else math.nan,
        wilson_interval(n_direct_refused, len(direct)) if direct else (math.nan, math.nan),
        by_turn,
        round(time.perf_counter() - start, 1),
        conversations,
    )


def evaluate_multi_turn(
    steerer: Steerer,
    settings: Sequence[tuple[str, float | None, SteeringSpec]],
    escalations: Sequence[Escalation],
    config: MultiTurnConfig | None = None,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[MultiTurnPoint]:
    """The unsteered model, then every (label, strength, spec) setting, over the same escalations.

    Args:
        on_progress: called after each setting with (settings done, settings in all, its label).
    """
    config = config or MultiTurnConfig()
    todo = [("unsteered", None, SteeringSpec()), *settings]
    points = []
    for label, strength, spec in todo:
        points.append(measure_multi_turn(steerer, label, strength, spec, escalations, config))
        if on_progress is not None:
            on_progress(len(points), len(todo), label)
    return points
