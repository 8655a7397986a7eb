"""Training with SAELens's trainer, saving in SAELens format, and the SAE stage end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.paths import CACHE_ENV
from explorer.saes.build import SAEStageConfig, build_saes, is_complete, read_index, read_report, stage_hooks
from explorer.saes.corpus import CorpusConfig
from explorer.saes.loading import load_sae, load_sae_dir
from explorer.saes.quality import reconstruction_metrics
from explorer.saes.training import Architecture, SAETrainConfig, save_sae, train_sae


def sparse_data(n: int, d_in: int = 16, n_features: int = 32, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Sums of `active` of `n_features` fixed unit directions (the same for every seed; `seed` draws the
    codes), so an SAE can learn the directions and be tested on fresh codes."""
    features = torch.nn.functional.normalize(
        torch.randn(n_features, d_in, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, n_features)
    idx = torch.rand(n, n_features, generator=g).argsort(dim=1)[:, :active]
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) * 4 + 1)
    return codes @ features


def test_config_round_trip_and_validation() -> None:
    config = SAETrainConfig(architecture="batchtopk", d_sae=64, k=4, training_samples=1000, batch_size=100)
    assert SAETrainConfig.from_dict(config.to_dict()) == config
    assert config.steps == 10
    with pytest.raises(ValueError, match="architecture"):
        SAETrainConfig(architecture="mystery")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="k <= d_sae"):
        SAETrainConfig(d_sae=8, k=9)
    with pytest.raises(ValueError, match="at least one batch"):
        SAETrainConfig(training_samples=10, batch_size=100)
    assert CorpusConfig.from_dict(CorpusConfig(seq_len=64).to_dict()) == CorpusConfig(seq_len=64)
    with pytest.raises(ValueError, match="must include 0"):
        SAEStageConfig(layer_offsets=(-1, 1))


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_trained_sae_learns_sparse_features_and_saves_in_saelens_format(
    tmp_path: Path, architecture: Architecture
) -> None:
    train, heldout = (
        sparse_data(20_000, d_in=32, n_features=64),
        sparse_data(4_000, d_in=32, n_features=64, seed=1),
    )
    config = SAETrainConfig(
        architecture=architecture,
        d_sae=64,
        k=4,
        training_samples=60_000,
        batch_size=500,
        lr=1e-2,
        autocast=False,
    )
    sae, summary = train_sae(train, config, hook="blocks.1.hook_resid_pre", model_name="tiny")
    assert summary["steps"] == 120 and summary["epochs"] == 3.0
    directory = save_sae(sae, tmp_path / "sae", {"note": "test"})
    loaded = load_sae_dir(directory)
    assert loaded.hook == "blocks.1.hook_resid_pre"
    assert loaded.sae.cfg.metadata.get("model_name") == "tiny"
    assert json.loads((directory / "provenance.json").read_text())["note"] == "test"
    metrics = reconstruction_metrics(loaded, heldout)
    assert metrics["explained_variance"] > 0.8, metrics
    assert metrics["l0"]["mean"] <= 8
    untrained = SAETrainConfig(architecture=architecture, d_sae=64, k=4, training_samples=500, batch_size=500)
    first, _ = train_sae(train, untrained, hook="blocks.1.hook_resid_pre", model_name="tiny")
    directory = save_sae(first, tmp_path / "first", {})
    assert (
        reconstruction_metrics(load_sae_dir(directory), heldout)["explained_variance"]
        < metrics["explained_variance"]
    )


def _fake_refusal(cache: Path, model_name: str, n_layers: int, d_model: int, layer: int) -> None:
    """A stored refusal direction for the tiny model, in the layout `explorer refusal` writes."""
    directory = cache / "refusal" / model_name
    directory.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(
        {"directions": torch.randn(n_layers + 1, 6, d_model)}, str(directory / "directions.safetensors")
    )
    selected = {"layer": layer, "position": -1, "location": f"blocks.{layer}.hook_resid_pre"}
    (directory / "selection.json").write_text(json.dumps({"selected": selected}))


