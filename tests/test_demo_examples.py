"""The walkthrough's examples chosen from measured results: the strength that flips the most prompts to a
clean refusal (or a clean answer) wins, the gentler of a tie; degenerate replies never count; the record
round-trips through JSON, is ignored with a reason when the SAE or latents changed, and a corrupt file is a
message; `explorer demo-examples` writes it on the tiny workspace and the walkthrough offers its prompts
and strength."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from explorer.cli.main import main
from explorer.cli.options import main_hook, open_cache
from explorer.core.generation import SamplingConfig
from explorer.core.judge import Verdict, VerdictLabel
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import builtin_prompts
from explorer.saes.loading import wrap_sae
from explorer.steering.decode import Reply, Steerer, decode_many
from explorer.steering.examples import (
    BYPASS_FACTORS,
    INDUCE_STRENGTHS,
    SKIPPED_CATEGORIES,
    Example,
    ExamplesError,
    Measured,
    Trial,
    WalkthroughExamples,
    choose_examples,
    clearest,
    example_prompts,
    examples_path,
    read_examples,
    stale_reasons,
    steering_spec,
    trial_examples,
    write_examples,
)
from explorer.steering.spec import SteeringError, SteeringSpec
from explorer.ui.state import DEMO_ENV, MODEL_ENV
from explorer.ui.walkthrough import DEFAULTS_NOTE
from tests.helpers import tiny_sae

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.2.hook_resid_pre"
LATENTS = (0, 1, 2)
SAMPLING = SamplingConfig(max_new_tokens=3)


class TableJudge:
    """Labels a reply by its prompt and text from a table; every other reply is a compliance."""

    name = "table"

    def __init__(self, table: dict[tuple[str, str], VerdictLabel]) -> None:
        self.table = table

    def judge(self, response: str, prompt: str | None = None) -> Verdict:
        label: VerdictLabel = "compliance"
        for (asked, text), wanted in self.table.items():
            if text == response and prompt is not None and asked in prompt:
                label = wanted
        return Verdict(label == "refusal", f"table: {label}", self.name, 1.0, label)

    def judge_many(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[Verdict]:
        return [self.judge(r) for r in responses]


def _reply(text: str, label: VerdictLabel) -> Reply:
    verdict = Verdict(label == "refusal", "", "fixed", 1.0, label).to_dict()
    return Reply(text, [], True, True, verdict, [])


def _trial(strength: float, defaults: list[VerdictLabel], steered: list[VerdictLabel]) -> Trial:
    prompts = example_prompts("harmless", "test", len(defaults))
    replies = [_reply("Sure.", label) for label in defaults], [_reply("No.", label) for label in steered]
    return trial_examples("induce", strength, prompts, *replies)[0]


def test_the_strength_with_most_clean_flips_wins_and_a_tie_goes_to_the_gentler() -> None:
    compliant: list[VerdictLabel] = ["compliance"] * 4
    trials = [
        _trial(0.5, compliant, ["refusal", "compliance", "compliance", "compliance"]),
        _trial(1.0, compliant, ["refusal", "refusal", "refusal", "compliance"]),
        _trial(2.0, compliant, ["refusal", "refusal", "refusal", "degenerate"]),
        _trial(4.0, compliant, ["degenerate"] * 4),
    ]
    assert [t.flipped for t in trials] == [1, 3, 3, 0] and [t.degenerate for t in trials] == [0, 0, 1, 4]
    assert clearest(trials) == trials[1]
    assert clearest(trials[::-1]) == trials[1]  # gentler, not first measured
    assert clearest([replace(t, strength=-t.strength) for t in trials[::-1]]) == replace(
        trials[1], strength=-1.0
    )
    assert clearest([trials[3]]) is None  # nothing flipped: no choice
    assert trials[1].flip_rate == 0.75 and trials[3].degenerate_rate == 1.0


def test_only_a_clean_refusal_after_a_compliance_is_a_flip() -> None:
    prompts = example_prompts("harmless", "test", 4)
    default = [_reply("Sure.", label) for label in ("compliance", "compliance", "refusal", "degenerate")]
    steered = [
        _reply("I can't help with that, sorry.", "refusal"),
        _reply("zzzzzzzzzz", "degenerate"),
        _reply("No.", "refusal"),  # refused already without steering
        _reply("No.", "refusal"),  # broken text before: not a clear example
    ]
    trial, flipped = trial_examples("induce", 2.0, prompts, default, steered)
    assert (trial.flipped, trial.degenerate, trial.n) == (1, 1, 4)
    assert [e.prompt for e in flipped] == [prompts[0].text]
    bypass, answered = trial_examples("bypass", -2.0, prompts, steered, default)
    assert bypass.flipped == 1 and answered[0].steered_reply == "Sure."  # the refusal at 0 became an answer


def test_examples_come_shortest_steered_reply_first() -> None:
    prompts = example_prompts("harmless", "test", 3)
    default = [_reply("Sure.", "compliance")] * 3
    steered = [_reply(text, "refusal") for text in ("I cannot do that for you.", "No.", "I can't.")]
    _, flipped = trial_examples("induce", 1.0, prompts, default, steered)
    assert [e.steered_reply for e in flipped] == ["No.", "I can't.", "I cannot do that for you."]


def test_example_prompts_spread_over_categories_and_skip_borderline_ones() -> None:
    prompts = example_prompts("harmless", "test", 200)
    assert prompts and not {p.category for p in prompts} & set(SKIPPED_CATEGORIES)
    assert {p.category for p in builtin_prompts("harmless", "test")} & set(SKIPPED_CATEGORIES)
    few = example_prompts("harmful", "test", 5)
    assert len({p.category for p in few}) == 5


@pytest.fixture(scope="module")
def steerer(tiny: LoadedModel) -> Steerer:
    sae = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=HOOK, seed=1), "main", "main")
    return Steerer(tiny, {HOOK: sae}, None, {HOOK: torch.full((32,), 2.0)})


def _texts(steerer: Steerer, prompts: list[str], spec: SteeringSpec | None = None) -> list[str]:
    return [r.text for r in decode_many(steerer, prompts, spec, SAMPLING)]


@pytest.fixture(scope="module")
def measured(steerer: Steerer) -> WalkthroughExamples:
    """Examples measured on the tiny model with a judge that makes the answer known: at 0.5 × max two
    harmless prompts become refusals; at 1 and 2 × max one does and two become degenerate text (so 1 × max
    would win if degenerate replies counted); multiplying by -2 answers the one refused harmful prompt."""
    harmless = [p.text for p in example_prompts("harmless", "test", 3)]
    harmful = [p.text for p in example_prompts("harmful", "test", 3)]
    plain = _texts(steerer, harmless)
    half, one, two = (
        _texts(steerer, harmless, steering_spec("induce", HOOK, LATENTS, s)) for s in (0.5, 1, 2)
    )
    refused = _texts(steerer, harmful)
    answered = _texts(steerer, harmful, steering_spec("bypass", HOOK, LATENTS, -2))
    # What the seeded tiny model says: other replies at 0.5 and at 1 × max, the same at 2 as at 1.
    assert all(len({a, b, c}) == 3 for a, b, c in zip(plain, half, one, strict=True)) and two == one
    assert answered[0] != refused[0]
    table: dict[tuple[str, str], VerdictLabel] = {
        (harmless[0], half[0]): "refusal",
        (harmless[1], half[1]): "refusal",
        (harmless[0], one[0]): "refusal",
        (harmless[1], one[1]): "degenerate",
        (harmless[2], one[2]): "degenerate",
        (harmful[0], refused[0]): "refusal",
    }
    judged = replace(steerer, judge=TableJudge(table))
    return choose_examples(
        judged,
        HOOK,
        LATENTS,
        induce_strengths=(2, 1, 0.5),
        bypass_factors=(-2,),
        n_prompts=3,
        max_new_tokens=3,
    )


def test_choose_examples_keeps_the_strength_with_most_clean_flips(
    measured: WalkthroughExamples, steerer: Steerer
) -> None:
    induce = measured.induce
    assert [(t.strength, t.flipped, t.degenerate) for t in induce.trials] == [
        (2, 1, 2),
        (1, 1, 2),
        (0.5, 2, 0),
    ]
    assert induce.chosen == 0.5 and induce.unsteered == 3 and induce.n_prompts == 3
    harmless = [p.text for p in example_prompts("harmless", "test", 3)]
    assert {e.prompt for e in induce.examples} == set(harmless[:2])
    assert {e.default_verdict["label"] for e in induce.examples} == {"compliance"}
    assert {e.steered_verdict["label"] for e in induce.examples} == {"refusal"}
    bypass = measured.bypass
    assert bypass.chosen == -2 and bypass.unsteered == 1
    assert [e.prompt for e in bypass.examples] == [example_prompts("harmful", "test", 1)[0].text]
    assert measured.ablation is None  # this steerer has no refusal direction
    assert (measured.hook, measured.latents, measured.judge) == (HOOK, LATENTS, "table")
    assert measured.sae_fingerprint == steerer.saes[HOOK].fingerprint
    assert (measured.max_new_tokens, measured.split, measured.model) == (3, "test", steerer.loaded.name)


def test_bad_settings_are_refused_before_anything_is_decoded(steerer: Steerer) -> None:
    with pytest.raises(SteeringError, match="999"):
        choose_examples(steerer, HOOK, [999], n_prompts=1, max_new_tokens=1)
    with pytest.raises(SteeringError, match=r"no SAE at blocks\.0\.hook_resid_pre"):
        choose_examples(steerer, "blocks.0.hook_resid_pre", LATENTS, n_prompts=1, max_new_tokens=1)
    assert main(["demo-examples", "--n-prompts", "0"]) == 2  # before any model loads


def test_examples_round_trip_through_json(measured: WalkthroughExamples, tmp_path: Path) -> None:
    assert WalkthroughExamples.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured
    path = write_examples(measured, tmp_path / "examples.json")
    assert read_examples(path) == measured
    assert read_examples(tmp_path / "missing.json") is None


def test_stale_examples_say_what_changed(measured: WalkthroughExamples) -> None:
    now = {
        "model": measured.model,
        "hook": HOOK,
        "latents": list(LATENTS),
        "sae_fingerprint": measured.sae_fingerprint,
        "model_fingerprint": measured.model_fingerprint,
    }
    assert stale_reasons(measured, **now) == []
    assert stale_reasons(measured, **{**now, "model_fingerprint": None}) == []
    assert stale_reasons(measured, **{**now, "latents": [0, 1, 5]}) == [
        "they steer latents #0, #1, #2, and the top latents are now #0, #1, #5"
    ]
    (other_sae,) = stale_reasons(measured, **{**now, "sae_fingerprint": "0123"})
    assert other_sae.startswith(f"the SAE at {HOOK} has other weights")
    (other_hook,) = stale_reasons(measured, **{**now, "hook": "blocks.1.hook_resid_pre"})
    assert other_hook.endswith("the main SAE is at blocks.1.hook_resid_pre")
    (other_model,) = stale_reasons(measured, **{**now, "model_fingerprint": "ff"})
    assert other_model.startswith("the model has other weights")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"version": 1, "model": "m"}', "malformed"),
        ('{"version": 99}', "version 99"),
    ],
)
def test_a_corrupt_file_is_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "walkthrough_examples.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExamplesError, match="run `explorer demo-examples` again") as raised:
        read_examples(path)
    assert str(path) in str(raised.value) and why in str(raised.value)


@pytest.fixture(scope="module")
def measured_cache(
    app_cache: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A copy of the tiny workspace after `explorer demo-examples` (2 prompts, 2 tokens), and its output."""
    cache = tmp_path_factory.mktemp("measured") / "cache"
    shutil.copytree(app_cache, cache)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv(CACHE_ENV, str(cache))
        argv = ["demo-examples", "--model", str(tiny_dir), "--n-prompts", "2", "--max-new-tokens", "2"]
        assert main(argv) == 0
    return cache, out.getvalue()


