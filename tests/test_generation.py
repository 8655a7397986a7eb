"""Plain generation: deterministic, batch-independent, and guarded against bad prompts."""

from __future__ import annotations

import pytest
import torch

from explorer.core.generation import SamplingConfig, encode_chats, generate
from explorer.core.hooks import intervene
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError


def test_greedy_is_deterministic_and_independent_of_batching(tiny: LoadedModel) -> None:
    prompts = ["Hi", "Write a long poem about the sea and the sky, please."]
    sampling = SamplingConfig(max_new_tokens=8)
    batched = generate(tiny, prompts, sampling)
    alone = [generate(tiny, [p], sampling)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert all(len(c.token_ids) <= 8 for c in batched)
    assert batched[0].n_prompt_tokens < batched[1].n_prompt_tokens


def test_sampling_is_seeded(tiny: LoadedModel) -> None:
    def run(seed: int) -> list[int]:
        config = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=seed)
        return generate(tiny, ["Tell me something."], config)[0].token_ids

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_interventions_reach_generation(tiny: LoadedModel) -> None:
    sampling = SamplingConfig(max_new_tokens=6)
    base = generate(tiny, ["Hello"], sampling)[0]
    direction = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    with intervene(tiny.model, {"blocks.1.hook_resid_post": lambda act, _: act + 50 * direction}):
        steered = generate(tiny, ["Hello"], sampling)[0]
    assert steered.token_ids != base.token_ids
    assert generate(tiny, ["Hello"], sampling)[0].token_ids == base.token_ids


def test_multi_turn_and_system_prompt(tiny: LoadedModel) -> None:
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
    ]
    texts, _ = encode_chats(tiny, [chat], system="Be brief.")
    assert texts[0].count("<|im_start|>user") == 2 and "Be brief." in texts[0]


def test_bad_prompts_and_settings(tiny: LoadedModel) -> None:
    with pytest.raises(DataError, match="empty"):
        generate(tiny, [""])
    with pytest.raises(DataError, match="empty"):
        generate(tiny, [[{"role": "user", "content": " "}]])
    with pytest.raises(DataError, match="exceeds the model's context of 256"):
        generate(tiny, ["word " * 300])
    with pytest.raises(ValueError, match="temperature must be a finite"):
        SamplingConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    config = SamplingConfig(temperature=0.7, top_p=0.9, seed=5)
    assert SamplingConfig.from_dict(config.to_dict()) == config
