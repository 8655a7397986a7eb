"""The prompt inspector on a tiny model: its latents and projections equal a brute-force forward pass, its
tokens join back to the chat-templated text, its refusal score is the direction selection's, a prompt over
the cap fails before any forward pass, bad input fails with a named error; its charts scale to the counted
tokens only and draw a window of a long prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
import torch

from explorer.core.generation import SamplingConfig, encode_chats, generate
from explorer.core.hooks import capture
from explorer.core.judge import SubstringJudge, Verdict
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError, chat_messages, format_chat
from explorer.latents.inspector import (
    InspectError,
    PromptInspection,
    TokenLatents,
    inspect_prompt,
    latent_summaries,
)
from explorer.refusal.candidates import first_token_logprobs, refusal_scores, refusal_token_ids
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.refusal.score import judged_replies, score_probability
from explorer.saes.loading import LoadedSAE, wrap_sae
from explorer.ui.charts_inspect import WINDOW, counted_range, layer_projections, projection_lines, token_strip
from explorer.ui.inspector_widgets import clicked_token
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


def test_refusal_score_is_the_direction_selections_log_odds(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    scored = _inspect(tiny, sae, refusal, score=True, every_layer=True)
    plain = _inspect(tiny, sae, refusal, every_layer=True)
    assert plain.refusal_score is None and scored.refusal_strings == ["I", "Sorry"]
    # the selection's own scoring: a separate full forward pass over the same chat-templated prompt
    expected = refusal_scores(first_token_logprobs(tiny, [PROMPT]), refusal_token_ids(tiny, ["I", "Sorry"]))
    assert scored.refusal_score == pytest.approx(float(expected[0]), abs=1e-4)
    assert 0 < score_probability(float(expected[0])) < 1
    # the one full pass that gives the score reads the same residuals as the shallow pass
    assert scored.refusal_projection == pytest.approx(plain.refusal_projection, abs=1e-4)
    for row, reference in zip(scored.layer_projections, plain.layer_projections, strict=True):
        assert row == pytest.approx(reference, abs=1e-4)
    assert [t.latents for t in scored.top] == [t.latents for t in plain.top]
    assert scored.refusal_position == refusal.position


def test_a_prompt_over_the_cap_fails_before_any_forward_pass(
    tiny: LoadedModel, sae: LoadedSAE, refusal: RefusalDirection
) -> None:
    n = encode_chats(tiny, [PROMPT])[1]["input_ids"].shape[1]
    cap = rf"has {n} tokens; the inspector reads at most {n - 1}\b"
    with capture(tiny.model, ["blocks.0.hook_resid_pre"]) as seen, pytest.raises(InspectError, match=cap):
        _inspect(tiny, sae, refusal, max_tokens=n - 1, score=True)
    assert seen["blocks.0.hook_resid_pre"] == []
    assert len(_inspect(tiny, sae, refusal, max_tokens=n).tokens) == n


def test_judged_replies_are_the_greedy_reply_and_the_judges_verdict(tiny: LoadedModel) -> None:
    greedy = generate(tiny, [PROMPT], SamplingConfig(max_new_tokens=5))[0]
    (reply,) = judged_replies(tiny, [PROMPT], n_new=5)
    assert reply.prompt == PROMPT and reply.text == greedy.text and reply.n_new == 5
    verdict = SubstringJudge().judge(greedy.text)
    assert (reply.refused, reply.evidence, reply.judge) == (verdict.refused, verdict.evidence, "substring")
    (caught,) = judged_replies(tiny, [PROMPT], n_new=5, judge=_BlankJudge())
    assert (caught.refused, caught.judge) == (not greedy.text.strip(), "blank")  # the given judge decides


class _BlankJudge:
    """Calls a blank reply a refusal (the tiny model's greedy replies are blank lines)."""

    name = "blank"

    def judge(self, response: str, prompt: str | None = None) -> Verdict:
        return Verdict(not response.strip(), "blank reply", self.name, 1.0)

    def judge_many(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]:
        return [self.judge(r) for r in responses]


def _layout(figure: go.Figure) -> dict[str, Any]:
    return figure.to_dict()["layout"]


def _traces(figure: go.Figure) -> list[dict[str, Any]]:
    return figure.to_dict()["data"]


def _outlier_inspection(n: int = 80) -> PromptInspection:
    """A synthetic record with the shape of a real one: position 0 (BOS-like, special) and a chat marker
    at 3 have huge values, every counted token lies within ±50."""
    special = [i in (0, 3) for i in range(n)]
    projection = [1500.0 if i == 0 else -900.0 if i == 3 else 50.0 * ((i % 7) - 3) / 3 for i in range(n)]
    activations = [[1000.0 if i in (0, 3) else float(i % 5) for i in range(n)] for _ in range(2)]
    layers = [
        [800.0 if i == 0 else -12.0 if i == 3 else float(i % 9) - 4.0 for i in range(n)] for _ in range(3)
    ]
    return PromptInspection(
        text="x" * n,
        tokens=["x"] * n,
        token_ids=list(range(n)),
        special=special,
        hook="h",
        top=[TokenLatents([], [], [])] * n,
        l0=[0] * n,
        prompt_latents=[7, 9],
        prompt_activations=activations,
        prompt_fractions=None,
        refusal_location="blocks.1.hook_resid_pre",
        refusal_projection=projection,
        layer_locations=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
        layer_projections=layers,
        refusal_position=-1,
    )


def test_axis_ranges_and_colour_scales_leave_out_position_0_and_special_tokens() -> None:
    inspection = _outlier_inspection()
    assert counted_range([inspection.refusal_projection or []], inspection.excluded) == (-50.0, 50.0)
    figure = token_strip(inspection)
    low, high = _layout(figure)["yaxis"]["range"]
    assert -60 < low < -50 and 50 < high < 60  # not stretched to 1,500 or -900
    bars, counted, grey = _traces(figure)[:3]
    colors = bars["marker"]["color"]
    assert bars["y"][0] == 1500.0 and colors[0] == colors[3] != colors[1]
    assert "(not counted)" in bars["customdata"][0][1] and "(not counted)" not in bars["customdata"][1][1]
    assert counted["zmin"] == 0 and counted["zmax"] == 4.0  # the counted tokens' peak, not 1,000
    assert counted["z"][0][0] is None and grey["z"][0][0] == 1000.0 and grey["z"][0][1] is None
    assert grey["showscale"] is False
    heat = _traces(layer_projections(inspection))[0]
    assert (heat["zmin"], heat["zmid"], heat["zmax"]) == (-4.0, 0, 4.0)  # symmetric about the counted max
    lines = projection_lines([("a", inspection), ("b", inspection)])
    low, high = _layout(lines)["yaxis"]["range"]
    assert -60 < low < -50 and 50 < high < 60
    line, left_out = _traces(lines)[:2]
    assert line["x"][-1] == 0 and line["y"][0] is None and left_out["y"][0] == 1500.0


def test_a_window_draws_only_its_tokens_and_every_cell_names_its_token() -> None:
    inspection = _outlier_inspection(300)
    window = range(200, 200 + WINDOW)
    figure = token_strip(inspection, window=window, selected=210)
    layout = _layout(figure)
    assert list(layout["xaxis2"]["tickvals"]) == list(window)
    assert list(layout["xaxis2"]["range"]) == [199.5, 199.5 + WINDOW]
    assert list(_traces(figure)[0]["x"]) == list(window)
    cells = _traces(figure)[3]
    assert len(cells["x"]) == 2 * WINDOW and [c[0] for c in cells["customdata"]] == list(cells["x"])
    assert (layout["shapes"][0]["x0"], layout["shapes"][0]["x1"]) == (209.5, 210.5)
    assert "shapes" not in _layout(token_strip(inspection, window=window, selected=10))  # out of the window


def test_a_chart_click_maps_to_its_token() -> None:
    def event(*customdata: object) -> dict:
        points = [{"x": 0, "customdata": c} for c in customdata]
        return {"selection": {"points": points, "point_indices": [], "box": [], "lasso": []}}

    assert clicked_token(event([12, "tok"]), 20) == 12
    assert clicked_token(event([3, "tok", "0.5"]), 20) == 3
    assert clicked_token(event([25, "tok"]), 20) is None
    assert clicked_token(event(), 20) is None
    assert clicked_token(None, 20) is None
