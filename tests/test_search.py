"""The steering search: a trial's parameters are the spec it runs, the front is exactly the settings no
other trial beats in the goal's directions, a known optimum is found, a killed study resumes and retries
the trial it cut off, and `explorer search-steering` runs end to end on the tiny workspace."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.latents.reader import CacheError, LatentCache
from explorer.steering.evaluation import EvalConfig, SweepPoint
from explorer.steering.search import (
    SearchConfig,
    SearchError,
    candidate_latents,
    harm_latent,
    harm_latents,
    suggest,
)
from explorer.steering.search_front import Remeasured, baselines, dominates, front_specs, recipe_verdicts
from explorer.steering.search_setup import trigger_max
from explorer.steering.search_study import TrialRecord, open_study, run_search, trials
from explorer.steering.share import decode_setup
from explorer.steering.spec import Clamp, SteeringSpec, Trigger

ROOT = Path(__file__).resolve().parents[1]
HOOK, EARLY = "blocks.2.hook_resid_pre", "blocks.1.hook_resid_pre"
A, B = (HOOK, 1), (HOOK, 2)


def point(
    refusal: float, over: float, kl: float, spec: SteeringSpec | None = None, label: str = "p"
) -> SweepPoint:
    """A measured point with the given rates (100 prompts per label) and KL."""
    return SweepPoint(
        label, None, refusal, over, 100, 100, kl, kl, None, (spec or SteeringSpec()).to_dict(), 0.0
    )


def clamp_value(spec: SteeringSpec, latent: int) -> float:
    return next((c.value for c in spec.clamps if c.latent == latent), 0.0)


def synthetic(spec: SteeringSpec, label: str) -> SweepPoint:
    """A known trade-off: refusal peaks when latent 1 is set to 3x max; latent 2 only costs over-refusal
    and KL; the gate halves over-refusal."""
    a, b = clamp_value(spec, 1), clamp_value(spec, 2)
    refusal = math.exp(-((a - 3.0) ** 2))
    over = min(1.0, 0.05 * a + 0.1 * b) * (0.5 if spec.trigger else 1.0)
    return point(refusal, over, 0.01 * (a + b), spec, label)


def slow_synthetic(spec: SteeringSpec, label: str) -> SweepPoint:
    time.sleep(0.7)
    return synthetic(spec, label)


def config(goal: str = "refuse", **kw: Any) -> SearchConfig:
    return SearchConfig(goal, (A, B), **{"modes": ("set",), "evaluation": EvalConfig("val", 2, 2, 2), **kw})  # pyright: ignore[reportArgumentType]


def test_a_trials_parameters_are_the_spec_it_runs() -> None:
    search = config(modes=("set", "floor"), scopes=("all", "prompt"), trigger=(EARLY, 7), trigger_max=5.0)
    params = {
        "mode[blocks.2.hook_resid_pre:1]": "floor",
        "value_floor[blocks.2.hook_resid_pre:1]": 2.5,
        "mode[blocks.2.hook_resid_pre:2]": "off",
        "scope": "prompt",
        "gate": True,
        "threshold": 1.5,
    }
    spec = suggest(search, optuna.trial.FixedTrial(params))
    assert spec == SteeringSpec((Clamp(HOOK, 1, "floor", 2.5, "max"),), "prompt", Trigger(EARLY, 7, 1.5))
    off = {**params, "mode[blocks.2.hook_resid_pre:1]": "off"}
    assert suggest(search, optuna.trial.FixedTrial(off)) == SteeringSpec(scope="prompt")  # no clamp, no gate
    assert search.directions == ["maximize", "minimize", "minimize"]
    assert config("bypass").directions == ["minimize", "minimize", "minimize"]


def test_search_configs_that_cannot_run_are_errors() -> None:
    with pytest.raises(SearchError, match="at least one candidate"):
        SearchConfig("refuse", ())
    with pytest.raises(SearchError, match="listed twice"):
        SearchConfig("refuse", (A, A))
    with pytest.raises(SearchError, match="objectives"):
        config(objectives=("refusal", "accuracy"))
    with pytest.raises(SearchError, match="low < high"):
        config(ranges={"set": (2.0, 1.0)})
    with pytest.raises(SearchError, match="val"):
        config(evaluation=EvalConfig("train"))  # pyright: ignore[reportArgumentType]
    with pytest.raises(SearchError, match="max activation"):
        config(trigger=(EARLY, 1))


def test_the_search_finds_a_known_optimum(tmp_path: Path) -> None:
    search = config(objectives=("refusal",), seed=1)
    study = open_study(search, tmp_path / "s.sqlite3", "known")
    records = run_search(search, study, synthetic, n_trials=40)
    assert records[0].spec["clamps"][0]["value"] == 1.0  # the papers' recipe goes first
    best = max(records, key=lambda r: r.values["refusal_harmful"])
    assert best.values["refusal_harmful"] > 0.8  # |value - 3| < 0.47
    assert abs(clamp_value(SteeringSpec.from_dict(best.spec), 1) - 3.0) < 0.5
    assert [r.number for r in records if r.on_front] == [best.number]


@pytest.mark.parametrize("goal", ["refuse", "bypass"])
def test_the_front_is_exactly_the_trials_no_other_beats(tmp_path: Path, goal: str) -> None:
    search = config(
        goal,
        modes=("set", "add"),
        ranges={"set": (-4.0, 8.0), "add": (-4.0, 8.0)},
        sampler="random",
        trigger=(HOOK, 5),
        trigger_max=2.0,
    )
    study = open_study(search, tmp_path / "s.sqlite3", goal)
    records = run_search(search, study, synthetic, n_trials=30)
    sign = 1 if goal == "refuse" else -1

    def beats(x: TrialRecord, y: TrialRecord) -> bool:
        xs = (sign * x.values["refusal_harmful"], -x.values["refusal_harmless"], -x.values["kl"])
        ys = (sign * y.values["refusal_harmful"], -y.values["refusal_harmless"], -y.values["kl"])
        return all(a >= b for a, b in zip(xs, ys, strict=True)) and xs != ys

    expected = {r.number for r in records if not any(beats(o, r) for o in records)}
    assert {r.number for r in records if r.on_front} == expected
    assert len(records) == 30 and 0 < len(expected) < 30


def test_a_setting_that_breaks_the_model_is_never_on_the_front(tmp_path: Path) -> None:
    def breaking(spec: SteeringSpec, label: str) -> SweepPoint:
        measured = synthetic(spec, label)  # latent 2 above 4x max breaks the text: refuses nothing
        broken = clamp_value(spec, 2) > 4.0
        return replace(
            measured,
            refusal_harmless=0.0 if broken else measured.refusal_harmless,
            degenerate_harmless=0.5 if broken else 0.0,
        )

    search = config(sampler="random", ranges={"set": (0.0, 8.0)})
    records = run_search(search, open_study(search, tmp_path / "s.sqlite3", "broken"), breaking, n_trials=30)
    broken = [r for r in records if r.values["degenerate_harmless"] > 0.1]
    assert broken and not any(r.on_front for r in broken)
    assert any(r.on_front for r in records)


def test_a_resumed_search_does_not_draw_the_first_trials_again(tmp_path: Path) -> None:
    search = config(sampler="random")
    path = tmp_path / "s.sqlite3"
    run_search(search, open_study(search, path, "again"), synthetic, n_trials=3, seed_recipe=False)
    records = run_search(search, open_study(search, path, "again"), synthetic, n_trials=3)
    specs = [json.dumps(r.spec, sort_keys=True) for r in records]
    assert len(set(specs)) == 6


def test_the_time_budget_stops_the_search(tmp_path: Path) -> None:
    search = config()
    study = open_study(search, tmp_path / "s.sqlite3", "budget")
    start = time.perf_counter()
    records = run_search(search, study, slow_synthetic, budget_s=1.0)
    assert 1 <= len(records) <= 3 and time.perf_counter() - start < 4
    with pytest.raises(SearchError, match="never stops"):
        run_search(search, study, synthetic)
    with pytest.raises(SearchError, match="positive"):
        run_search(search, study, synthetic, budget_s=0)


_KILLED_RUN = """
import sys
from pathlib import Path
from tests.test_search import config, open_study, run_search, slow_synthetic
study = open_study(config(), Path(sys.argv[1]), "resumed", heartbeat_s=1)
run_search(config(), study, slow_synthetic, n_trials=100)
"""


def _trials_drawn(path: Path) -> int:
    """Trials whose parameters are stored, read without Optuna (which would create its tables beside the
    child)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(DISTINCT trial_id) FROM trial_params").fetchone()[0])
    except sqlite3.Error:  # not created yet, or its tables not yet
        return 0