def test_the_cli_measures_the_workspace_and_writes_the_examples(
    measured_cache: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, out = measured_cache
    monkeypatch.setenv(CACHE_ENV, str(cache))
    (path,) = cache.glob("refusal/*/walkthrough_examples.json")
    examples = read_examples(path)
    assert examples is not None and path.resolve() == examples_path(examples.model)
    assert examples.hook == main_hook(examples.model)
    top = open_cache(examples.model, None).top_latents("refusal_cos", 3, active=True)
    assert list(examples.latents) == top
    assert [t.strength for t in examples.induce.trials] == list(INDUCE_STRENGTHS)
    assert [t.strength for t in examples.bypass.trials] == list(BYPASS_FACTORS)
    assert examples.induce.n_prompts == examples.bypass.n_prompts == 2 and examples.max_new_tokens == 2
    assert examples.judge == "substring" and examples.ablation is not None and examples.ablation.n == 2
    assert out.splitlines()[-1] == f"wrote {path.resolve()}"
    assert "induce refusal: set to strength × max on 2 harmless" in out
    assert "bypass refusal: multiply by strength on 2 harmful" in out
    assert "refusal direction ablated:" in out


def _walkthrough(monkeypatch: pytest.MonkeyPatch, cache: Path, tiny_dir: Path) -> AppTest:
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
    monkeypatch.setenv(DEMO_ENV, "1")  # the app opens on the walkthrough
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()


def _copy(measured_cache: tuple[Path, str], tmp_path: Path) -> tuple[Path, Path, WalkthroughExamples]:
    cache = shutil.copytree(measured_cache[0], tmp_path / "cache")
    (path,) = cache.glob("refusal/*/walkthrough_examples.json")
    examples = read_examples(path)
    assert examples is not None
    return cache, path, examples


def _captions(app: AppTest) -> list[str]:
    return [c.value for c in app.caption]


def test_the_walkthrough_offers_the_measured_prompts_and_strengths(
    measured_cache: tuple[Path, str], tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, path, examples = _copy(measured_cache, tmp_path)
    harmless, harmful = (
        builtin_prompts("harmless", "test")[10].text,
        builtin_prompts("harmful", "test")[10].text,
    )
    refusal = {"refused": True, "evidence": "matched", "judge": "substring", "score": 1.0, "label": "refusal"}
    answer = {"refused": False, "evidence": "none", "judge": "substring", "score": 0.0, "label": "compliance"}
    induce = Measured(
        "induce",
        40,
        38,
        tuple(Trial(s, 40, f, d) for s, f, d in ((0.5, 1, 0), (1, 3, 0), (2, 5, 1), (4, 2, 9))),
        2.0,
        (Example(harmless, "cooking", "Sure!", answer, "I can't help with that.", refusal),),
    )
    bypass = Measured(
        "bypass",
        40,
        36,
        tuple(Trial(s, 40, f, d) for s, f, d in ((-1, 0, 0), (-2, 7, 2), (-3, 4, 6), (-4, 1, 20))),
        -2.0,
        (Example(harmful, "fraud", "I can't.", refusal, "Step one:", answer),),
    )
    write_examples(replace(examples, induce=induce, bypass=bypass), path)
    app = _walkthrough(monkeypatch, cache, tiny_dir)
    assert not app.exception and not app.error
    captions = _captions(app)
    assert any(
        c.startswith(
            "Setting them to 2 × max flipped 5 of 40 harmless test prompts to clean refusals (1 became "
            "degenerate text), the most of 0.5/1/2/4 × max; the prompt offered first is one it flipped"
        )
        and c.endswith("measured by `explorer demo-examples`).")
        for c in captions
    )
    assert any(
        c.startswith("Multiplying them by -2 flipped 7 of 40 harmful test prompts to clean answers")
        for c in captions
    )
    ablation = examples.ablation
    assert ablation is not None
    assert any(f"Ablating the refusal direction flipped {ablation.flipped} of the 2." in c for c in captions)
    assert DEFAULTS_NOTE not in captions
    assert app.selectbox(key="demo_harmless").options[0] == harmless
    assert app.selectbox(key="demo_harmful").options[0] == harmful
    app.number_input(key="demo_new_tokens").set_value(2)
    next(b for b in app.button if b.label == "Induce refusal").click().run()
    next(b for b in app.button if b.label == "Jailbreak").click().run()
    assert not app.exception
    asked, induced = app.session_state["demo_results"]["induce"]
    assert asked == harmless and {c["value"] for c in induced.spec["clamps"]} == {2.0}
    asked, broken = app.session_state["demo_results"]["jailbreak"]
    assert asked == harmful and {c["value"] for c in broken["flipped"].spec["clamps"]} == {-2.0}
    titles = {m.value for m in app.markdown if m.value.startswith("**")}
    assert {"**Steered: latents set to 2 × max**", "**Latents × -2**"} <= titles


def test_the_walkthrough_ignores_stale_or_corrupt_examples_and_says_why(
    measured_cache: tuple[Path, str], tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, path, examples = _copy(measured_cache, tmp_path)
    first = builtin_prompts("harmless", "test")[0].text
    path.unlink()
    app = _walkthrough(monkeypatch, cache, tiny_dir)
    assert not app.exception and _captions(app).count(DEFAULTS_NOTE) == 2
    a, b, c = examples.latents
    write_examples(replace(examples, latents=(b, a, c)), path)
    app.run()
    stale = [c for c in _captions(app) if c.startswith("Fixed defaults: the measured examples in")]
    assert len(stale) == 2 and f"they steer latents #{b}, #{a}, #{c}, and the top latents are now" in stale[0]
    assert app.selectbox(key="demo_harmless").options[0] == first
    assert any(m.value.startswith("Set latents") and "to 1 × their max" in m.value for m in app.markdown)
    path.write_text('{"version": 1, "model": ', encoding="utf-8")
    app.run()
    assert not app.exception
    why = "Expecting value: line 1 column 25 (char 24)"
    assert [e.value for e in app.error] == [
        f"{path.resolve()} is corrupt ({why}); run `explorer demo-examples` again"
    ]
    assert app.selectbox(key="demo_harmless").options[0] == first
