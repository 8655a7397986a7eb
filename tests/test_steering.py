"""Steering on a tiny model: clamps write exactly their difference, scopes and triggers gate them, the
side-by-side default equals a plain run, concurrent requests never mix, and bad specs fail up front."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from explorer.core.generation import SamplingConfig, encode_chats
from explorer.core.hooks import capture, forward, intervene
from explorer.core.models import LoadedModel
from explorer.core.prompts import DataError
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.saes.loading import wrap_sae
from explorer.steering.decode import (
    Steerer,
    decode,
    draw,
    generate_side_by_side,
    latent_labels,
    nucleus,
    sample_next,
)
from explorer.steering.hooks import StepState, steering_hooks
from explorer.steering.spec import (
    Clamp,
    DirectionBaseline,
    DirectionKind,
    Mode,
    SteeringError,
    SteeringSpec,
    Trigger,
    parse_clamp,
    validate,
)
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
EARLY = "blocks.1.hook_resid_pre"
FIRST = "blocks.0.hook_resid_pre"
PROMPT = "Tell me about owls."
GREEDY = SamplingConfig(max_new_tokens=8)
SAMPLED = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)


@pytest.fixture(scope="module")
def steerer(tiny: LoadedModel) -> Steerer:
    saes = {
        HOOK: wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=1), "main", "main"),
        EARLY: wrap_sae(tiny_sae("topk", d_in=64, d_sae=16, hook=EARLY, seed=2), "early", "early"),
    }
    torch.manual_seed(0)
    refusal = RefusalDirection(torch.randn(64), HOOK, 2, -1, torch.randn(5, 6, 64), {})
    return Steerer(tiny, saes, refusal, {HOOK: torch.full((32,), 5.0)})


def _forward_edit(
    steerer: Steerer, spec: SteeringSpec, at: str = HOOK, state: StepState | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual at `at` before, after the spec's hooks, the steered mask) on one prompt; `state` defaults
    to every position but the first steered."""
    loaded = steerer.loaded
    _, batch = encode_chats(loaded, [PROMPT])
    if state is None:
        real = torch.arange(batch["input_ids"].shape[1])[None, :] > 0
        state = StepState(real=real, mask=real.clone())
    hooks = steering_hooks(
        spec,
        steerer.saes,
        state,
        loaded.n_layers,
        max_activations=steerer.max_activations,
        refusal=steerer.refusal,
    )
    with capture(loaded.model, [at]) as before, torch.no_grad():
        loaded.model(**batch, use_cache=False)
    with intervene(loaded.model, hooks), capture(loaded.model, [at]) as after, torch.no_grad():
        loaded.model(**batch, use_cache=False)
    return before[at][0][0], after[at][0][0], state.mask[0]


def test_a_clamp_writes_exactly_its_difference_on_the_decoder_row(steerer: Steerer) -> None:
    sae = steerer.saes[HOOK]
    before, after, mask = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, "set", 4.0),)))
    f = sae.sae.encode(before)[:, 3]
    expected = before + (4.0 - f)[:, None] * sae.sae.W_dec[3]
    torch.testing.assert_close(after[mask], expected[mask], rtol=0, atol=1e-5)
    assert torch.equal(after[0], before[0])  # the first position is never steered


def test_identity_clamps_leave_the_residual_unchanged(steerer: Steerer) -> None:
    spec = SteeringSpec((Clamp(HOOK, 3, "multiply", 1.0), Clamp(HOOK, 5, "add", 0.0)))
    before, after, _ = _forward_edit(steerer, spec)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_units_of_the_latent_max_scale_the_value(steerer: Steerer) -> None:
    raw = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, "set", 10.0),)))[1]
    relative = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, "set", 2.0, "max"),)))[1]
    torch.testing.assert_close(raw, relative, rtol=0, atol=1e-5)  # max is 5.0


def _unit(row: torch.Tensor) -> torch.Tensor:
    return row / row.norm()


def _by_hand(x: torch.Tensor, d: torch.Tensor, mode: str, v: float) -> torch.Tensor:
    """The residual-direction formulas, written out: p = x . d for a unit d."""
    p = x @ d
    zero = torch.zeros_like(p)
    if mode == "cap":
        return x - torch.maximum(zero, p - v)[:, None] * d
    if mode == "floor":
        return x + torch.maximum(zero, v - p)[:, None] * d
    assert mode == "scale"
    return x + ((v - 1) * p)[:, None] * d


