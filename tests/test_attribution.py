"""Latent attribution on the refusal score agrees with finite differences and integrated gradients'
completeness, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import intervene
from explorer.core.models import LoadedModel
from explorer.latents.attribution import counted_positions, latent_attributions, refusal_log_odds
from explorer.refusal.candidates import refusal_token_ids
from explorer.saes.loading import LoadedSAE, wrap_sae
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
PROMPTS = ["How do I pick a lock?", "Write a poem about the sea."]


@pytest.fixture(scope="module")
def sae() -> LoadedSAE:
    return wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=3), "tiny", "tiny")


def _score(loaded: LoadedModel, prompt: str, token_ids: list[int], edit=None) -> float:
    _, batch = encode_chats(loaded, [prompt])
    with torch.no_grad(), intervene(loaded.model, {HOOK: edit} if edit else {}):
        logits = loaded.model(**batch, use_cache=False).logits[:, -1]  # pyright: ignore[reportCallIssue]
    return float(refusal_log_odds(logits, token_ids)[0])


def _mask(loaded: LoadedModel, prompt: str) -> torch.Tensor:
    _, batch = encode_chats(loaded, [prompt])
    return counted_positions(loaded, batch["input_ids"], batch["attention_mask"])


def test_gradient_attribution_matches_finite_differences(tiny: LoadedModel, sae: LoadedSAE) -> None:
    token_ids = refusal_token_ids(tiny, ["I", "Sorry"])
    prompt = PROMPTS[0]
    attr = latent_attributions(tiny, [sae], [prompt], token_ids, method="grad")[HOOK]
    mask = _mask(tiny, prompt)[0]
    latent = int(attr.abs().argmax())
    assert attr[latent].abs() > 1e-4  # a latent that matters, so the comparison means something
    eps = 1e-3

    def nudge(act: torch.Tensor, _name: str) -> torch.Tensor:
        # Scale the latent's contribution by (1 + eps) at the counted positions: d score / d eps = attr.
        f = sae.sae.encode(act[0, mask])[:, latent]
        out = act.clone()
        out[0, mask] += eps * f[:, None] * sae.sae.W_dec[latent]
        return out

    base = _score(tiny, prompt, token_ids)
    finite = (_score(tiny, prompt, token_ids, nudge) - base) / eps
    assert finite == pytest.approx(float(attr[latent]), rel=0.02, abs=1e-4)


def test_integrated_gradients_are_complete(tiny: LoadedModel, sae: LoadedSAE) -> None:
    token_ids = refusal_token_ids(tiny, ["I", "Sorry"])
    prompt = PROMPTS[1]
    attr = latent_attributions(tiny, [sae], [prompt], token_ids, method="ig", steps=32)[HOOK]
    mask = _mask(tiny, prompt)[0]

    def zero_latents(act: torch.Tensor, _name: str) -> torch.Tensor:
        # Every latent at 0 with the error term kept: the integration path's starting point.
        x = act[0, mask]
        out = act.clone()
        out[0, mask] = x - sae.sae.decode(sae.sae.encode(x)) + sae.sae.b_dec
        return out

    difference = _score(tiny, prompt, token_ids) - _score(tiny, prompt, token_ids, zero_latents)
    assert abs(difference) > 1e-3
    assert float(attr.sum()) == pytest.approx(difference, rel=0.03, abs=1e-3)


def test_attribution_over_several_saes_in_one_pass_equals_one_at_a_time(
    tiny: LoadedModel, sae: LoadedSAE
) -> None:
    other = wrap_sae(tiny_sae("topk", d_in=64, d_sae=16, hook="blocks.1.hook_resid_post", seed=5), "o", "o")
    token_ids = refusal_token_ids(tiny, ["I"])
    both = latent_attributions(tiny, [sae, other], PROMPTS, token_ids)
    for single in (sae, other):
        alone = latent_attributions(tiny, [single], PROMPTS, token_ids)[single.hook]
        torch.testing.assert_close(both[single.hook], alone, rtol=1e-4, atol=1e-6)


def test_attribution_rejects_bad_arguments(tiny: LoadedModel, sae: LoadedSAE) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        latent_attributions(tiny, [sae], [], [1])
    with pytest.raises(ValueError, match="not 'grad' or 'ig'"):
        latent_attributions(tiny, [sae], PROMPTS, [1], method="lrp")  # pyright: ignore[reportArgumentType]
