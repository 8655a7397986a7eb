"""A build's live status file and its lock: what a watcher reads while stages run, and one build at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.build import BuildRunningError, Stage, build_lock, run_stages
from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV


def _status(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_status_file_follows_every_stage(tmp_path: Path) -> None:
    status = tmp_path / "build_status.json"
    seen: list[dict] = []
    made: set[str] = set()

    def make(name: str):
        def run(force: bool) -> None:
            seen.append(_status(status))  # what a watcher sees while the stage runs
            made.add(name)

        return run

    stages = [
        Stage("one", "first", lambda: True, make("one")),
        Stage("two", "second", lambda: "two" in made, make("two")),
        Stage("three", "third", lambda: False, make("three")),
    ]
    report = run_stages(stages, None, False, status=status)
    assert [name for name, stage in report["stages"].items() if stage["ran"]] == ["two", "three"]
    assert seen[0]["stages"]["one"]["state"] == "skipped" and seen[0]["stages"]["two"]["state"] == "running"
    assert seen[0]["stages"]["three"]["state"] == "pending" and seen[0]["state"] == "running"
    final = _status(status)
    assert final["state"] == "done" and final["pid"] == os.getpid()
    assert [s["state"] for s in final["stages"].values()] == ["skipped", "done", "done"]
    assert final["stages"]["two"]["title"] == "second" and final["stages"]["two"]["seconds"] >= 0
    only = run_stages(stages, ["three"], False, status=status)
    assert list(only["stages"]) == ["three"]
    assert _status(status)["stages"]["one"]["state"] == "not requested"


def test_a_failed_stage_is_recorded_and_raised(tmp_path: Path) -> None:
    status = tmp_path / "build_status.json"

    def fail(force: bool) -> None:
        raise RuntimeError("out of disk")

    stages = [
        Stage("ok", "fine", lambda: False, lambda force: None),
        Stage("bad", "breaks", lambda: False, fail),
    ]
    with pytest.raises(RuntimeError, match="out of disk"):
        run_stages(stages, None, False, status=status)
    final = _status(status)
    assert final["state"] == "failed" and final["error"] == "RuntimeError: out of disk"
    assert final["stages"]["ok"]["state"] == "done"
    assert final["stages"]["bad"] == final["stages"]["bad"] | {
        "state": "failed",
        "error": "RuntimeError: out of disk",
    }


def test_one_build_at_a_time_and_a_killed_build_frees_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "build.lock"
    with build_lock(lock):
        with (
            pytest.raises(BuildRunningError, match=rf"already running \(pid {os.getpid()}"),
            build_lock(lock),
        ):
            pass
        monkeypatch.setenv(CACHE_ENV, str(tmp_path))
        assert main(["build", "--only", "model"]) == 2  # `explorer build` (make demo) while one runs
        assert "a build is already running" in capsys.readouterr().err
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from explorer.build import build_lock\n"
            "with build_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildRunningError, match=f"pid {holder.pid}"), build_lock(lock):
            pass
        holder.send_signal(signal.SIGKILL)  # kill -9: the operating system releases the lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with build_lock(lock):
        assert lock.read_text().strip() == str(os.getpid())