def _projections(steerer: Steerer, latent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual at HOOK, its projection on the latent's unit decoder direction, that direction)."""
    before, _, _ = _forward_edit(steerer, SteeringSpec())
    d = _unit(steerer.saes[HOOK].sae.W_dec.detach()[latent])
    return before, before @ d, d


def _moving_everywhere(p: torch.Tensor, mode: Mode) -> float:
    """A value that moves every position with projections `p`: a cap below them all, a floor above them
    all, or scale 0."""
    return {"cap": float(p.min()) - 1.0, "floor": float(p.max()) + 1.0, "scale": 0.0}[mode]


@pytest.mark.parametrize("mode", ["cap", "floor"])
def test_cap_and_floor_bound_the_projection_on_the_latents_decoder_direction(
    steerer: Steerer, mode: Mode
) -> None:
    _, p, d = _projections(steerer, 3)
    v = float(p[1:].median())  # half the steered positions lie on each side
    before, after, mask = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, mode, v),)))
    torch.testing.assert_close(after[mask], _by_hand(before, d, mode, v)[mask], rtol=0, atol=1e-5)
    assert torch.equal(after[0], before[0])  # the first position is never steered
    beyond = mask & ((p > v) if mode == "cap" else (p < v))
    assert 0 < int(beyond.sum()) < int(mask.sum())
    assert torch.equal(after[mask & ~beyond], before[mask & ~beyond])  # never raised (cap) or lowered
    torch.testing.assert_close(after[beyond] @ d, torch.full_like(p[beyond], v), rtol=0, atol=1e-5)


@pytest.mark.parametrize("factor", [0.0, 0.5, 3.0])
def test_scale_multiplies_only_the_component_along_the_latents_decoder_direction(
    steerer: Steerer, factor: float
) -> None:
    before, after, mask = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, "scale", factor),)))
    d = _unit(steerer.saes[HOOK].sae.W_dec.detach()[3])
    torch.testing.assert_close(after[mask], _by_hand(before, d, "scale", factor)[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(after[mask] @ d, factor * (before[mask] @ d), rtol=0, atol=1e-5)
    assert torch.equal(after[0], before[0])


@pytest.mark.parametrize("mode", ["cap", "floor"])
def test_cap_and_floor_in_units_of_the_max_are_the_projection_of_a_max_firing_latent(
    steerer: Steerer, mode: Mode
) -> None:
    before, p, _ = _projections(steerer, 3)
    v = float(p[1:].median())
    norm = float(steerer.saes[HOOK].sae.W_dec.detach()[3].norm())
    assert abs(norm - 1) > 0.05 and abs(v) > 1e-4  # so leaving out the decoder norm would show
    contributed = 5.0 * norm  # the fixture's max is 5.0
    raw = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, mode, v),)))[1]
    relative = _forward_edit(steerer, SteeringSpec((Clamp(HOOK, 3, mode, v / contributed, "max"),)))[1]
    assert not torch.equal(raw, before)
    torch.testing.assert_close(relative, raw, rtol=0, atol=1e-5)


def test_a_cap_above_or_a_floor_below_the_projection_and_scale_one_change_nothing(steerer: Steerer) -> None:
    before, p, _ = _projections(steerer, 3)
    high, low = float(p.max()) + 1.0, float(p.min()) - 1.0
    for clamp in (Clamp(HOOK, 3, "cap", high), Clamp(HOOK, 3, "floor", low), Clamp(HOOK, 3, "scale", 1.0)):
        after = _forward_edit(steerer, SteeringSpec((clamp,)))[1]
        assert torch.equal(after, before), clamp
    # The same bounds a little inside the range do bite, so the identities above are not vacuous.
    for clamp in (
        Clamp(HOOK, 3, "cap", float(p.max()) - 1e-3),
        Clamp(HOOK, 3, "floor", float(p.min()) + 1e-3),
    ):
        assert not torch.equal(_forward_edit(steerer, SteeringSpec((clamp,)))[1], before), clamp


