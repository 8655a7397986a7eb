"""The Upstream graph page on the tiny workspace: without a stored graph it names the command and traces a
quick one on a click; with one it shows the graph, the ablation scatter and the edges; a click on a node
opens it; a corrupt file is an error, not a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.models import LoadedModel
from explorer.research import research_dir
from explorer.research.upstream import UPSTREAM_FILE, load_graph
from explorer.ui.state import LATENT, MODEL_ENV, SAE_HOOK

ROOT = Path(__file__).resolve().parents[1]


def _page(monkeypatch: pytest.MonkeyPatch, cache: Path, model_dir: Path) -> AppTest:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache))
    monkeypatch.setenv(MODEL_ENV, str(model_dir))
    monkeypatch.chdir(ROOT)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    app.run()
    app.switch_page("pages/upstream.py")
    return app.run()


def _chart_key(app: AppTest) -> str:
    return app.get("plotly_chart")[0].proto.id.split("-", 2)[2]


def test_without_a_graph_it_names_the_command_and_traces_one(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(app_cache, cache)
    app = _page(monkeypatch, cache, tiny_dir)
    assert not app.exception
    assert any("explorer upstream --model" in i.value for i in app.info)
    assert not app.get("plotly_chart")
    app.button(key="upstream_run").click().run()
    assert not app.exception and not app.error
    graph = load_graph(tiny.name)
    assert graph is not None and graph.n_prompts == 8
    # the stored graph is what the page now shows: both figures, every edge in the table, its numbers
    assert len(app.get("plotly_chart")) == 2
    [table] = app.dataframe
    assert len(table.value) == len(graph.edges)
    assert list(table.value["attribution"]) == pytest.approx([e.attribution for e in graph.edges])
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Edges"] == str(len(graph.edges))
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    texts = [t for trace in figure["data"] for t in trace.get("text", [])]
    assert {f"L{n.latent}" for n in graph.nodes} <= {t.split(":")[0] for t in texts}

    # a click on a node opens it on the Latent detail page
    node = graph.nodes[-1]
    point = {"curve_number": 0, "point_number": 0, "point_index": 0, "customdata": [node.hook, node.latent]}
    app.session_state[_chart_key(app)] = {
        "selection": {"points": [point], "point_indices": [0], "box": [], "lasso": []}
    }
    app.run()
    assert not app.exception
    assert app.session_state[SAE_HOOK] == node.hook and app.session_state[LATENT] == node.latent
    assert any(t.value == "Latent detail" for t in app.title)


def test_a_corrupt_graph_is_an_error(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(app_cache, cache)
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache))
    path = research_dir(tiny.name) / UPSTREAM_FILE
    path.parent.mkdir(parents=True)
    path.write_text('{"model": 1}', encoding="utf-8")
    app = _page(monkeypatch, cache, tiny_dir)
    assert not app.exception
    assert any("is corrupt" in e.value for e in app.error)
    assert any("explorer upstream --model" in i.value for i in app.info)
