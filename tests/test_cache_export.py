"""Cache exports: sae_dashboard's own loader reads ours and its own renderer draws it, offline; Neuronpedia
batches load as sae_dashboard's batch classes; every export carries the cache's real per-token values."""

from __future__ import annotations

import csv
import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from explorer.cli.export import FORMATS, add_export_parser
from explorer.core.models import LoadedModel
from explorer.latents.export import export_csv, export_neuronpedia, parse_latents, snippet
from explorer.latents.export_saedashboard import export_saedashboard, saedashboard_window
from explorer.latents.reader import CacheError, Example, LatentCache, trimmed
from explorer.latents.schema import VOCAB_FILE, CacheConfig
from tests.helpers import build_tiny_latent_cache

HOOK = "blocks.2.hook_resid_pre"
CONFIG = CacheConfig(k=4, samples_per_bin=6, n_groups=8, examples_per_group=5, batch_tokens=97)
D_SAE = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> LatentCache:
    """A latent cache of a seeded 32-latent SAE over a tiny corpus (same recipe as test_latent_cache)."""
    *_, directory = build_tiny_latent_cache(tiny, tmp_path_factory.mktemp("export-cache"), HOOK, CONFIG)
    return LatentCache(directory)


@pytest.fixture(scope="module")
def vocab(cache: LatentCache) -> list[str]:
    return json.loads((cache.directory / VOCAB_FILE).read_text())


def _example_values(example: Example) -> list[float]:
    """The example's per-token activations with uncounted positions (None) as 0.0."""
    return [0.0 if v is None else v for v in example.values]


def _live_latent(cache: LatentCache) -> int:
    """The first latent whose top example has activations on more tokens than its own."""
    return next(
        i
        for i in range(cache.d_sae)
        if (top := cache.latent(i).top_examples) and sum(v > 0 for v in _example_values(top[0])) > 1
    )


def _saedashboard_config(cache: LatentCache, window: int | None) -> Any:
    """The `SaeVisConfig` the export's docstring prescribes: one sequence group per cache group, the
    activating token at index `before`, where the renderer bolds it."""
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig

    sequences = SequencesConfig(
        buffer=saedashboard_window(cache, window),
        compute_buffer=True,
        n_quantiles=CONFIG.n_groups,
        top_acts_group_size=CONFIG.k,
        quantile_group_size=CONFIG.examples_per_group,
        stack_mode="stack-none",
    )
    layout = SaeVisLayoutConfig(
        [
            Column(FeatureTablesConfig()),
            Column(ActsHistogramConfig(), LogitsTableConfig(), LogitsHistogramConfig()),
            Column(sequences),
        ]
    )
    return SaeVisConfig(hook_point=HOOK, features=range(D_SAE), feature_centric_layout=layout)