@pytest.mark.parametrize("mode", ["cap", "floor", "scale"])
def test_residual_direction_modes_leave_out_of_scope_positions_untouched(
    steerer: Steerer, mode: Mode
) -> None:
    before, p, d = _projections(steerer, 3)
    v = _moving_everywhere(p, mode)
    positions = torch.arange(len(p))
    real = positions > 0
    in_scope = real & (positions >= len(p) // 2)  # the later half, as a scope would pick
    state = StepState(real=real[None, :], mask=in_scope[None, :])
    spec = SteeringSpec((Clamp(HOOK, 3, mode, v),))
    _, after, mask = _forward_edit(steerer, spec, state=state)
    assert torch.equal(after[~mask], before[~mask])  # the first token and every position out of scope
    assert bool((after[mask] - before[mask]).abs().amax(-1).gt(1e-6).all())
    torch.testing.assert_close(after[mask], _by_hand(before, d, mode, v)[mask], rtol=0, atol=1e-5)


def test_encoder_modes_act_first_then_direction_modes_in_order_and_all_are_recorded(steerer: Steerer) -> None:
    sae = steerer.saes[HOOK]
    w_dec = sae.sae.W_dec.detach()
    before, p5, d5 = _projections(steerer, 5)
    f = sae.sae.encode(before).detach()
    d7 = _unit(w_dec[7])
    after_set = before + (4.0 - f[:, 3])[:, None] * w_dec[3]
    v = float((after_set @ d5)[1:].median())
    spec = SteeringSpec((Clamp(HOOK, 5, "cap", v), Clamp(HOOK, 3, "set", 4.0), Clamp(HOOK, 7, "scale", 0.5)))
    real = torch.arange(len(p5))[None, :] > 0
    state = StepState(real=real, mask=real.clone())
    _, after, mask = _forward_edit(steerer, spec, state=state)
    expected = _by_hand(_by_hand(after_set, d5, "cap", v), d7, "scale", 0.5)
    torch.testing.assert_close(after[mask], expected[mask], rtol=0, atol=1e-5)
    # Capping the incoming residual instead of the set one gives something else: the order is observable.
    other = _by_hand(_by_hand(before, d5, "cap", v), d7, "scale", 0.5) + (4.0 - f[:, 3])[:, None] * w_dec[3]
    assert (other[mask] - expected[mask]).abs().max() > 1e-4
    # One column per clamp in the spec's order: each latent's activation before any clamp, at the last token.
    torch.testing.assert_close(state.record[HOOK][0], f[-1, [5, 3, 7]], rtol=0, atol=1e-5)
    reply = decode(steerer, [PROMPT], spec, sampling=GREEDY)[0]
    assert latent_labels(spec) == [f"{HOOK}:5", f"{HOOK}:3", f"{HOOK}:7"]
    assert all(len(step.latents) == 3 for step in reply.steps) and reply.steps


def test_empty_spec_attaches_nothing_and_matches_a_plain_run(steerer: Steerer) -> None:
    bare = Steerer(steerer.loaded, steerer.saes)  # no refusal direction: no recording hook either
    plain = decode(bare, [PROMPT], None, sampling=GREEDY)[0]
    empty = decode(bare, [PROMPT], SteeringSpec(), sampling=GREEDY)[0]
    assert plain.token_ids == empty.token_ids and plain.token_ids
    with torch.no_grad():
        _, batch = encode_chats(steerer.loaded, [PROMPT])
        logits = steerer.loaded.model(**batch, use_cache=False).logits[0, -1]
    assert plain.token_ids[0] == int(logits.argmax())


# On an AVX2-only CPU with two threads, the batch of two computes logits that differ from a single row's
# in the last bits, and top-p sampling can then pick another token (seen at the 5th token). Greedy decoding
# holds everywhere; the sampled case is a known defect there until decoding is batch-invariant.
BATCH_VARIANT_CPU = torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX")


@pytest.mark.parametrize(
    "sampling",
    [
        GREEDY,
        pytest.param(
            SAMPLED,
            marks=pytest.mark.xfail(
                BATCH_VARIANT_CPU, reason="batch-of-two logits differ in the last bits on AVX2", strict=False
            ),
        ),
    ],
    ids=["greedy", "sampled"],
)
def test_side_by_side_columns_equal_separate_runs(steerer: Steerer, sampling: SamplingConfig) -> None:
    spec = SteeringSpec((Clamp(HOOK, 3, "set", 40.0), Clamp(EARLY, 2, "multiply", -3.0)))
    result = generate_side_by_side(steerer, PROMPT, spec, sampling)
    plain = decode(steerer, [PROMPT], None, sampling=sampling)[0]
    alone = decode(steerer, [PROMPT], spec, sampling=sampling)[0]
    assert result.default.token_ids == plain.token_ids
    assert result.steered.token_ids == alone.token_ids
    assert result.default.token_ids != result.steered.token_ids  # the clamp does something here
    assert not result.default.steered and result.steered.steered
    assert result.latent_labels == [f"{HOOK}:3", f"{EARLY}:2"]
    first = result.steered.steps[0]
    assert len(first.latents) == 2 and first.refusal_projection is not None
    assert result.spec["provenance"]["seed"] == sampling.seed


def test_each_column_continues_its_own_conversation(steerer: Steerer) -> None:
    """A multi-turn chat: the default column's history holds the default replies, the steered column's
    the steered ones; each column equals a run of its own conversation alone."""
    spec = SteeringSpec((Clamp(HOOK, 3, "set", 40.0),))
    first = generate_side_by_side(steerer, PROMPT, spec, GREEDY)
    assert first.default.text != first.steered.text
    turn = {"role": "user", "content": "And about crows?"}
    default_chat = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": first.default.text},
        turn,
    ]
    steered_chat = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": first.steered.text},
        turn,
    ]
    second = generate_side_by_side(steerer, default_chat, spec, GREEDY, steered_conversation=steered_chat)
    assert second.default.token_ids == decode(steerer, [default_chat], None, sampling=GREEDY)[0].token_ids
    assert second.steered.token_ids == decode(steerer, [steered_chat], spec, sampling=GREEDY)[0].token_ids
    assert first.default.text in second.prompt_text and first.steered.text not in second.prompt_text
    assert first.steered.text in second.steered_prompt_text


