"""Setting a steering search up and reading it back: candidate lists, the config's round trip through a
stored study, and the command line on the tiny workspace (auto trigger, baselines, stored study)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV
from explorer.steering.evaluation import EvalConfig
from explorer.steering.search import SearchConfig, SearchError
from explorer.steering.search_setup import load_stored, parse_candidates, stored_studies


def test_a_candidate_list_reads_hook_and_latent_and_names_a_bad_entry() -> None:
    hook = "blocks.1.hook_resid_post"
    assert parse_candidates(f" {hook}:3, {hook}:12 ,") == [(hook, 3), (hook, 12)]
    with pytest.raises(SearchError, match="candidate 'twelve' is not HOOK:LATENT"):
        parse_candidates(f"{hook}:3, twelve")
    with pytest.raises(SearchError, match="not HOOK:LATENT"):
        parse_candidates(f"{hook}:-1")


def test_a_search_config_round_trips_through_its_dict_with_the_same_fingerprint() -> None:
    config = SearchConfig(
        "bypass",
        (("blocks.1.hook_resid_post", 3), ("blocks.1.hook_resid_post", 7)),
        ("multiply", "cap"),
        ("all", "generated"),
        ("blocks.0.hook_resid_post", 5),
        2.5,
        ("refusal", "kl"),
        EvalConfig("val", 4, 6, 8, loss_rows=2),
        ranges={"cap": (-1.0, 0.0)},
        seed=3,
        sampler="random",
    )
    stored = json.loads(json.dumps(config.to_dict()))  # as Optuna keeps it
    again = SearchConfig.from_dict(stored)
    assert again.to_dict() == config.to_dict() and again.fingerprint() == config.fingerprint()
    with pytest.raises(SearchError, match="not a steering search's config"):
        SearchConfig.from_dict({"goal": "refuse"})


def test_the_command_line_gates_on_a_harm_latent_and_stores_a_readable_study(
    tiny_dir: Path,
    app_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    storage = tmp_path / "studies.sqlite3"
    argv = ["search-steering", "--model", str(tiny_dir), "--candidates", "cosine", "--top", "2"]
    argv += ["--trigger", "auto", "--trials", "1", "--n-harmful", "2", "--n-harmless", "2"]
    # The tiny corpus has no held-out transcripts to measure KL on.
    argv += ["--objectives", "refusal,over-refusal", "--loss-rows", "0", "--max-new-tokens", "2"]
    argv += ["--remeasure", "1", "--test-n", "2"]
    argv += ["--no-elsewhere", "--storage", str(storage), "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    document = json.loads(capsys.readouterr().out)
    config = SearchConfig.from_dict(document["config"])
    assert config.trigger is not None and config.trigger_max > 0
    test = document["remeasured"]["test"]
    labels = [p["label"] for p in test["baselines"]]
    assert labels[0] == "unsteered" and any("gated on" in label for label in labels)
    assert len(test["recipe_beaten"]) == sum(label.startswith("recipe") for label in labels)
    assert stored_studies(storage) == [document["study"]]
    loaded, records = load_stored(storage, document["study"])
    assert loaded.fingerprint() == config.fingerprint()
    assert [r.spec for r in records] == [t["spec"] for t in document["trials"]]
    with pytest.raises(SearchError, match="no study 'elsewhere'"):
        load_stored(storage, "elsewhere")
