"""The Build page and the pages that wait for the build: nothing built, a build running with progress, a
failed build, a killed one; the app opens on the Build page while the offline default is incomplete."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.build import BUILD_LOCK, BUILD_STATUS, BuildStatus, build_lock, default_stages
from explorer.build_watch import LOG_FILE, build_state, log_tail, start_background
from explorer.core.paths import CACHE_ENV
from explorer.manifest import WORKSPACE_ENV
from explorer.ui.state import DEMO_ENV, MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]


def _app(monkeypatch: pytest.MonkeyPatch, cache: Path) -> AppTest:
    """The app as `make demo` serves it: the offline default, opened on the walkthrough once built."""
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(DEMO_ENV, "1")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()


def _status(cache: Path, **states: str) -> BuildStatus:
    """A live status file of the default build with these stage states (the others pending)."""
    live = BuildStatus(cache / BUILD_STATUS, default_stages(), None)
    for name, state in states.items():
        live.stage(name, state, **({"seconds": 12.0} if state in ("done", "failed") else {}))
    return live


def _texts(app: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(app, kind)]


def _progress(app: AppTest) -> list[str]:
    return [e.proto.text for e in app.get("progress")]


def test_with_nothing_built_the_build_page_opens_and_says_how_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _app(monkeypatch, tmp_path)
    assert not app.exception
    assert _texts(app, "title") == ["Build"]
    assert any("Nothing is built yet. `make demo` starts the build" in i for i in _texts(app, "info"))
    assert [b.label for b in app.button] == ["Start the build"]
    metrics = {m.label: m.value for m in app.metric}
    expected = sum(s.expected_seconds or 0 for s in default_stages())
    assert metrics["Stages complete"] == "0 of 5"
    assert metrics["Left (estimate)"] == f"{expected // 60} min {expected % 60:02.0f} s"
    table = next(m for m in _texts(app, "markdown") if m.startswith("| Page |"))
    assert "| **Latent detail** |" in table and "`cache`" in table
    app.switch_page("pages/demo.py").run()
    assert not app.exception
    waiting = " ".join(_texts(app, "info"))
    assert "stage **refusal**" in waiting and "nothing is built yet" in waiting
    assert [b.label for b in app.button] == ["Start the build"]


def test_a_running_build_shows_its_progress_and_pages_wait_for_their_stage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with build_lock(tmp_path / BUILD_LOCK):
        live = _status(tmp_path, model="done", organism="running")
        live.step("safety fine-tune", 40, 100, 20.0)
        app = _app(monkeypatch, tmp_path)
        assert not app.exception
        assert _texts(app, "title") == ["Build"]  # the first page while a build runs
        assert any(f"Building (pid {os.getpid()}): stage **organism**" in i for i in _texts(app, "info"))
        assert "safety fine-tune 40/100" in _progress(app)
        assert {m.label: m.value for m in app.metric}["Stages complete"] == "1 of 5"
        assert not app.button  # no second build to start
        app.switch_page("pages/latents.py").run()
        assert not app.exception and not app.error
        waiting = " ".join(_texts(app, "info"))
        assert "every latent's statistics, which the build's stage **cache**" in waiting
        assert "waiting for the stages before it; expected done in about" in waiting
        app.switch_page("pages/overview.py").run()
        waiting = " ".join(_texts(app, "info"))
        assert "stage **organism**" in waiting and "running for" in waiting
        assert "safety fine-tune 40/100" in _progress(app)


def test_a_failed_stage_shows_its_error_and_the_button_respects_the_lock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    live = _status(tmp_path, model="done", organism="done")
    live.stage("refusal", "failed", seconds=3.0, error="RuntimeError: out of memory")
    live.finish("failed", "RuntimeError: out of memory")
    app = _app(monkeypatch, tmp_path)
    assert not app.exception
    assert _texts(app, "title") == ["Build"]
    assert "Stage **refusal** failed: RuntimeError: out of memory" in _texts(app, "error")
    assert any("resumes at this one" in i for i in _texts(app, "info"))
    with build_lock(tmp_path / BUILD_LOCK):  # a build started elsewhere before the button is pressed
        app.button(key="start_build_page").click().run()
        assert not app.exception and not app.button
        assert any(f"Building (pid {os.getpid()})" in i for i in _texts(app, "info"))
    assert not (tmp_path / LOG_FILE).exists()  # no second build was started
    app.switch_page("pages/demo.py").run()
    assert any("and that stage failed: RuntimeError: out of memory" in e for e in _texts(app, "error"))


def test_a_killed_build_is_shown_as_stopped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _status(tmp_path, model="done", organism="running")  # no process holds the lock: it was killed
    app = _app(monkeypatch, tmp_path)
    assert not app.exception
    assert any("The build stopped during stage **organism**" in w for w in _texts(app, "warning"))
    assert [b.label for b in app.button] == ["Resume the build"]


def test_the_start_button_starts_one_background_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _app(monkeypatch, tmp_path)
    app.button(key="start_build_page").click().run()
    assert not app.exception
    pid = int((tmp_path / BUILD_LOCK).read_text().strip())  # the detached build holds the lock
    try:
        assert any("Building (pid" in i for i in _texts(app, "info")) and not app.button
        assert not start_background().started  # a second press, a reload, `make demo`: no second build
        deadline = time.monotonic() + 60
        while build_state(tmp_path).stage("model").state != "running":
            assert time.monotonic() < deadline, log_tail(tmp_path / LOG_FILE)
            time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while build_state(tmp_path).running:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert build_state(tmp_path).stage("model").state == "stopped"