def test_concurrent_requests_never_see_each_others_clamps(steerer: Steerer) -> None:
    specs = [
        SteeringSpec((Clamp(HOOK, latent, "set", value),))
        for latent, value in ((1, 30), (3, 40), (5, -20), (7, 25))
    ]
    specs.append(SteeringSpec(direction=DirectionBaseline("add", 4.0)))
    plain = decode(steerer, [PROMPT], None, sampling=GREEDY)[0].token_ids
    alone = [decode(steerer, [PROMPT], spec, sampling=GREEDY)[0].token_ids for spec in specs]
    results: dict[int, tuple[list[int], list[int]]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            r = generate_side_by_side(steerer, PROMPT, specs[i], GREEDY)
            results[i] = (r.default.token_ids, r.steered.token_ids)
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(specs)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({tuple(t) for t in alone}) > 1  # the specs really differ in effect
    for i, (default, steered) in results.items():
        assert default == plain, i
        assert steered == alone[i], i


def test_scope_selects_prompt_or_generated_positions(steerer: Steerer) -> None:
    strong = (Clamp(HOOK, 3, "add", 200.0),)
    plain = decode(steerer, [PROMPT], None, sampling=GREEDY)[0].token_ids
    generated_only = decode(steerer, [PROMPT], SteeringSpec(strong, scope="generated"), sampling=GREEDY)[0]
    prompt_only = decode(steerer, [PROMPT], SteeringSpec(strong, scope="prompt"), sampling=GREEDY)[0]
    # The first new token is predicted from the prompt alone: untouched when only generated tokens are.
    assert generated_only.token_ids[0] == plain[0]
    assert generated_only.token_ids != plain
    assert prompt_only.token_ids[0] != plain[0]


def test_a_trigger_gates_the_clamps(steerer: Steerer) -> None:
    clamp = (Clamp(HOOK, 3, "set", 40.0),)
    plain = decode(steerer, [PROMPT], None, sampling=GREEDY)[0].token_ids
    always = decode(steerer, [PROMPT], SteeringSpec(clamp), sampling=GREEDY)[0].token_ids
    never = SteeringSpec(clamp, trigger=Trigger(EARLY, 0, 1e4))
    open_ = SteeringSpec(clamp, trigger=Trigger(EARLY, 0, -1.0))
    assert decode(steerer, [PROMPT], never, sampling=GREEDY)[0].token_ids == plain
    assert decode(steerer, [PROMPT], open_, sampling=GREEDY)[0].token_ids == always


def test_a_trigger_steers_exactly_the_positions_where_its_latent_passes_the_threshold(
    steerer: Steerer,
) -> None:
    loaded, sae, early = steerer.loaded, steerer.saes[HOOK], steerer.saes[EARLY]
    _, batch = encode_chats(loaded, [PROMPT])
    width = batch["input_ids"].shape[1]
    with capture(loaded.model, [EARLY, HOOK]) as plain, torch.no_grad():
        forward(loaded.model, **batch, use_cache=False)
    with torch.no_grad():
        trigger_acts = early.sae.encode(plain[EARLY][0][0])[:, 0]  # [pos]
    real = torch.arange(width) > 0
    live = trigger_acts[real]
    assert live.max() > live.min()  # the latent varies over the prompt, so a threshold can split it
    threshold = float(live.median())
    spec = SteeringSpec((Clamp(HOOK, 3, "set", 4.0),), trigger=Trigger(EARLY, 0, threshold))
    state = StepState(real=real[None, :], mask=real[None, :].clone())
    hooks = steerer.hooks(spec, state, record=False)
    # Captures see the values of hooks attached before them: steer first, then read.
    with intervene(loaded.model, hooks), capture(loaded.model, [HOOK]) as steered, torch.no_grad():
        forward(loaded.model, **batch, use_cache=False)
    before, after = plain[HOOK][0][0], steered[HOOK][0][0]
    gated = real & (trigger_acts > threshold)
    assert 0 < int(gated.sum()) < int(real.sum())
    changed = (after - before).abs().amax(-1) > 1e-6
    assert torch.equal(changed, gated)
    f = sae.sae.encode(before)[:, 3]
    expected = before + (4.0 - f)[:, None] * sae.sae.W_dec[3]
    torch.testing.assert_close(after[gated], expected[gated], rtol=0, atol=1e-5)


@pytest.mark.parametrize("trigger_hook", [EARLY, HOOK], ids=["earlier-hook", "same-hook"])
@pytest.mark.parametrize("mode", ["cap", "floor", "scale"])
def test_a_trigger_gates_the_residual_direction_modes_position_by_position(
    steerer: Steerer, mode: Mode, trigger_hook: str
) -> None:
    loaded = steerer.loaded
    _, batch = encode_chats(loaded, [PROMPT])
    with capture(loaded.model, [trigger_hook]) as plain, torch.no_grad():
        forward(loaded.model, **batch, use_cache=False)
    acts = steerer.saes[trigger_hook].sae.encode(plain[trigger_hook][0][0]).detach()  # [pos, d_sae]
    real = torch.arange(acts.shape[0]) > 0
    # A latent that splits the prompt's positions at its median (latent 3 is the clamped one).
    latent = next(
        i for i in range(acts.shape[1]) if i != 3 and int((acts[real, i] > acts[real, i].median()).sum()) > 0
    )
    threshold = float(acts[real, latent].median())
    before, p, d = _projections(steerer, 3)
    v = _moving_everywhere(p, mode)
    spec = SteeringSpec((Clamp(HOOK, 3, mode, v),), trigger=Trigger(trigger_hook, latent, threshold))
    state = StepState(real=real[None, :], mask=real[None, :].clone())
    _, after, _ = _forward_edit(steerer, spec, state=state)
    gated = real & (acts[:, latent] > threshold)
    assert 0 < int(gated.sum()) < int(real.sum())
    changed = (after - before).abs().amax(-1) > 1e-6
    assert torch.equal(changed, gated)
    torch.testing.assert_close(after[gated], _by_hand(before, d, mode, v)[gated], rtol=0, atol=1e-5)


def test_repetition_and_frequency_penalties_change_the_choice_as_computed_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 1.8, 1.5], [2.0, -1.0, 1.8, 1.5]])
    generators = [torch.Generator().manual_seed(0) for _ in range(2)]

    def greedy(
        history: list[list[int]],
        generated: list[list[int]],
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
    ) -> list[int]:
        sampling = SamplingConfig(repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty)
        return sample_next(logits, history, generated, sampling, generators)

    assert greedy([[], []], [[], []]) == [0, 0]
    # Repetition: a seen positive logit is divided by the penalty (2.0 -> 1.0), so token 2 (1.8) wins;
    # each row penalises its own history only.
    assert greedy([[0], [1]], [[], []], repetition_penalty=2.0) == [2, 0]
    # A seen negative logit is multiplied instead (-1.0 -> -2.0): it must never become likelier.
    assert greedy([[1], []], [[], []], repetition_penalty=2.0) == [0, 0]
    # Frequency: 1.8 - 2 x 0.25 = 1.3 < 1.5 once token 0 is also penalised (2.0 - 0.25 x 3 = 1.25).
    assert greedy([[], []], [[0, 0, 0, 2, 2], [2]], frequency_penalty=0.25) == [3, 0]
    # Both: 2.0 / 2 = 1.0 for token 0, 1.8 - 0.25 = 1.55 for token 2, 1.5 for token 3.
    assert greedy([[0], [0]], [[2], [2, 2]], repetition_penalty=2.0, frequency_penalty=0.25) == [2, 3]


