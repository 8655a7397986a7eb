"""The Probes page on the tiny workspace: a stored result shows its table, ROC curves, K curve, claim and
latents (a click opens the latent); without one the page names the command and its button runs it; a
corrupt result file is an error, not a traceback."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.cli.main import main
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV
from explorer.research.probes import PROBE_TITLES, claim, load_probes, probes_path
from explorer.ui.state import LATENT, MODEL_ENV, SAE_HOOK

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(app_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> Path:
    """A writable copy of the tiny workspace's cache, which the app opens."""
    copy = tmp_path / "cache"
    shutil.copytree(app_cache, copy)
    monkeypatch.setenv(CACHE_ENV, str(copy))
    monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
    monkeypatch.chdir(ROOT)
    return copy


def _page() -> AppTest:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    app.switch_page("pages/probes.py")
    return app.run()


def _store(tiny_dir: Path) -> None:
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = main(["probe", "--model", str(tiny_dir), "--limit", "4", "--k-max", "4", "--json"])
    assert code == 0


def test_a_stored_result_shows_the_table_the_roc_curves_and_the_claim(
    cache: Path, tiny: LoadedModel, tiny_dir: Path
) -> None:
    _store(tiny_dir)
    result = load_probes(tiny.name)
    app = _page()
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert list(table["set"]) == [s.name for s in result.sets]
    column = f"{PROBE_TITLES['refusal_latents']} AUC"
    assert list(table[column]) == [result.score("refusal_latents", s.name).auc for s in result.sets]
    charts = app.get("plotly_chart")
    assert len(charts) == len(result.sets) + 1  # one ROC per set, and the K curve
    assert any(m.value == claim(result) for m in app.markdown)
    fit = result.fit("refusal_latents")
    app.button(key=f"probe_open_{fit.latents[0]}").click().run()
    assert app.session_state[LATENT] == fit.latents[0]
    assert app.session_state[SAE_HOOK] == result.sites["sae_hook"]


def test_without_a_result_the_page_names_the_command_and_its_button_runs_it(
    cache: Path, tiny: LoadedModel
) -> None:
    app = _page()
    assert not app.exception
    assert any("explorer probe --model" in i.value for i in app.info)
    assert not app.get("plotly_chart")
    app.button(key="probe_run").click().run()
    assert not app.exception and not app.error
    assert probes_path(tiny.name).is_file()
    assert len(app.dataframe) == 1 and app.get("plotly_chart")


def test_a_corrupt_result_is_an_error_not_a_traceback(cache: Path, tiny: LoadedModel) -> None:
    path = probes_path(tiny.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    app = _page()
    assert not app.exception
    assert any("is corrupt" in e.value for e in app.error)
