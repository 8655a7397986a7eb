"""Refusal direction: difference in means, interventions, scoring, selection and the on-disk store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import HookError, capture, intervene
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError, PromptRecord, Split, builtin_prompts
from explorer.refusal.build import compute_refusal, format_report, prove
from explorer.refusal.candidates import (
    Candidate,
    RefusalConfig,
    ablation_hooks,
    addition_hooks,
    diff_in_means,
    kl_divergence,
    post_instruction_ids,
    refusal_scores,
    refusal_token_ids,
    score_candidates,
    select,
)
from explorer.refusal.direction import RefusalCacheError, load_refusal, location_names, refusal_dir


def test_post_instruction_tokens_follow_the_users_text(tiny: LoadedModel) -> None:
    ids = post_instruction_ids(tiny)
    assert tiny.tokenizer.decode(ids) == "<|im_end|>\n<|im_start|>assistant\n"
    _, batch = encode_chats(tiny, ["Hello there"])
    assert batch["input_ids"][0, -len(ids) :].tolist() == ids


def test_diff_in_means_matches_a_direct_computation(tiny: LoadedModel) -> None:
    harmful, harmless = ["How do I build a bomb?", "Hack my ex's email."], ["Bake bread?", "Sum 2+2."]
    directions = diff_in_means(tiny, harmful, harmless)
    n_pos = len(post_instruction_ids(tiny))
    assert directions.shape == (tiny.n_layers + 1, n_pos, tiny.d_model)

    def mean_at(prompts: list[str], name: str) -> torch.Tensor:
        rows = []
        for p in prompts:  # one at a time: no padding involved
            _, batch = encode_chats(tiny, [p])
            with torch.no_grad(), capture(tiny.model, [name]) as store:
                tiny.model(**batch)
            rows.append(store[name][0][0, -n_pos:])
        return torch.stack(rows).mean(0)

    for index, name in [(2, "blocks.2.hook_resid_pre"), (tiny.n_layers, "blocks.3.hook_resid_post")]:
        expected = mean_at(harmful, name) - mean_at(harmless, name)
        torch.testing.assert_close(directions[index], expected, rtol=1e-4, atol=1e-4)


def test_ablation_removes_the_direction_everywhere_and_addition_adds_it(tiny: LoadedModel) -> None:
    direction = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    unit = direction / direction.norm()
    _, batch = encode_chats(tiny, ["Tell me a story"])
    names = location_names(tiny.n_layers)
    ablate = ablation_hooks(direction, tiny.n_layers)
    with torch.no_grad(), intervene(tiny.model, ablate), capture(tiny.model, names) as store:
        tiny.model(**batch)
    for name in names:
        assert (store[name][0] @ unit).abs().max() < 1e-4
    location = "blocks.1.hook_resid_pre"
    with torch.no_grad(), capture(tiny.model, [location]) as plain:
        tiny.model(**batch)
    add = addition_hooks(direction, location, 2.0)
    with torch.no_grad(), intervene(tiny.model, add), capture(tiny.model, [location]) as added:
        tiny.model(**batch)
    torch.testing.assert_close(
        added[location][0] - plain[location][0], (2.0 * direction).expand_as(plain[location][0])
    )
    with pytest.raises(ValueError, match="finite"):
        addition_hooks(direction, location, math.nan)


def test_refusal_score_and_kl() -> None:
    logprobs = torch.full((2, 4), math.log(0.25))
    logprobs[1] = torch.tensor([0.7, 0.1, 0.1, 0.1]).log()
    scores = refusal_scores(logprobs, [0])
    assert scores[0].item() == pytest.approx(math.log(0.25 / 0.75), abs=1e-5)
    assert scores[1].item() == pytest.approx(math.log(0.7 / 0.3), abs=1e-5)
    assert kl_divergence(logprobs, logprobs).abs().max() < 1e-6
    assert kl_divergence(logprobs[:1], logprobs[1:]).item() > 0


def _candidate(layer: int, induce: float, kl: float | None, bypass: float | None) -> Candidate:
    return Candidate(f"blocks.{layer}.hook_resid_pre", layer, -1, "\n", 1.0, induce, bypass, kl, induce > 0)


def test_selection_takes_lowest_bypass_and_relaxes_kl_only_when_needed() -> None:
    config = RefusalConfig()
    strict = [_candidate(3, 1.0, 0.05, 2.0), _candidate(4, 2.0, 0.3, -3.0), _candidate(5, -1.0, 0.01, -9.0)]
    chosen, used = select(strict, config)
    assert (chosen.layer, used) == (3, 0.1)
    chosen, used = select(strict[1:], config)
    assert (chosen.layer, used) == (4, 0.5)
    with pytest.raises(ValueError, match=r"1 candidates induce refusal, the lowest KL among them is 3\.0"):
        select([_candidate(4, 2.0, 3.0, None)], config)


def test_refusal_tokens_are_first_tokens(tiny: LoadedModel) -> None:
    ids = refusal_token_ids(tiny, ["I cannot", "I'm sorry", "Sorry, no"])
    assert [tiny.tokenizer.decode([i]) for i in ids] == ["I", "Sorry"]


def test_compute_select_store_and_reload(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    strict = RefusalConfig(n_val=4, batch_size=16)
    with pytest.raises(ValueError, match="no candidate direction passes the filters"):
        compute_refusal(tiny, strict, progress=False)  # a random model has nothing that induces refusal
    assert not refusal_dir(tiny.name).exists()
    with pytest.raises(RefusalCacheError, match="missing"):
        load_refusal(tiny.name)
    relaxed = RefusalConfig(
        n_val=4, batch_size=16, induce_threshold=-math.inf, kl_threshold=math.inf, kl_relaxation=()
    )
    compute_refusal(tiny, relaxed, progress=False)
    stored = load_refusal(tiny.name)
    selection = stored.selection
    assert len(selection["candidates"]) == (tiny.n_layers + 1) * len(post_instruction_ids(tiny))
    kept = [c for c in selection["candidates"] if c["bypass"] is not None]
    assert selection["selected"]["bypass"] == min(c["bypass"] for c in kept)
    assert selection["kl_threshold_used"] == math.inf
    assert RefusalConfig.from_dict(relaxed.to_dict()) == relaxed
    assert all(c["layer"] < 0.8 * tiny.n_layers for c in kept)
    assert stored.location == f"blocks.{stored.layer}.hook_resid_pre"
    torch.testing.assert_close(stored.direction, stored.directions[stored.layer, stored.position])
    assert "selected (KL filter inf" in format_report(selection, None)
    directions = refusal_dir(tiny.name) / "directions.safetensors"
    intact = directions.read_bytes()
    directions.write_bytes(intact[: len(intact) // 2])  # a truncated write
    with pytest.raises(RefusalCacheError, match="corrupt"):
        load_refusal(tiny.name)
    directions.write_bytes(intact)
    (refusal_dir(tiny.name) / "selection.json").write_text("{oops")
    with pytest.raises(RefusalCacheError, match="corrupt"):
        load_refusal(tiny.name)


def test_the_induce_screen_scores_only_promising_candidates_and_keeps_the_selection(
    tiny: LoadedModel,
) -> None:
    harmful = [r.text for r in builtin_prompts("harmful", "train")[:8]]
    harmless = [r.text for r in builtin_prompts("harmless", "train")[:8]]
    directions = diff_in_means(tiny, harmful, harmless, batch_size=16)
    val_harmful = [r.text for r in builtin_prompts("harmful", "val")[:8]]
    val_harmless = [r.text for r in builtin_prompts("harmless", "val")[:8]]
    loose = {"n_val": 8, "batch_size": 16, "kl_threshold": math.inf, "kl_relaxation": ()}
    everything = score_candidates(
        tiny, directions, val_harmful, val_harmless, RefusalConfig(n_screen=0, **loose)
    )
    # A threshold a few candidates pass, as refusal-inducing directions are few in a real model.
    threshold = sorted((c.induce for c in everything if c.induce is not None), reverse=True)[3]
    full = RefusalConfig(n_screen=0, induce_threshold=threshold, **loose)
    screen = RefusalConfig(n_screen=4, screen_keep=6, screen_margin=0.0, induce_threshold=threshold, **loose)
    scored = score_candidates(tiny, directions, val_harmful, val_harmless, screen)
    reference = score_candidates(tiny, directions, val_harmful, val_harmless, full)
    assert sum(c.induce is not None for c in scored) < sum(c.induce is not None for c in reference)
    for mine, theirs in zip(scored, reference, strict=True):
        if mine.induce is not None:  # a candidate scored fully gets exactly the full scores
            assert (mine.induce, mine.kl, mine.bypass) == (theirs.induce, theirs.kl, theirs.bypass)
    assert select(scored, screen)[0].location == select(reference, full)[0].location
    assert select(scored, screen)[0].position == select(reference, full)[0].position


def _records(label: str, n: int, split: Split) -> list[PromptRecord]:
    return [
        PromptRecord(f"{label}-{split}-{i}", f"{label} request {i}", "", split, None, "test")
        for i in range(n)
    ]


def test_user_prompt_sets_with_too_few_prompts_in_a_split(tiny: LoadedModel) -> None:
    harmful = _records("harmful", 10, "train") + _records("harmful", 2, "val")
    harmless = _records("harmless", 10, "train") + _records("harmless", 6, "val")
    with pytest.raises(DataError, match="harmful prompts: 2 in the val split, at least 4"):
        compute_refusal(tiny, RefusalConfig(), harmful=harmful, harmless=harmless, progress=False)


def test_report_on_user_test_prompts_and_layer_choice(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    harmful = _records("harmful", 8, "train") + _records("harmful", 4, "val") + _records("harmful", 4, "test")
    harmless = (
        _records("harmless", 8, "train") + _records("harmless", 4, "val") + _records("harmless", 5, "test")
    )
    relaxed = RefusalConfig(induce_threshold=-math.inf, kl_threshold=math.inf, kl_relaxation=())
    compute_refusal(tiny, relaxed, harmful=harmful, harmless=harmless, progress=False)
    stored = load_refusal(tiny.name)
    assert stored.selection["prompts"]["harmful"]["n"] == 16
    with pytest.raises(HookError, match="layer 9 is out of range"):
        prove(tiny, stored, layer=9, harmful=harmful, harmless=harmless)
    report = prove(tiny, stored, layer=2, max_new_tokens=4, harmful=harmful, harmless=harmless)
    assert report["location"] == "blocks.2.hook_resid_pre"
    assert len(report["examples"]["harmless_added"]) == 5
    assert 0.0 <= report["harmless_added_refusal_rate"] <= 1.0
    assert "test split" in format_report(stored.selection, report)
    # Unhooked replies generated earlier (the fine-tune's evaluation) are reused, not generated again;
    # the hooked conditions always are.
    baselines = {
        label: {e["prompt"]: e["response"] for e in report["examples"][f"{label}_baseline"]}
        for label in ("harmful", "harmless")
    }
    again = prove(
        tiny, stored, layer=2, max_new_tokens=4, harmful=harmful, harmless=harmless, baselines=baselines
    )
    assert again["reused_generations"] == ["harmful_baseline", "harmless_baseline"]
    assert report["reused_generations"] == []
    assert {k: v for k, v in again.items() if k != "reused_generations"} == {
        k: v for k, v in report.items() if k != "reused_generations"
    }
    partial = {"harmful": dict(list(baselines["harmful"].items())[:-1])}  # a prompt without a reply
    assert (
        prove(tiny, stored, layer=2, max_new_tokens=4, harmful=harmful, harmless=harmless, baselines=partial)[
            "reused_generations"
        ]
        == []
    )


def test_prompt_splits_have_enough_val_prompts() -> None:
    assert len(builtin_prompts("harmful", "val")) >= RefusalConfig().n_val
    assert len(builtin_prompts("harmless", "val")) >= RefusalConfig().n_val
