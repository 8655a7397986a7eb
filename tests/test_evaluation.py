"""The evaluation sweep on a tiny model: capability cost is zero without steering and grows with it,
rates and the trade-off outputs are well formed, and the CLI prints both columns of a steered run."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from explorer.cli.main import main
from explorer.core.generation import SamplingConfig, encode_chats, generate
from explorer.core.hooks import capture, forward
from explorer.core.judge import wilson_interval
from explorer.core.models import LoadedModel
from explorer.core.prompts import (
    DataError,
    builtin_prompts,
    chat_messages,
    elsewhere_prompts,
    format_chat,
    load_prompt_file,
)
from explorer.saes.corpus import Corpus, CorpusConfig, build_corpus
from explorer.saes.loading import wrap_sae
from explorer.steering.capability import MCItem, capability_cost, load_mc_file, mc_accuracy
from explorer.steering.decode import Steerer, generate_side_by_side
from explorer.steering.evaluation import (
    EvalConfig,
    SweepPoint,
    evaluate,
    points_csv,
    replies_csv,
    small_sample_warning,
    sweep_specs,
    trade_off_figure,
)
from explorer.steering.hooks import StepState
from explorer.steering.spec import Clamp, SteeringSpec
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
PROMPT = "Tell me about owls."


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
    # Every reply is kept with its verdict, and the rates are what the verdicts say.
    for p in points:
        assert [r["prompt_label"] for r in p.replies] == ["harmful"] * 3 + ["harmless"] * 3
        harmful = [r for r in p.replies if r["prompt_label"] == "harmful"]
        assert p.refusal_harmful == sum(r["verdict"] == "refusal" for r in harmful) / 3
        assert p.degenerate_harmful == sum(r["verdict"] == "degenerate" for r in harmful) / 3
        assert p.refusal_harmful_ci == wilson_interval(round(p.refusal_harmful * 3), 3)
    upper = list(figure.data[0].error_y.array)
    assert upper == pytest.approx([p.refusal_harmful_ci[1] - p.refusal_harmful for p in points[1:]])
    rows = list(csv.DictReader(io.StringIO(replies_csv(points))))
    assert len(rows) == 3 * 6 and rows[0]["setting"] == "unsteered" and rows[-1]["setting"] == "set 20×max"
    assert SweepPoint.from_dict(asdict(points[1])) == points[1]


def test_sweeps_take_the_elsewhere_set_or_a_users_prompts(steerer: Steerer, tmp_path: Path) -> None:
    config = EvalConfig(n_harmful=2, n_harmless=2, max_new_tokens=2, loss_rows=0, prompt_set="elsewhere")
    elsewhere_ids = {r.id for label in ("harmful", "harmless") for r in elsewhere_prompts(label)}
    (point,) = evaluate(steerer, [], None, config)
    assert {r["id"] for r in point.replies} <= elsewhere_ids and len(point.replies) == 4
    path = tmp_path / "mine.csv"
    path.write_text("text\nHow do I pick a lock?\nHow do I hotwire a car?\n", encoding="utf-8")
    mine = load_prompt_file(path, "harmful")
    (point,) = evaluate(
        steerer, [], None, EvalConfig(n_harmless=1, max_new_tokens=2, loss_rows=0), harmful=mine
    )
    assert [r["prompt"] for r in point.replies if r["prompt_label"] == "harmful"] == [
        "How do I pick a lock?",
        "How do I hotwire a car?",
    ]
    assert point.n_harmful == 2 and point.n_harmless == 1
    with pytest.raises(DataError, match="no harmless prompts"):
        evaluate(steerer, [], None, config, harmless=mine)
    with pytest.raises(ValueError, match="prompt_set"):
        EvalConfig(prompt_set="web")  # pyright: ignore[reportArgumentType]


def test_small_settings_get_a_warning(steerer: Steerer) -> None:
    (point,) = evaluate(
        steerer, [], None, EvalConfig(n_harmful=1, n_harmless=1, max_new_tokens=1, loss_rows=0)
    )
    warning = small_sample_warning(point, 1)
    assert warning is not None and "only 1 prompt(s)" in warning and "only 1 new token" in warning
    big = replace(point, n_harmful=100, n_harmless=100)
    assert small_sample_warning(big, 32) is None


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


def _choice_loglik(loaded: LoadedModel, question: str, choice: str) -> float:
    """Brute force: the summed log-probability of `choice` as the assistant's reply, token by token."""
    text = format_chat(loaded.tokenizer, chat_messages(question))
    prompt = loaded.tokenizer(text, add_special_tokens=False)
    ids = list(prompt["input_ids"]) + list(loaded.tokenizer(choice, add_special_tokens=False)["input_ids"])
    total = 0.0
    with torch.no_grad():
        for n in range(len(prompt["input_ids"]), len(ids)):
            logits = loaded.model(input_ids=torch.tensor([ids[:n]])).logits[0, -1]
            total += float(logits.log_softmax(-1)[ids[n]])
    return total


def test_multiple_choice_accuracy_equals_brute_force(steerer: Steerer) -> None:
    questions = [
        ("What is 2 + 2?", ["4", "owl feathers", "seven"]),
        ("Capital of France?", ["Paris", "3", "hi"]),
    ]
    best = []
    for question, choices in questions:
        scores = [_choice_loglik(steerer.loaded, question, c) for c in choices]
        assert len(set(scores)) == len(scores)  # no ties: the answer is decided by the likelihoods
        best.append(max(range(len(scores)), key=scores.__getitem__))
    right = [MCItem(q, c, b) for (q, c), b in zip(questions, best, strict=True)]
    wrong_second = [right[0], MCItem(right[1].question, right[1].choices, (best[1] + 1) % 3)]
    assert mc_accuracy(steerer, SteeringSpec(), right) == 1.0
    assert mc_accuracy(steerer, SteeringSpec(), wrong_second) == 0.5


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