def test_penalised_sampling_draws_from_the_penalised_distribution() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    sampling = SamplingConfig(temperature=1.0, frequency_penalty=math.log(3.0), seed=0)
    generator = torch.Generator().manual_seed(0)
    draws = [sample_next(logits, [[]], [[0]], sampling, [generator])[0] for _ in range(3000)]
    # Token 0's logit drops by log 3: probabilities (1/7, 3/7, 3/7).
    share = [draws.count(t) / len(draws) for t in range(3)]
    assert share == pytest.approx([1 / 7, 3 / 7, 3 / 7], abs=0.03)


def test_direction_ablation_zeroes_the_projection(steerer: Steerer) -> None:
    reply = decode(steerer, [PROMPT], SteeringSpec(direction=DirectionBaseline("ablate")), sampling=GREEDY)[0]
    plain = decode(steerer, [PROMPT], None, sampling=GREEDY)[0]
    ablated = torch.tensor([s.refusal_projection for s in reply.steps])
    unablated = torch.tensor([s.refusal_projection for s in plain.steps])
    assert unablated.abs().max() > 1e-3  # the tiny model's residual norms are ~0.1
    assert ablated.abs().max() < 1e-4 * unablated.abs().max()


def _refusal_unit(steerer: Steerer) -> torch.Tensor:
    assert steerer.refusal is not None
    return _unit(steerer.refusal.direction)


