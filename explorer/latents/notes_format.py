"""The user database's format, without I/O: its path and SQL schema, its records and input checks, and the
JSON/CSV format lists are exchanged in."""

from __future__ import annotations

import csv
import io
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from explorer.core.paths import user_dir

ListFormat = Literal["json", "csv"]
LabelSource = Literal["user", "auto"]
LatentRef = tuple[str, int]
"""A latent of one SAE: (hook, latent)."""

MAX_NAME_CHARS = 100
"""Longest list name."""
MAX_NOTE_CHARS = 20_000
"""Longest note (a few pages of text)."""
MAX_LABEL_CHARS = 500
MAX_HOOK_CHARS = 200
EXCHANGE_VERSION = 1
"""Version of the JSON list exchange format (`{"version": 1, "lists": [...]}`)."""
CSV_HEADER = ("list", "hook", "latent")

USER_DB_FILE = "notes.sqlite"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1
        "CREATE TABLE stars (hook TEXT NOT NULL, latent INTEGER NOT NULL, created_at TEXT NOT NULL, "
        "PRIMARY KEY (hook, latent))",
        "CREATE TABLE notes (hook TEXT NOT NULL, latent INTEGER NOT NULL, text TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, PRIMARY KEY (hook, latent))",
        "CREATE TABLE lists (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, "
        "created_at TEXT NOT NULL)",
        "CREATE TABLE list_members (list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE, "
        "hook TEXT NOT NULL, latent INTEGER NOT NULL, position INTEGER NOT NULL, "
        "PRIMARY KEY (list_id, hook, latent))",
        # One row per (latent, source, provider, model, prompt version): the user's label is replaced
        # when rewritten, and an automatic labeller re-run with the same settings replaces its own.
        "CREATE TABLE labels (hook TEXT NOT NULL, latent INTEGER NOT NULL, "
        "source TEXT NOT NULL CHECK (source IN ('user', 'auto')), provider TEXT NOT NULL DEFAULT '', "
        "model TEXT NOT NULL DEFAULT '', prompt_version TEXT NOT NULL DEFAULT '', text TEXT NOT NULL, "
        "score REAL, created_at TEXT NOT NULL, "
        "PRIMARY KEY (hook, latent, source, provider, model, prompt_version))",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema this code writes (SQLite's `user_version`); older files are migrated on open."""

LABEL_COLUMNS = "hook, latent, text, source, provider, model, prompt_version, score, created_at"


def user_db_path(model_name: str) -> Path:
    """The user database of a workspace: `$EXPLORER_USER_DIR/<model name>/notes.sqlite`.

    Raises:
        NotesError: the model name is empty, absolute or climbs out of the user directory.
    """
    parts = Path(model_name).parts
    if not model_name.strip() or Path(model_name).is_absolute() or ".." in parts:
        raise NotesError(f"model name {model_name!r} cannot name a workspace directory")
    return user_dir() / model_name / USER_DB_FILE


class NotesError(Exception):
    """The user database cannot be read or written (corrupt, locked, newer schema), or an input is invalid.

    Messages name the file or the value and say what to do; the database file is never deleted or
    overwritten to recover from one.
    """


@dataclass(frozen=True)
class Note:
    """A user's note on one latent (one note per latent; `updated_at` is ISO 8601 UTC)."""

    hook: str
    latent: int
    text: str
    updated_at: str


@dataclass(frozen=True)
class LatentList:
    """A named, ordered list of latents (of any SAEs); `size` is its number of latents."""

    name: str
    created_at: str
    size: int


@dataclass(frozen=True)
class Label:
    """A short description of what a latent does, written by the user or by an automatic labeller.

    Attributes:
        source: "user" (always wins) or "auto".
        provider: who made an automatic label (e.g. "openai", "local"); None for user labels.
        model: the labelling model; None for user labels.
        prompt_version: the labelling prompt's version, so labels from different prompts can be compared.
        score: the labeller's quality score (e.g. a detection or simulation score), None if unscored.
        created_at: ISO 8601 UTC; "" lets the store fill in the time it saves the label.
    """

    hook: str
    latent: int
    text: str
    source: LabelSource = "user"
    provider: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    score: float | None = None
    created_at: str = ""

    def __post_init__(self) -> None:
        check_hook(self.hook)
        check_latent(self.latent)
        if not self.text.strip():
            raise NotesError(f"the label of latent {self.latent} of {self.hook} is empty")
        if len(self.text) > MAX_LABEL_CHARS:
            raise NotesError(f"a label has at most {MAX_LABEL_CHARS} characters; got {len(self.text)}")
        if self.source not in get_args(LabelSource):
            raise NotesError(f"label source {self.source!r} is not one of {get_args(LabelSource)}")
        if self.score is not None and not (isinstance(self.score, int | float) and math.isfinite(self.score)):
            raise NotesError(f"label score {self.score!r} is not a finite number")


@dataclass(frozen=True)
class ImportSummary:
    """What `UserNotes.import_lists` changed: lists it created, lists it extended, latents it added."""

    created: tuple[str, ...]
    extended: tuple[str, ...]
    added: int


def best_label(labels: Iterable[Label]) -> Label | None:
    """The label to show: the user's, else the best-scored automatic one (unscored last), else the newest."""
    return max(
        labels,
        key=lambda b: (b.source == "user", b.score is not None, b.score or 0.0, b.created_at),
        default=None,
    )


def label_row(label: Label, now: str) -> tuple[Any, ...]:
    """A label as a row of the labels table (`LABEL_COLUMNS`); `now` fills an empty `created_at`."""
    b = label
    return (
        b.hook,
        b.latent,
        b.text,
        b.source,
        b.provider or "",
        b.model or "",
        b.prompt_version or "",
        b.score,
        b.created_at or now,
    )


def label_from_row(row: Sequence[Any]) -> Label:
    """The label stored in a row of the labels table (`LABEL_COLUMNS`)."""
    hook, latent, text, source, provider, model, prompt_version, score, created_at = row
    return Label(
        hook, latent, text, source, provider or None, model or None, prompt_version or None, score, created_at
    )


def check_latent(latent: Any) -> int:
    """`latent` as an int; NotesError unless it is a non-negative integer (bools are refused)."""
    try:
        if isinstance(latent, bool):
            raise TypeError
        value = operator.index(latent)
    except TypeError:
        raise NotesError(f"latent {latent!r} is not a non-negative integer") from None
    if value < 0:
        raise NotesError(f"latent {value} is negative; latents are numbered from 0")
    return value


def check_hook(hook: Any) -> str:
    """`hook` unchanged; NotesError unless it is a non-empty hook name such as `blocks.23.hook_resid_pre`."""
    if not isinstance(hook, str) or not hook.strip() or hook != hook.strip() or len(hook) > MAX_HOOK_CHARS:
        raise NotesError(f"hook {hook!r} is not a hook name like 'blocks.23.hook_resid_pre'")
    return hook


def check_list_name(name: Any) -> str:
    """`name` without surrounding spaces; NotesError if it is empty or longer than `MAX_NAME_CHARS`."""
    if not isinstance(name, str) or not name.strip():
        raise NotesError(f"list name {name!r} is empty; give the list a name")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise NotesError(
            f"list name {name[:40]!r}… has {len(name)} characters; the limit is {MAX_NAME_CHARS}"
        )
    return name


def check_note(text: Any) -> str:
    """`text` unchanged; NotesError unless it is a string of at most `MAX_NOTE_CHARS` characters."""
    if not isinstance(text, str):
        raise NotesError(f"a note must be text, not {type(text).__name__}")
    if len(text) > MAX_NOTE_CHARS:
        raise NotesError(f"a note has at most {MAX_NOTE_CHARS} characters; this one has {len(text)}")
    return text


def list_format(path: Path | str, fmt: str | None = None) -> ListFormat:
    """The exchange format to use for `path`: `fmt` if given, else the file's suffix (.json or .csv)."""
    chosen = (fmt or Path(path).suffix.lstrip(".")).lower()
    if chosen not in get_args(ListFormat):
        raise NotesError(f"cannot tell the list format of {path}: use a .json or .csv file, or --format")
    return cast(ListFormat, chosen)


def format_lists(lists: Mapping[str, Sequence[LatentRef]], fmt: ListFormat) -> str:
    """Lists (name -> ordered latents) as JSON or CSV text that `parse_lists` reads back.

    CSV has one row per latent (`list,hook,latent`), so it cannot carry an empty list; JSON can.
    """
    if fmt == "json":
        data = {
            "version": EXCHANGE_VERSION,
            "lists": [
                {"name": name, "latents": [{"hook": h, "latent": i} for h, i in members]}
                for name, members in lists.items()
            ],
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows((name, h, i) for name, members in lists.items() for h, i in members)
        return out.getvalue()
    raise NotesError(f"unknown list format {fmt!r}; expected one of {get_args(ListFormat)}")


def parse_lists(
    text: str, fmt: ListFormat, latent_counts: Mapping[str, int] | None = None
) -> dict[str, list[LatentRef]]:
    """Read lists written by `format_lists` (or by hand), checking every entry.

    Args:
        text: the file's text.
        fmt: "json" or "csv".
        latent_counts: hook -> number of latents of each SAE the lists may name; None accepts any hook
            and any non-negative latent.

    Returns:
        name -> latents in file order, each once.

    Raises:
        NotesError: the first malformed entry, naming its line (CSV) or position (JSON) and its value.
    """
    if fmt == "json":
        entries = _json_entries(text)
    elif fmt == "csv":
        entries = _csv_entries(text)
    else:
        raise NotesError(f"unknown list format {fmt!r}; expected one of {get_args(ListFormat)}")
    lists: dict[str, list[LatentRef]] = {}
    for where, name, hook, latent in entries:
        try:
            name = check_list_name(name)
            ref = None if latent is _NO_LATENT else (check_hook(hook), check_latent(_integer(latent)))
            if ref is not None and latent_counts is not None:
                _check_range(ref, latent_counts)
        except NotesError as e:
            raise NotesError(f"{where}: {e}; nothing was imported") from None
        members = next((v for k, v in lists.items() if k.casefold() == name.casefold()), None)
        if members is None:
            members = lists[name] = []
        if ref is not None and ref not in members:
            members.append(ref)
    return lists


_NO_LATENT = object()
"""Marks a JSON list entry without latents (an empty list is valid JSON, not a row)."""


def _json_entries(text: str) -> list[tuple[str, Any, Any, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotesError(
            f"line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); nothing was imported"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("lists"), list):
        raise NotesError('expected a JSON object {"version": 1, "lists": [...]}; nothing was imported')
    if data.get("version", EXCHANGE_VERSION) != EXCHANGE_VERSION:
        raise NotesError(
            f"list file version {data.get('version')!r} is not {EXCHANGE_VERSION}; nothing was imported"
        )
    entries: list[tuple[str, Any, Any, Any]] = []
    for n, item in enumerate(data["lists"]):
        where = f"lists[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("latents", []), list):
            raise NotesError(f'{where}: expected {{"name": ..., "latents": [...]}}; nothing was imported')
        name = item.get("name")
        members = item.get("latents", [])
        if not members:
            entries.append((where, name, "", _NO_LATENT))
        for m, member in enumerate(members):
            at = f"{where} ({name!r}), latents[{m}]"
            if not isinstance(member, dict):
                raise NotesError(
                    f'{at}: expected {{"hook": ..., "latent": ...}}, got {member!r}; nothing was imported'
                )
            entries.append((at, name, member.get("hook"), member.get("latent")))
    return entries


def _csv_entries(text: str) -> list[tuple[str, Any, Any, Any]]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != CSV_HEADER:
        raise NotesError(
            f"line 1: expected the header {','.join(CSV_HEADER)}, got {header}; nothing was imported"
        )
    entries: list[tuple[str, Any, Any, Any]] = []
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"line {reader.line_num}"
        if len(row) != len(CSV_HEADER):
            raise NotesError(
                f"{where}: expected 3 values (list,hook,latent), got {row}; nothing was imported"
            )
        entries.append((where, row[0], row[1].strip(), row[2].strip()))
    return entries


def _integer(value: Any) -> Any:
    """A CSV or JSON latent as an int where it spells one; otherwise unchanged (for the error message)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _check_range(ref: LatentRef, latent_counts: Mapping[str, int]) -> None:
    hook, latent = ref
    if hook not in latent_counts:
        raise NotesError(f"hook {hook!r} has no SAE here; known hooks are {sorted(latent_counts)}")
    if latent >= latent_counts[hook]:
        raise NotesError(
            f"latent {latent} is out of range: the SAE at {hook} has latents 0..{latent_counts[hook] - 1}"
        )
