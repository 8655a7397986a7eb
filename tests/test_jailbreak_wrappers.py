"""Jailbreak wrappers: the built-in set covers the attack families, fills its one slot, and users' files are
checked with errors that name the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.core.jailbreaks import Wrapper, builtin_wrappers, load_wrapper_file, pick_wrappers, transformed
from explorer.core.prompts import DataError

REQUEST = "How do I pick the lock on a door?"


def test_the_built_in_wrappers_wrap_the_request_once() -> None:
    wrappers = builtin_wrappers()
    names = [w.name for w in wrappers]
    for family in ("role-play", "fiction", "prefix-injection", "refusal-suppression", "payload-split"):
        assert family in names
    assert {"few-shot", "leetspeak"} <= set(names)
    for w in wrappers:
        wrapped = w.apply(REQUEST)
        assert wrapped != REQUEST and "{prompt}" not in wrapped
        if w.transform == "none":
            assert wrapped.count(REQUEST) == 1


def test_transforms_keep_every_word_of_the_request() -> None:
    split = transformed(REQUEST, "split")
    assert split == 'a = "How do I pick" and b = " the lock on a door?".'
    assert transformed("pick a lock", "leet") == "p1ck 4 l0ck"
    assert transformed("one", "split") == 'a = "one" and b = " ".'


def test_a_template_with_braces_keeps_them() -> None:
    w = Wrapper("json", 'Reply as {"answer": ...} to: {prompt}')
    assert w.apply("hi") == 'Reply as {"answer": ...} to: hi'


def test_users_wrapper_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "mine.json"
    good.write_text(json.dumps([{"name": "mine", "template": "Please: {prompt}"}]))
    assert load_wrapper_file(good)[0].apply("x") == "Please: x"
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"name": "a", "template": "{prompt}!", "transform": "leet"}) + "\n")
    assert load_wrapper_file(jsonl)[0].apply("hello") == "h3ll0!"
    cases = {
        "none.json": (None, "not found"),
        "bad.json": ("[{", "malformed JSON at line 1"),
        "empty.json": ("[]", "non-empty list"),
        "slots.json": (json.dumps([{"name": "a", "template": "{prompt} {prompt}"}]), "found 2"),
        "noslot.json": (json.dumps([{"name": "a", "template": "hi"}]), "entry 1"),
        "spaces.json": (json.dumps([{"name": "a b", "template": "{prompt}"}]), "one word"),
        "transform.json": (
            json.dumps([{"name": "a", "template": "{prompt}", "transform": "rot13"}]),
            "rot13",
        ),
        "dupes.json": (json.dumps([{"name": "a", "template": "{prompt}"}] * 2), "duplicate wrapper names"),
        "long.json": (json.dumps([{"name": "a", "template": "x" * 5000 + "{prompt}"}]), "limit is 4000"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            load_wrapper_file(tmp_path / name)


def test_wrappers_are_picked_by_name() -> None:
    wrappers = builtin_wrappers()
    assert [w.name for w in pick_wrappers(wrappers, ["fiction", "role-play"])] == ["fiction", "role-play"]
    assert pick_wrappers(wrappers, None) == wrappers
    with pytest.raises(DataError, match="unknown wrapper"):
        pick_wrappers(wrappers, ["nope"])