@pytest.mark.parametrize("kind", ["cap", "floor"])
def test_direction_cap_and_floor_bound_the_refusal_projection_at_its_location_only(
    steerer: Steerer, kind: DirectionKind
) -> None:
    r = _refusal_unit(steerer)
    p = _forward_edit(steerer, SteeringSpec())[0] @ r
    v = float(p[1:].median())
    spec = SteeringSpec(direction=DirectionBaseline(kind, v))
    before, after, mask = _forward_edit(steerer, spec)  # HOOK is the direction's location
    torch.testing.assert_close(after[mask], _by_hand(before, r, kind, v)[mask], rtol=0, atol=1e-5)
    assert torch.equal(after[0], before[0])
    beyond = mask & ((p > v) if kind == "cap" else (p < v))
    assert 0 < int(beyond.sum()) < int(mask.sum())
    assert torch.equal(after[mask & ~beyond], before[mask & ~beyond])
    earlier_before, earlier_after, _ = _forward_edit(steerer, spec, at=EARLY)
    assert torch.equal(earlier_after, earlier_before)  # not at every layer, unlike ablate and scale


def test_direction_scale_multiplies_the_component_along_the_direction_at_every_location(
    steerer: Steerer,
) -> None:
    r, loaded = _refusal_unit(steerer), steerer.loaded
    spec = SteeringSpec(direction=DirectionBaseline("scale", 0.5))
    before, after, mask = _forward_edit(steerer, spec, at=FIRST)
    torch.testing.assert_close(after[mask], _by_hand(before, r, "scale", 0.5)[mask], rtol=0, atol=1e-6)
    assert torch.equal(after[0], before[0])
    real = torch.ones(1, 3, dtype=torch.bool)
    hooks = steering_hooks(
        spec,
        steerer.saes,
        StepState(real=real, mask=real),
        loaded.n_layers,
        refusal=steerer.refusal,
        record=False,
    )
    assert set(hooks) == set(location_names(loaded.n_layers))


def test_direction_scale_zero_is_ablation(steerer: Steerer) -> None:
    last = f"blocks.{steerer.loaded.n_layers - 1}.hook_resid_post"
    for at in (HOOK, last):
        _, ablated, _ = _forward_edit(steerer, SteeringSpec(direction=DirectionBaseline("ablate")), at=at)
        before, scaled, _ = _forward_edit(
            steerer, SteeringSpec(direction=DirectionBaseline("scale", 0.0)), at=at
        )
        assert torch.equal(scaled, ablated), at
        assert not torch.equal(scaled, before), at


