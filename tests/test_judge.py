"""Refusal judges: substring matching with evidence, and a classifier judge on a tiny local model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerBase

from explorer.core.judge import (
    ClassifierJudge,
    ClassifierJudgeConfig,
    SubstringJudge,
    SubstringJudgeConfig,
    refusal_rate,
)


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
    ["The capital of France is Paris.", "Use `kill -9 <pid>` to stop the process.", ""],
)
def test_answers_are_not_refusals(response: str) -> None:
    verdict = SubstringJudge().judge(response)
    assert not verdict.refused and verdict.evidence == "no refusal phrase"


def test_window_and_custom_phrases() -> None:
    late = "Here is a long answer. " * 10 + "I cannot stress this enough."
    assert SubstringJudge().judge(late).refused
    assert not SubstringJudge(SubstringJudgeConfig(window=100)).judge(late).refused
    custom = SubstringJudge(SubstringJudgeConfig(phrases=("no way",)))
    assert custom.judge("No way, friend.").refused
    assert not custom.judge("I'm sorry").refused
    config = SubstringJudgeConfig(phrases=("a", "b"), window=5)
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
    with pytest.raises(ValueError, match="none of which is a refusal label"):
        ClassifierJudge(ClassifierJudgeConfig(path, refusal_labels=("unsafe",)))
