"""The prompt inspector on a tiny model: its latents and projections equal a brute-force forward pass, its
tokens join back to the chat-templated text, and bad input fails with a named error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import capture
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError, chat_messages, format_chat
from explorer.latents.inspector import (
    InspectError,
    PromptInspection,
    inspect_prompt,
    latent_summaries,
)
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.saes.loading import LoadedSAE, wrap_sae
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
LOCATION = "blocks.1.hook_resid_pre"
PROMPT = "How do I bake a 🍰 cake?\n\nThanks  é"
D_SAE = 48


@pytest.fixture(scope="module")
def sae() -> LoadedSAE:
    """A ReLU SAE: many latents fire per token, so the top-k cut is exercised."""
    return wrap_sae(tiny_sae("standard", d_in=64, d_sae=D_SAE, hook=HOOK, seed=3), "test", "test")


@pytest.fixture(scope="module")
def refusal() -> RefusalDirection:
    generator = torch.Generator().manual_seed(5)
    return RefusalDirection(
        torch.randn(64, generator=generator) * 3, LOCATION, 1, -1, torch.randn(5, 4, 64), {}
    )


def _reference(tiny: LoadedModel, names: list[str]) -> dict[str, torch.Tensor]:
    """Residuals of a full forward pass over the chat-templated PROMPT: name -> [pos, d_model]."""
    _, batch = encode_chats(tiny, [PROMPT])
    with capture(tiny.model, names) as store, torch.no_grad():
        tiny.model(**batch)
    return {name: store[name][0][0] for name in names}


def _inspect(tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection, **kwargs) -> PromptInspection:
    return inspect_prompt((tiny, {HOOK: sae}, refusal), PROMPT, HOOK, **kwargs)


def test_top_latents_equal_a_brute_force_encode(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    result = _inspect(tiny, sae, refusal, top_k=5)
    acts = sae.sae.encode(_reference(tiny, [HOOK])[HOOK]).detach()
    assert len(result.top) == acts.shape[0] == len(result.tokens)
    assert result.l0 == (acts > 0).sum(-1).tolist()
    assert max(result.l0) > 5  # the cut at top_k matters
    for row, token in zip(acts, result.top, strict=True):
        values, indices = row.topk(5)
        firing = values > 0
        assert token.latents == indices[firing].tolist()
        assert token.activations == pytest.approx(values[firing].tolist(), abs=1e-5)
        assert token.fractions == [None] * len(token.latents)  # no corpus maxima given


def test_prompt_latents_follow_the_counted_tokens_only(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    result = _inspect(tiny, sae, refusal)
    acts = sae.sae.encode(_reference(tiny, [HOOK])[HOOK]).detach()
    counted = torch.tensor([not e for e in result.excluded])
    assert result.excluded[0] and not all(result.excluded)
    assert result.special[0] and result.tokens[0] == "<|im_start|>"
    peak = acts[counted].max(0).values
    assert result.prompt_latents == peak.topk(len(result.prompt_latents)).indices.tolist()
    assert torch.tensor(result.prompt_activations) == pytest.approx(
        acts[:, result.prompt_latents].T, abs=1e-5
    )
    # counting the special tokens would change the ranking
    n = len(result.prompt_latents)
    assert result.prompt_latents != acts.max(0).values.topk(n).indices.tolist()


def test_fractions_are_activations_over_the_corpus_max(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    peaks = torch.linspace(0.5, 4.0, D_SAE)
    plain = _inspect(tiny, sae, refusal)
    dead = plain.prompt_latents[0]
    peaks[dead] = 0.0
    result = _inspect(tiny, sae, refusal, max_activations={HOOK: peaks})
    assert result.has_max and not plain.has_max
    for token in result.top:
        for latent, value, fraction in zip(token.latents, token.activations, token.fractions, strict=True):
            assert fraction == (None if latent == dead else pytest.approx(value / float(peaks[latent])))
    assert result.prompt_fractions is not None
    assert result.prompt_fractions[0] == [None] * len(result.tokens)
    second = result.prompt_latents[1]
    assert result.prompt_fractions[1] == pytest.approx(
        [v / float(peaks[second]) for v in result.prompt_activations[1]]
    )


def test_refusal_projection_is_residual_dot_unit_direction(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    result = _inspect(tiny, sae, refusal, every_layer=True)
    locations = location_names(tiny.n_layers)
    reference = _reference(tiny, locations)
    unit = refusal.direction / refusal.direction.norm()
    assert result.refusal_location == LOCATION
    assert result.refusal_projection == pytest.approx((reference[LOCATION] @ unit).tolist(), abs=1e-4)
    assert result.layer_locations == locations
    for name, row in zip(locations, result.layer_projections, strict=True):
        assert row == pytest.approx((reference[name] @ unit).tolist(), abs=1e-4)
    assert _inspect(tiny, sae, refusal).layer_projections == []


def test_tokens_round_trip_to_the_chat_templated_text(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    result = _inspect(tiny, sae, refusal)
    text = format_chat(tiny.tokenizer, chat_messages(PROMPT))
    assert result.text == text
    assert "".join(result.tokens) == text
    assert result.token_ids == tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "" in result.tokens  # the emoji's later bytes
    assert " 🍰" in result.tokens and "<|im_end|>" in result.tokens
    assert [t for t, s in zip(result.tokens, result.special, strict=True) if s] == [
        t for t in result.tokens if t.startswith("<|")
    ]


def test_the_forward_pass_stops_at_the_deepest_needed_hook(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    with capture(tiny.model, ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]) as seen:
        _inspect(tiny, sae, refusal)
    assert len(seen["blocks.1.hook_resid_post"]) == 1
    assert seen["blocks.2.hook_resid_post"] == []  # layer 2 never ran: the SAE reads its input


def test_without_an_sae_only_the_projection_is_read(tiny: LoadedModel, refusal: RefusalDirection) -> None:
    result = inspect_prompt((tiny, {}, refusal), PROMPT, None)
    assert result.hook is None and result.top == [] and result.prompt_latents == []
    assert result.refusal_projection is not None and len(result.refusal_projection) == len(result.tokens)


def test_bad_input_is_a_named_error(tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection) -> None:
    with pytest.raises(InspectError, match=r"no SAE at 'blocks.3.hook_resid_pre'.*blocks.2"):
        inspect_prompt((tiny, {HOOK: sae}, refusal), PROMPT, "blocks.3.hook_resid_pre")
    with pytest.raises(InspectError, match="nothing to inspect"):
        inspect_prompt((tiny, {HOOK: sae}, None), PROMPT, None)
    with pytest.raises(DataError, match="empty"):
        inspect_prompt((tiny, {HOOK: sae}, refusal), "  ", HOOK)
    with pytest.raises(DataError, match="exceeds the model's context of 256"):
        inspect_prompt((tiny, {HOOK: sae}, refusal), "owl " * 300, HOOK)
    with pytest.raises(InspectError, match="top_k"):
        inspect_prompt((tiny, {HOOK: sae}, refusal), PROMPT, HOOK, top_k=0)


def test_a_workspace_supplies_the_corpus_max_and_latent_summaries(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    from explorer.workspace import load_workspace

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(app_cache))
    workspace = load_workspace(str(tiny_dir))
    assert workspace.main is not None and workspace.refusal is not None
    cache = workspace.caches[workspace.main]
    result = inspect_prompt(workspace, PROMPT, workspace.main, top_k=4)
    peaks = cache.column("max")
    token = next(t for t, e in zip(result.top, result.excluded, strict=True) if t.latents and not e)
    assert token.fractions == pytest.approx(
        [v / float(peaks[i]) for i, v in zip(token.latents, token.activations, strict=True)]
    )
    top = cache.top_latents("refusal_cos", 3)
    cos = cache.column("refusal_cos")
    assert [float(cos[i]) for i in top] == sorted(cos.tolist(), reverse=True)[:3]
    summaries = latent_summaries(cache, top)
    assert [s.latent for s in summaries] == top
    assert summaries[0].refusal_cos == pytest.approx(float(cos[top[0]]))
    assert summaries[0].density == pytest.approx(float(cache.column("density")[top[0]]))
    assert 0 < len(summaries[0].top_logits) <= 5