def test_direction_bounds_outside_the_projections_and_scale_one_change_nothing(steerer: Steerer) -> None:
    r = _refusal_unit(steerer)
    last = f"blocks.{steerer.loaded.n_layers - 1}.hook_resid_post"
    p = _forward_edit(steerer, SteeringSpec())[0] @ r
    for baseline in (
        DirectionBaseline("cap", float(p.max()) + 1.0),
        DirectionBaseline("floor", float(p.min()) - 1.0),
        DirectionBaseline("scale", 1.0),
    ):
        before, after, _ = _forward_edit(steerer, SteeringSpec(direction=baseline), at=last)
        assert torch.equal(after, before), baseline
    bites = DirectionBaseline("floor", float(p.max()))
    before, after, _ = _forward_edit(steerer, SteeringSpec(direction=bites), at=last)
    assert not torch.equal(after, before)


def test_spec_round_trips_through_json() -> None:
    spec = SteeringSpec(
        (Clamp(HOOK, 3, "set", 2.0, "max"), Clamp(EARLY, 1, "multiply", -3.0)),
        scope="prompt",
        trigger=Trigger(EARLY, 4, 1.5),
        direction=DirectionBaseline("add", 0.5),
        provenance={"model": "tiny", "seed": 3},
    )
    again = SteeringSpec.from_json(spec.to_json())
    assert again == spec and again.provenance == spec.provenance
    assert parse_clamp(f"{HOOK}:3=set:2:max") == spec.clamps[0]
    assert parse_clamp(f"{EARLY}:1=multiply:-3") == spec.clamps[1]
    assert parse_clamp(f"{HOOK}:12=cap:3.5") == Clamp(HOOK, 12, "cap", 3.5)
    assert parse_clamp(f"{HOOK}:12=scale:0") == Clamp(HOOK, 12, "scale", 0.0)
    assert parse_clamp(f"{HOOK}:12=floor:1:max") == Clamp(HOOK, 12, "floor", 1.0, "max")
    modes = SteeringSpec(
        (Clamp(HOOK, 12, "cap", -3.5), Clamp(HOOK, 1, "floor", 1.0, "max"), Clamp(EARLY, 2, "scale", 0.0)),
        direction=DirectionBaseline("floor", -250.0),
    )
    assert SteeringSpec.from_json(modes.to_json()) == modes


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Clamp(HOOK, 1, "set", math.nan), "finite"),
        (lambda: Clamp(HOOK, 1, "set", 1e9), r"\|value\| must be <= 10000"),
        (lambda: Clamp(HOOK, 1, "multiply", 1e3), r"\|value\| must be <= 100"),
        (lambda: Clamp(HOOK, 1, "clip", 1.0), "mode .clip."),  # pyright: ignore[reportArgumentType]
        (lambda: Clamp(HOOK, -1, "set", 1.0), "non-negative"),
        (lambda: Clamp(HOOK, 1, "cap", math.nan), "cap value for latent 1 must be a finite number"),
        (lambda: Clamp(HOOK, 1, "floor", 2e4), r"\|value\| must be <= 10000$"),
        (lambda: Clamp(HOOK, 1, "cap", 150.0, "max"), r"\|value\| must be <= 100$"),
        (lambda: Clamp(HOOK, 1, "scale", 500.0), r"scale value .* must be <= 100$"),  # a factor
        (lambda: DirectionBaseline("scale", 500.0), r"direction scale alpha 500 .* must be <= 100$"),
        (lambda: DirectionBaseline("cap", 2e4), r"direction cap alpha .* must be <= 10000$"),
        (lambda: DirectionBaseline("floor", math.inf), "direction floor alpha must be a finite number"),
        (lambda: DirectionBaseline("clip"), "direction baseline 'clip' is not one of"),  # pyright: ignore[reportArgumentType]
        (lambda: parse_clamp(f"{HOOK}:1=clip:3"), "mode 'clip' is not one of"),
        (lambda: parse_clamp(f"{HOOK}:1=scale:nan"), "finite"),
        (
            lambda: SteeringSpec((Clamp(HOOK, 1, "set", 1.0), Clamp(HOOK, 1, "add", 2.0))),
            "conflicting clamps",
        ),
        (lambda: parse_clamp("blocks.2:1=set"), "HOOK:LATENT=MODE:VALUE"),
        (lambda: parse_clamp(f"{HOOK}:1=set:inf"), "finite"),
        (lambda: SteeringSpec.from_json("{"), "not valid JSON"),
    ],
)
def test_malformed_clamps_are_rejected(make, message: str) -> None:
    with pytest.raises(SteeringError, match=message):
        make()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SteeringSpec((Clamp(HOOK, 32, "set", 1.0),)), r"latent 32 is out of range.*0\.\.31"),
        (SteeringSpec((Clamp("blocks.3.hook_resid_pre", 1, "set", 1.0),)), "no SAE is loaded there"),
        (SteeringSpec((Clamp("blocks.9.hook_resid_pre", 1, "set", 1.0),)), "out of range"),
        (SteeringSpec((Clamp(EARLY, 1, "set", 1.0, "max"),)), "no latent cache"),
        (SteeringSpec((Clamp(EARLY, 1, "floor", 1.0, "max"),)), "no latent cache"),
        (SteeringSpec((Clamp(HOOK, 40, "cap", 1.0),)), r"latent 40 is out of range"),
        (SteeringSpec((Clamp(EARLY, 1, "set", 1.0),), trigger=Trigger(HOOK, 0, 1.0)), "comes after"),
    ],
)
def test_specs_that_do_not_fit_fail_before_running(
    steerer: Steerer, spec: SteeringSpec, message: str
) -> None:
    with pytest.raises(SteeringError, match=message):
        validate(spec, steerer.saes, steerer.loaded.n_layers, max_activations=steerer.max_activations)
    with pytest.raises(SteeringError, match=message):
        decode(steerer, [PROMPT], spec, sampling=GREEDY)