def test_a_killed_search_resumes_and_retries_the_trial_it_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(path)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if _trials_drawn(path) >= 3:  # two done, the third drawn and being measured
                break
        else:
            pytest.fail("the search in the child process made no progress")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(2.5)  # past the grace period (2 heartbeats of 1 s)
    study = open_study(config(), path, "resumed", heartbeat_s=1)
    cut = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(cut) == 1
    finished = len(trials(study))
    records = run_search(config(), study, synthetic, n_trials=2)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[cut[0].number] == optuna.trial.TrialState.FAIL
    assert len(records) == finished + 2
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == cut[0].number]
    assert len(retried) == 1 and retried[0].params == cut[0].params


def test_a_study_of_another_search_or_a_corrupt_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    open_study(config(), path, "mine")
    open_study(config(), path, "mine")  # the same search resumes
    with pytest.raises(SearchError, match="differs in: candidates"):
        open_study(
            SearchConfig("refuse", (A,), ("set",), evaluation=EvalConfig("val", 2, 2, 2)), path, "mine"
        )
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(SearchError, match=r"garbage\.sqlite3"):
        open_study(config(), garbage, "mine")


class _Columns(LatentCache):
    """A latent cache of known per-latent arrays (no files)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self._columns = columns

    def column(self, name: str) -> torch.Tensor:
        if name not in self._columns:
            raise CacheError(f"no {name!r}")
        return self._columns[name]

    def column_names(self) -> list[str]:
        return sorted(self._columns)


def test_candidates_by_cosine_attribution_and_both() -> None:
    cosine = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.95])
    attribution = torch.stack(
        [torch.tensor([0.1, 0.5, 0.9, 0.2, 0.0, 0.3, 0.8, 5.0, 0.4, 0.0]), torch.zeros(10)], 1
    )
    count = torch.tensor([5, 5, 5, 5, 5, 5, 5, 5, 5, 0])  # latent 9 never fired
    cache = _Columns(refusal_cos=cosine, attribution=attribution, count=count)
    assert candidate_latents(cache, "cosine", 2) == [0, 1]
    assert candidate_latents(cache, "attribution", 2) == [7, 2]
    # the 8 highest by cosine (0..7), then the 2 of those with most attribution
    assert candidate_latents(cache, "cosine+attribution", 2) == [7, 2]
    assert candidate_latents(cache, "cosine+attribution", 1) == [2]  # pool 0..3
    with pytest.raises(SearchError, match="attribution"):
        candidate_latents(_Columns(refusal_cos=cosine, count=count), "attribution", 2)
    with pytest.raises(SearchError, match=">= 1"):
        candidate_latents(cache, "cosine", 0)


def test_the_harm_latent_fires_selectively_on_harmful_prompts() -> None:
    post = torch.tensor([[5.0, 5.0], [4.0, 0.5], [0.4, 0.0], [0.0, 3.0]])  # (harmful, harmless) means
    cache = _Columns(post_mean=post, max=torch.tensor([10.0, 10.0, 10.0, 10.0]))
    assert harm_latent(cache) == 1  # 0 fires on both, 2 too weakly, 3 on harmless
    with pytest.raises(SearchError, match="harm latent"):
        harm_latent(_Columns())
    assert harm_latents(cache, 4) == [1, 2]  # the selective ones, best first


def test_the_gate_threshold_ranges_to_twice_the_harmful_mean() -> None:
    post = torch.tensor([[3.0, 1.0], [8.0, 0.5], [0.0, 0.0]])  # (harmful, harmless) means
    cache = _Columns(post_mean=post, max=torch.tensor([10.0, 10.0, 4.0]))
    caches = {HOOK: cache}
    assert [trigger_max(caches, (HOOK, i)) for i in range(3)] == [6.0, 10.0, 4.0]  # capped; never fires
    assert trigger_max({HOOK: _Columns(max=torch.tensor([5.0]))}, (HOOK, 0)) == 5.0  # no means: the max
    with pytest.raises(SearchError, match="no latent cache"):
        trigger_max(caches, (EARLY, 0))


def test_domination_and_the_recipe_verdicts() -> None:
    recipe = point(0.9, 0.4, 0.3, label="recipe: top-3 cosine set 1×max")
    better = point(0.92, 0.2, 0.25, label="front: trial 4")
    costlier = point(0.95, 0.1, 0.5, label="front: trial 7")  # better rates at higher KL
    assert dominates(better, recipe, "refuse") and not dominates(costlier, recipe, "refuse")
    assert not dominates(recipe, recipe, "refuse")
    assert dominates(point(0.1, 0.1, 0.1), point(0.5, 0.1, 0.1), "bypass")
    measured = Remeasured(
        "the test split", [better, costlier], [point(0.95, 0.09, 0.0, label="unsteered"), recipe]
    )
    assert recipe_verdicts(measured, "refuse") == [
        {"recipe": "recipe: top-3 cosine set 1×max", "beaten_by": ["front: trial 4"]}
    ]


def test_front_points_are_distinct_and_spread_over_refusal() -> None:
    def record(n: int, refusal: float, values: tuple[float, ...], front: bool = True) -> TrialRecord:
        spec = SteeringSpec(
            tuple(Clamp(HOOK, 1 + i, "set", v, "max") for i, v in enumerate(values))
        ).to_dict()
        measured = {
            "refusal_harmful": refusal,
            "refusal_harmless": 0.0,
            "kl": refusal / 10,
            "ce_increase": 0.0,
        }
        return TrialRecord(n, spec, measured, front)

    records = [record(i, i / 10, (float(i), 1.0)) for i in range(10)]
    # measured like trial 5 (a gate that never opens, a retry): one point, shown by its simplest setting
    records += [record(10, 0.5, (3.0,)), record(11, 1.0, (9.0,), front=False)]
    chosen = front_specs(records, 4, "refuse")
    assert [r.number for r in chosen] == [0, 3, 6, 9]
    every = front_specs(records, 20, "refuse")
    assert len(every) == 10 and 10 in [r.number for r in every] and 5 not in [r.number for r in every]
    assert [r.number for r in front_specs(records, 2, "bypass")] == [9, 0]


def test_the_baselines_are_the_direction_and_the_papers_recipe() -> None:
    latents, attributed = [A, B], [B, (HOOK, 4)]
    gate = Trigger(EARLY, 3, 1.25)
    refuse = baselines("refuse", latents, has_direction=True, attributed=attributed, gate=gate)
    assert [label for label, _, _ in refuse] == [
        "direction ablation",
        "direction add α=0.5",
        "direction add α=1",
        "recipe: top-2 cosine set 1×max",
        "recipe: top-2 cosine set 4×max",
        "recipe: top-2 cosine+attribution set 1×max",
        "recipe: top-2 cosine set 1×max gated on 3 > 1.25",
    ]
    assert refuse[3][2] == SteeringSpec(
        (Clamp(HOOK, 1, "set", 1.0, "max"), Clamp(HOOK, 2, "set", 1.0, "max"))
    )
    assert refuse[5][2].clamps[1] == Clamp(HOOK, 4, "set", 1.0, "max")
    assert refuse[6][2] == SteeringSpec(refuse[3][2].clamps, trigger=gate)
    bypass = baselines("bypass", latents, has_direction=False)
    assert [spec.clamps[0] for _, _, spec in bypass] == [
        Clamp(HOOK, 1, "multiply", -3.0),
        Clamp(HOOK, 1, "set", 0.0, "max"),
    ]


def test_cli_searches_resumes_and_remeasures_on_the_tiny_workspace(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    app_cache: Path,
    tiny_dir: Path,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    monkeypatch.setenv(USER_ENV, str(tmp_path / "user"))
    args = [
        "search-steering",
        "--model",
        str(tiny_dir),
        "--n-harmful",
        "2",
        "--n-harmless",
        "2",
        "--max-new-tokens",
        "2",
        "--top",
        "2",
        "--trigger",
        "auto",
        "--objectives",
        "refusal,over-refusal",  # the tiny corpus holds no held-out transcripts for KL
        "--max-degenerate",
        "1",  # the tiny model's two-token replies are mostly broken text
        "--json",
    ]
    assert main([*args, "--trials", "2", "--remeasure", "0"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first["trials"]) == 2 and first["remeasured"] == {}
    out = tmp_path / "out"
    rc = main(
        [*args, "--trials", "1", "--remeasure", "1", "--test-n", "2", "--no-elsewhere", "--out", str(out)]
    )
    assert rc == 0
    second = json.loads(capsys.readouterr().out)
    assert second["study"] == first["study"] and len(second["trials"]) == 3  # resumed, one more trial
    test = second["remeasured"]["test"]
    assert test["baselines"][0]["label"] == "unsteered" and len(test["front"]) == 1
    assert {b["label"].split(" ")[0] for b in test["baselines"]} >= {"unsteered", "direction", "recipe:"}
    front = test["front"][0]
    assert decode_setup(test["links"][front["label"]]).spec == SteeringSpec.from_dict(front["spec"])
    assert front["spec"] in [t["spec"] for t in second["trials"] if t["on_front"]]
    for name in ("search.json", "trials.csv", "front_test.html", "replies_test.csv"):
        assert (out / name).stat().st_size > 0
    assert main([*args, "--trials", "1", "--top", "3"]) == 0  # another search: another study
    assert json.loads(capsys.readouterr().out)["study"] != first["study"]
    main_hook = first["config"]["candidates"][0].rpartition(":")[0]
    assert main([*args, "--trials", "1", "--candidates", f"{main_hook}:999"]) == 2
    assert "latent 999 is out of range" in capsys.readouterr().err


def test_cli_eval_takes_the_selections_and_a_trigger(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], app_cache: Path, tiny_dir: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    base = [
        "eval",
        "--model",
        str(tiny_dir),
        "--n-harmful",
        "2",
        "--n-harmless",
        "2",
        "--max-new-tokens",
        "2",
        "--strengths",
        "1",
        "--json",
    ]
    assert main([*base, "--latents", "cosine+attribution:2"]) == 0
    plain = json.loads(capsys.readouterr().out)
    main_hook = plain["latents"][0].rpartition(":")[0]
    early = "blocks.0.hook_resid_pre"
    assert main([*base, "--latents", "cosine+attribution:2", "--trigger", f"{early}:5:0.5"]) == 0
    gated = json.loads(capsys.readouterr().out)
    assert gated["latents"] == plain["latents"] and len(plain["latents"]) == 2
    spec = SteeringSpec.from_dict(gated["points"][1]["spec"])
    assert spec.trigger == Trigger(early, 5, 0.5) and spec.clamps[0].hook == main_hook
    assert gated["points"][1]["label"] == "set 1×max gated"
    assert main([*base, "--trigger", f"{early}:5:nan"]) == 2
    assert "--trigger" in capsys.readouterr().err
    assert main([*base, "--trigger", f"{early}:5"]) == 2
