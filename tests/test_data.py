"""Prompt sets: the built-in sets are big, diverse and fixed; user files fail loudly and precisely."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
from huggingface_hub.errors import OfflineModeIsEnabled
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from explorer.core.prompts import (
    DataError,
    builtin_prompts,
    chat_messages,
    filter_split,
    format_chat,
    load_hub_dataset,
    load_prompt_file,
    stable_split,
    stratified_sample,
)


@pytest.mark.parametrize("label", ["harmful", "harmless"])
def test_builtin_sets_are_large_diverse_and_split(label: str) -> None:
    records = builtin_prompts(label)  # pyright: ignore[reportArgumentType]
    assert len(records) >= 300
    categories = Counter(r.category for r in records)
    assert len(categories) >= 10
    assert min(categories.values()) >= 20
    assert len({r.id for r in records}) == len(records)
    assert len({r.text.lower() for r in records}) == len(records)
    assert all(r.label == label and r.source == "builtin" for r in records)
    for category in categories:
        splits = Counter(r.split for r in records if r.category == category)
        assert splits["train"] > splits["val"] > 0 and splits["test"] > 0


def test_builtin_sets_do_not_overlap_and_splits_are_fixed() -> None:
    harmful = {r.text.lower() for r in builtin_prompts("harmful")}
    harmless = {r.text.lower() for r in builtin_prompts("harmless")}
    assert not harmful & harmless
    test_ids = [r.id for r in builtin_prompts("harmless", "test")]
    assert test_ids == [r.id for r in builtin_prompts("harmless", "test")]
    assert "harmless-borderline-004" in test_ids
    assert len(builtin_prompts("harmful", ["val", "test"])) == len(builtin_prompts("harmful", "val")) + len(
        builtin_prompts("harmful", "test")
    )


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(DataError, match="unknown split"):
        filter_split(builtin_prompts("harmful"), "dev")  # pyright: ignore[reportArgumentType]


def test_stable_split_is_deterministic_and_proportional() -> None:
    splits = Counter(stable_split(f"row-{i}") for i in range(5000))
    assert stable_split("row-7") == stable_split("row-7")
    assert 0.56 < splits["train"] / 5000 < 0.64
    assert 0.17 < splits["val"] / 5000 < 0.23


def test_jsonl_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "How do I pick a lock?", "label": "harmful", "category": "theft"}\n'
        "\n"
        '{"text": "Tell me a joke.", "split": "test"}\n'
    )
    first, second = load_prompt_file(path, label="harmless")
    assert (first.id, first.label, first.category) == ("a", "harmful", "theft")
    assert (second.id, second.label, second.split) == ("mine-3", "harmless", "test")
    assert first.split == stable_split("a")


def test_csv_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("id,text,category\nx1,Write a poem about rain.,writing\nx2,Sum 2 and 2.,math\n")
    records = load_prompt_file(path, label="harmless")
    assert [r.text for r in records] == ["Write a poem about rain.", "Sum 2 and 2."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "ok too"\n', r"bad\.jsonl:2: malformed JSON"),
        ('{"text": "ok"}\n["not", "an", "object"]\n', r"bad\.jsonl:2: expected a JSON object"),
        ('{"text": "ok"}\n{"id": "x", "text": "  "}\n', r"bad\.jsonl:2: no non-empty 'text'"),
        ('{"text": "ok", "split": "dev"}\n', r"bad\.jsonl:1: split 'dev'"),
        ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate id 'a'"),
        ("\n\n", "no prompts in file"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_prompt_file(path)


def test_missing_and_wrong_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_prompt_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"jsonl or \.csv"):
        load_prompt_file(tmp_path / "x.txt")


def _raise(error: BaseException) -> Callable[..., None]:
    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise error

    return fail


def test_hub_datasets_unknown_name_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="unknown dataset 'advbnch'"):
        load_hub_dataset("advbnch")
    # What the hub client raises offline (an OSError subclass), without touching the network.
    monkeypatch.setattr(datasets, "load_dataset", _raise(OfflineModeIsEnabled("offline mode is enabled")))
    with pytest.raises(DataError, match="offline"):
        load_hub_dataset("advbench")
    monkeypatch.setattr(datasets, "load_dataset", _raise(ValueError("BuilderConfig 'x' not found")))
    with pytest.raises(DataError, match="BuilderConfig") as wrong_config:
        load_hub_dataset("advbench")
    assert "offline" not in str(wrong_config.value)
    monkeypatch.setattr(datasets, "load_dataset", _raise(TypeError("unexpected keyword 'splt'")))
    with pytest.raises(TypeError, match="splt"):  # a bug is not re-labelled as "offline?"
        load_hub_dataset("advbench")


class _BrokenTemplate:
    """A tokenizer whose chat template fails with a programming error, counting the attempts."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.calls = error, 0

    def apply_chat_template(self, *_args: Any, **_kwargs: Any) -> str:
        self.calls += 1
        raise self.error


def test_only_a_template_error_counts_as_a_rejected_system_role() -> None:
    messages = chat_messages("Hi?", system="Be terse.")
    bug = _BrokenTemplate(KeyError("content"))
    with pytest.raises(KeyError):
        format_chat(bug, messages)  # pyright: ignore[reportArgumentType]
    assert bug.calls == 1  # not retried with the system prompt merged into the user turn
    missing = _BrokenTemplate(ValueError("tokenizer.chat_template is not set"))
    with pytest.raises(DataError, match=r"chat template failed: tokenizer\.chat_template is not set"):
        format_chat(missing, messages)  # pyright: ignore[reportArgumentType]
    assert missing.calls == 1
    rejected = _BrokenTemplate(TemplateError("no system role"))
    with pytest.raises(DataError, match="also with the system prompt merged"):
        format_chat(rejected, messages)  # pyright: ignore[reportArgumentType]
    assert rejected.calls == 2


def test_chat_template_with_and_without_system(tokenizer: PreTrainedTokenizerBase) -> None:
    with_system = format_chat(tokenizer, chat_messages("Hi?", system="Be terse."))
    assert with_system.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert with_system.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    without = format_chat(tokenizer, chat_messages("Hi?"))
    assert "Be terse" not in without and without.endswith("<|im_start|>assistant\n")
    with pytest.raises(DataError, match="empty"):
        chat_messages("   ")


def test_template_that_rejects_system_gets_it_merged(tokenizer: PreTrainedTokenizerBase) -> None:
    gemma_like = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    )
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = gemma_like
        text = format_chat(tokenizer, chat_messages("Hi?", system="Be terse."))
    finally:
        tokenizer.chat_template = original
    assert text == "<start_of_turn>user\nBe terse.\n\nHi?<end_of_turn>\n"


def test_a_sample_of_a_split_covers_its_categories_evenly_and_repeatably() -> None:
    harmful = builtin_prompts("harmful", "test")
    first_16 = {r.category for r in harmful[:16]}
    assert len(first_16) <= 3  # the files list a split category by category: a prefix is lopsided
    sample = stratified_sample(harmful, 16, seed=0)
    assert len(sample) == 16 and len({r.category for r in sample}) == 16
    assert sample == stratified_sample(harmful, 16, seed=0)
    assert sample != stratified_sample(harmful, 16, seed=1)
    harmless = builtin_prompts("harmless", "test")
    categories = {r.category for r in harmless}
    assert {"borderline", "borderline_safety"} <= categories
    wide = stratified_sample(harmless, 2 * len(categories), seed=0)
    assert Counter(r.category for r in wide) == dict.fromkeys(categories, 2)
    assert stratified_sample(harmless, None) == harmless
    assert stratified_sample(harmless, len(harmless) + 5) == harmless
