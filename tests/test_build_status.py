"""A build's live status file and its lock: what a watcher reads while stages run (progress, time left, a
killed build as stopped), one build at a time, and the background build `make demo` starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.build import (
    BUILD_LOCK,
    BUILD_STATUS,
    BuildRunningError,
    BuildStatus,
    Stage,
    build_lock,
    default_stages,
    lock_held,
    run_stages,
)
from explorer.build_watch import LOG_FILE, build_state, duration_text, log_tail, start_background
from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV
from explorer.core.progress import REPORT_INTERVAL, progress_listener, tqdm


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


def test_progress_bars_feed_the_running_stage_in_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "build_status.json"
    seen: list[dict] = []

    def train(force: bool) -> None:
        with tqdm(total=10, desc="training", unit="step") as bar:
            seen.append(_status(status)["stages"]["train"]["step"])  # a new bar reports at once
            time.sleep(REPORT_INTERVAL + 0.05)
            bar.update(4)
            seen.append(_status(status)["stages"]["train"]["step"])
        for _ in tqdm(range(3), desc="hidden", disable=True):  # off the terminal, still in the file
            time.sleep(REPORT_INTERVAL / 2 + 0.05)
        seen.append(_status(status)["stages"]["train"]["step"])

    stages = [Stage("train", "trains", lambda: False, train, expected_seconds=600)]
    run_stages(stages, None, False, status=status)
    assert seen[0] == seen[0] | {"description": "training", "n": 0, "total": 10}
    assert seen[1] == seen[1] | {"description": "training", "n": 4, "total": 10}
    assert seen[1]["seconds"] >= REPORT_INTERVAL
    assert seen[2]["description"] == "hidden" and seen[2]["n"] >= 1 and seen[2]["total"] == 3
    first = _status(status)["stages"]["train"]
    assert "step" not in first and first["expected"] == 600  # the stage's default before any run
    run_stages(stages, None, False, status=status)
    assert _status(status)["stages"]["train"]["expected"] == first["seconds"]  # then the last run's time


def test_reports_are_throttled_to_one_a_second() -> None:
    calls: list[tuple[str, float, float | None]] = []
    start = time.monotonic()
    with progress_listener(lambda d, n, total, s: calls.append((d, n, total))):
        for _ in tqdm(range(20_000), desc="fast", mininterval=0):
            pass
    seconds = time.monotonic() - start
    # The bar's start, then at most one a second (a loaded machine may take several seconds), never one
    # per update.
    assert calls[0] == ("fast", 0, 20_000) and len(calls) <= 2 + seconds
    seen = len(calls)
    for _ in tqdm(range(3), desc="after"):  # no listener: a plain bar
        pass
    assert len(calls) == seen


_FAKE_BUILD = """
import sys, time
from pathlib import Path
from explorer.build import BUILD_LOCK, BUILD_STATUS, Stage, build_lock, default_stages, run_stages

root = Path(sys.argv[1])
stages = [Stage(s.name, s.description, lambda: False, lambda f: time.sleep(0.1)) for s in default_stages()]
stages[2] = Stage("refusal", "waits", lambda: False, lambda force: time.sleep(120))
with build_lock(root / BUILD_LOCK):
    run_stages(stages, None, False, status=root / BUILD_STATUS)
