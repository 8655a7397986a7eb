"""The evaluation sweep on a tiny model: capability cost is zero without steering and grows with it,
rates and the trade-off outputs are well formed, and the CLI prints both columns of a steered run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from explorer.cli.main import main
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError, builtin_prompts
from explorer.saes.corpus import Corpus, CorpusConfig, build_corpus
from explorer.saes.loading import wrap_sae
from explorer.steering.decode import Steerer
from explorer.steering.evaluation import (
    EvalConfig,
    MCItem,
    capability_cost,
    evaluate,
    load_mc_file,
    mc_accuracy,
    points_csv,
    sweep_specs,
    trade_off_figure,
)
from explorer.steering.spec import Clamp, SteeringSpec
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def steerer(tiny: LoadedModel) -> Steerer:
    sae = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=1), "main", "main")
    return Steerer(tiny, {HOOK: sae}, None, {HOOK: torch.full((32,), 2.0)})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> Corpus:
    prompts = builtin_prompts("harmless", "test")[:6] + builtin_prompts("harmful", "test")[:2]
    config = CorpusConfig(seq_len=48, response_tokens=8, text_tokens=1000, heldout_fraction=0.5, batch_size=8)
    return build_corpus(tiny, config, prompts, tmp_path_factory.mktemp("eval-corpus"))


def test_capability_cost_is_zero_unsteered_and_grows_with_strength(steerer: Steerer, corpus: Corpus) -> None:
    rows = [r for r in range(len(corpus.sequences)) if corpus.sequences[r].kind == "chat"]
    ce, kl = capability_cost(steerer, SteeringSpec(), corpus, rows)
    assert ce == pytest.approx(0.0, abs=1e-6) and kl == pytest.approx(0.0, abs=1e-6)
    small = capability_cost(steerer, SteeringSpec((Clamp(HOOK, 3, "add", 5.0),)), corpus, rows)[1]
    large = capability_cost(steerer, SteeringSpec((Clamp(HOOK, 3, "add", 50.0),)), corpus, rows)[1]
    assert 0 < small < large


def test_sweep_is_evaluated_with_the_unsteered_model_first(steerer: Steerer, corpus: Corpus) -> None:
    settings = sweep_specs("set", [(HOOK, 3), (HOOK, 5)], [1.0, 20.0], "max")
    assert [label for label, _, _ in settings] == ["set 1×max", "set 20×max"]
    config = EvalConfig(split="test", n_harmful=3, n_harmless=3, max_new_tokens=4, loss_rows=4)
    points = evaluate(steerer, settings, corpus, config)
    assert [p.label for p in points] == ["unsteered", "set 1×max", "set 20×max"]
    assert points[0].ce_increase == pytest.approx(0.0, abs=1e-6)
    assert points[2].kl > points[1].kl > 0
    for p in points:
        assert 0.0 <= p.refusal_harmful <= 1.0 and p.n_harmful == 3 and p.n_harmless == 3
    csv_text = points_csv(points)
    assert csv_text.count("\n") == 4 and "refusal_harmless" in csv_text.splitlines()[0]
    figure = trade_off_figure(points)
    assert len(figure.data) == 4 and list(figure.data[0].x) == [1.0, 20.0]


def test_direction_sweeps_need_no_latents() -> None:
    (_, strength, spec), *_ = sweep_specs("direction-ablate", [], [])
    assert strength is None and spec.direction is not None and spec.direction.kind == "ablate"
    assert [s for _, s, _ in sweep_specs("direction-add", [], [0.5, 1.0])] == [0.5, 1.0]
    with pytest.raises(ValueError, match="at least one latent"):
        sweep_specs("multiply", [], [-3.0])


def test_multiple_choice_accuracy_and_file_errors(steerer: Steerer, tmp_path: Path) -> None:
    items = [MCItem("What is 2 + 2?", ["4", "4"], 0), MCItem("Capital of France?", ["Paris", "Paris"], 1)]
    # Identical choices tie, and a tie goes to the first choice: exactly one of the two is right.
    assert mc_accuracy(steerer, SteeringSpec(), items) == 0.5
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}) + "\n")
    assert load_mc_file(path) == [MCItem("q", ["a", "b"], 1)]
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(DataError, match="not one of 2 choices"):
        load_mc_file(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"mc\.jsonl:1"):
        load_mc_file(path)


def test_cli_generate_prints_default_and_steered_columns(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sae_path = tmp_path / "sae"
    tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=1).save_model(str(sae_path))
    args = ["generate", "--model", str(tiny_dir), "--sae", str(sae_path), "--prompt", "Tell me about owls."]
    args += ["--clamp", f"{HOOK}:3=set:40", "--max-new-tokens", "6", "--json"]
    assert main(args) == 0
    document = json.loads(capsys.readouterr().out)
    row = document["results"][0]
    assert row["default"]["steered"] is False and row["steered"]["steered"] is True
    assert row["default"]["token_ids"] != row["steered"]["token_ids"]
    assert document["spec"]["clamps"] == [
        {"hook": HOOK, "latent": 3, "mode": "set", "value": 40.0, "units": "raw"}
    ]
    assert "refused" in row["steered"]["verdict"]
    assert main([*args[:-3], "--clamp", f"{HOOK}:32=set:1"]) == 2
    assert "latent 32 is out of range" in capsys.readouterr().err
    assert main([*args[:-3], "--clamp", f"{HOOK}:3=set:nan"]) == 2
    assert "finite" in capsys.readouterr().err
