"""The Evaluate page's multi-turn escalations on the tiny workspace: the built-in escalations are played
unsteered and under each strength, the result shows bars, a table and every conversation and survives a
rerun; bad strengths are an error and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.escalations import builtin_escalations
from explorer.core.paths import CACHE_ENV
from explorer.ui.state import MODEL_ENV, MULTITURN_RESULT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, app_cache: Path) -> AppTest:
    """The Evaluate page on the tiny workspace, measuring on escalations, with 2-token replies."""
    monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    monkeypatch.chdir(ROOT)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    app.switch_page("pages/evaluate.py")
    app.run()
    app.radio(key="eval_kind").set_value("escalations").run()
    app.number_input(key="mt_tokens").set_value(2)
    app.number_input(key="mt_history").set_value(2)
    return app


def test_escalations_are_played_under_each_strength(app: AppTest) -> None:
    app.radio(key="mt_split").set_value("val")
    app.text_input(key="eval_strengths_set").set_value("1, 2")
    app.button(key="mt_run").click().run()
    assert not app.exception and not app.error
    result = app.session_state[MULTITURN_RESULT]
    points = result["points"]
    assert [p.label for p in points] == ["unsteered", "set 1×max", "set 2×max"]
    assert all(p.n == len(builtin_escalations("val")) for p in points)
    assert result["escalations"] == "the built-in escalations, val split"
    assert list(app.dataframe[0].value["setting"]) == ["unsteered", "set 1×max", "set 2×max"]
    assert len(app.get("plotly_chart")) == 1
    first = points[0].conversations[0]
    shown = [m.markdown[0].value for m in app.chat_message]
    assert shown[0] == first["turns"][0] and len(shown) == 2 * len(first["turns"])
    app.run()  # a rerun shows the kept result without playing again
    assert app.session_state[MULTITURN_RESULT] is result


def test_bad_strengths_are_an_error_and_nothing_is_played(app: AppTest) -> None:
    app.text_input(key="eval_strengths_set").set_value("1, nan")
    app.button(key="mt_run").click().run()
    assert not app.exception
    assert any("not a finite number" in e.value for e in app.error)
    assert MULTITURN_RESULT not in app.session_state
