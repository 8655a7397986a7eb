"""The user database: stars, notes, lists and labels round trip, are shared between sessions and threads,
and a corrupt or locked file is a clear error that leaves the file as it was."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from explorer.core.paths import CACHE_ENV, USER_ENV, user_dir
from explorer.latents.notes import SCHEMA_VERSION, Label, NotesError, UserNotes, user_db_path
from explorer.latents.notes_format import MAX_NAME_CHARS, MAX_NOTE_CHARS, list_format

HOOK, OTHER = "blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "workspace" / "notes.sqlite"


@pytest.fixture
def notes(db: Path) -> UserNotes:
    return UserNotes(db)


def test_the_database_lives_in_the_user_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert user_db_path("tiny") == tmp_path / "cache" / "user" / "tiny" / "notes.sqlite"
    monkeypatch.setenv(USER_ENV, str(tmp_path / "mine"))
    assert user_dir() == tmp_path / "mine"
    assert (
        user_db_path("google/gemma-2-2b-it")
        == tmp_path / "mine" / "google" / "gemma-2-2b-it" / "notes.sqlite"
    )
    for bad in ("", "../escape", "/etc"):
        with pytest.raises(NotesError, match="cannot name a workspace"):
            user_db_path(bad)


def test_stars_and_notes_round_trip(notes: UserNotes, db: Path) -> None:
    assert notes.star(HOOK, 3) and not notes.star(HOOK, 3)
    notes.star(HOOK, 1)
    notes.star(OTHER, 9)
    assert notes.starred(HOOK) == [1, 3] and notes.is_starred(OTHER, 9) and not notes.is_starred(HOOK, 9)
    assert notes.unstar(HOOK, 1) and not notes.unstar(HOOK, 1)
    assert notes.starred(HOOK) == [3]

    saved = notes.set_note(HOOK, 3, "Fires on «I'm sorry»\nsecond line")
    assert saved is not None and notes.note(HOOK, 3) == saved
    notes.set_note(HOOK, 3, "rewritten")
    assert {i: n.text for i, n in notes.notes(HOOK).items()} == {3: "rewritten"}
    assert notes.set_note(HOOK, 3, "  ") is None
    assert notes.note(HOOK, 3) is None and notes.notes(HOOK) == {}

    with sqlite3.connect(db) as con:  # what makes several browser sessions at once safe
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_lists_keep_their_order_and_names(notes: UserNotes) -> None:
    notes.create_list("refusal core")
    with pytest.raises(NotesError, match="already exists"):
        notes.create_list("Refusal Core")
    assert notes.create_list("Refusal core", exist_ok=True).name == "refusal core"
    assert notes.add_to_list("refusal core", HOOK, [7, 2, 7]) == 2
    assert notes.add_to_list("REFUSAL CORE", OTHER, 5) == 1
    assert notes.add_to_list("refusal core", HOOK, 2) == 0
    assert notes.list_members("refusal core") == [(HOOK, 7), (HOOK, 2), (OTHER, 5)]
    assert notes.remove_from_list("refusal core", HOOK, [7, 8]) == 1
    notes.add_to_list("refusal core", HOOK, 7)  # back at the end
    assert notes.list_members("refusal core") == [(HOOK, 2), (OTHER, 5), (HOOK, 7)]

    notes.create_list("harm detectors")
    notes.add_to_list("harm detectors", HOOK, 2)
    assert notes.lists_of(HOOK, 2) == ["harm detectors", "refusal core"]
    assert [(b.name, b.size) for b in notes.lists()] == [("harm detectors", 1), ("refusal core", 3)]
    notes.rename_list("harm detectors", "harm words")
    with pytest.raises(NotesError, match="already exists"):
        notes.rename_list("harm words", "refusal core")
    notes.delete_list("refusal core")
    assert [b.name for b in notes.lists()] == ["harm words"]
    assert notes.lists_of(HOOK, 7) == []
    with pytest.raises(NotesError, match=r"no list named 'refusal core'; the lists are \['harm words'\]"):
        notes.list_members("refusal core")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: n.star(HOOK, -1), "negative"),
        (lambda n: n.star(HOOK, True), "not a non-negative integer"),
        (lambda n: n.star(HOOK, 2.5), "not a non-negative integer"),
        (lambda n: n.star(" ", 1), "not a hook name"),
        (lambda n: n.create_list("  "), "empty"),
        (lambda n: n.create_list("x" * (MAX_NAME_CHARS + 1)), f"the limit is {MAX_NAME_CHARS}"),
        (lambda n: n.set_note(HOOK, 1, "x" * (MAX_NOTE_CHARS + 1)), "at most"),
        (lambda n: n.set_label(HOOK, 1, " "), "empty"),
    ],
)
def test_bad_input_is_refused_by_name(
    notes: UserNotes, call: Callable[[UserNotes], object], message: str
) -> None:
    with pytest.raises(NotesError, match=message):
        call(notes)
    assert notes.starred(HOOK) == [] and notes.lists() == []


def test_two_sessions_on_one_file_see_each_others_writes(db: Path) -> None:
    first, second = UserNotes(db), UserNotes(db)
    first.set_note(HOOK, 4, "written in the first session")
    first.star(HOOK, 4)
    seen = second.note(HOOK, 4)
    assert seen is not None and seen.text == "written in the first session"
    assert second.is_starred(HOOK, 4)
    second.create_list("shared")
    second.add_to_list("shared", HOOK, 4)
    assert first.list_members("shared") == [(HOOK, 4)]


def test_concurrent_writers_from_threads_lose_nothing(db: Path) -> None:
    shared = UserNotes(db)
    shared.create_list("all")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        own = UserNotes(db) if t % 2 else shared  # a private store and the shared one, both at once
        try:
            for i in range(15):
                latent = t * 100 + i
                own.star(HOOK, latent)
                own.set_note(HOOK, latent, f"thread {t} latent {latent}")
                own.add_to_list("all", HOOK, latent)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = sorted(t * 100 + i for t in range(6) for i in range(15))
    assert shared.starred(HOOK) == expected
    assert sorted(shared.notes(HOOK)) == expected
    members = shared.list_members("all")
    assert sorted(i for _, i in members) == expected
    for t in range(6):  # each thread's latents keep the order it added them in
        own = [i for _, i in members if i // 100 == t]
        assert own == sorted(own)


def test_user_label_wins_and_automatic_labels_keep_their_provenance(notes: UserNotes) -> None:
    assert notes.label_for(HOOK, 5) is None
    weak = Label(
        HOOK, 5, "harm words", "auto", "openai", "gpt-4o-mini", "v1", 0.41, "2025-01-01T00:00:00+00:00"
    )
    strong = Label(HOOK, 5, "weapons requests", "auto", "openai", "gpt-4o-mini", "v2", 0.83)
    unscored = Label(HOOK, 5, "newest but unscored", "auto", "local", "llama", "v3")
    assert notes.add_labels([weak, strong, unscored]) == 3
    shown = notes.label_for(HOOK, 5)
    assert shown is not None and shown.text == "weapons requests"
    assert (shown.provider, shown.model, shown.prompt_version, shown.score) == (
        "openai",
        "gpt-4o-mini",
        "v2",
        0.83,
    )
    assert shown.created_at[:4].isdigit()
    assert {b.text for b in notes.label_history(HOOK, 5)} == {
        "harm words",
        "weapons requests",
        "newest but unscored",
    }

    notes.add_labels([Label(HOOK, 5, "weapons (re-run)", "auto", "openai", "gpt-4o-mini", "v2", 0.9)])
    assert len(notes.label_history(HOOK, 5)) == 3  # the same labeller's re-run replaced its label
    user = notes.set_label(HOOK, 5, "  refusal trigger  ")
    assert user.source == "user" and user.text == "refusal trigger" and user.provider is None
    notes.add_labels([Label(HOOK, 5, "even better", "auto", "openai", "gpt-5", "v4", 0.99)])
    assert notes.label_for(HOOK, 5) == user  # a user label always wins
    assert notes.labels(HOOK)[5] == user
    assert notes.remove_label(HOOK, 5) and not notes.remove_label(HOOK, 5)
    assert notes.labels(HOOK)[5].text == "even better"
    with pytest.raises(NotesError, match="source"):
        Label(HOOK, 5, "x", "robot")  # pyright: ignore[reportArgumentType]
    with pytest.raises(NotesError, match="finite"):
        Label(HOOK, 5, "x", "auto", score=float("nan"))


def test_search_finds_notes_and_labels_ignoring_case(notes: UserNotes) -> None:
    notes.set_note(HOOK, 1, "Fires on REFUSAL openers")
    notes.set_label(HOOK, 2, "refusal direction reader")
    notes.add_labels([Label(HOOK, 3, "Über-refusal", "auto")])
    notes.set_note(OTHER, 4, "refusal too, other SAE")
    notes.set_note(HOOK, 5, "unrelated")
    assert notes.search(HOOK, "refusal") == [1, 2, 3]
    assert notes.search(HOOK, "über") == [3]
    assert notes.search(HOOK, "  ") == []
    assert notes.search(OTHER, "Refusal") == [4]


def test_lists_export_and_import_as_json_and_csv(notes: UserNotes, db: Path, tmp_path: Path) -> None:
    notes.create_list("refusal core")
    notes.add_to_list("refusal core", HOOK, [3, 1])
    notes.add_to_list("refusal core", OTHER, 2)
    notes.create_list("empty one")
    for fmt in ("json", "csv"):
        other = UserNotes(tmp_path / fmt / "notes.sqlite")
        other.create_list("refusal core")
        other.add_to_list("refusal core", HOOK, 9)
        summary = other.import_lists(notes.export_lists(fmt), list_format(f"lists.{fmt}"))
        assert summary.extended == ("refusal core",) and summary.added == 3
        assert other.list_members("refusal core") == [(HOOK, 9), (HOOK, 3), (HOOK, 1), (OTHER, 2)]
        assert summary.created == (("empty one",) if fmt == "json" else ())  # CSV has no empty lists
        assert other.import_lists(notes.export_lists(fmt), fmt).added == 0  # importing twice adds nothing
    assert json.loads(notes.export_lists("json", ["empty one"]))["lists"] == [
        {"name": "empty one", "latents": []}
    ]
    with pytest.raises(NotesError, match=r"\.json or \.csv"):
        list_format("lists.txt")


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("csv", f"list,hook,latent\nnew,{HOOK},1\nnew,{HOOK},abc\n", "line 3: latent 'abc' is not"),
        ("csv", f"list,hook,latent\nnew,{HOOK},1\nnew,{HOOK},-4\n", "line 3: latent -4 is negative"),
        ("csv", f"list,hook,latent\nnew,{HOOK},1\n,{HOOK},2\n", "line 3: list name '' is empty"),
        ("csv", f"list,hook,latent\nnew,{HOOK},1,extra\n", "line 2: expected 3 values"),
        ("csv", f"name,latent\nnew,{HOOK}\n", "line 1: expected the header"),
        ("csv", f"list,hook,latent\nnew,{HOOK},64\n", "latent 64 is out of range"),
        ("csv", "list,hook,latent\nnew,blocks.9.hook_resid_pre,1\n", "has no SAE here"),
        (
            "json",
            '{"version": 1, "lists": [\n{"name": "new", "latents": [}',
            "line 2 column 29: not valid JSON",
        ),
        (
            "json",
            '{"lists": [{"name": "new", "latents": [{"hook": "h", "latent": "x"}]}]}',
            "latents[0]: latent 'x'",
        ),
        ("json", '{"lists": [{"name": "new", "latents": [7]}]}', 'expected {"hook"'),
        ("json", '{"version": 2, "lists": []}', "version 2"),
        ("json", "[]", "expected a JSON object"),
    ],
)
def test_a_malformed_import_names_the_entry_and_imports_nothing(
    notes: UserNotes, fmt: str, text: str, message: str
) -> None:
    notes.create_list("new")
    notes.add_to_list("new", HOOK, 0)
    with pytest.raises(NotesError, match=re.escape(message)) as error:
        notes.import_lists(text, list_format("file", fmt), {HOOK: 64, OTHER: 64})
    assert "nothing was imported" in str(error.value)
    assert notes.list_members("new") == [(HOOK, 0)] and [b.name for b in notes.lists()] == ["new"]


def test_a_corrupt_file_is_a_clear_error_and_is_left_untouched(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"these are someone's precious notes, not SQLite\n" * 50)
    before = db.read_bytes()
    with pytest.raises(NotesError, match="corrupt or not a notes database") as error:
        UserNotes(db)
    assert str(db) in str(error.value) and "move it aside" in str(error.value)
    assert db.read_bytes() == before

    UserNotes(db.with_name("real.sqlite")).set_note(HOOK, 1, "x" * 5000)
    damaged = bytearray(db.with_name("real.sqlite").read_bytes())
    damaged[4096:] = b"\xff" * (len(damaged) - 4096)  # keep the header, wreck every page after it
    db.write_bytes(bytes(damaged))
    with pytest.raises(NotesError, match="corrupt"):
        UserNotes(db).notes(HOOK)
    assert db.read_bytes() == bytes(damaged)


def test_a_newer_schema_is_refused(db: Path) -> None:
    UserNotes(db)
    with sqlite3.connect(db) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NotesError, match="upgrade refusal-explorer"):
        UserNotes(db)


def test_a_locked_file_is_a_clear_error_and_works_once_released(db: Path) -> None:
    notes = UserNotes(db, timeout=0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    holder.execute("INSERT INTO stars VALUES ('x', 1, 'now')")
    try:
        with pytest.raises(NotesError, match="is locked") as error:
            notes.star(HOOK, 1)
        assert str(db) in str(error.value)
        assert notes.starred(HOOK) == []  # readers still read while a writer writes
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert notes.star(HOOK, 1) and notes.starred(HOOK) == [1]