def test_saedashboard_file_round_trips_through_its_own_loader(
    cache: LatentCache, vocab: list[str], tmp_path: Path
) -> None:
    from sae_dashboard.components import SequenceGroupData
    from sae_dashboard.sae_vis_data import SaeVisData

    path = export_saedashboard(cache, tmp_path / "vis.json", window=3)
    before, after = saedashboard_window(cache, 3)
    assert (before, after) == (3, 3)
    # load_json only stores the model and encoder it is given; the data needs neither.
    data = SaeVisData.load_json(path, _saedashboard_config(cache, 3), None, None)  # pyright: ignore[reportArgumentType]
    assert sorted(data.feature_data_dict) == list(range(D_SAE))
    latent = _live_latent(cache)
    record = cache.latent(latent)
    feature = data.feature_data_dict[latent]

    groups = feature.sequence_data.seq_group_data
    assert all(isinstance(g, SequenceGroupData) for g in groups)
    assert len(groups) == 1 + len(record.groups) and groups[0].title.startswith("TOP ACTIVATIONS<br>MAX = ")
    top = groups[0].seq_data[0]
    example = trimmed(record.top_examples[0], before, after)
    pad = before - example.focus
    assert top.feat_acts == [0.0] * pad + _example_values(example)  # the real activation at every token
    assert top.feat_acts[before] == pytest.approx(record.max, rel=1e-3)  # stored as float16
    assert [vocab[i] for i in top.token_ids[pad:]] == example.context
    assert (top.original_index, top.qualifying_token_index) == (example.row, example.pos)
    assert len(groups[0].seq_data) == len(record.top_examples)
    first = record.groups[0]
    assert groups[1].title == f"INTERVAL {first.low:.3f} - {first.high:.3f}<br>CONTAINS {first.share:.3%}"
    assert [s.feat_acts[before] for s in groups[1].seq_data] == [
        _example_values(e)[e.focus] for e in first.examples
    ]

    # Every sequence of every latent has its activating token at index `before`; short rows are padded.
    padded = 0
    for i, feat in data.feature_data_dict.items():
        rec = cache.latent(i)
        examples = rec.top_examples + [e for g in rec.groups for e in g.examples]
        sequences = [s for g in feat.sequence_data.seq_group_data for s in g.seq_data]
        assert len(sequences) == len(examples)
        for seq, ex in zip(sequences, examples, strict=True):
            cut = trimmed(ex, before, after)
            n = before - cut.focus
            padded += n > 0
            assert seq.token_ids[:n] == [len(vocab)] * n and seq.feat_acts[:n] == [0.0] * n
            assert vocab[seq.token_ids[before]] == ex.context[ex.focus]
            assert len(seq.token_logits) == len(seq.token_ids) == len(seq.feat_acts)
    assert padded > 0  # the fixture has examples near their row's start

    table = feature.logits_table_data
    assert [vocab[i] for i in table.top_token_ids] == [t for t, _ in record.logits_top]
    assert table.bottom_logits == [v for _, v in record.logits_bottom]
    assert sum(feature.acts_histogram_data.bar_heights) == sum(record.histogram[1])
    assert feature.acts_histogram_data.title == f"ACTIVATIONS<br>DENSITY = {record.density:.3%}"
    nearest = feature.feature_tables_data
    assert list(
        zip(nearest.correlated_features_indices, nearest.correlated_features_cossim, strict=True)
    ) == [tuple(n) for n in record.nearest]
    assert data.feature_stats.max[latent] == record.max
    assert data.feature_stats.frac_nonzero[latent] == record.density


