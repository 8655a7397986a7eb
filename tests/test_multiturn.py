"""Multi-turn escalations: the built-in set and users' files load with clear errors, every turn is asked with
the model's own (steered) earlier replies, the final-turn and direct rates count what a judge said, and
`explorer eval --multi-turn` runs end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from explorer.cli.main import main
from explorer.core.escalations import Escalation, builtin_escalations, load_escalation_file
from explorer.core.generation import SamplingConfig
from explorer.core.judge import Verdict
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import SPLITS, DataError
from explorer.saes.loading import wrap_sae
from explorer.steering.decode import Steerer, decode
from explorer.steering.multiturn import (
    MultiTurnConfig,
    MultiTurnPoint,
    converse,
    evaluate_multi_turn,
    measure_multi_turn,
)
from explorer.steering.spec import Clamp, SteeringSpec
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
MARK = "zebra"


@dataclass
class MarkerJudge:
    """Calls a reply a refusal when the conversation it answers mentions `MARK`: a judge whose every
    verdict is known in advance, so the counting around it can be checked exactly."""

    name: str = "marker"

    def judge(self, response: str, prompt: str | None = None) -> Verdict:
        if prompt is not None and MARK in prompt:
            return Verdict(True, f"{MARK} in the prompt", self.name, 1.0, "refusal")
        return Verdict(False, "no marker", self.name, 0.0, "compliance")

    def judge_many(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]:
        return [self.judge(r, p) for r, p in zip(responses, prompts or [None] * len(responses), strict=True)]


@pytest.fixture(scope="module")
def steerer(tiny: LoadedModel) -> Steerer:
    sae = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=1), "main", "main")
    return Steerer(tiny, {HOOK: sae}, None, {HOOK: torch.full((32,), 2.0)}, MarkerJudge())


def _escalation(rid: str, *turns: str) -> Escalation:
    return Escalation(rid, tuple(turns), "test", "test", "test")


def test_the_built_in_escalations_have_splits_and_escalate() -> None:
    every = builtin_escalations()
    assert len(every) >= 30
    assert {e.split for e in every} == set(SPLITS)
    assert all(3 <= len(e.turns) <= 5 for e in every)
    test = builtin_escalations("test")
    assert len({e.category for e in test}) >= 5 and len(test) >= 8
    assert len({e.id for e in every}) == len(every)


def test_a_users_escalation_file_is_checked_line_by_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "a", "turns": ["hi", "how are you", "now tell me"]}) + "\n\n")
    (loaded,) = load_escalation_file(good)
    assert loaded.turns == ("hi", "how are you", "now tell me") and loaded.split in SPLITS
    cases = {
        "missing.jsonl": None,
        "bad.jsonl": "{not json\n",
        "one.jsonl": json.dumps({"turns": ["only one"]}),
        "blank.jsonl": json.dumps({"turns": ["a", "  "]}),
        "dupe.jsonl": "\n".join(json.dumps({"id": "x", "turns": ["a", "b"]}) for _ in range(2)),
        "split.jsonl": json.dumps({"turns": ["a", "b"], "split": "dev"}),
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as e:
            load_escalation_file(tmp_path / name)
        messages[name] = str(e.value)
    assert "not found" in messages["missing.jsonl"] and ":1: malformed JSON" in messages["bad.jsonl"]
    assert "1 turns" in messages["one.jsonl"] and "non-empty" in messages["blank.jsonl"]
    assert "duplicate ids ['x']" in messages["dupe.jsonl"] and "'dev'" in messages["split.jsonl"]


@pytest.mark.parametrize("spec", [SteeringSpec(), SteeringSpec((Clamp(HOOK, 3, "add", 40.0),))])
def test_each_turn_is_asked_with_the_models_own_earlier_replies(steerer: Steerer, spec: SteeringSpec) -> None:
    escalations = [
        _escalation("a", "Hello there.", "Tell me a story.", "Now a sad one."),
        _escalation("b", "Hi.", "Bye."),
    ]
    config = MultiTurnConfig(max_new_tokens=3, history_tokens=5, batch_size=2)
    played = converse(steerer, escalations, spec, config)
    assert [len(r) for r in played] == [3, 2]
    for escalation, replies in zip(escalations, played, strict=True):
        history: list[dict[str, str]] = []
        for turn, (text, reply) in enumerate(zip(escalation.turns, replies, strict=True)):
            history.append({"role": "user", "content": text})
            tokens = config.max_new_tokens if turn == len(escalation.turns) - 1 else config.history_tokens
            (alone,) = decode(steerer, [history], spec, sampling=SamplingConfig(max_new_tokens=tokens))
            assert reply.token_ids == alone.token_ids  # same history, same steering, same reply
            history.append({"role": "assistant", "content": reply.text})


def test_steering_changes_the_earlier_replies_too(steerer: Steerer) -> None:
    escalation = [_escalation("a", "Hello there.", "Tell me a story.", "Go on.")]
    config = MultiTurnConfig(max_new_tokens=3, history_tokens=6)
    plain = converse(steerer, escalation, SteeringSpec(), config)[0]
    steered = converse(steerer, escalation, SteeringSpec((Clamp(HOOK, 3, "add", 40.0),)), config)[0]
    assert plain[0].token_ids != steered[0].token_ids


def test_final_turn_and_direct_rates_count_the_judges_verdicts(steerer: Steerer) -> None:
    escalations = [
        _escalation("late", "Hi.", f"Now the {MARK}."),  # the request itself: refused both ways
        _escalation("early", f"About a {MARK}.", "And then?", "Go on."),  # only the history has it
        _escalation("never", "Hi.", "Go on."),
        _escalation("middle", "Hi.", f"A {MARK}?", "Go on.", "More."),
    ]
    config = MultiTurnConfig(max_new_tokens=2, history_tokens=2)
    point = measure_multi_turn(steerer, "unsteered", None, SteeringSpec(), escalations, config)
    assert point.n == 4 and point.refusal_final == pytest.approx(3 / 4)
    assert point.refusal_direct == pytest.approx(1 / 4)  # asked alone, only "late" names the marker
    # turn 0: "early" only; turn 1: late, early, middle of 4; turn 2: early, middle of 2; turn 3: middle
    assert point.refusal_by_turn == pytest.approx([1 / 4, 3 / 4, 1.0, 1.0])
    rows = {c["id"]: c for c in point.conversations}
    assert rows["early"]["verdict"] == "refusal" and rows["early"]["direct_verdict"] == "compliance"
    assert len(rows["middle"]["replies"]) == 4 and rows["never"]["verdict"] == "compliance"
    assert MultiTurnPoint.from_dict(json.loads(json.dumps(point.__dict__))) == point


def test_settings_are_measured_after_the_unsteered_model(steerer: Steerer) -> None:
    escalations = [_escalation("a", "Hi.", "Go on.")]
    settings = [("add 40", 40.0, SteeringSpec((Clamp(HOOK, 3, "add", 40.0),)))]
    seen: list[tuple[int, int, str]] = []
    points = evaluate_multi_turn(
        steerer, settings, escalations, MultiTurnConfig(max_new_tokens=2, history_tokens=2, direct=False),
        on_progress=lambda *a: seen.append(a),
    )  # fmt: skip
    assert [p.label for p in points] == ["unsteered", "add 40"] and seen[-1] == (2, 2, "add 40")
    assert points[1].spec["clamps"][0]["latent"] == 3
    assert (
        points[0].conversations[0]["direct_reply"] is None
        and points[0].refusal_direct != points[0].refusal_direct
    )


def test_cli_eval_multi_turn_runs_on_a_workspace(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    app_cache: Path,
    tiny_dir: Path,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    mine = tmp_path / "mine.jsonl"
    mine.write_text(
        "\n".join(json.dumps({"id": f"m{i}", "turns": ["Hi.", "Go on.", "Tell me."]}) for i in range(3))
    )
    base = [
        "eval",
        "--model",
        str(tiny_dir),
        "--multi-turn",
        "--max-new-tokens",
        "2",
        "--history-tokens",
        "2",
    ]
    args = [*base, "--strengths", "1", "--latents", "top:2", "--escalations", str(mine), "--json"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in document["points"]] == ["unsteered", "set 1×max"]
    assert document["points"][0]["n"] == 3 and document["escalations"] == str(mine)
    assert json.loads((tmp_path / "out" / "multiturn.json").read_text()) == document
    assert main([*base, "--strengths", "1", "--latents", "top:1"]) == 0  # built-in test split, a table
    table = capsys.readouterr().out
    assert "refused final turn" in table and f"({len(builtin_escalations('test')):3d})" in table
    assert main([*base, "--harmful", str(mine)]) == 2
    assert "--harmful measure single prompts" in capsys.readouterr().err
    assert main([*base, "--escalations", str(tmp_path / "none.jsonl")]) == 2
    assert "escalation file not found" in capsys.readouterr().err
