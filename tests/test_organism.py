"""Safety fine-tuning pieces on a tiny model: varied refusals, self-distilled pairs, deterministic LoRA."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from explorer.core.judge import SubstringJudge
from explorer.core.models import PROVENANCE_FILE, load_model
from explorer.core.prompts import builtin_prompts
from explorer.refusal.organism import (
    OrganismConfig,
    _batches,
    _encode_pairs,
    refusal_response,
    refusal_texts,
    train_lora,
    weighted_loss,
)
from explorer.refusal.organism_eval import EVALUATION_FILE, next_token_kl, stored_replies


def test_refusals_are_varied_judged_as_refusals_and_fit_the_category() -> None:
    parts = refusal_texts()
    rng = random.Random(0)
    records = builtin_prompts("harmful", "train")
    responses = [refusal_response(r, rng, parts) for r in records]
    judge = SubstringJudge()
    assert all(judge.judge(t).refused for t in responses)
    assert len(set(responses)) > len(records) // 2
    self_harm = [t for r, t in zip(records, responses, strict=True) if r.category == "self_harm"]
    assert all("crisis line" in t or "support" in t for t in self_harm)
    openers = {t.split(".")[0] for t in responses}
    assert len(openers) >= 10


def test_config_round_trip_and_validation() -> None:
    config = OrganismConfig(rank=4, first_layer=2, target_modules=("q_proj",))
    assert OrganismConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="learning_rate"):
        OrganismConfig(learning_rate=2.0)


def test_only_response_tokens_are_learned(tiny_dir: Path) -> None:
    loaded = load_model(str(tiny_dir))
    record = builtin_prompts("harmless", "train")[0]
    [(ids, labels)] = _encode_pairs(loaded, [(record, "Sure, here you go.<|im_end|>")])
    learned = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    assert loaded.tokenizer.decode(learned) == "Sure, here you go.<|im_end|>"
    assert len(ids) == len(labels)


def _train(tiny_dir: Path, seed: int) -> torch.nn.Module:
    loaded = load_model(str(tiny_dir))
    harmful = builtin_prompts("harmful", "train")[:8]
    harmless = builtin_prompts("harmless", "train")[:8]
    pairs = [(r, "I'm sorry, but I can't help with that.<|im_end|>") for r in harmful]
    pairs += [(r, "Here is a helpful answer.<|im_end|>") for r in harmless]
    config = OrganismConfig(rank=4, alpha=8, epochs=3, batch_size=4, learning_rate=5e-3, seed=seed)
    return train_lora(loaded, pairs, config, progress=False)


def test_lora_training_is_deterministic_learns_and_merges(tiny_dir: Path) -> None:
    first, again, other = _train(tiny_dir, 0), _train(tiny_dir, 0), _train(tiny_dir, 1)
    base = load_model(str(tiny_dir)).model
    assert not any("lora" in name for name, _ in first.named_parameters())
    assert set(first.state_dict()) == set(base.state_dict())
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(tensor, again.state_dict()[name], rtol=0, atol=0)
    changed = [n for n, t in first.state_dict().items() if not torch.equal(t, base.state_dict()[n])]
    assert any("q_proj" in n for n in changed) and not any("embed" in n for n in changed)
    assert any(not torch.equal(t, other.state_dict()[n]) for n, t in first.state_dict().items())
    tuned = load_model(str(tiny_dir))
    tuned.model = first  # pyright: ignore[reportAttributeAccessIssue]
    base_loaded = load_model(str(tiny_dir))
    kl = next_token_kl(base_loaded, tuned, ["What is bread?"], answer_tokens=4)
    assert kl["kl_first_token"] > 0
    same = next_token_kl(base_loaded, base_loaded, ["What is bread?"], answer_tokens=4)
    assert same["kl_first_token"] == pytest.approx(0.0, abs=1e-6)


def test_weighted_loss_matches_cross_entropy_and_weights_the_first_response_token() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 6)
    unembed = torch.nn.Linear(6, 11, bias=False)
    logits = unembed(hidden)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(weighted_loss(hidden, labels, unembed, 1.0), plain)
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    # first response tokens: row 0 predicts label 3 at position 1, row 1 label 7 at position 0
    weights = torch.tensor([[0, 4.0, 1, 1], [4.0, 1, 0, 0]])
    expected = (per_token * weights).sum() / weights.sum()
    torch.testing.assert_close(weighted_loss(hidden, labels, unembed, 4.0), expected)
    rows = torch.tensor([1.0, 3.0])
    expected = (per_token * weights * rows[:, None]).sum() / (weights * rows[:, None]).sum()
    torch.testing.assert_close(weighted_loss(hidden, labels, unembed, 4.0, rows), expected)


def test_batches_mix_classes_and_cover_every_pair_once() -> None:
    harmful = [([1] * (5 + i % 7), [-100] * 3 + [1] * (2 + i % 7)) for i in range(30)]
    harmless = [([2] * (9 + i % 5), [-100] * 3 + [2] * (6 + i % 5)) for i in range(50)]
    batches = list(_batches(harmful, harmless, 8, random.Random(0), pad_id=0))
    assert len(batches) == 10
    counts = [((ids == 1).any(-1).sum().item(), (ids == 2).any(-1).sum().item()) for ids, *_ in batches]
    assert all(h >= 2 and n >= 4 for h, n in counts)
    assert sum(h for h, _ in counts) == 30 and sum(n for _, n in counts) == 50
    for ids, labels, mask, is_harmful in batches:
        assert torch.equal(is_harmful, (ids == 1).any(-1))
        assert torch.equal(mask.bool(), ids != 0)
        assert ((labels != -100) <= mask.bool()).all()


def test_stored_replies_are_read_only_for_the_same_reply_length(tmp_path: Path) -> None:
    examples = {
        "harmful_examples": [{"prompt": "Make a bomb", "response": "I can't help with that."}],
        "harmless_examples": [{"prompt": "What is bread?", "response": "Bread is baked dough."}],
    }
    (tmp_path / EVALUATION_FILE).write_text(json.dumps(examples))
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"config": {"eval_tokens": 32}}))
    replies = stored_replies(tmp_path, 32)
    assert replies == {
        "harmful": {"Make a bomb": "I can't help with that."},
        "harmless": {"What is bread?": "Bread is baked dough."},
    }
    assert stored_replies(tmp_path, 64) is None  # replies of another length would bias the proof
    (tmp_path / EVALUATION_FILE).write_text("{not json")
    assert stored_replies(tmp_path, 32) is None