"""


def test_a_killed_build_reads_as_stopped_and_a_live_one_as_running(tmp_path: Path) -> None:
    build = subprocess.Popen([sys.executable, "-c", _FAKE_BUILD, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while build_state(tmp_path).stage("refusal").state != "running":
            assert time.monotonic() < deadline and build.poll() is None
            time.sleep(0.1)
        view = build_state(tmp_path)
        assert view.state == "running" and view.running and view.pid == build.pid
        assert view.stage("organism").complete and not view.stage("refusal").complete
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
    finally:
        build.kill()
    assert _status(tmp_path / BUILD_STATUS)["state"] == "running"  # the file cannot know
    view = build_state(tmp_path)
    assert view.state == "stopped" and not view.running and not view.complete
    assert [s.state for s in view.stages] == ["done", "done", "stopped", "pending", "pending"]
    assert view.remaining is None and view.elapsed is not None


def test_a_background_build_starts_once_and_tells_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` twice: the first starts a detached build (here one that fails at once, the organism
    not being built), the second only says so; the terminal gets a line per stage and the failure."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    read, write = os.pipe()
    first = start_background(["--only", "cache"], terminal=write)
    os.close(write)
    assert first.started and first.pid
    second = start_background(["--only", "cache"], terminal=None)
    assert not second.started and second.pid == first.pid and "already running" in second.message
    assert main(["build", "--background", "--only", "cache"]) == 0  # `make demo` goes on to serve the app
    assert f"a build is already running (pid {first.pid})" in capsys.readouterr().err
    with os.fdopen(read, encoding="utf-8") as terminal:
        lines = terminal.read().splitlines()  # until the build exits
    assert lines[0].startswith("[build] stage cache started: every latent's examples")
    assert lines[1].startswith(
        "[build] stage cache failed: ModelError: smollm2-135m-instruct-safety is not built"
    )
    assert "run `make demo` (or `explorer build`) again to resume" in lines[2] and len(lines) == 3
    deadline = time.monotonic() + 30
    while lock_held(tmp_path / BUILD_LOCK):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    view = build_state(tmp_path)
    assert view.state == "failed" and view.stage("cache").state == "failed"
    assert "not built yet" in (view.stage("cache").error or "")
    assert view.stage("model").state == "not requested" and not view.complete
    # The process writes its error line after it frees the lock: on a loaded machine, a moment later.
    while not any("explorer build: error" in line for line in log_tail(tmp_path / LOG_FILE)):
        assert time.monotonic() < deadline, log_tail(tmp_path / LOG_FILE)
        time.sleep(0.1)


def test_the_log_tail_shows_progress_bars_as_last_drawn(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    log.write_text("INFO start\nbar:  10%|#  | 1/10\rbar:  50%|#####  | 5/10\r\nnext\n" + "x\n" * 50)
    assert log_tail(log, 3) == ["x", "x", "x"]
    assert log_tail(log, 53)[:3] == ["INFO start", "bar:  50%|#####  | 5/10", "next"]
    assert log_tail(tmp_path / "missing.log") == []
    assert duration_text(28.4) == "28 s" and duration_text(250) == "4 min 10 s"
    assert duration_text(3900) == "1 h 05 min" and duration_text(None) == "—"


def test_time_left_follows_the_expected_time_and_the_progress_bar(tmp_path: Path) -> None:
    stages = [Stage(s.name, s.description, lambda: False, lambda f: None, 100.0) for s in default_stages()]
    live = BuildStatus(tmp_path / BUILD_STATUS, stages, None)
    live.stage("model", "done", seconds=30.0)
    live.stage("organism", "running")
    with build_lock(tmp_path / BUILD_LOCK):
        start = time.time()
        view = build_state(tmp_path, now=start + 40)
        organism = view.stage("organism")
        assert organism.remaining == pytest.approx(60, abs=2) and organism.step is None
        assert view.remaining == pytest.approx(60 + 3 * 100, abs=2) and not view.overran
        assert view.remaining_until("refusal") == pytest.approx(160, abs=2)
        live.step("safety fine-tune", 10, 100, 20.0)  # 10% in 20 s: 180 s more, longer than expected
        organism = build_state(tmp_path, now=start + 40).stage("organism")
        assert organism.remaining == pytest.approx(180) and organism.step == "safety fine-tune 10/100"
        assert organism.fraction == pytest.approx(40 / 220, abs=0.02)
        live.step("safety fine-tune", 100, 100, 200.0)
        late = build_state(tmp_path, now=start + 250)  # past its expected time, bar at its end
        assert late.stage("organism").remaining == 0 and not late.overran
        live.step("merging", 0, None, 0.0)  # a bar without a total says nothing about the rest
        late = build_state(tmp_path, now=start + 250)
        assert late.stage("organism").remaining is None and late.overran
        assert late.remaining == pytest.approx(300) and late.fraction < 0.99
