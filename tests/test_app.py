"""The Streamlit app renders its pages without exceptions, and shows clear errors for bad setups."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from explorer.core.models import LoadedModel
from explorer.core.paths import write_json_atomic
from explorer.core.prompts import builtin_prompts
from explorer.refusal.build import compute_refusal, prove
from explorer.refusal.candidates import RefusalConfig
from explorer.refusal.direction import REPORT_FILE, load_refusal, refusal_dir
from explorer.ui.state import MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]
# Emoji need a font the user may not have (empty boxes in a stock Chromium on Debian): pictographs,
# dingbats and miscellaneous symbols, arrows and the emoji variation selector.
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")


def _run(monkeypatch: pytest.MonkeyPatch, spec: str, cache: Path) -> AppTest:
    monkeypatch.setenv(MODEL_ENV, spec)
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache))
    monkeypatch.chdir(ROOT)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    return app.run()


def test_overview_shows_the_model(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path) -> None:
    app = _run(monkeypatch, str(tiny_dir), tmp_path)
    assert not app.exception
    assert any("Model:" in s.value for s in app.subheader)
    assert [m.value for m in app.metric][:2] == ["4", "64"]
    assert any("Nothing built yet" in i.value for i in app.info)


def test_bad_model_spec_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _run(monkeypatch, "no-such-model", tmp_path)
    assert not app.exception
    assert any("unknown model spec" in e.value for e in app.error)


def test_corrupt_build_manifest_is_reported(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "build.json").write_text("{not json")
    app = _run(monkeypatch, str(tiny_dir), tmp_path)
    assert not app.exception
    assert any("corrupt" in e.value for e in app.error)


def test_overview_shows_the_refusal_selection(
    monkeypatch: pytest.MonkeyPatch, tiny: LoadedModel, tiny_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    relaxed = RefusalConfig(n_val=4, induce_threshold=-math.inf, kl_threshold=math.inf, kl_relaxation=())
    compute_refusal(tiny, relaxed, progress=False)
    stored = load_refusal(tiny.name)
    harmful = builtin_prompts("harmful", "test")[:4]
    harmless = builtin_prompts("harmless", "test")[:4]
    report = prove(tiny, stored, max_new_tokens=3, harmful=harmful, harmless=harmless)
    write_json_atomic(refusal_dir(tiny.name) / REPORT_FILE, report)
    app = _run(monkeypatch, str(tiny_dir), tmp_path)
    assert not app.exception
    assert any(f"Selected **`{stored.location}`**" in m.value for m in app.markdown)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Added at"] == stored.location
    assert metrics["Harmless refused, direction added"] == f"{report['harmless_added_refusal_rate']:.1%}"
    assert len(app.get("plotly_chart")) == 1
    app.radio[0].set_value("kl").run()
    assert not app.exception
    assert not any("No refusal direction" in i.value for i in app.info)


def test_overview_without_a_refusal_direction_says_how_to_make_one(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path
) -> None:
    app = _run(monkeypatch, str(tiny_dir), tmp_path)
    assert any("explorer refusal --model" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_overview_shows_the_sae_quality_table(
    monkeypatch: pytest.MonkeyPatch, tiny: LoadedModel, tiny_dir: Path, tmp_path: Path
) -> None:
    from explorer.saes.build import SAEStageConfig, build_saes
    from explorer.saes.corpus import CorpusConfig
    from explorer.saes.training import SAETrainConfig

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    relaxed = RefusalConfig(n_val=4, induce_threshold=-math.inf, kl_threshold=math.inf, kl_relaxation=())
    compute_refusal(tiny, relaxed, progress=False)
    small = SAETrainConfig(d_sae=64, k=4, training_samples=2000, batch_size=500, autocast=False)
    corpus = CorpusConfig(seq_len=64, response_tokens=4, text_tokens=2000, prompts_per_label=6, batch_size=6)
    index = build_saes(
        str(tiny_dir), SAEStageConfig(main=small, side=small, corpus=corpus, fast_dtype=None, loss_rows=4)
    )
    app = _run(monkeypatch, str(tiny_dir), tmp_path)
    assert not app.exception
    table = app.dataframe[0].value
    assert len(table) == len(index["hooks"])
    assert table["hook"].str.contains("refusal layer").sum() == 1
    assert set(table["architecture"]) == {"topk × 64"}
    # The refusal heatmap, the L0 histogram and the explained variance by text source.
    assert len(app.get("plotly_chart")) == 3
    by_source = app.dataframe[1].value
    assert set(by_source["trained on"]) <= {"yes", "never"}
    never = by_source[by_source["trained on"] == "never"]["source"]
    assert set(never) == set(CorpusConfig().heldout_sources)
    assert any("genre it never trained on" in c.value for c in app.caption)
    assert not any("No SAEs trained" in i.value for i in app.info)


def test_the_app_source_has_no_emoji() -> None:
    sources = [
        ROOT / "app.py",
        *sorted((ROOT / "pages").glob("*.py")),
        *sorted((ROOT / "explorer" / "ui").glob("*.py")),
    ]
    assert len(sources) > 8
    found = [
        f"{path.relative_to(ROOT)}:{number}: U+{ord(char):04X} {char}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for char in EMOJI.findall(line)
    ]
    assert not found, "use :material/...: icons instead of emoji:\n" + "\n".join(found)


def test_the_overview_uses_the_workspaces_model(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, app_cache: Path
) -> None:
    made: list[LoadedModel] = []
    init = LoadedModel.__init__

    def counting_init(self: LoadedModel, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(LoadedModel, "__init__", counting_init)
    st.cache_resource.clear()  # nothing loaded by an earlier test
    app = _run(monkeypatch, str(tiny_dir), app_cache)
    assert not app.exception and any("Model:" in s.value for s in app.subheader)
    for page in ("pages/latents.py", "pages/steering.py"):
        app.switch_page(page)
        app.run()
        assert not app.exception
    assert len(made) == 1, f"{len(made)} copies of the model in one process"


def test_overview_states_the_dense_threshold_its_sae_reports_used(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, app_cache: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(app_cache, cache)
    reports = sorted((cache / "saes").glob("*/*/report.json"))
    assert reports
    for threshold in (0.25, 0.05):
        for path in reports:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["reconstruction"]["dense_threshold"] = threshold  # where quality_report stores it
            path.write_text(json.dumps(data), encoding="utf-8")
        app = _run(monkeypatch, str(tiny_dir), cache)
        assert not app.exception
        assert any(f"dense: active on > {threshold:.0%} of them" in c.value for c in app.caption)
