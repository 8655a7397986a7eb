"""The Evaluate page's Search tab on the tiny workspace: a search runs and shows its trials, its front and
links into the playground; its study is stored and reloads in a new session; bad candidates and a corrupt
study file are errors (nothing runs); the Sweep tab still works beside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.cli.search import studies_file
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.steering.search_study import TrialRecord
from explorer.steering.share import decode_setup
from explorer.steering.spec import SteeringSpec
from explorer.ui.state import EVAL_RESULT, MODEL_ENV, SEARCH_RESULT

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = "pages/evaluate.py"
LINK = re.compile(r"\(steering\?spec=([A-Za-z0-9_-]+)\)")

Open = Callable[[], AppTest]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's studies are stored (`studies_file` and the page read it from the environment)."""
    monkeypatch.setenv(USER_ENV, str(tmp_path / "user"))
    return (tmp_path / "user").resolve()


@pytest.fixture
def open_page(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, app_cache: Path, user_dir: Path) -> Open:
    """Open the Evaluate page on the tiny workspace, its studies stored under `user_dir` (a new session
    on every call)."""

    def run() -> AppTest:
        monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
        monkeypatch.setenv(CACHE_ENV, str(app_cache))
        monkeypatch.chdir(ROOT)
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        app.switch_page(EVALUATE)
        return app.run()

    return run


def _errors(app: AppTest) -> str:
    return " ".join(e.value for e in app.error)


def _table(app: AppTest, column: str) -> dict[str, list[object]]:
    """The first table with `column`, as column -> values."""
    for frame in app.dataframe:
        if column in frame.value.columns:
            return {name: list(frame.value[name]) for name in frame.value.columns}
    raise AssertionError(f"no table has a {column!r} column")


def _tiny_settings(app: AppTest, trials: int = 2) -> AppTest:
    """Set a search of `trials` trials on the top 2 latents by cosine, 2 prompts per label, 2 tokens, on
    refusal and over-refusal (the tiny corpus has no held-out transcripts for KL); not run."""
    app.radio(key="search_source").set_value("cosine").run()
    app.number_input(key="search_top").set_value(2)
    app.number_input(key="search_n").set_value(2)
    app.number_input(key="search_tokens").set_value(2)
    app.number_input(key="search_loss_rows").set_value(0)
    app.multiselect(key="search_objectives").set_value(["refusal", "over-refusal"])
    app.number_input(key="search_trials").set_value(trials)
    app.number_input(key="search_max_degenerate").set_value(1.0)  # the tiny model's replies are broken text
    return app


def _tiny_search(app: AppTest, trials: int = 2) -> AppTest:
    return _tiny_settings(app, trials).button(key="search_run").click().run()


def _spec(record: TrialRecord) -> SteeringSpec:
    return SteeringSpec.from_dict(record.spec)


