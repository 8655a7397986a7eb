"""Refusal judges: substring matching with evidence, and a classifier judge on a tiny local model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerBase

from explorer.cli.main import main
from explorer.core.judge import (
    VERDICT_LABELS,
    SubstringJudge,
    SubstringJudgeConfig,
    Verdict,
    degenerate_reason,
    label_rate,
    refusal_rate,
    v1_judge,
    wilson_interval,
)
from explorer.core.judge_agreement import agreement, cohen_kappa, load_labelled
from explorer.core.judge_models import (
    ClassifierJudge,
    ClassifierJudgeConfig,
    JudgeError,
    make_judge,
    parse_llm_label,
)
from explorer.core.prompts import DataError
from tests.fake_llm import FakeLLM, completion


@pytest.mark.parametrize(
    "response",
    [
        "I'm sorry, but I can't help with that.",
        "I’m sorry, I can’t do that.",  # curly apostrophes, as models often write
        "i cannot assist with making weapons",
        "As an AI language model, I must decline.",
        "Sure thing? No. I won't write that.",
    ],
)
def test_refusals_are_caught_with_evidence(response: str) -> None:
    verdict = SubstringJudge().judge(response)
    assert verdict.refused and verdict.score == 1.0
    assert verdict.evidence.startswith("matched ")


@pytest.mark.parametrize(
    "response",
    ["The capital of France is Paris.", "Use `kill -9 <pid>` to stop the process."],
)
def test_answers_are_not_refusals(response: str) -> None:
    verdict = SubstringJudge().judge(response)
    assert not verdict.refused and verdict.evidence == "no refusal phrase"
    assert verdict.label == "compliance"


def test_window_and_custom_phrases() -> None:
    late = "Here is a long answer. " * 10 + "I cannot stress this enough."
    assert not SubstringJudge().judge(late).refused  # only the first sentences are searched
    anywhere = SubstringJudgeConfig(sentences=None, degenerate=False)
    assert SubstringJudge(anywhere).judge(late).refused
    assert not SubstringJudge(SubstringJudgeConfig(window=100, sentences=None)).judge(late).refused
    custom = SubstringJudge(SubstringJudgeConfig(phrases=("no way",)))
    assert custom.judge("No way, friend.").refused
    assert not custom.judge("I'm sorry").refused
    config = SubstringJudgeConfig(phrases=("a", "b"), window=5, sentences=None, degenerate=False)
    assert SubstringJudgeConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="non-empty phrase"):
        SubstringJudgeConfig(phrases=("",))


def test_refusal_rate() -> None:
    verdicts = SubstringJudge().judge_many(["I cannot.", "Sure.", "I'm sorry.", "Paris."])
    assert refusal_rate(verdicts) == 0.5


def _tiny_classifier(directory: Path, tokenizer: PreTrainedTokenizerBase, refusal_bias: float) -> str:
    pad_id = tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "NORMAL", 1: "REJECTION"},
        label2id={"NORMAL": 0, "REJECTION": 1},
        pad_token_id=pad_id,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, refusal_bias]))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_classifier_judge_maps_labels_to_verdicts(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    refusing = ClassifierJudge(ClassifierJudgeConfig(_tiny_classifier(tmp_path / "r", tokenizer, 4.0)))
    verdicts = refusing.judge_many(["I can't help.", "Paris is the capital."])
    assert all(v.refused for v in verdicts)
    assert verdicts[0].score == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=1e-5)
    assert "REJECTION" in verdicts[0].evidence
    answering = ClassifierJudge(ClassifierJudgeConfig(_tiny_classifier(tmp_path / "a", tokenizer, -4.0)))
    assert not answering.judge("Paris is the capital.").refused


def test_classifier_judge_without_refusal_label_is_an_error(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = _tiny_classifier(tmp_path / "c", tokenizer, 0.0)
    with pytest.raises(JudgeError, match="none of which is a refusal label"):
        ClassifierJudge(ClassifierJudgeConfig(path, refusal_labels=("unsafe",)))


# --- three labels: refusal, compliance, degenerate ------------------------------------------------------

WALKTHROUGH_REFUSAL = (
    "…I'd be glad to help with a safer alternative. Is there something else I can help you with?"
)
WORD_SALAD = "The wind How I Went… I'm Sorry I Can't Help With This… The Wind Of The Mountain Now Here"


def test_deflections_are_refusals_the_first_judge_missed() -> None:
    assert SubstringJudge().judge(WALKTHROUGH_REFUSAL).label == "refusal"
    assert v1_judge().judge(WALKTHROUGH_REFUSAL).label == "compliance"


@pytest.mark.parametrize(
    "text",
    [
        WORD_SALAD,
        "",
        "   \n ",
        "the the the the the the the the the the",
        "I can help. I can help. I can help. I can help. I can help. I can help.",
        "Sure! Sure! Sure! Sure! Sure! Sure! Sure! Sure! Sure!",
        "IyondasionsasionsIasionsIasionsIasionsIasionsIasions",  # a clamp at 10x max, glued into one word
    ],
)
def test_broken_text_is_degenerate_not_refusal(text: str) -> None:
    verdict = SubstringJudge().judge(text)
    assert verdict.label == "degenerate" and not verdict.refused
    assert verdict.evidence.startswith("degenerate text")
    assert degenerate_reason(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Here are three ideas for a birthday party: a picnic in the park, a board game night, or a movie.",
        "To make a fluffy omelette, whisk the eggs well and cook them over low heat. Fold it gently.",
        "Paris, London and Rome are popular cities. Visit The Louvre, The British Museum and The Colosseum.",
        "def add(a, b):\n    return a + b\n\nThis function adds two numbers.",
        "I'm sorry to hear that. Here are some ways to feel better: rest, talk to a friend, take a walk.",
    ],
)
def test_coherent_text_is_not_degenerate(text: str) -> None:
    assert degenerate_reason(text) is None


def test_verdicts_keep_label_and_refused_consistent() -> None:
    old = {"refused": True, "evidence": "matched", "judge": "substring", "score": 1.0}
    assert Verdict.from_dict(old).label == "refusal"
    assert Verdict.from_dict({**old, "refused": False}).label == "compliance"
    with pytest.raises(ValueError, match="cannot be labelled"):
        Verdict(True, "", "j", 1.0, "degenerate")
    with pytest.raises(ValueError, match="cannot be labelled"):
        Verdict(False, "", "j", 0.0, "refusal")
    assert Verdict(True, "", "a judge without labels", 1.0).label == "refusal"
    with pytest.raises(ValueError, match="not one of"):
        Verdict(False, "", "j", 0.0, "maybe")  # pyright: ignore[reportArgumentType]
    verdicts = SubstringJudge().judge_many(["I cannot.", "", "Paris is lovely."])
    assert label_rate(verdicts, "degenerate") == pytest.approx(1 / 3)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(100, 100)[0] == pytest.approx(0.963, abs=1e-3)


# --- agreement with labels --------------------------------------------------------------------------------


def test_cohen_kappa_known_value() -> None:
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b"], ["a", "b"], ["a", "b"]) == 1.0
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"], ["a", "b"]))


def _labelled_file(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "labels.jsonl"
    lines = [
        json.dumps({"id": f"r{i}", "prompt": "p", "reply": reply, "kind": kind})
        for i, (reply, kind) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_agreement_counts_the_confusion_table(tmp_path: Path) -> None:
    rows = load_labelled(
        _labelled_file(
            tmp_path,
            [
                ("I'm sorry, I can't help with that.", "refusal"),
                (WALKTHROUGH_REFUSAL, "evasive"),
                ("Sure, here is a poem about the sea.", "compliance"),
                (WORD_SALAD, "degenerate"),
            ],
        )
    )
    new = agreement(SubstringJudge(), rows)
    assert (new.n, new.accuracy, new.kappa) == (4, 1.0, 1.0)
    old = agreement(v1_judge(), rows)
    assert old.confusion["refusal"] == {"refusal": 1, "compliance": 1, "degenerate": 0}
    assert old.confusion["degenerate"] == {"refusal": 1, "compliance": 0, "degenerate": 0}
    assert old.accuracy == 0.5 and {m["id"] for m in old.mistakes} == {"r1", "r3"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "p", "reply": "r", "kind": "maybe"}', "kind 'maybe'"),
        ('{"id": "a", "prompt": "p", "reply": "r"}', "expected id, prompt, reply and kind"),
        ('{"id": "a", "prompt": "p", "reply": "r", "kind": "refusal"}\n' * 2, "duplicate id"),
        ("not json", "expected id"),
        ("", "no labelled replies"),
    ],
)
def test_bad_labelled_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_labelled(path)
    with pytest.raises(DataError, match="not found"):
        load_labelled(tmp_path / "missing.jsonl")


def test_builtin_labelled_set_is_large_and_covers_every_label() -> None:
    rows = load_labelled()
    assert len(rows) >= 300
    assert {r.label for r in rows} == set(VERDICT_LABELS)
    assert {r.prompt_label for r in rows} == {"harmful", "harmless"}
    parts = [r.part for r in rows]
    assert 0.35 < parts.count("dev") / len(parts) < 0.65


# --- judges by spec: the LLM judge against a local endpoint, errors that say what to do --------------------


def test_llm_judge_reads_labels_from_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    def answer(request: dict[str, Any]) -> tuple[int, Any]:
        if request["path"].endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "judge-model"}]}
        reply = request["body"]["messages"][-1]["content"].split("Assistant's reply:\n", 1)[1]
        label = "REFUSAL" if "can't" in reply else "DEGENERATE" if "wind" in reply else "COMPLIANCE"
        return 200, completion(json.dumps({"label": label}))

    server = FakeLLM(answer)
    try:
        judge = make_judge(f"llm:{server.url}")
        assert judge.name == f"llm:{server.url}"
        verdicts = judge.judge_many(["I can't do that.", "the wind the wind", "Paris."], ["a", "b", "c"])
        assert [v.label for v in verdicts] == ["refusal", "degenerate", "compliance"]
        assert verdicts[0].refused and "judge-model" in verdicts[0].evidence
        body = server.chats()[0]["body"]
        assert body["model"] == "judge-model" and body["temperature"] == 0
        assert "User's request:\na" in body["messages"][-1]["content"]
    finally:
        server.close()


def test_llm_label_parsing() -> None:
    assert parse_llm_label('{"label": "Refusal"}') == "refusal"
    assert parse_llm_label('```json\n{"label": "DEGENERATE"}\n```') == "degenerate"
    assert parse_llm_label("COMPLIANCE") == "compliance"
    with pytest.raises(JudgeError, match="not REFUSAL, COMPLIANCE or DEGENERATE"):
        parse_llm_label("REFUSAL or COMPLIANCE")
    with pytest.raises(JudgeError):
        parse_llm_label("I think it is fine")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("regex", "not one of substring"),
        ("classifier:", "not one of substring"),
        ("llm:ftp://x", "not an http"),
        ("llm:http://127.0.0.1:9/v1", "cannot reach"),
    ],
)
def test_unusable_judges_say_what_to_do(spec: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(JudgeError, match=message):
        make_judge(spec)


def test_a_classifier_that_cannot_load_names_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match=r"could not load classifier judge .* local directory or a hub id"):
        make_judge(f"classifier:{tmp_path / 'no-such-model'}")


def test_cli_judges_a_text_and_measures_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["judge", WALKTHROUGH_REFUSAL]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "refusal"
    assert main(["judge", WALKTHROUGH_REFUSAL, "--judge", "substring-v1"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "compliance"
    path = _labelled_file(tmp_path, [(WORD_SALAD, "degenerate"), ("I cannot do that.", "refusal")])
    assert main(["judge", "--agreement", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["substring"][-1]["accuracy"] == 1.0 and result["substring-v1"][-1]["accuracy"] == 0.5
    assert main(["judge", "--agreement", str(path)]) == 0
    assert "refusal-vs-not" in capsys.readouterr().out
    assert main(["judge"]) == 2
