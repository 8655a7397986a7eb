"""Cache exports: sae_dashboard's own loader reads ours, Neuronpedia batches and the CSV match the cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from explorer.cli.export import add_export_parser
from explorer.core.models import LoadedModel
from explorer.latents.export import (
    export,
    export_csv,
    export_neuronpedia,
    export_saedashboard,
    parse_latents,
    snippet,
)
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import VOCAB_FILE, CacheConfig
from tests.helpers import build_tiny_latent_cache

HOOK = "blocks.2.hook_resid_pre"
CONFIG = CacheConfig(k=4, samples_per_bin=6, n_intervals=8, examples_per_interval=5, batch_tokens=97)
D_SAE = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> LatentCache:
    """A latent cache of a seeded 32-latent SAE over a tiny corpus (same recipe as test_latent_cache)."""
    *_, directory = build_tiny_latent_cache(tiny, tmp_path_factory.mktemp("export-cache"), HOOK, CONFIG)
    return LatentCache(directory)


def _live_latent(cache: LatentCache) -> int:
    return next(i for i in range(cache.d_sae) if cache.latent(i).top_examples)


def test_saedashboard_file_round_trips_through_its_own_loader(cache: LatentCache, tmp_path: Path) -> None:
    from sae_dashboard.components import SequenceGroupData
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData

    path = export_saedashboard(cache, tmp_path / "vis.json", window=3)
    # load_json only stores the model and encoder it is given; the data needs neither.
    data = SaeVisData.load_json(path, SaeVisConfig(hook_point=HOOK, features=range(D_SAE)), None, None)  # pyright: ignore[reportArgumentType]
    assert sorted(data.feature_data_dict) == list(range(D_SAE))
    vocab = json.loads((cache.directory / VOCAB_FILE).read_text())
    latent = _live_latent(cache)
    record = cache.latent(latent, window=3)
    feature = data.feature_data_dict[latent]

    groups = feature.sequence_data.seq_group_data
    assert all(isinstance(g, SequenceGroupData) for g in groups)
    assert len(groups) == 1 + CONFIG.n_intervals and groups[0].title.startswith("TOP ACTIVATIONS")
    top = groups[0].seq_data[0]
    example = record.top_examples[0]
    assert top.feat_acts == [example.value] and top.feat_acts[0] == record.max
    assert [vocab[i] for i in top.token_ids] == example.context
    assert (top.original_index, top.qualifying_token_index) == (example.row, example.pos)
    assert len(groups[0].seq_data) == len(record.top_examples)
    low, high, examples = record.intervals[-1]
    assert groups[1].title == f"INTERVAL {low:.3f} - {high:.3f}"
    assert [s.feat_acts[0] for s in groups[1].seq_data] == [e.value for e in examples]

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


def test_saedashboard_subset_keeps_only_chosen_latents(cache: LatentCache, tmp_path: Path) -> None:
    path = export_saedashboard(cache, tmp_path / "few.json", [7, 3, 7])
    data = json.loads(path.read_text())
    assert list(data["feature_data_dict"]) == ["7", "3"]
    assert data["feature_stats"]["max"] == [cache.latent(7).max, cache.latent(3).max]


def test_neuronpedia_batches_match_the_cache(cache: LatentCache, tmp_path: Path) -> None:
    out = export_neuronpedia(cache, tmp_path / "np", batch_size=10)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["batch-0.json", "batch-1.json", "batch-2.json", "batch-3.json"]
    batches = [json.loads((out / name).read_text()) for name in files]
    assert batches[0]["layer"] == 2 and batches[0]["model_id"] == cache.manifest["model"]
    features = [f for b in batches for f in b["features"]]
    assert [f["feature_index"] for f in features] == list(range(D_SAE))

    latent = _live_latent(cache)
    record = cache.latent(latent)
    feature = features[latent]
    assert feature["pos_str"] == [t for t, _ in record.logits_top]
    assert feature["neg_values"] == [v for _, v in record.logits_bottom]
    assert feature["frac_nonzero"] == record.density
    assert sum(feature["freq_hist_data_bar_heights"]) == sum(record.histogram[1])
    assert "logits_hist_data_bar_heights" not in feature  # the cache has no vocabulary-wide logits
    top = feature["activations"][0]
    example = record.top_examples[0]
    assert (top["bin_min"], top["bin_max"], top["bin_contains"]) == (-1, record.max, -1)
    assert top["tokens"] == example.context
    assert top["values"][top["qualifying_token_index"]] == example.value
    assert sum(v is not None for v in top["values"]) == 1  # other tokens' activations are not stored
    n_interval = sum(len(ex) for *_, ex in record.intervals)
    assert len(feature["activations"]) == len(record.top_examples) + n_interval


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


def test_csv_has_a_row_per_latent_and_the_table_values(cache: LatentCache, tmp_path: Path) -> None:
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
    assert json.loads(rows[latent]["logits_top"]) == [t for t, _ in record.logits_top]
    assert rows[latent]["top_example"] == snippet(record.top_examples[0])
    subset = export_csv(cache, tmp_path / "two.csv", [4, 9])
    assert [r["latent"] for r in csv.DictReader(subset.open(encoding="utf-8"))] == ["4", "9"]


def test_bad_input_is_refused_clearly(cache: LatentCache, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"latent 32 is out of range: this SAE has latents 0\.\.31"):
        export_csv(cache, tmp_path / "x.csv", [0, 32])
    with pytest.raises(ValueError, match="unknown export format 'parquet'"):
        export(cache, "parquet", tmp_path / "x")
    with pytest.raises(ValueError, match=r"must end in \.json"):
        export_saedashboard(cache, tmp_path / "vis.txt")
    with pytest.raises(ValueError, match="is a directory"):
        export_csv(cache, tmp_path)
    with pytest.raises(ValueError, match="'x' is not a latent index"):
        parse_latents("0,x")
    assert parse_latents("0, 5,7") == [0, 5, 7]
    assert not (tmp_path / "x.csv").exists()


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
    args = parser.parse_args([*argv, "--latents", "2,4"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(out.read_text().splitlines()) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--format", "parquet", "--out", "x"])
