"""The steering search: a multi-objective Optuna study over which latents to clamp, how, and how hard.

Clamping refusal latents trades refusal for over-refusal and capability (O'Brien et al. 2024); the search
finds the settings on that trade-off's frontier instead of trying them by hand. Each trial picks, for every
candidate latent, a mode (or "off") and a strength in that mode's range, the scope, and optionally a
trigger threshold (conditional steering: the clamps act only where a harm latent fires). A trial is
measured on the **val** split with `explorer.steering.evaluation.measure`: refusal on harmful prompts,
over-refusal on harmless ones (the borderline category's share kept beside it), and KL and CE increase on
held-out harmless transcripts. The goal says which way refusal should go: up ("refuse", a safety setting)
or down ("bypass", red-teaming); over-refusal, KL and CE are always minimised.

This module holds what a search is (its config, candidates, the parameters a trial draws and the numbers
it keeps); `explorer.steering.search_study` runs and stores studies, `explorer.steering.search_front`
re-measures their fronts beside the baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from explorer.latents.reader import CacheError, LatentCache
from explorer.steering.evaluation import EvalConfig, SweepPoint
from explorer.steering.spec import Clamp, Mode, Scope, SteeringSpec, Trigger

if TYPE_CHECKING:
    import optuna
    import torch

Goal = Literal["refuse", "bypass"]
Selection = Literal["cosine", "attribution", "cosine+attribution"]
Objective = Literal["refusal", "over-refusal", "kl", "ce"]
OFF = "off"

DEFAULT_OBJECTIVES: tuple[Objective, ...] = ("refusal", "over-refusal", "kl")
DEFAULT_EVALUATION = EvalConfig("val", 32, 32, 32, loss_rows=16)
"""How a trial is measured unless configured: 32 val prompts per label, 32-token replies, 16 transcripts."""
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
    evaluation: EvalConfig = field(default_factory=lambda: DEFAULT_EVALUATION)
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Rebuild a config from `to_dict` output (a stored study's "config" attribute); the fingerprint
        comes out the same.

        Raises:
            SearchError: a field is missing or malformed.
        """
        try:
            trigger = data.get("trigger")
            return cls(
                goal=data["goal"],
                candidates=tuple(parse_latent(c, "candidate") for c in data["candidates"]),
                modes=tuple(data.get("modes") or ()),
                scopes=tuple(data.get("scopes") or ("all",)),
                trigger=None if trigger is None else parse_latent(trigger, "trigger"),
                trigger_max=float(data.get("trigger_max", 0.0)),
                objectives=tuple(data.get("objectives") or DEFAULT_OBJECTIVES),
                evaluation=EvalConfig(**data["evaluation"]),
                ranges={m: (float(lo), float(hi)) for m, (lo, hi) in (data.get("ranges") or {}).items()},
                seed=int(data.get("seed", 0)),
                sampler=data.get("sampler", "tpe"),
            )
        except SearchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SearchError(f"not a steering search's config ({type(e).__name__}: {e})") from e

    def fingerprint(self) -> str:
        """What a stored study must match to be resumed (everything that shapes its trials)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def parse_latent(text: Any, what: str = "latent") -> tuple[str, int]:
    """A "HOOK:LATENT" string, e.g. "blocks.3.hook_resid_post:12", as (hook, latent).

    Args:
        what: what the string names, for the error message.

    Raises:
        SearchError: not a hook name, a colon and a whole number.
    """
    hook, _, latent = str(text).strip().rpartition(":")
    if not hook or not latent.isdigit():
        raise SearchError(f"{what} {text!r} is not HOOK:LATENT, e.g. blocks.3.hook_resid_post:12")
    return hook, int(latent)


def default_study_name(config: SearchConfig) -> str:
    """The study a search is stored as unless named: its goal and a fingerprint of its settings, so the
    same settings resume the same study."""
    return f"{config.goal}-{config.fingerprint()[:10]}"


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


def harm_scores(cache: LatentCache) -> torch.Tensor:
    """How harm-selective each latent is at the post-instruction positions (where the refusal decision is
    read): with h and l its mean there on harmful and harmless prompts and m its max, (h - l) / (h + l) *
    sqrt(h / m): selective, and firing strongly enough on harmful prompts to threshold. [d_sae]

    Raises:
        SearchError: the cache has no harmful-vs-harmless statistics.
    """
    try:
        means = cache.column("post_mean").double()  # [d_sae, (harmful, harmless)]
        peak = cache.column("max").double().clamp(min=1e-9)
    except CacheError as e:
        raise SearchError(f"cannot find a harm latent: {e}") from e
    harmful, harmless = means[:, 0].clamp(min=0), means[:, 1].clamp(min=0)
    return (harmful - harmless) / (harmful + harmless + 1e-9) * (harmful / peak).sqrt()


def harm_latents(cache: LatentCache, n: int) -> list[int]:
    """The `n` most harm-selective latents (`harm_scores`), best first, among those scoring above 0."""
    score = harm_scores(cache)
    order = score.argsort(descending=True, stable=True)
    return [int(i) for i in order[score[order] > 0][:n]]


def harm_latent(cache: LatentCache) -> int:
    """A harm detector to gate steering on: the latent with the highest `harm_scores` (the best there is,
    even where no latent is selective, as on an untrained SAE; the gate's threshold is searched anyway)."""
    return int(harm_scores(cache).argmax())


def param_name(name: str, hook: str, latent: int) -> str:
    return f"{name}[{hook}:{latent}]"


def trial_spec(config: SearchConfig, params: Mapping[str, Any]) -> SteeringSpec:
    """The steering a trial's parameters (Optuna's `trial.params`) stand for."""
    clamps = []
    for hook, latent in config.candidates:
        mode = params.get(param_name("mode", hook, latent), OFF)
        if mode == OFF:
            continue
        value = float(params[param_name(f"value_{mode}", hook, latent)])
        clamps.append(Clamp(hook, latent, mode, round(value, 4), "max"))
    trigger = None
    if config.trigger is not None and clamps and params.get("gate"):
        trigger = Trigger(*config.trigger, threshold=round(float(params["threshold"]), 4))
    scope = params.get("scope", config.scopes[0] if config.scopes else "all")
    return SteeringSpec(tuple(clamps), scope, trigger)


def suggest(config: SearchConfig, trial: optuna.trial.BaseTrial) -> SteeringSpec:
    """Draw one trial's setting: per candidate a mode or off, and the mode's strength."""
    for hook, latent in config.candidates:
        mode = trial.suggest_categorical(param_name("mode", hook, latent), [OFF, *config.search_modes])
        if mode != OFF:
            trial.suggest_float(param_name(f"value_{mode}", hook, latent), *config.range_of(mode))  # pyright: ignore[reportArgumentType]
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
