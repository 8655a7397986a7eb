"""Watching the offline default's build, and starting it in the background: whether a build is alive (its
lock, not only its status file, so a killed build reads as stopped), each stage's state, progress and time
left, the log's tail, and the one-line stage messages a background build writes to the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from explorer.build import (
    BUILD_LOCK,
    BUILD_STATUS,
    Stage,
    acquire_lock,
    default_stages,
    lock_held,
)
from explorer.core.paths import CACHE_ENV, cache_dir
from explorer.manifest import DEFAULT_WORKSPACE, MANIFEST_FILE, WORKSPACES_DIR

LOG_FILE = "build.log"
"""A background build's output (progress bars included), under the cache root."""
PREVIOUS_LOG = "build.previous.log"
"""The build before it's log, kept for a failure a later run resumed from."""
BuildState = Literal["none", "running", "done", "failed", "stopped"]


@dataclass(frozen=True)
class StageView:
    """One stage as a watcher shows it. Times are seconds; None where unknown.

    Attributes:
        state: pending, running, skipped, done, failed, not requested, or stopped (it was running when
            the build died).
        complete: its output is there (done or skipped, or built by an earlier build).
        fraction: how far it is (0..1), from its progress and its expected time.
        step: the running stage's current progress bar, e.g. "activations (train) 40/120".
    """

    name: str
    title: str
    state: str
    complete: bool
    expected: float | None = None
    seconds: float | None = None
    elapsed: float | None = None
    remaining: float | None = None
    fraction: float | None = None
    step: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BuildView:
    """The offline default's build as a watcher shows it (`build_state`).

    Attributes:
        state: none (never started, nothing built), running, done, failed, or stopped (killed: its
            status file says running but no process holds the lock).
    """

    state: BuildState
    stages: tuple[StageView, ...]
    pid: int | None = None
    started: str | None = None
    elapsed: float | None = None
    remaining: float | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def complete(self) -> bool:
        """Every stage's output is there and no build is changing it."""
        return not self.running and all(s.complete for s in self.stages)

    @property
    def overran(self) -> bool:
        """The running stage took longer than expected and has no progress bar to estimate the rest by:
        `remaining` counts only the stages after it."""
        return any(s.state == "running" and s.remaining is None for s in self.stages)

    @property
    def fraction(self) -> float:
        if self.complete:
            return 1.0
        if self.elapsed is None or self.remaining is None or self.elapsed + self.remaining <= 0:
            return 0.0
        return min(self.elapsed / (self.elapsed + self.remaining), 0.99)

    @property
    def landed(self) -> tuple[str, ...]:
        """The stages whose output is there, in build order."""
        return tuple(s.name for s in self.stages if s.complete)

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)

    def remaining_until(self, name: str) -> float | None:
        """Seconds until stage `name` is expected to be done (the stages before it included); None when
        no build runs or an estimate is missing."""
        if not self.running:
            return None
        names = [s.name for s in self.stages]
        left = [s.remaining for s in self.stages[: names.index(name) + 1] if not s.complete]
        return None if None in left else sum(x or 0.0 for x in left)


def build_state(cache_root: Path | None = None, *, now: float | None = None) -> BuildView:
    """Read the build's status file under `cache_root` (default: the cache root) and check its lock.

    A status file that says running while nobody holds the lock is a killed build: shown as stopped.
    """
    root = cache_root or cache_dir()
    now = time.time() if now is None else now
    status = _read_json(root / BUILD_STATUS)
    alive = lock_held(root / BUILD_LOCK)
    if alive and status is not None and str(status.get("pid")) != _holder(root / BUILD_LOCK):
        status = None  # a new build that has not written its status yet: the file is the last one's
    built = (root / WORKSPACES_DIR / DEFAULT_WORKSPACE / MANIFEST_FILE).is_file()
    records: dict[str, Any] = (status or {}).get("stages") or {}
    if status is None:
        state: BuildState = "running" if alive else "done" if built else "none"
    else:
        state = status.get("state", "running")
        state = "running" if alive else "stopped" if state == "running" else state
    stages = tuple(_stage_view(s, records.get(s.name, {}), alive, built, now) for s in default_stages())
    started = (status or {}).get("started")
    began = _epoch(started)
    end = now if alive else _epoch((status or {}).get("finished") or (status or {}).get("updated"))
    running = state == "running"
    return BuildView(
        state,
        stages,
        pid=(status or {}).get("pid")
        or (int(holder) if alive and (holder := _holder(root / BUILD_LOCK)).isdigit() else None),
        started=started,
        elapsed=None if began is None or end is None else max(end - began, 0.0),
        remaining=sum(s.remaining or 0.0 for s in stages) if running else None,
        error=(status or {}).get("error"),
    )


