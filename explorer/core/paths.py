"""Where build output lives, and how files there are written (atomically)."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CACHE_ENV = "EXPLORER_CACHE_DIR"
USER_ENV = "EXPLORER_USER_DIR"


def utc_now() -> str:
    """The time now, UTC, to the second, as build records and user data write it (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cache_dir() -> Path:
    """The cache root: `$EXPLORER_CACHE_DIR`, else `cache/` in the working directory."""
    return Path(os.environ.get(CACHE_ENV) or "cache").resolve()


def user_dir() -> Path:
    """Where users' own data lives (stars, notes, lists, labels): `$EXPLORER_USER_DIR`, else `user/` under
    the cache root. The build writes only its own stage directories and never touches it."""
    return Path(os.environ.get(USER_ENV) or cache_dir() / "user").resolve()


def models_dir() -> Path:
    """Directory holding model copies built by the tool (e.g. the dequantized default)."""
    return cache_dir() / "models"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one step
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories at `a` and `b` atomically; False where the system or filesystem cannot.

    Raises:
        FileNotFoundError: `b` does not exist (nothing to swap with).
    """
    libc = _libc()
    if libc is None:
        return False
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        raise FileNotFoundError(code, os.strerror(code), str(b))
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "renameat2") else None
    except OSError:
        return None


def _swap_in(new: Path, final: Path) -> Path | None:
    """Put the directory `new` at `final`; returns where the previous `final` now is (None if none).

    With renameat2's exchange there is no moment at which `final` is missing. Elsewhere the previous
    directory moves to a unique name first (never a path another writer shares), then `new` moves in.
    """
    while True:
        previous = None
        try:
            if _exchange(new, final):
                return new
            previous = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            final.replace(previous)
        except FileNotFoundError:  # there is no previous directory (yet)
            if previous is not None:
                previous.rmdir()
                previous = None
        try:
            new.rename(final)
            return previous
        except OSError as e:  # another writer moved its directory in meanwhile: replace that one
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)


def _remove_orphans(final: Path) -> None:
    """Delete the temporary siblings of `final` left by writers that died (`kill -9` skips `finally`):
    each carries its writer's pid, and a live writer's is left alone."""
    for orphan in final.parent.glob(f".{final.name}.*.partial"):
        pid = orphan.name.removeprefix(f".{final.name}.").split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(orphan, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def scratch_directory(parent: Path, name: str) -> Iterator[Path]:
    """A temporary directory in `parent` for work that does not fit in memory, removed on exit; one that
    a killed writer left behind is removed by the next writer of the same `name`."""
    parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(parent / name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".partial", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `final` only if the body succeeds.

    A killed or failed build leaves any previous `final` untouched and no half-written directory; a
    reader of `final` sees the old directory or the new one, whole, never a missing one. Concurrent
    writers each work in their own temporary directory; the last to finish wins.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        previous = _swap_in(tmp, final)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