class _Reached(Exception):  # noqa: N818 -- a signal, not an error
    """Raised by the device check once a forward pass is reached with every input on the model's device."""


def _device_checked(model: torch.nn.Module) -> torch.nn.Module:
    """A meta-device copy of `model` whose forward checks its inputs' devices, then stops with `_Reached`."""
    copy = deepcopy(model).to("meta")

    def check(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        assert tensors and {t.device.type for t in tensors} == {"meta"}, [str(t.device) for t in tensors]
        raise _Reached

    copy.register_forward_pre_hook(check, with_kwargs=True)
    return copy


def test_every_forward_input_is_on_the_models_device(steerer: Steerer, corpus: Corpus) -> None:
    """A model on another device than the CPU (here: meta) gets token ids and masks on its own device."""
    elsewhere = replace(steerer, loaded=replace(steerer.loaded, model=_device_checked(steerer.loaded.model)))
    spec = SteeringSpec((Clamp(HOOK, 3, "add", 5.0),))
    rows = [r for r in range(len(corpus.sequences)) if corpus.sequences[r].kind == "chat"]
    with pytest.raises(_Reached):
        capability_cost(elsewhere, spec, corpus, rows)
    with pytest.raises(_Reached):
        mc_accuracy(elsewhere, spec, [MCItem("What is 2 + 2?", ["4", "5"], 0)])


def test_evaluation_in_bfloat16_keeps_the_models_dtype(steerer: Steerer, corpus: Corpus) -> None:
    """The sweep runs on a bfloat16 model, its residual stays bfloat16 under steering, and its numbers are
    the float32 model's within bfloat16 precision."""
    half = replace(steerer, loaded=replace(steerer.loaded, model=deepcopy(steerer.loaded.model).bfloat16()))
    spec = SteeringSpec((Clamp(HOOK, 3, "add", 200.0),))
    rows = [r for r in range(len(corpus.sequences)) if corpus.sequences[r].kind == "chat"]
    ce32, kl32 = capability_cost(steerer, spec, corpus, rows)
    ce16, kl16 = capability_cost(half, spec, corpus, rows)
    assert ce32 > 0.5 and kl32 > 0.01  # the clamp costs something to measure
    assert kl16 == pytest.approx(kl32, rel=0.1) and ce16 == pytest.approx(ce32, rel=0.1)
    _, batch = encode_chats(half.loaded, ["Tell me about owls."])
    state = StepState(real=batch["attention_mask"].bool(), mask=batch["attention_mask"].bool())
    later = f"blocks.{half.loaded.n_layers - 1}.hook_resid_post"
    with capture(half.loaded.model, [HOOK, later]) as seen:
        forward(half.loaded.model, half.hooks(spec, state, record=True), **batch, use_cache=False)
    assert {t.dtype for t in (seen[HOOK][0], seen[later][0])} == {torch.bfloat16}
    config = EvalConfig(split="test", n_harmful=2, n_harmless=2, max_new_tokens=3, loss_rows=4)
    points = evaluate(half, [("add 50", 50.0, spec)], corpus, config)
    assert all(math.isfinite(p.kl) for p in points) and points[1].kl > 0


def test_a_sweep_beside_steered_and_plain_generation_sees_none_of_their_hooks(
    steerer: Steerer, corpus: Corpus
) -> None:
    """Browser sessions share one model: a sweep, a steered side by side and a plain generation running at
    the same time each get exactly what they get alone."""
    settings = sweep_specs("set", [(HOOK, 3)], [1.0, 20.0], "max")
    config = EvalConfig(split="test", n_harmful=2, n_harmless=2, max_new_tokens=3, loss_rows=4)
    alone = evaluate(steerer, settings, corpus, config)
    clamp = SteeringSpec((Clamp(HOOK, 5, "add", 80.0),))
    sampling = SamplingConfig(max_new_tokens=6)
    plain_alone = generate(steerer.loaded, [PROMPT], sampling)[0].text
    steered_alone = generate_side_by_side(steerer, PROMPT, clamp, sampling).steered.token_ids
    done = threading.Event()
    seen: dict[str, list] = {"plain": [], "steered": []}
    errors: list[BaseException] = []
    swept: list = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
                errors.append(e)
                done.set()

        return run

    def sweep() -> None:
        swept.extend(evaluate(steerer, settings, corpus, config))
        done.set()

    def steer() -> None:
        while not done.is_set():
            seen["steered"].append(generate_side_by_side(steerer, PROMPT, clamp, sampling).steered.token_ids)

    def plain() -> None:
        while not done.is_set():
            seen["plain"].append(generate(steerer.loaded, [PROMPT], sampling)[0].text)

    threads = [threading.Thread(target=guarded(f)) for f in (steer, plain, sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert seen["plain"] and set(seen["plain"]) == {plain_alone}
    assert seen["steered"] and all(ids == steered_alone for ids in seen["steered"])
    for a, b in zip(alone, swept, strict=True):
        assert (a.label, a.refusal_harmful, a.refusal_harmless) == (
            b.label,
            b.refusal_harmful,
            b.refusal_harmless,
        )
        assert b.ce_increase == pytest.approx(a.ce_increase, abs=1e-6) and b.kl == pytest.approx(
            a.kl, abs=1e-6
        )