def test_a_search_runs_and_its_front_opens_in_the_playground(open_page: Open) -> None:
    app = open_page()
    assert not app.exception and not app.error
    assert [tab.label for tab in app.tabs] == ["Sweep", "Search"]
    app = _tiny_search(app)
    assert not app.exception and not app.error
    records: list[TrialRecord] = app.session_state[SEARCH_RESULT]["records"]
    assert [r.number for r in records] == [0, 1] and any(r.on_front for r in records)
    # The first trial is the papers' recipe: both candidates set to 1x their max.
    assert [(c.mode, c.value, c.units) for c in _spec(records[0]).clamps] == [("set", 1.0, "max")] * 2
    trials = _table(app, "on front")
    assert trials["trial"] == [0, 1] and trials["on front"] == [r.on_front for r in records]
    assert [decode_setup(link.split("spec=")[1]).spec for link in trials["playground"]] == [  # pyright: ignore[reportAttributeAccessIssue]
        _spec(r) for r in records
    ]
    # Re-measured on 2 test prompts per label beside the baselines: a front figure and a table.
    app.number_input(key="search_front_n").set_value(1)
    app.number_input(key="search_test_n").set_value(2)
    app.checkbox(key="search_elsewhere").uncheck()
    app.button(key="search_remeasure").click().run()
    assert not app.exception and not app.error
    result = app.session_state[SEARCH_RESULT]
    [measured] = result["remeasured"]
    assert measured.prompts == "the test split" and len(measured.front) == 1
    assert measured.baselines[0].label == "unsteered"
    assert any(b.label.startswith("recipe") for b in measured.baselines)
    assert all(p.n_harmful == 2 and p.n_harmless == 2 for p in [*measured.baselines, *measured.front])
    assert len(app.get("plotly_chart")) == 1
    points = _table(app, "95% CI harmful")
    assert points["setting"][0] == "unsteered" and points["setting"][-1] == measured.front[0].label
    assert any("beaten on both rates" in m.value for m in app.markdown)  # a verdict per recipe
    # The chosen setting (the first front trial) links into the playground and downloads as a spec.
    front = [r for r in records if r.on_front]
    [link] = [match for m in app.markdown for match in LINK.findall(m.value)]
    assert decode_setup(link).spec == _spec(front[0])
    assert "Download its spec (JSON)" in [b.label for b in app.download_button]
    app.run()  # a rerun keeps the result without running anything
    assert app.session_state[SEARCH_RESULT] is result and len(app.get("plotly_chart")) == 1


def test_the_study_is_stored_and_reloads_in_a_new_session(open_page: Open) -> None:
    first = _tiny_search(open_page(), trials=1)
    assert not first.exception and not first.error
    ran = first.session_state[SEARCH_RESULT]
    app = _tiny_settings(open_page(), trials=1).run()
    assert any("is stored: running resumes it" in c.value for c in app.caption)
    assert app.selectbox(key="search_stored").options == [ran["study"]]
    app.button(key="search_load").click().run()
    assert not app.exception and not app.error
    loaded = app.session_state[SEARCH_RESULT]
    assert loaded["config"].fingerprint() == ran["config"].fingerprint()
    assert [(r.number, r.spec, r.on_front) for r in loaded["records"]] == [
        (r.number, r.spec, r.on_front) for r in ran["records"]
    ]
    assert _table(app, "on front")["trial"] == [0]


@pytest.mark.parametrize(
    ("latents", "message"),
    [
        ("{hook}:3, banana", "'banana' is not HOOK:LATENT"),
        ("{hook}:3, {hook}:999", "latent 999 is out of range"),
    ],
)
def test_a_malformed_candidate_list_is_an_error_and_nothing_runs(
    open_page: Open, user_dir: Path, latents: str, message: str
) -> None:
    app = open_page()
    app.radio(key="search_source").set_value("listed").run()
    hook = app.selectbox(key="search_hook").value
    app.text_input(key="search_list").set_value(latents.format(hook=hook)).run()
    assert not app.exception and message in _errors(app)
    assert app.button(key="search_run").disabled  # AppTest, like a browser, cannot click it
    assert SEARCH_RESULT not in app.session_state
    assert not (user_dir / "searches").exists()


def test_a_corrupt_study_file_is_a_clear_error(open_page: Open, user_dir: Path, tiny: LoadedModel) -> None:
    path = studies_file(tiny.name)
    assert path.resolve().is_relative_to(user_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"these are not the studies you are looking for")
    app = open_page()
    assert not app.exception
    assert "Cannot read the stored studies" in _errors(app) and "is not a study database" in _errors(app)


def test_the_sweep_tab_still_sweeps(open_page: Open) -> None:
    app = open_page()
    app.text_input(key="eval_strengths_set").set_value("1")
    app.number_input(key="eval_n").set_value(1)
    app.number_input(key="eval_tokens").set_value(2)
    app.number_input(key="eval_loss_rows").set_value(0)
    app.button(key="eval_run").click().run()
    assert not app.exception and not app.error
    assert [p.label for p in app.session_state[EVAL_RESULT]["points"]] == ["unsteered", "set 1×max"]