def _stage_view(stage: Stage, record: dict[str, Any], alive: bool, built: bool, now: float) -> StageView:
    state = record.get("state", "done" if built and not record and not alive else "pending")
    if state == "running" and not alive:
        state = "stopped"
    expected = record.get("expected", stage.expected_seconds)
    complete = state in ("done", "skipped") or (state == "not requested" and built)
    view: dict[str, Any] = {
        "expected": expected,
        "seconds": record.get("seconds"),
        "error": record.get("error"),
    }
    if state in ("done", "skipped"):
        view |= {"remaining": 0.0, "fraction": 1.0}
    elif state == "pending":
        view |= {"remaining": expected, "fraction": 0.0}
    elif state == "running":
        began = _epoch(record.get("at"))
        elapsed = None if began is None else max(now - began, 0.0)
        step = record.get("step") or {}
        step_left = _step_remaining(step)
        expected_left = None if expected is None or elapsed is None else expected - elapsed
        # The longer of what its expected time and its progress bar say; past its expected time with no
        # bar to go by, unknown (the watcher says it overran).
        left = [x for x in (expected_left, step_left) if x is not None and x > 0]
        remaining = max(left) if left else (0.0 if step_left == 0 else None)
        fraction = 0.99 if remaining is None and expected_left is not None else None
        if elapsed is not None and remaining is not None:
            fraction = min(elapsed / (elapsed + remaining), 0.99) if elapsed + remaining > 0 else 0.0
        view |= {"elapsed": elapsed, "remaining": remaining, "fraction": fraction, "step": _step_text(step)}
    return StageView(stage.name, record.get("title", stage.description), state, complete, **view)


def _step_remaining(step: dict[str, Any]) -> float | None:
    n, total, seconds = step.get("n"), step.get("total"), step.get("seconds")
    if not n or not total or seconds is None:
        return None
    return max(seconds * (total - n) / n, 0.0)


def _step_text(step: dict[str, Any]) -> str | None:
    if not step:
        return None
    count = f"{step.get('n', 0):,.0f}" + (f"/{step['total']:,.0f}" if step.get("total") else "")
    return f"{step.get('description') or 'working'} {count}"


def _holder(lock: Path) -> str:
    try:
        return lock.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _epoch(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp)).timestamp() if stamp else None
    except ValueError:
        return None


def duration_text(seconds: float | None) -> str:
    """`28 s`, `4 min 10 s`, `1 h 05 min`; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def log_tail(path: Path, lines: int = 40) -> list[str]:
    """The last `lines` lines of a build log, each progress bar's carriage-return redraws collapsed to
    what the terminal would show last (read from the end, so a long log costs nothing)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 256 * 1024, 0))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    shown = []
    for line in text.split("\n"):
        redraws = [part for part in line.split("\r") if part.strip()]
        if redraws:
            shown.append(redraws[-1].rstrip())
    return shown[-lines:]


@dataclass(frozen=True)
class Launch:
    """What `start_background` did: started a build (its pid), or found one running (that one's pid)."""

    started: bool
    pid: int | None
    message: str


def start_background(
    args: Sequence[str] = (), *, terminal: int | None = None, cache_root: Path | None = None
) -> Launch:
    """Start `explorer build ARGS` (the offline default) as a detached process and return at once.

    The build lock is taken here and handed to the child, so two launches at once (two `make demo`, a
    page's button) never start two builds. The child's output goes to `build.log` under the cache root
    (the previous one is kept as `build.previous.log`).

    Args:
        terminal: a descriptor (e.g. 2, this process's stderr) on which the build writes one line per
            stage start, end or failure; None for none.
    """
    root = (cache_root or cache_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / BUILD_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    echo = None
    try:
        if not acquire_lock(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            pid = int(holder) if holder.isdigit() else None
            return Launch(
                False, pid, f"a build is already running (pid {holder or '?'}); not starting another"
            )
        log = root / LOG_FILE
        if log.exists():
            log.replace(root / PREVIOUS_LOG)
        command = [sys.executable, "-m", "explorer.cli.main", "-v", "build", *args, "--lock-fd", str(fd)]
        passed = [fd]
        if terminal is not None:
            echo = os.dup(terminal)  # its own number: the child's 1 and 2 are the log
            command += ["--terminal-fd", str(echo)]
            passed.append(echo)
        environment = {**os.environ, CACHE_ENV: str(root), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=passed,
                start_new_session=True,  # not stopped by the terminal's Ctrl-C; `kill PID` stops it
                env=environment,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{child.pid}\n".encode(), 0)
        threading.Thread(target=child.wait, daemon=True).start()  # reaped when it ends
        return Launch(True, child.pid, f"build started in the background (pid {child.pid}); log: {log}")
    finally:
        os.close(fd)  # the child's copy keeps the lock
        if echo is not None:
            os.close(echo)


def stderr_fd() -> int | None:
    """This process's stderr descriptor (the terminal of `make demo` or `make app`), if it has one."""
    try:
        return sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):  # replaced by an in-memory stream (tests, notebooks)
        return None


class TerminalEcho(logging.Handler):
    """A background build's stage starts, ends and failures, one line each, on the terminal that started
    it; a closed terminal ends the lines, never the build."""

    def __init__(self, fd: int):
        super().__init__(logging.INFO)
        self.fd: int | None = fd
        self.setFormatter(logging.Formatter("[build] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.say(self.format(record))

    def say(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line.rstrip("\n") + "\n").encode())
        except OSError:  # the terminal closed, or a pipe's reader went away
            self.fd = None


@contextmanager
def echo_stages(fd: int | None) -> Iterator[Callable[[str], None]]:
    """While inside, the build's stage messages also go to `fd`; yields a function that writes a line
    there (`[build] ...`). With `fd` None, nothing is written."""
    if fd is None:
        yield lambda line: None
        return
    handler = TerminalEcho(fd)
    logger = logging.getLogger("explorer.build")  # run_stages' logger
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lambda line: handler.say(f"[build] {line}")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        os.close(fd)
