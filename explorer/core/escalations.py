"""Multi-turn escalations: conversations of user turns that start harmless and drift to a harmful request.

The built-in set (`prompts/multiturn.jsonl`, described in `prompts/MULTITURN.md`) was written for this
project, with a fixed train/val/test split like the prompt sets'. A user's file has the same shape: JSONL,
one object per line with `turns` (3 to `MAX_TURNS` user messages) and optional `id`, `category`, `split`.
Only user turns are stored: the assistant's turns are the model's own replies, generated at evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from explorer.core.prompts import SPLITS, DataError, Split, json_rows, stable_split

MIN_TURNS = 2
MAX_TURNS = 8
MAX_TURN_CHARS = 2000


@dataclass(frozen=True)
class Escalation:
    """One multi-turn attack.

    Attributes:
        id: unique within its source.
        turns: the user's messages in order; the last is the harmful request.
        category: harm category of the final request ("" when unknown).
        split: fixed train/val/test assignment.
        source: "builtin" or a file path.
    """

    id: str
    turns: tuple[str, ...]
    category: str
    split: Split
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _escalation(row: dict[str, Any], where: str, n: int, source: str) -> Escalation:
    turns = row.get("turns")
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        raise DataError(f"{where}:{n}: 'turns' must be a list of non-empty strings")
    if not MIN_TURNS <= len(turns) <= MAX_TURNS:
        raise DataError(f"{where}:{n}: {len(turns)} turns; expected {MIN_TURNS} to {MAX_TURNS}")
    if any(len(t) > MAX_TURN_CHARS for t in turns):
        raise DataError(f"{where}:{n}: a turn is longer than {MAX_TURN_CHARS} characters")
    rid = str(row.get("id") or f"{Path(where).stem}-{n}")
    split = row.get("split") or stable_split(rid)
    if split not in SPLITS:
        raise DataError(f"{where}:{n}: split {split!r} is not one of {SPLITS}")
    return Escalation(rid, tuple(t.strip() for t in turns), str(row.get("category") or ""), split, source)


def _parse(lines: Iterable[str], where: str, source: str) -> list[Escalation]:
    out = [_escalation(row, where, n, source) for n, row in json_rows(lines, where)]
    if not out:
        raise DataError(f"{where}: no escalations in file")
    ids = [e.id for e in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{where}: duplicate ids {duplicates}")
    return out


def builtin_escalations(split: Split | Sequence[Split] | None = None) -> list[Escalation]:
    """The built-in escalations, optionally of one split or several."""
    text = resources.files("explorer.prompts").joinpath("multiturn.jsonl").read_text(encoding="utf-8")
    records = _parse(text.splitlines(), "built-in multiturn.jsonl", "builtin")
    if split is None:
        return records
    wanted = {split} if isinstance(split, str) else set(split)
    return [r for r in records if r.split in wanted]


def load_escalation_file(path: str | Path) -> list[Escalation]:
    """A user's escalations (JSONL, one object with `turns` per line).

    Raises:
        DataError: a missing file, malformed line (file and line named), bad turns or duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"escalation file not found: {path}")
    with path.open(encoding="utf-8") as f:
        return _parse(f, str(path), str(path))
