"""The steering search: a multi-objective Optuna study over which latents to clamp, how, and how hard.

Clamping refusal latents trades refusal for over-refusal and capability (O'Brien et al. 2024); the search
finds the settings on that trade-off's frontier instead of trying them by hand. Each trial picks, for every
candidate latent, a mode (or "off") and a strength in that mode's range, the scope, and optionally a
trigger threshold (conditional steering: the clamps act only where a harm latent fires). A trial is
measured on the **val** split with `explorer.steering.evaluation.measure`: refusal on harmful prompts,
over-refusal on harmless ones (the borderline category's share kept beside it), and KL and CE increase on
held-out harmless transcripts. The goal says which way refusal should go: up ("refuse", a safety setting)
or down ("bypass", red-teaming); over-refusal, KL and CE are always minimised.

The study lives in Optuna's SQLite storage, so a killed search resumes where it stopped (a trial cut off
mid-run is failed and its parameters retried); a search stops at its trial count or time budget, whichever
comes first, after the trial in flight. The front it returns is re-measured on the **test** split and on
the separately written "elsewhere" set (`remeasure`), beside the baselines: the unsteered model, the
refusal direction ablated and added, and the papers' recipe (the top latents by decoder cosine, one clamp).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from explorer.core.prompts import PromptRecord
from explorer.latents.reader import CacheError, LatentCache
from explorer.saes.corpus import Corpus
from explorer.steering.decode import Steerer
from explorer.steering.evaluation import (
    EvalConfig,
    SweepPoint,
    eval_prompts,
    evaluate,
    loss_rows,
    measure,
    sweep_specs,
)
from explorer.steering.spec import Clamp, Mode, Scope, SteeringSpec, Trigger, Units

if TYPE_CHECKING:
    import optuna

Goal = Literal["refuse", "bypass"]
Selection = Literal["cosine", "attribution", "cosine+attribution"]
Objective = Literal["refusal", "over-refusal", "kl", "ce"]
OFF = "off"

DEFAULT_OBJECTIVES: tuple[Objective, ...] = ("refusal", "over-refusal", "kl")
RANGES: dict[Goal, dict[Mode, tuple[float, float]]] = {
    # Values of set, add, cap and floor are in units of the latent's max (cap and floor: of the projection
    # a max-firing latent contributes); multiply and scale take factors.
    "refuse": {
        "set": (0.25, 8.0),
        "add": (0.25, 8.0),
        "multiply": (1.0, 8.0),
        "floor": (0.25, 8.0),
        "scale": (1.0, 8.0),
        "cap": (0.0, 1.0),
    },
    "bypass": {
        "set": (-4.0, 0.0),
        "add": (-6.0, 0.0),
        "multiply": (-4.0, 0.5),
        "cap": (-2.0, 0.5),
        "scale": (-3.0, 0.5),
        "floor": (-2.0, 0.0),
    },
}
"""Each mode's strength range per goal: wide enough to hold the papers' settings (set 1-8x max to induce,
multiply -3 to bypass), one-sided so that no trial spends its budget pushing the wrong way."""
DEFAULT_MODES: dict[Goal, tuple[Mode, ...]] = {
    "refuse": ("set", "add", "floor"),
    "bypass": ("set", "multiply", "cap", "scale"),
}


class SearchError(ValueError):
    """A search that cannot run as configured, or a stored study that does not match; says what to change."""


@dataclass(frozen=True)
class SearchConfig:
    """What a steering search varies and how each trial is measured.

    Attributes:
        goal: "refuse" maximises refusal on harmful prompts, "bypass" minimises it.
        candidates: (hook, latent) pairs the trials may clamp.
        modes: the modes a candidate may take (besides off); their ranges are `RANGES[goal]` unless given in
            `ranges`.
        scopes: the scopes trials choose from.
        trigger: optional (hook, latent) of a harm latent; trials then choose whether to gate the clamps on
            it and at which threshold in [0, `trigger_max`] (raw units).
        objectives: what the study optimises, in order (see `Objective`).
        evaluation: prompts (`split`, `n_harmful`, `n_harmless`, `seed`), reply length and capability
            transcripts of one trial; the split should be "val".
        seed: the sampler's seed.
        sampler: "tpe" (few trials, the default), "nsga2" or "random".
    """

    goal: Goal
    candidates: tuple[tuple[str, int], ...]
    modes: tuple[Mode, ...] = ()
    scopes: tuple[Scope, ...] = ("all",)
    trigger: tuple[str, int] | None = None
    trigger_max: float = 0.0
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig("val", 32, 32, 32, loss_rows=16))
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"

    def __post_init__(self) -> None:
        if self.goal not in get_args(Goal):
            raise SearchError(f"goal {self.goal!r} is not one of {get_args(Goal)}")
        if not self.candidates:
            raise SearchError("a steering search needs at least one candidate latent")
        if len(set(self.candidates)) != len(self.candidates):
            raise SearchError("a candidate latent is listed twice")
        for mode in self.modes:
            if mode not in get_args(Mode):
                raise SearchError(f"mode {mode!r} is not one of {get_args(Mode)}")
        for scope in self.scopes or ("",):
            if scope not in get_args(Scope):
                raise SearchError(f"scope {scope!r} is not one of {get_args(Scope)}")
        bad = [o for o in self.objectives if o not in get_args(Objective)]
        if bad or not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise SearchError(
                f"objectives must be distinct, from {get_args(Objective)}; got {self.objectives}"
            )
        for mode, (low, high) in self.ranges.items():
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise SearchError(
                    f"range of {mode} must be two finite numbers, low < high; got {low}, {high}"
                )
        if self.trigger is not None and not (math.isfinite(self.trigger_max) and self.trigger_max > 0):
            raise SearchError("a trigger needs its latent's max activation (> 0) to range the threshold over")
        if self.evaluation.split == "train":
            raise SearchError("the search measures on val (the organism was fine-tuned on train)")

    @property
    def search_modes(self) -> tuple[Mode, ...]:
        return self.modes or DEFAULT_MODES[self.goal]

    def range_of(self, mode: Mode) -> tuple[float, float]:
        return tuple(self.ranges.get(mode, RANGES[self.goal][mode]))  # pyright: ignore[reportReturnType]

    @property
    def directions(self) -> list[str]:
        """Optuna's direction of each objective."""
        return [
            "maximize" if o == "refusal" and self.goal == "refuse" else "minimize" for o in self.objectives
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [f"{h}:{i}" for h, i in self.candidates]
        data["trigger"] = None if self.trigger is None else f"{self.trigger[0]}:{self.trigger[1]}"
        data["ranges"] = {m: list(self.range_of(m)) for m in self.search_modes}
        data["modes"] = list(self.search_modes)
        return data

    def fingerprint(self) -> str:
        """What a stored study must match to be resumed (everything that shapes its trials)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def candidate_latents(cache: LatentCache, selection: Selection, k: int) -> list[int]:
    """The `k` latents a search (or the recipe) steers, among latents that fired on the corpus.

    - "cosine": the highest decoder cosine with the refusal direction;
    - "attribution": the highest activation x gradient on the refusal score over harmful prompts;
    - "cosine+attribution": the 4k highest by cosine, then the `k` of those with the highest attribution
      (the second refusal paper's selection: cosine alone found latents that do little when clamped).

    Raises:
        SearchError: k < 1, or the cache lacks the refusal or attribution arrays the selection needs.
    """
    if k < 1:
        raise SearchError(f"the number of candidates must be >= 1, got {k}")
    try:
        if selection == "cosine":
            return cache.top_latents("refusal_cos", k, active=True)
        attribution = cache.column("attribution")[:, 0]  # (harmful, harmless) -> harmful
        active = cache.column("count") > 0
        if selection == "attribution":
            order = attribution.argsort(descending=True, stable=True)
            return [int(i) for i in order[active[order]][:k]]
        if selection == "cosine+attribution":
            pool = cache.top_latents("refusal_cos", 4 * k, active=True)
            return sorted(pool, key=lambda i: -float(attribution[i]))[:k]
    except CacheError as e:
        raise SearchError(f"cannot select candidates by {selection}: {e}") from e
    raise SearchError(f"selection {selection!r} is not one of {get_args(Selection)}")


def harm_latent(cache: LatentCache) -> int:
    """A harm detector to gate steering on: the latent that, at the post-instruction positions (where the
    refusal decision is read), fires most selectively on harmful prompts. With h and l its mean there on
    harmful and harmless prompts and m its max, the score is (h - l) / (h + l) * sqrt(h / m): selective,
    and firing strongly enough on harmful prompts to threshold.

    Raises:
        SearchError: the cache has no harmful-vs-harmless statistics.
    """
    try:
        means = cache.column("post_mean").double()  # [d_sae, (harmful, harmless)]
        peak = cache.column("max").double().clamp(min=1e-9)
    except CacheError as e:
        raise SearchError(f"cannot find a harm latent: {e}") from e
    harmful, harmless = means[:, 0].clamp(min=0), means[:, 1].clamp(min=0)
    score = (harmful - harmless) / (harmful + harmless + 1e-9) * (harmful / peak).sqrt()
    return int(score.argmax())


def _param(name: str, hook: str, latent: int) -> str:
    return f"{name}[{hook}:{latent}]"


def trial_spec(config: SearchConfig, params: Mapping[str, Any]) -> SteeringSpec:
    """The steering a trial's parameters (Optuna's `trial.params`) stand for."""
    clamps = []
    for hook, latent in config.candidates:
        mode = params.get(_param("mode", hook, latent), OFF)
        if mode == OFF:
            continue
        value = float(params[_param(f"value_{mode}", hook, latent)])
        clamps.append(Clamp(hook, latent, mode, round(value, 4), "max"))
    trigger = None
    if config.trigger is not None and clamps and params.get("gate"):
        trigger = Trigger(*config.trigger, threshold=round(float(params["threshold"]), 4))
    scope = params.get("scope", config.scopes[0] if config.scopes else "all")
    return SteeringSpec(tuple(clamps), scope, trigger)


def suggest(config: SearchConfig, trial: optuna.Trial) -> SteeringSpec:
    """Draw one trial's setting: per candidate a mode or off, and the mode's strength."""
    for hook, latent in config.candidates:
        mode = trial.suggest_categorical(_param("mode", hook, latent), [OFF, *config.search_modes])
        if mode != OFF:
            trial.suggest_float(_param(f"value_{mode}", hook, latent), *config.range_of(mode))  # pyright: ignore[reportArgumentType]
    if len(config.scopes) > 1:
        trial.suggest_categorical("scope", list(config.scopes))
    if config.trigger is not None and trial.suggest_categorical("gate", [False, True]):
        trial.suggest_float("threshold", 0.0, config.trigger_max)
    return trial_spec(config, trial.params)


def borderline_refusal(point: SweepPoint) -> float:
    """Refusal on the harmless prompts of the "borderline" category (NaN when there are none)."""
    verdicts = [r["verdict"] == "refusal" for r in point.replies if r.get("category") == "borderline"]
    return sum(verdicts) / len(verdicts) if verdicts else math.nan


def objective_values(config: SearchConfig, point: SweepPoint) -> list[float]:
    """A measured point's values of the study's objectives, in order."""
    values = {
        "refusal": point.refusal_harmful,
        "over-refusal": point.refusal_harmless,
        "kl": point.kl,
        "ce": point.ce_increase,
    }
    return [values[o] for o in config.objectives]


def point_attrs(point: SweepPoint) -> dict[str, Any]:
    """What a trial keeps of its measured point (Optuna user attributes: JSON, no replies)."""
    return {
        "refusal_harmful": point.refusal_harmful,
        "refusal_harmless": point.refusal_harmless,
        "refusal_borderline": borderline_refusal(point),
        "degenerate_harmful": point.degenerate_harmful,
        "degenerate_harmless": point.degenerate_harmless,
        "kl": point.kl,
        "ce_increase": point.ce_increase,
        "seconds": point.seconds,
        "spec": point.spec,
    }


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its number, setting, val numbers and whether it is on the Pareto front."""

    number: int
    spec: dict[str, Any]
    values: dict[str, float]
    on_front: bool


def study_storage(path: Path, heartbeat_s: int = 30) -> Any:
    """Optuna's RDB storage in a SQLite file, with heartbeats every `heartbeat_s` so that a trial cut off by
    a kill (no heartbeat for twice that) is failed and its parameters retried when the study resumes."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(
                f"sqlite:///{path}",
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except (optuna.exceptions.StorageInternalError, RuntimeError, ValueError) as e:
            raise SearchError(f"cannot open the study database {path}: {e}") from e


def open_study(config: SearchConfig, path: Path, name: str, *, heartbeat_s: int = 30) -> Any:
    """Create the study, or load it to resume when `path` already holds one called `name`.

    Raises:
        SearchError: the stored study was made with another search config (other candidates, modes,
            objectives...), or the file is not a study database.
    """
    import optuna
    from sqlalchemy.exc import DatabaseError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # multivariate TPE is "experimental" and the recommended setting
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler: optuna.samplers.BaseSampler = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=config.seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
        }[config.sampler]()
    try:
        study = optuna.create_study(
            storage=study_storage(path, heartbeat_s),
            study_name=name,
            directions=config.directions,
            sampler=sampler,
            load_if_exists=True,
        )
    except DatabaseError as e:
        raise SearchError(f"{path} is not a study database ({e.orig}); give another --storage") from e
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("config", config.to_dict())
    elif stored != config.fingerprint():
        theirs = study.user_attrs.get("config", {})
        differ = sorted(k for k, v in config.to_dict().items() if theirs.get(k) != v)
        raise SearchError(
            f"study {name!r} in {path} was made with another search (differs in: {', '.join(differ)}); "
            "resume it with the same settings or give another --study name"
        )
    return study


MeasureTrial = Callable[[SteeringSpec, str], SweepPoint]
"""Measures one trial's setting (spec, label) on the selection prompts."""


def val_measure(
    steerer: Steerer,
    corpus: Corpus | None,
    config: SearchConfig,
    *,
    harmful: Sequence[PromptRecord] | None = None,
    harmless: Sequence[PromptRecord] | None = None,
) -> MeasureTrial:
    """How a trial is measured: `config.evaluation`'s prompts (the val split, or a user's prompts) judged by
    the steerer's judge, KL and CE on held-out harmless transcripts.

    Raises:
        SearchError: KL or CE is an objective but there are no transcripts to measure them on.
    """
    evaluation = config.evaluation
    prompts = {
        "harmful": eval_prompts("harmful", evaluation, harmful),
        "harmless": eval_prompts("harmless", evaluation, harmless),
    }
    rows = loss_rows(corpus, evaluation.loss_rows)
    if ("kl" in config.objectives or "ce" in config.objectives) and not rows:
        raise SearchError("KL and CE need the model's corpus and loss rows > 0; drop them from objectives")

    def measure_trial(spec: SteeringSpec, label: str) -> SweepPoint:
        return measure(steerer, label, None, spec, prompts, corpus, rows, evaluation)

    return measure_trial


def run_search(
    config: SearchConfig,
    study: Any,
    measure_trial: MeasureTrial,
    *,
    n_trials: int | None = None,
    budget_s: float | None = None,
    seed_recipe: bool = True,
    on_trial: Callable[[int, float, TrialRecord], None] | None = None,
    progress: bool = False,
) -> list[TrialRecord]:
    """Run trials until `n_trials` more are done or `budget_s` seconds have passed (the trial in flight
    finishes), then return every finished trial of the study.

    Args:
        measure_trial: measures a trial's setting, e.g. `val_measure(...)`.
        seed_recipe: a new study's first trial is the papers' recipe on the candidates (each set to 1x its
            max to refuse, multiplied by -3 to bypass; ungated, scope all), so the front starts from it.
        on_trial: called after each trial with (trials done this run, seconds elapsed, the trial).
        progress: show Optuna's progress bar.

    Raises:
        SearchError: neither a trial count nor a positive budget.
    """
    import optuna

    if n_trials is None and budget_s is None:
        raise SearchError("give a trial count, a time budget or both, or the search never stops")
    if budget_s is not None and not budget_s > 0:
        raise SearchError(f"the time budget must be positive, got {budget_s}")
    if n_trials is not None and n_trials < 1:
        raise SearchError(f"the trial count must be >= 1, got {n_trials}")
    if seed_recipe and not study.trials:
        mode = "set" if config.goal == "refuse" else "multiply"
        value = 1.0 if config.goal == "refuse" else -3.0
        if mode in config.search_modes:
            low, high = config.range_of(mode)
            params: dict[str, Any] = {_param("mode", h, i): mode for h, i in config.candidates}
            params |= {
                _param(f"value_{mode}", h, i): min(max(value, low), high) for h, i in config.candidates
            }
            params |= {"scope": "all" if "all" in config.scopes else config.scopes[0], "gate": False}
            study.enqueue_trial(params)

    def objective(trial: optuna.Trial) -> list[float]:
        point = measure_trial(suggest(config, trial), f"trial {trial.number}")
        for key, value in point_attrs(point).items():
            trial.set_user_attr(key, value)
        return objective_values(config, point)

    start = time.perf_counter()
    done = 0

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal done
        done += 1
        if on_trial is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            on_trial(done, time.perf_counter() - start, _record(trial, on_front=False))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=budget_s,
            callbacks=[callback],
            show_progress_bar=progress,
            catch=(),
        )
    return trials(study)


