"""Jailbreak wrappers: templates that put a request inside an attack, built in or from a user's file.

A wrapper is a template with one `{prompt}` slot and an optional transform of the request before it is
put in: "split" cuts it into two quoted strings `a` and `b` (a payload split), "leet" writes it in
leetspeak (a stand-in for low-resource-language attacks). The built-in set (`prompts/jailbreaks.json`)
was written for this project; a user's file has the same shape (JSON list or JSONL of objects with
`name`, `template`, optional `description` and `transform`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from explorer.core.prompts import DataError

Transform = Literal["none", "split", "leet"]
SLOT = "{prompt}"
MAX_TEMPLATE_CHARS = 4000
"""A longer template is more likely a pasted document than an attack; it would crowd out the request."""
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "A": "4", "E": "3",
                       "I": "1", "O": "0", "S": "5", "T": "7"})  # fmt: skip


@dataclass(frozen=True)
class Wrapper:
    """One jailbreak template.

    Attributes:
        name: short unique name (shown in tables and used on the command line).
        template: the attack's text with exactly one `{prompt}` slot.
        description: what the attack does, in a few words.
        transform: how the request is rewritten before it fills the slot.
    """

    name: str
    template: str
    description: str = ""
    transform: Transform = "none"

    def __post_init__(self) -> None:
        if not self.name.strip() or any(c.isspace() for c in self.name):
            raise DataError(f"wrapper name {self.name!r} must be one word (letters, digits, '-')")
        if self.template.count(SLOT) != 1:
            raise DataError(
                f"wrapper {self.name!r}: the template must hold exactly one {SLOT} slot, "
                f"found {self.template.count(SLOT)}"
            )
        if len(self.template) > MAX_TEMPLATE_CHARS:
            raise DataError(
                f"wrapper {self.name!r}: template of {len(self.template)} characters; "
                f"the limit is {MAX_TEMPLATE_CHARS}"
            )
        if self.transform not in get_args(Transform):
            raise DataError(
                f"wrapper {self.name!r}: transform {self.transform!r} is not one of {get_args(Transform)}"
            )

    def apply(self, prompt: str) -> str:
        """The wrapped request (the slot is filled by plain replacement, so other braces stay as they are)."""
        return self.template.replace(SLOT, transformed(prompt, self.transform))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wrapper:
        return cls(
            str(data.get("name", "")),
            str(data.get("template", "")),
            str(data.get("description", "")),
            data.get("transform", "none"),
        )


def transformed(prompt: str, transform: Transform) -> str:
    """`prompt` rewritten by `transform` (see the module docstring)."""
    if transform == "leet":
        return prompt.translate(_LEET)
    if transform == "split":
        words = prompt.split()
        half = max(1, len(words) // 2)
        return f'a = "{" ".join(words[:half])}" and b = " {" ".join(words[half:])}".'
    return prompt


def _parse(rows: Any, where: str) -> list[Wrapper]:
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{where}: expected a non-empty list of wrapper objects")
    wrappers = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{where}: entry {n} is a {type(row).__name__}, expected an object")
        try:
            wrappers.append(Wrapper.from_dict(row))
        except DataError as e:
            raise DataError(f"{where}: entry {n}: {e}") from None
    names = [w.name for w in wrappers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{where}: duplicate wrapper names {duplicates}")
    return wrappers


def builtin_wrappers() -> list[Wrapper]:
    """The wrappers written for this project (role-play, fiction, hypothetical, prefix injection, refusal
    suppression, payload split, few-shot compliance, leetspeak)."""
    text = resources.files("explorer.prompts").joinpath("jailbreaks.json").read_text(encoding="utf-8")
    return _parse(json.loads(text), "built-in jailbreaks.json")


def load_wrapper_file(path: str | Path) -> list[Wrapper]:
    """A user's wrappers: a JSON list, or JSONL with one object per line.

    Raises:
        DataError: a missing file, malformed JSON (line named), or an invalid wrapper (entry named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"wrapper file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    return _parse(rows, str(path))


def pick_wrappers(wrappers: Sequence[Wrapper], names: Sequence[str] | None) -> list[Wrapper]:
    """The wrappers named (all when `names` is empty or None), in the order given.

    Raises:
        DataError: a name that is not among `wrappers` (the known names listed).
    """
    if not names:
        return list(wrappers)
    by_name = {w.name: w for w in wrappers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(f"unknown wrapper(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]