def test_sae_stage_end_to_end_on_a_tiny_model(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    _fake_refusal(tmp_path, tiny_dir.name, n_layers=4, d_model=64, layer=2)
    small = SAETrainConfig(d_sae=128, k=8, training_samples=4000, batch_size=500, autocast=False)
    config = SAEStageConfig(
        layer_offsets=(-1, 0, 1),
        main=small,
        side=small,
        corpus=CorpusConfig(
            seq_len=32, response_tokens=4, text_tokens=3000, prompts_per_label=8, batch_size=8
        ),
        fast_dtype=None,
        loss_rows=6,
    )
    index = build_saes(str(tiny_dir), config)
    assert index["hooks"] == ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"]
    assert index["main"] == "blocks.2.hook_resid_pre"
    assert is_complete(tiny_dir.name)
    assert read_index(tiny_dir.name) == json.loads(json.dumps(index))
    report = read_report(tiny_dir.name, "blocks.2.hook_resid_pre")
    assert report["refusal"]["is_selected_location"] is True
    assert report["reconstruction"]["tokens"] > 100
    assert set(report["targets"]) == {"explained_variance", "l0", "dead_fraction", "unseen_genres"}
    # Every held-out source is reported; the genres held out whole were never trained on.
    sources = report["by_source"]
    assert {name for name, s in sources.items() if not s["trained_on"]} == set(CorpusConfig().heldout_sources)
    trained = {*CorpusConfig().train_sources, "chat"}
    assert all(s["trained_on"] == (name in trained) for name, s in sources.items())
    assert sum(s["tokens"] for s in sources.values()) == report["reconstruction"]["tokens"]
    assert report["targets"]["unseen_genres"] == all(
        s["explained_variance"] >= 0.85 for s in sources.values() if not s["trained_on"]
    )
    assert report["loss"]["ce_clean"] > 0
    # Built SAEs load by name and carry provenance.
    sae = load_sae(f"{tiny_dir.name}/blocks.2.hook_resid_pre")
    assert sae.hook == "blocks.2.hook_resid_pre"
    # A rerun reuses the corpus and the activations (their manifests are untouched).
    stamp = (tmp_path / "activations" / tiny_dir.name / "train" / "activations.json").stat().st_mtime_ns
    build_saes(str(tiny_dir), config)
    assert (
        tmp_path / "activations" / tiny_dir.name / "train" / "activations.json"
    ).stat().st_mtime_ns == stamp


def test_stage_hooks_clip_to_the_model() -> None:
    from explorer.refusal.direction import RefusalDirection

    refusal = RefusalDirection(torch.zeros(4), "blocks.28.hook_resid_pre", 28, -1, torch.zeros(31, 6, 4), {})
    assert stage_hooks(refusal, 30, (-6, 0, 4)) == [
        "blocks.22.hook_resid_pre",
        "blocks.28.hook_resid_pre",
        "blocks.29.hook_resid_pre",
    ]


@pytest.mark.integration
def test_sae_on_the_offline_default_end_to_end(tmp_path: Path) -> None:
    """Real SmolLM2: corpus rows through the early-stopping forward, an SAE trained on them with SAELens,
    saved, reloaded and checked against the model."""
    from explorer.core.models import load_model, special_token_ids
    from explorer.saes.activations import collect, load_activations
    from explorer.saes.corpus import Corpus, SequenceInfo, assemble
    from explorer.saes.loading import SAEError, load_sae_for

    loaded = load_model("default-base")
    texts = [
        f"Paragraph {i}: the lighthouse keeper wrote about storms, ships and the sea." for i in range(24)
    ]
    rows = [list(loaded.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]  # pyright: ignore[reportArgumentType]
    infos = [SequenceInfo(f"t{i}", "text", "train", None, 0, len(r)) for i, r in enumerate(rows)]
    ids, mask = assemble(rows, infos, 32, 0, special_token_ids(loaded.tokenizer))
    corpus = Corpus(ids, mask, infos, {})
    hook = "blocks.23.hook_resid_pre"
    manifest = collect(loaded, corpus, [hook], tmp_path / "acts", "train")
    acts = load_activations(tmp_path / "acts", hook, "train").acts
    assert len(acts) == manifest["tokens"] == corpus.n_tokens()
    # Position 0 (norm ~100x the rest) never reaches the SAE.
    assert acts.float().norm(dim=-1).max() < 20 * acts.float().norm(dim=-1).median()
    config = SAETrainConfig(d_sae=256, k=8, training_samples=2048, batch_size=128)
    sae, _ = train_sae(acts, config, hook=hook, model_name=loaded.name)
    directory = save_sae(sae, tmp_path / "sae", {})
    assert load_sae_for(loaded, str(directory)).d_in == 576
    narrow = save_sae(
        train_sae(acts[:, :64].contiguous(), config, hook=hook, model_name="x")[0], tmp_path / "n", {}
    )
    with pytest.raises(SAEError, match="d_in 64 but model"):
        load_sae_for(loaded, str(narrow))