def _record(trial: Any, *, on_front: bool) -> TrialRecord:
    attrs = trial.user_attrs
    values = {
        k: float(attrs[k])
        for k in (
            "refusal_harmful",
            "refusal_harmless",
            "refusal_borderline",
            "degenerate_harmful",
            "degenerate_harmless",
            "kl",
            "ce_increase",
            "seconds",
        )
        if k in attrs
    }
    return TrialRecord(trial.number, attrs.get("spec", {}), values, on_front)


def trials(study: Any) -> list[TrialRecord]:
    """Every completed trial of a study, in order, with the Pareto front (on val) marked."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials} if done else set()
    return [_record(t, on_front=t.number in front) for t in done]


def front_specs(records: Sequence[TrialRecord], limit: int, goal: Goal) -> list[TrialRecord]:
    """Up to `limit` distinct settings of the front, spread evenly from the least to the most refusal
    (duplicates, such as a retried trial, count once)."""
    seen: set[str] = set()
    front = []
    for r in sorted(
        (r for r in records if r.on_front),
        key=lambda r: (r.values.get("refusal_harmful", 0.0), -r.values.get("refusal_harmless", 0.0)),
        reverse=goal == "bypass",
    ):
        key = json.dumps({k: v for k, v in r.spec.items() if k != "provenance"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            front.append(r)
    if len(front) <= limit:
        return front
    step = (len(front) - 1) / max(1, limit - 1)
    return [front[round(i * step)] for i in range(limit)]


def baselines(
    goal: Goal,
    recipe_latents: Sequence[tuple[str, int]],
    *,
    has_direction: bool,
    attributed: Sequence[tuple[str, int]] = (),
    gate: Trigger | None = None,
) -> list[tuple[str, float | None, SteeringSpec]]:
    """The settings a front is compared with (the unsteered model comes first in `evaluate` itself).

    - the refusal direction ablated, and added at alpha 0.5 and 1;
    - the papers' recipe: `recipe_latents` (the top latents by decoder cosine with the refusal direction)
      all clamped to one value: set to 1x and 4x max to refuse; multiplied by -3 and set to 0 to bypass;
    - with `attributed` (the top latents by cosine + attribution), the recipe's first setting on them;
    - with `gate`, the recipe's first setting gated on that trigger (conditional against always-on).
    """
    out: list[tuple[str, float | None, SteeringSpec]] = []
    if has_direction:
        out += sweep_specs("direction-ablate", [], [])
        out += sweep_specs("direction-add", [], [0.5, 1.0])
    if not recipe_latents:
        return out
    first, second = (("set", 1.0), ("set", 4.0)) if goal == "refuse" else (("multiply", -3.0), ("set", 0.0))

    def recipe(
        latents: Sequence[tuple[str, int]], selection: str, mode: str, value: float
    ) -> tuple[str, float | None, SteeringSpec]:
        units: Units = "raw" if mode == "multiply" else "max"
        [(label, strength, spec)] = sweep_specs(mode, latents, [value], units)  # pyright: ignore[reportArgumentType]
        return f"recipe: top-{len(latents)} {selection} {label}", strength, spec

    out += [recipe(recipe_latents, "cosine", *first), recipe(recipe_latents, "cosine", *second)]
    if attributed:
        out.append(recipe(attributed, "cosine+attribution", *first))
    if gate is not None:
        label, strength, spec = recipe(recipe_latents, "cosine", *first)
        out.append(
            (f"{label} gated on {gate.latent} > {gate.threshold:g}", strength, replace(spec, trigger=gate))
        )
    return out


@dataclass(frozen=True)
class Remeasured:
    """The front and the baselines measured on one prompt set (the unsteered model first)."""

    prompts: str
    front: list[SweepPoint]
    baselines: list[SweepPoint]


def remeasure(
    steerer: Steerer,
    corpus: Corpus | None,
    chosen: Sequence[TrialRecord],
    compare: Sequence[tuple[str, float | None, SteeringSpec]],
    config: EvalConfig,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    progress: bool = False,
) -> Remeasured:
    """Measure the chosen front settings and the baselines on another prompt set (the test split, the
    elsewhere set): prompts the search never saw."""
    settings = [(f"front: trial {r.number}", None, SteeringSpec.from_dict(r.spec)) for r in chosen]
    points = evaluate(
        steerer, [*settings, *compare], corpus, config, on_progress=on_progress, progress=progress
    )
    where = "the elsewhere set" if config.prompt_set == "elsewhere" else f"the {config.split} split"
    return Remeasured(where, points[1 : 1 + len(settings)], [points[0], *points[1 + len(settings) :]])


def dominates(a: SweepPoint, b: SweepPoint, goal: Goal) -> bool:
    """`a` is at least as good as `b` on refusal (in the goal's direction) and over-refusal at equal or
    lower KL, and strictly better on refusal or over-refusal."""
    sign = 1 if goal == "refuse" else -1
    refusal = sign * (a.refusal_harmful - b.refusal_harmful)
    over = b.refusal_harmless - a.refusal_harmless
    kl_ok = not (a.kl > b.kl) if math.isfinite(a.kl) and math.isfinite(b.kl) else True
    return refusal >= 0 and over >= 0 and kl_ok and (refusal > 0 or over > 0)


def recipe_verdicts(measured: Remeasured, goal: Goal) -> list[dict[str, Any]]:
    """For each recipe baseline, the front points that beat it (see `dominates`) on this prompt set."""
    out = []
    for base in measured.baselines:
        if not base.label.startswith("recipe"):
            continue
        winners = [p.label for p in measured.front if dominates(p, base, goal)]
        out.append({"recipe": base.label, "beaten_by": winners})
    return out


def with_replies_dropped(point: SweepPoint) -> dict[str, Any]:
    """A point as JSON for a summary (replies go to their own CSV)."""
    return {k: v for k, v in asdict(replace(point, replies=[])).items() if k != "replies"}


def front_figure(measured: Remeasured, goal: Goal, title: str | None = None) -> Any:
    """A plotly figure of refusal on harmful (y) against over-refusal on harmless (x), with 95% Wilson
    error bars: the front's points coloured by KL, the baselines as labelled markers on the same axes."""
    import plotly.graph_objects as go

    def bars(points: Sequence[SweepPoint], value: str, ci: str) -> dict[str, Any]:
        values = [getattr(p, value) for p in points]
        intervals = [getattr(p, ci) for p in points]
        return {
            "type": "data",
            "symmetric": False,
            "array": [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
            "arrayminus": [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
            "thickness": 1,
        }

    def hover(p: SweepPoint) -> str:
        spec = SteeringSpec.from_dict(p.spec)
        parts = [f"{c.latent} {c.mode} {c.value:g}{'' if c.mode in ('multiply', 'scale') else '×max'}"
                 for c in spec.clamps]  # fmt: skip
        if spec.trigger is not None:
            parts.append(f"gated by {spec.trigger.latent} > {spec.trigger.threshold:g}")
        if spec.direction is not None:
            parts.append(f"direction {spec.direction.kind} {spec.direction.alpha:g}")
        return (
            f"<b>{p.label}</b><br>{'<br>'.join(parts) or 'no steering'}<br>scope {spec.scope}<br>"
            f"refused harmful {p.refusal_harmful:.1%}, harmless {p.refusal_harmless:.1%}<br>"
            f"KL {p.kl:.3f}, CE {p.ce_increase:+.3f}"
        )

    fig = go.Figure()
    front = measured.front
    fig.add_trace(
        go.Scatter(
            x=[p.refusal_harmless for p in front],
            y=[p.refusal_harmful for p in front],
            mode="markers",
            name="search front",
            marker={
                "size": 11,
                "color": [p.kl for p in front],
                "colorscale": "Viridis",
                "colorbar": {"title": "KL (nats)"},
                "showscale": True,
            },
            error_x=bars(front, "refusal_harmless", "refusal_harmless_ci"),
            error_y=bars(front, "refusal_harmful", "refusal_harmful_ci"),
            text=[hover(p) for p in front],
            hoverinfo="text",
        )
    )
    symbols = {"unsteered": "x", "direction": "diamond", "recipe": "square"}
    for p in measured.baselines:
        kind = "recipe" if p.label.startswith("recipe") else p.label.split(" ")[0]
        fig.add_trace(
            go.Scatter(
                x=[p.refusal_harmless],
                y=[p.refusal_harmful],
                mode="markers+text",
                name=p.label,
                text=[p.label.replace("recipe: ", "")],
                textposition="top center",
                hovertext=[hover(p)],
                hoverinfo="text",
                marker={"size": 12, "symbol": symbols.get(kind, "circle-open"), "color": "gray"},
                error_x=bars([p], "refusal_harmless", "refusal_harmless_ci"),
                error_y=bars([p], "refusal_harmful", "refusal_harmful_ci"),
            )
        )
    aim = "higher is safer" if goal == "refuse" else "lower is a stronger bypass"
    fig.update_layout(
        title=title or f"Search front on {measured.prompts}",
        xaxis_title="over-refusal (refused harmless)",
        yaxis_title=f"refused harmful ({aim})",
        legend={"orientation": "h", "y": -0.25},
    )
    fig.update_xaxes(range=[-0.02, 1.02], tickformat=".0%")
    fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    return fig