def test_saedashboard_renders_with_its_own_html_renderer_offline(
    cache: LatentCache, tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisData

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the render tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    latent = _live_latent(cache)
    path = export_saedashboard(cache, tmp_path / "vis.json")  # the whole stored window
    before, after = saedashboard_window(cache, None)
    # The renderer decodes token ids with the model's tokenizer; it needs nothing else of the model.
    model = SimpleNamespace(tokenizer=tiny.tokenizer)
    data = SaeVisData.load_json(path, _saedashboard_config(cache, None), model, None)  # pyright: ignore[reportArgumentType]
    html_path = tmp_path / "vis.html"
    save_feature_centric_vis(data, html_path, feature_idx=latent)  # every latent, dead ones included
    html = html_path.read_text()

    # The page's data is inlined as `defineData`'s return value; read it back as JSON.
    found = re.search(r"function defineData\(\) \{.*?return (.*?);\n\}", html, re.DOTALL)
    assert found is not None
    dashboards = json.loads(found.group(1))["DASHBOARD_DATA"]
    assert sorted(dashboards, key=int) == [str(i) for i in range(D_SAE)]
    token_data = dashboards[str(latent)]["tokenData"]
    top = next(g for g in token_data.values() if g.get("title", "").startswith("TOP ACTIVATIONS"))
    drawn = top["data"][0]
    example = trimmed(cache.latent(latent).top_examples[0], before, after)
    pad = before - example.focus
    values = [0.0] * pad + _example_values(example)
    # The renderer writes each token's activation to 4 decimals and leaves zeros out.
    assert [t.get("featAct", 0.0) for t in drawn] == [round(v, 4) for v in values]
    assert sum("featAct" in t for t in drawn) > 1  # context tokens carry their own activations
    assert [i for i, t in enumerate(drawn) if t.get("isBold")] == [before]
    exported = data.feature_data_dict[latent].sequence_data.seq_group_data[0].seq_data[0]
    assert [t["tokID"] for t in drawn] == exported.token_ids
    assert any("CONTAINS" in g.get("title", "") for g in token_data.values())

    # Inlined: the data, SAEDashboard's own scripts and its CSS. Referenced: only the d3 and plotly
    # libraries, which sae_dashboard 0.8 always takes from their CDNs when the page is opened.
    assert "Object.entries(DATA.tokenData)" in html and "function setupPage" in html
    assert "<style>" in html and ".grid-container" in html
    assert re.findall(r"""(?:src|href)=["']([^"']+)""", html) == [
        "https://d3js.org/d3.v6.min.js",
        "https://cdn.plot.ly/plotly-latest.min.js",
    ]


def test_saedashboard_subset_keeps_only_chosen_latents(cache: LatentCache, tmp_path: Path) -> None:
    path = export_saedashboard(cache, tmp_path / "few.json", [7, 3, 7])
    data = json.loads(path.read_text())
    assert list(data["feature_data_dict"]) == ["7", "3"]
    assert data["feature_stats"]["max"] == [cache.latent(7).max, cache.latent(3).max]


def test_neuronpedia_batches_carry_real_values_and_load_as_its_batch(
    cache: LatentCache, tmp_path: Path
) -> None:
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    out = export_neuronpedia(cache, tmp_path / "np", batch_size=10)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["batch-0.json", "batch-1.json", "batch-2.json", "batch-3.json"]
    batches = [json.loads((out / name).read_text()) for name in files]
    # sae_dashboard's batch classes refuse unknown keys; every key its own writer writes is ours too
    # (Neuronpedia's importer reads them all), but for the four the cache has no data for.
    for batch in batches:
        written = NeuronpediaDashboardBatch(**batch).to_dict()
        assert set(written) == set(batch)
        for theirs, ours in zip(written["features"], batch["features"], strict=True):
            assert set(theirs) - set(ours) == {"n_prompts_total", "n_tokens_in_prompt", "dataset", "vector"}
            assert [set(a) for a in theirs["activations"]] == [set(a) for a in ours["activations"]]
    assert batches[0]["layer"] == 2 and batches[0]["model_id"] == cache.manifest["model"]
    assert batches[0]["sae_id_suffix"] is None  # Neuronpedia's importer reads it
    features = [f for b in batches for f in b["features"]]
    assert [f["feature_index"] for f in features] == list(range(D_SAE))

    latent = _live_latent(cache)
    record = cache.latent(latent)
    feature = features[latent]
    assert feature["pos_str"] == [t for t, _ in record.logits_top]
    assert feature["neg_values"] == [v for _, v in record.logits_bottom]
    assert feature["frac_nonzero"] == record.density
    assert sum(feature["freq_hist_data_bar_heights"]) == sum(record.histogram[1])
    assert feature["logits_hist_data_bar_heights"] == []  # the cache has no vocabulary-wide logits
    top = feature["activations"][0]
    example = record.top_examples[0]
    assert (top["bin_min"], top["bin_max"], top["bin_contains"]) == (-1, record.max, -1)
    assert top["tokens"] == example.context and top["qualifying_token_index"] == example.focus
    assert top["values"] == _example_values(example)  # real activations, uncounted positions 0.0
    # Neuronpedia derives maxValue and maxValueTokenIndex from `values`: the top example's own token.
    assert top["values"].index(max(top["values"])) == example.focus
    group = record.groups[-1]
    last = feature["activations"][-1]
    assert (last["bin_min"], last["bin_max"], last["bin_contains"]) == (group.low, group.high, group.share)
    assert last["values"] == _example_values(group.examples[-1])
    n_grouped = sum(len(g.examples) for g in record.groups)
    assert len(feature["activations"]) == len(record.top_examples) + n_grouped

    narrow = export_neuronpedia(cache, tmp_path / "narrow", [latent], window=2)
    narrow_top = json.loads((narrow / "batch-0.json").read_text())["features"][0]["activations"][0]
    assert narrow_top["values"] == _example_values(cache.latent(latent, window=2).top_examples[0])
    assert len(narrow_top["tokens"]) <= 5


def test_neuronpedia_refuses_to_replace_foreign_files(cache: LatentCache, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        export_neuronpedia(cache, target)
    with pytest.raises(ValueError, match="not Neuronpedia batches"):
        export_neuronpedia(cache, tmp_path)
    assert target.read_text() == "keep me"
    out = export_neuronpedia(cache, tmp_path / "np", [1, 2], batch_size=1)
    export_neuronpedia(cache, out, [5])  # an earlier export is replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.json"]


def test_csv_has_a_row_per_latent_the_table_values_and_the_label(cache: LatentCache, tmp_path: Path) -> None:
    path = export_csv(cache, tmp_path / "latents.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == D_SAE
    table = cache.table()
    assert set(table) < set(rows[0])
    latent = _live_latent(cache)
    record = cache.latent(latent)
    assert float(rows[latent]["refusal_cos"]) == table["refusal_cos"][latent]
    assert float(rows[latent]["density"]) == record.density
    assert [r["label"] for r in rows] == cache.labels()
    assert rows[latent]["label"].startswith("fires on: ")
    assert json.loads(rows[latent]["logits_top"]) == [t for t, _ in record.logits_top]
    assert rows[latent]["top_example"] == snippet(record.top_examples[0])  # the whole stored window
    assert int(rows[latent]["top_example_count"]) == record.top_examples[0].count
    dead = next(i for i in range(D_SAE) if not cache.latent(i).top_examples)
    assert rows[dead]["top_example"] == rows[dead]["top_example_count"] == ""
    subset = export_csv(cache, tmp_path / "two.csv", [4, 9])
    assert [r["latent"] for r in csv.DictReader(subset.open(encoding="utf-8"))] == ["4", "9"]


def test_bad_input_is_refused_clearly(cache: LatentCache, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"latent 32 is out of range: this SAE has latents 0\.\.31"):
        export_csv(cache, tmp_path / "x.csv", [0, 32])
    with pytest.raises(ValueError, match=r"must end in \.json"):
        export_saedashboard(cache, tmp_path / "vis.txt")
    with pytest.raises(ValueError, match="is a directory"):
        export_csv(cache, tmp_path)
    with pytest.raises(ValueError, match="window must be >= 0"):
        export_neuronpedia(cache, tmp_path / "np", window=-1)
    with pytest.raises(ValueError, match="'x' is not a latent index"):
        parse_latents("0,x")
    assert parse_latents("0, 5,7") == [0, 5, 7]
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "np").exists()


def test_export_command_line(
    cache: LatentCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import shutil

    from explorer.core.paths import CACHE_ENV
    from explorer.latents.schema import latent_cache_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "root"))
    shutil.copytree(cache.directory, latent_cache_dir("tiny", HOOK))
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "a.csv"
    argv = ["export", "--format", "csv", "--out", str(out), "--model", "tiny", "--hook", HOOK]
    args = parser.parse_args([*argv, "--latents", "2,4", "--window", "1"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["latent"] for r in rows] == ["2", "4"]
    narrow = cache.latent(2, window=1).top_examples
    assert rows[0]["top_example"] == (snippet(narrow[0]) if narrow else "")
    for fmt, target in (("saedashboard", tmp_path / "vis.json"), ("neuronpedia", tmp_path / "np")):
        args = parser.parse_args(
            ["export", "--format", fmt, "--out", str(target), "--model", "tiny", "--hook", HOOK]
        )
        assert args.func(args) == 0 and target.exists()
    assert set(FORMATS) == {"saedashboard", "neuronpedia", "csv"}
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--format", "parquet", "--out", "x"])
