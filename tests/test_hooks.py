"""Residual hooks: reads match output_hidden_states, writes reach the logits, hooks never outlive a call."""

from __future__ import annotations

import pytest
import torch

from explorer.core.hooks import (
    HookError,
    capture,
    decoder_layers,
    hook_names,
    intervene,
    parse_hook_name,
    run_to,
)
from explorer.latents.effects import final_norm_scale
from tests.helpers import FAMILIES, OTHER_FAMILIES, tiny_model


def _inputs(vocab: int, batch: int = 2, pos: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, pos), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on the second row
    return {"input_ids": ids, "attention_mask": mask}


def _hook_count(model: torch.nn.Module) -> int:
    """Forward hooks on the model; transformers registers some of its own, so tests compare counts."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _baseline_hooks(model: torch.nn.Module) -> int:
    """Hook count after one plain forward pass, once transformers has attached its own recorders."""
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 2, dtype=torch.long), output_hidden_states=True)
    return _hook_count(model)


@pytest.mark.parametrize("family", FAMILIES + OTHER_FAMILIES)
def test_reads_equal_output_hidden_states(family: str) -> None:
    model = tiny_model(family, vocab_size=512)
    hooks_before = _baseline_hooks(model)
    inputs = _inputs(512)
    n = len(decoder_layers(model))
    with torch.no_grad(), capture(model, hook_names(n)) as store:
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states
    for i in range(n):
        torch.testing.assert_close(store[f"blocks.{i}.hook_resid_pre"][0], hidden[i], rtol=0, atol=0)
        if i < n - 1:  # HF's last hidden state has the final norm applied; resid_post does not
            torch.testing.assert_close(store[f"blocks.{i}.hook_resid_post"][0], hidden[i + 1], rtol=0, atol=0)
    assert _hook_count(model) == hooks_before


@pytest.mark.parametrize("family", FAMILIES + OTHER_FAMILIES)
def test_writes_change_downstream_logits_and_identity_does_not(family: str) -> None:
    model = tiny_model(family, vocab_size=512)
    hooks_before = _baseline_hooks(model)
    inputs = _inputs(512)
    with torch.no_grad():
        base = model(**inputs).logits
        with intervene(model, {"blocks.1.hook_resid_post": lambda act, name: act}):
            same = model(**inputs).logits
        # not a constant shift: a LayerNorm (GPT-NeoX, OPT) subtracts the mean and would undo it
        ramp = torch.linspace(0.0, 3.0, model.config.hidden_size)
        with intervene(model, {"blocks.1.hook_resid_pre": lambda act, name: act + ramp}):
            pre_edited = model(**inputs).logits
        with intervene(model, {"blocks.1.hook_resid_post": lambda act, name: act * 0.0}):
            post_edited = model(**inputs).logits
    assert torch.equal(base, same)
    assert (pre_edited - base).abs().max() > 1e-2
    assert (post_edited - base).abs().max() > 1e-2
    assert _hook_count(model) == hooks_before


def test_captures_see_edits_made_by_enclosing_intervention() -> None:
    model = tiny_model("llama", vocab_size=512)
    inputs = _inputs(512)
    name = "blocks.2.hook_resid_pre"
    with (
        torch.no_grad(),
        intervene(model, {name: lambda act, _: torch.zeros_like(act)}),
        capture(model, [name]) as s,
    ):
        model(**inputs)
    assert s[name][0].abs().max() == 0


def test_hooks_are_removed_when_the_body_raises() -> None:
    model = tiny_model("llama", vocab_size=512)
    hooks_before = _baseline_hooks(model)
    inputs = _inputs(512)
    with torch.no_grad():
        base = model(**inputs).logits
        with (
            pytest.raises(RuntimeError, match="boom"),
            intervene(model, {"blocks.0.hook_resid_post": lambda a, _: a * 2}),
        ):
            raise RuntimeError("boom")
        with pytest.raises(RuntimeError, match="boom"), capture(model, ["blocks.3.hook_resid_pre"]):
            raise RuntimeError("boom")
        after = model(**inputs).logits
    assert _hook_count(model) == hooks_before
    assert torch.equal(base, after)


def test_run_to_stops_early_with_the_same_activations() -> None:
    model = tiny_model("llama", vocab_size=512, n_layers=6)
    hooks_before = _baseline_hooks(model)
    inputs = _inputs(512)
    names = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_pre"]
    with torch.no_grad(), capture(model, names) as full:
        model(**inputs)
    calls: list[int] = []
    layers = decoder_layers(model)
    handles = [layers[i].register_forward_pre_hook(lambda *_a, _i=i: calls.append(_i)) for i in range(6)]
    try:
        early = run_to(model, inputs["input_ids"], names, inputs["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2, 3]  # layer 3 starts (its resid_pre is read), layers 4 and 5 never run
    for name in names:
        torch.testing.assert_close(early[name], full[name][0], rtol=0, atol=0)
    assert _hook_count(model) == hooks_before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("blocks.4.hook_resid_pre", "out of range"),
        ("blocks.-1.hook_resid_pre", "unknown hook"),
        ("blocks.0.hook_attn_out", "unknown hook"),
        ("resid_post", "unknown hook"),
    ],
)
def test_bad_hook_names_are_clear_errors(name: str, message: str) -> None:
    model = tiny_model("llama", vocab_size=512)
    hooks_before = _baseline_hooks(model)
    with pytest.raises(HookError, match=message):
        parse_hook_name(name, 4)
    with pytest.raises(HookError, match=message), intervene(model, {name: lambda a, _: a}):
        pass
    assert _hook_count(model) == hooks_before


def test_hook_names_cover_every_layer_in_forward_order() -> None:
    names = hook_names(3)
    assert names[:3] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    assert len(names) == 6
    depths = [parse_hook_name(n, 3).depth for n in names]
    assert depths == sorted(depths)


@pytest.mark.parametrize(
    ("family", "path"),
    [
        ("llama", "model.norm"),
        ("gemma2", "model.norm"),
        ("gpt_neox", "gpt_neox.final_layer_norm"),
        ("opt", "model.decoder.final_layer_norm"),
    ],
)
def test_logit_effects_use_each_familys_final_norm(family: str, path: str) -> None:
    model = tiny_model(family, vocab_size=512)
    weight = model.get_submodule(path).get_parameter("weight")
    with torch.no_grad():
        weight.copy_(torch.linspace(0.5, 2.0, model.config.hidden_size))
    expected = weight.detach() + (1 if family == "gemma2" else 0)  # Gemma's RMSNorm scales by 1 + w
    torch.testing.assert_close(final_norm_scale(model), expected)