def test_direction_modes_need_a_decoder_direction_and_their_limits_fit_their_units(steerer: Steerer) -> None:
    sae = tiny_sae("topk", d_in=64, d_sae=16, hook=EARLY, seed=3)
    with torch.no_grad():
        sae.W_dec[4] = 0.0
    dead = {EARLY: wrap_sae(sae, "dead", "dead")}
    n_layers = steerer.loaded.n_layers
    with pytest.raises(
        SteeringError, match=r"latent 4 at blocks\.1\.hook_resid_pre has an all-zero decoder row"
    ):
        validate(SteeringSpec((Clamp(EARLY, 4, "scale", 0.0),)), dead, n_layers)
    validate(SteeringSpec((Clamp(EARLY, 4, "set", 1.0),)), dead, n_layers)  # through the encoder it is fine
    # A factor needs no latent cache even in "max" units; EARLY has none.
    validate(SteeringSpec((Clamp(EARLY, 1, "scale", 0.5, "max"),)), steerer.saes, n_layers)
    # Projections may go past the factor limit, and below zero.
    assert Clamp(HOOK, 1, "cap", 5000.0).value == 5000.0
    assert DirectionBaseline("cap", 5000.0).alpha == 5000.0 and DirectionBaseline("floor", -3.0).alpha == -3.0


def test_direction_baseline_needs_a_direction(steerer: Steerer) -> None:
    with pytest.raises(SteeringError, match="needs a refusal direction"):
        decode(
            Steerer(steerer.loaded, steerer.saes),
            [PROMPT],
            SteeringSpec(direction=DirectionBaseline("ablate")),
        )


def test_bad_prompts_fail_clearly(steerer: Steerer) -> None:
    with pytest.raises(DataError, match="empty"):
        generate_side_by_side(steerer, "  ", SteeringSpec(), GREEDY)
    with pytest.raises(DataError, match="exceeds the model's context"):
        generate_side_by_side(steerer, "owl " * 300, SteeringSpec(), GREEDY)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("temperature", [0.3, 3.0])
def test_nucleus_is_the_prefix_of_the_sorted_distribution(top_p: float, temperature: float) -> None:
    torch.manual_seed(0)
    probs = (torch.randn(5000) / temperature).softmax(-1)
    ordered, order = probs.sort(descending=True)
    n = int((ordered.cumsum(-1) - ordered <= top_p).sum())
    kept, ids = nucleus(probs, top_p, candidates=64)
    assert torch.equal(ids, order[:n]) and torch.equal(kept, ordered[:n])
    if temperature == 3.0:  # a flat distribution: the nucleus outgrew the first 64 candidates
        assert n > 64


def test_draw_samples_in_proportion_to_the_weights() -> None:
    weights = torch.tensor([1.0, 0.0, 0.6, 0.4])  # unnormalised
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([draw(weights, generator) for _ in range(20_000)]), minlength=4)
    assert counts[1] == 0
    torch.testing.assert_close(counts / counts.sum(), weights / weights.sum(), rtol=0, atol=0.015)
