"""The user database: stars, notes, named lists and labels of latents, one SQLite file per workspace.

This module is the only writer of that file. Every operation opens its own short-lived connection and
writes in one short `BEGIN IMMEDIATE` transaction, so one `UserNotes` may be shared by every thread (every
browser session of the app) and several processes may use one file at once: SQLite's write-ahead log
lets readers read while one writer writes, and a writer waits up to `timeout` seconds for another.
Everything is keyed by (SAE hook, latent).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from explorer.core.paths import utc_now
from explorer.latents.notes_format import (
    LABEL_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    USER_DB_FILE,
    ImportSummary,
    Label,
    LabelSource,
    LatentList,
    LatentRef,
    ListFormat,
    Note,
    NotesError,
    best_label,
    check_hook,
    check_latent,
    check_list_name,
    check_note,
    format_lists,
    label_from_row,
    label_row,
    parse_lists,
    user_db_path,
)

__all__ = ["USER_DB_FILE", "Label", "LatentList", "Note", "NotesError", "UserNotes", "user_db_path"]

log = logging.getLogger(__name__)


def _latents(latents: int | Iterable[int]) -> list[int]:
    return [check_latent(i) for i in (latents if isinstance(latents, Iterable) else [latents])]


class UserNotes:
    """Stars, notes, lists and labels stored in one SQLite file; safe to share between threads.

    Args:
        path: the database file (created with its directory if missing; see `user_db_path`).
        timeout: seconds an operation waits for another writer before giving up with `NotesError`.

    Raises:
        NotesError: the file is not a notes database, is corrupt, locked, or from a newer version.
    """

    def __init__(self, path: Path | str, *, timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._timeout = timeout
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NotesError(f"cannot create the directory of the notes database {self._path}: {e}") from e
        self._open()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _error(self, e: sqlite3.Error) -> NotesError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return NotesError(
                f"the notes database {self._path} is locked: another program held it for more than "
                f"{self._timeout:g} s. Close other writers (an `explorer notes` command, a database "
                "browser) and try again."
            )
        if "malformed" in text or "not a database" in text or type(e) is sqlite3.DatabaseError:
            return NotesError(
                f"the notes database {self._path} is corrupt or not a notes database ({text}). It was "
                "left untouched: move it aside (e.g. rename it to notes.sqlite.bad) to start a new one, "
                "or restore a backup. The latent cache is not affected."
            )
        return NotesError(f"the notes database {self._path} cannot be used: {text}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A new connection (one per operation, so any thread may call), closed after use; SQLite's
        errors become `NotesError`s naming the file."""
        con: sqlite3.Connection | None = None
        try:
            con = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            con.execute("PRAGMA foreign_keys = ON")
            yield con
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            if con is not None:
                with suppress(sqlite3.Error):
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                con.close()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One short transaction; IMMEDIATE for writes: taking the write lock up front makes a writer wait
        for another (up to `timeout`) instead of failing when it upgrades a read lock."""
        with self._connection() as con:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            con.execute("COMMIT")

    def _open(self) -> None:
        """Check the file, switch it to write-ahead logging and bring its schema up to date."""
        with self._connection() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise NotesError(
                    f"the notes database {self._path} has schema version {version}, newer than this "
                    f"version of the tool reads ({SCHEMA_VERSION}); upgrade refusal-explorer"
                )
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    log.warning("%s: write-ahead logging unavailable (journal mode %s)", self._path, mode)
            if version < SCHEMA_VERSION:
                con.execute("BEGIN IMMEDIATE")
                version = con.execute("PRAGMA user_version").fetchone()[0]  # another session may have won
                for statement in (s for statements in MIGRATIONS[version:] for s in statements):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                con.execute("COMMIT")
            problems = [row[0] for row in con.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed: {'; '.join(problems[:3])}")

    def star(self, hook: str, latent: int) -> bool:
        """Star a latent; False if it was already starred."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction(write=True) as con:
            cursor = con.execute("INSERT OR IGNORE INTO stars VALUES (?, ?, ?)", (*key, utc_now()))
            return cursor.rowcount > 0

    def unstar(self, hook: str, latent: int) -> bool:
        """Remove a latent's star; False if it had none."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction(write=True) as con:
            return con.execute("DELETE FROM stars WHERE hook = ? AND latent = ?", key).rowcount > 0

    def is_starred(self, hook: str, latent: int) -> bool:
        """Whether a latent is starred."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction() as con:
            return (
                con.execute("SELECT 1 FROM stars WHERE hook = ? AND latent = ?", key).fetchone() is not None
            )

    def starred(self, hook: str) -> list[int]:
        """The starred latents of one SAE, in order."""
        with self._transaction() as con:
            rows = con.execute("SELECT latent FROM stars WHERE hook = ? ORDER BY latent", (check_hook(hook),))
            return [row[0] for row in rows]

    def set_note(self, hook: str, latent: int, text: str) -> Note | None:
        """Write a latent's note, replacing any previous one; blank text deletes it (returns None)."""
        key = (check_hook(hook), check_latent(latent))
        text = check_note(text)
        with self._transaction(write=True) as con:
            if not text.strip():
                con.execute("DELETE FROM notes WHERE hook = ? AND latent = ?", key)
                return None
            note = Note(*key, text, utc_now())
            con.execute("INSERT OR REPLACE INTO notes VALUES (?, ?, ?, ?)", (*key, text, note.updated_at))
            return note

    def note(self, hook: str, latent: int) -> Note | None:
        """A latent's note, or None."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction() as con:
            row = con.execute("SELECT * FROM notes WHERE hook = ? AND latent = ?", key).fetchone()
            return None if row is None else Note(*row)

    def notes(self, hook: str) -> dict[int, Note]:
        """Every note on one SAE's latents, by latent."""
        with self._transaction() as con:
            rows = con.execute("SELECT * FROM notes WHERE hook = ? ORDER BY latent", (check_hook(hook),))
            return {row[1]: Note(*row) for row in rows}

    def create_list(self, name: str, *, exist_ok: bool = False) -> LatentList:
        """Create an empty list (names are unique, ignoring case).

        Raises:
            NotesError: the name is invalid, or taken and `exist_ok` is False.
        """
        name = check_list_name(name)
        with self._transaction(write=True) as con:
            found = self._find_list(con, name, must_exist=False)
            if found is not None and not exist_ok:
                raise NotesError(f"a list named {name!r} already exists")
            if found is None:
                con.execute("INSERT INTO lists (name, created_at) VALUES (?, ?)", (name, utc_now()))
        return next(b for b in self.lists() if b.name.casefold() == name.casefold())

    def delete_list(self, name: str) -> None:
        """Delete a list (its latents keep their stars, notes and other lists)."""
        with self._transaction(write=True) as con:
            con.execute("DELETE FROM lists WHERE id = ?", (self._find_list(con, check_list_name(name)),))

    def rename_list(self, old: str, new: str) -> None:
        """Rename a list, keeping its latents."""
        new = check_list_name(new)
        with self._transaction(write=True) as con:
            list_id = self._find_list(con, check_list_name(old))
            other = self._find_list(con, new, must_exist=False)
            if other is not None and other != list_id:
                raise NotesError(f"a list named {new!r} already exists")
            con.execute("UPDATE lists SET name = ? WHERE id = ?", (new, list_id))

    def lists(self) -> list[LatentList]:
        """Every list with its size, by name."""
        with self._transaction() as con:
            rows = con.execute(
                "SELECT name, created_at, (SELECT count(*) FROM list_members WHERE list_id = lists.id) "
                "FROM lists ORDER BY name COLLATE NOCASE"
            )
            return [LatentList(*row) for row in rows]

    def add_to_list(self, name: str, hook: str, latents: int | Iterable[int]) -> int:
        """Append latents of one SAE to the end of a list; returns how many were not in it already."""
        hook, items = check_hook(hook), _latents(latents)
        with self._transaction(write=True) as con:
            return self._append(con, self._find_list(con, check_list_name(name)), [(hook, i) for i in items])

    def remove_from_list(self, name: str, hook: str, latents: int | Iterable[int]) -> int:
        """Remove latents of one SAE from a list; returns how many were in it."""
        hook, items = check_hook(hook), _latents(latents)
        with self._transaction(write=True) as con:
            list_id = self._find_list(con, check_list_name(name))
            return sum(
                con.execute(
                    "DELETE FROM list_members WHERE list_id = ? AND hook = ? AND latent = ?",
                    (list_id, hook, i),
                ).rowcount
                for i in items
            )

    def list_members(self, name: str) -> list[LatentRef]:
        """A list's latents as (hook, latent), in the order they were added."""
        with self._transaction() as con:
            list_id = self._find_list(con, check_list_name(name))
            rows = con.execute(
                "SELECT hook, latent FROM list_members WHERE list_id = ? ORDER BY position", (list_id,)
            )
            return [(hook, latent) for hook, latent in rows]

    def lists_of(self, hook: str, latent: int) -> list[str]:
        """The names of the lists a latent is in."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction() as con:
            rows = con.execute(
                "SELECT name FROM lists JOIN list_members ON list_id = id WHERE hook = ? AND latent = ? "
                "ORDER BY name COLLATE NOCASE",
                key,
            )
            return [row[0] for row in rows]

    def _find_list(self, con: sqlite3.Connection, name: str, *, must_exist: bool = True) -> int | None:
        row = con.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()
        if row is None and must_exist:
            names = [r[0] for r in con.execute("SELECT name FROM lists ORDER BY name COLLATE NOCASE")]
            raise NotesError(f"no list named {name!r}; the lists are {names or 'none yet'}")
        return None if row is None else row[0]

    @staticmethod
    def _append(con: sqlite3.Connection, list_id: int | None, refs: Iterable[LatentRef]) -> int:
        (last,) = con.execute(
            "SELECT max(position) FROM list_members WHERE list_id = ?", (list_id,)
        ).fetchone()
        added, position = 0, -1 if last is None else last
        for hook, latent in refs:
            cursor = con.execute(
                "INSERT OR IGNORE INTO list_members VALUES (?, ?, ?, ?)",
                (list_id, hook, latent, position + 1),
            )
            added += cursor.rowcount
            position += cursor.rowcount
        return added

    def export_lists(self, fmt: ListFormat, names: Iterable[str] | None = None) -> str:
        """Lists as JSON or CSV text (all of them, or those named) that `import_lists` reads back."""
        wanted = [b.name for b in self.lists()] if names is None else [check_list_name(n) for n in names]
        return format_lists({name: self.list_members(name) for name in wanted}, fmt)

    def import_lists(
        self, text: str, fmt: ListFormat, latent_counts: Mapping[str, int] | None = None
    ) -> ImportSummary:
        """Merge lists from JSON or CSV text: new lists are created, existing ones get the latents they
        lack appended. Every entry is checked first; on any error nothing is imported.

        Args:
            latent_counts: hook -> number of latents, to refuse hooks and latents this workspace lacks.

        Raises:
            NotesError: a malformed entry (naming its line or position and value), or a database error.
        """
        parsed = parse_lists(text, fmt, latent_counts)
        created, extended, added = [], [], 0
        with self._transaction(write=True) as con:
            for name, refs in parsed.items():
                list_id = self._find_list(con, name, must_exist=False)
                if list_id is None:
                    list_id = con.execute(
                        "INSERT INTO lists (name, created_at) VALUES (?, ?)", (name, utc_now())
                    ).lastrowid
                    created.append(name)
                n = self._append(con, list_id, refs)
                if n and name not in created:
                    extended.append(name)
                added += n
        return ImportSummary(tuple(created), tuple(extended), added)

    def set_label(self, hook: str, latent: int, text: str) -> Label:
        """Write the user's own label of a latent (it wins over every automatic label)."""
        label = Label(hook, check_latent(latent), text.strip(), "user")
        self.add_labels([label])
        return self.label_for(hook, latent) or label

    def add_labels(self, labels: Iterable[Label]) -> int:
        """Store labels in one transaction (an automatic labeller's whole run, say); a label with the same
        latent, source, provider, model and prompt version as a stored one replaces it."""
        now = utc_now()
        rows = [label_row(b, now) for b in labels]
        with self._transaction(write=True) as con:
            con.executemany(
                f"INSERT OR REPLACE INTO labels ({LABEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        return len(rows)

    def remove_label(self, hook: str, latent: int, source: LabelSource = "user") -> bool:
        """Delete a latent's labels from one source (the user's, by default); False if there were none."""
        key = (check_hook(hook), check_latent(latent), source)
        with self._transaction(write=True) as con:
            return (
                con.execute("DELETE FROM labels WHERE hook = ? AND latent = ? AND source = ?", key).rowcount
                > 0
            )

    def label_history(self, hook: str, latent: int) -> list[Label]:
        """Every stored label of a latent, the one `label_for` shows first, then newest first."""
        key = (check_hook(hook), check_latent(latent))
        with self._transaction() as con:
            rows = con.execute(
                f"SELECT {LABEL_COLUMNS} FROM labels WHERE hook = ? AND latent = ? ORDER BY created_at DESC",
                key,
            )
            found = [label_from_row(row) for row in rows]
        best = best_label(found)
        return [b for b in found if b is best] + [b for b in found if b is not best]

    def label_for(self, hook: str, latent: int) -> Label | None:
        """The label to show: the user's if any, else the best-scored (then newest) automatic one, else None
        (callers then fall back to the cache's heuristic description)."""
        history = self.label_history(hook, latent)
        return history[0] if history else None

    def labels(self, hook: str) -> dict[int, Label]:
        """The label `label_for` would show, for every labelled latent of one SAE."""
        with self._transaction() as con:
            rows = con.execute(f"SELECT {LABEL_COLUMNS} FROM labels WHERE hook = ?", (check_hook(hook),))
            by_latent: dict[int, list[Label]] = {}
            for row in rows:
                by_latent.setdefault(row[1], []).append(label_from_row(row))
        return {latent: best for latent, found in sorted(by_latent.items()) if (best := best_label(found))}

    def search(self, hook: str, text: str) -> list[int]:
        """Latents of one SAE whose note or shown label contains `text` (ignoring case), in order."""
        needle = text.strip().casefold()
        if not needle:
            return []
        notes = {i for i, note in self.notes(hook).items() if needle in note.text.casefold()}
        labels = {i for i, label in self.labels(hook).items() if needle in label.text.casefold()}
        return sorted(notes | labels)
