"""Running and storing a steering search: an Optuna study in SQLite, resumable after a kill.

The study lives in Optuna's SQLite storage with heartbeats, so a killed search resumes where it stopped
(a trial cut off mid-run is failed and its parameters retried, and the sampler draws on instead of
repeating the first draws); a search stops at its trial count or time budget, whichever comes first, after
the trial in flight. The front is computed here, among the trials that do not break the model.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.core.prompts import PromptRecord
from explorer.saes.corpus import Corpus
from explorer.steering.decode import Steerer
from explorer.steering.evaluation import SweepPoint, eval_prompts, loss_rows, measure
from explorer.steering.search import (
    SearchConfig,
    SearchError,
    objective_values,
    param_name,
    point_attrs,
    suggest,
)
from explorer.steering.spec import SteeringSpec

if TYPE_CHECKING:
    import optuna


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


CREATE_ATTEMPTS = 5
"""Tries at opening a study file whose tables another process is creating at the same moment."""


def open_study(config: SearchConfig, path: Path, name: str, *, heartbeat_s: int = 30) -> Any:
    """Create the study, or load it to resume when `path` already holds one called `name`.

    Raises:
        SearchError: the stored study was made with another search config (other candidates, modes,
            objectives...), or the file is not a study database.
    """
    import optuna
    from sqlalchemy.exc import DatabaseError, IntegrityError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study: Any = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            study = optuna.create_study(
                storage=study_storage(path, heartbeat_s),
                study_name=name,
                directions=config.directions,
                sampler=_sampler(config, config.seed),
                load_if_exists=True,
            )
            break
        except IntegrityError:  # another process created the same new database's tables at the same moment
            if attempt == CREATE_ATTEMPTS - 1:
                raise SearchError(f"{path} is being created by another process; try again") from None
            time.sleep(0.5)
        except DatabaseError as e:
            raise SearchError(
                f"{path} is not a study database ({e.orig}); move it away or store studies elsewhere"
            ) from e
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("config", config.to_dict())
    elif stored != config.fingerprint():
        theirs = study.user_attrs.get("config", {})
        differ = sorted(k for k, v in config.to_dict().items() if theirs.get(k) != v)
        raise SearchError(
            f"study {name!r} in {path} was made with another search (differs in: {', '.join(differ)}); "
            "resume it with the same settings or give the study another name"
        )
    if study.trials:  # a resumed study draws on from where it stopped, not the first trials' draws again
        study.sampler = _sampler(config, config.seed + len(study.trials))
    return study


def _sampler(config: SearchConfig, seed: int) -> Any:
    import optuna

    with warnings.catch_warnings():  # multivariate TPE is "experimental" and the recommended setting
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }[config.sampler]()


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
            params: dict[str, Any] = {param_name("mode", h, i): mode for h, i in config.candidates}
            params |= {
                param_name(f"value_{mode}", h, i): min(max(value, low), high) for h, i in config.candidates
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


MAX_DEGENERATE = 0.1
"""A setting whose replies are more than this share degenerate (on either label) breaks the model: it is
kept as a trial but never on the front, however low its over-refusal (broken text refuses nothing)."""


def trials(study: Any, max_degenerate: float = MAX_DEGENERATE) -> list[TrialRecord]:
    """Every completed trial of a study, in order, with the Pareto front (on val) marked: the trials no
    other beats on every objective in the study's directions, among those that do not break the model
    (at most `max_degenerate` degenerate replies on either label)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]

    def usable(trial: Any) -> bool:
        shares = [trial.user_attrs.get(k, 0.0) for k in ("degenerate_harmful", "degenerate_harmless")]
        broken = any(x > max_degenerate for x in shares if not math.isnan(x))  # NaN: not judged
        return not broken and not any(math.isnan(v) for v in trial.values)

    scored = [(t, [s * v for s, v in zip(signs, t.values, strict=True)]) for t in done if usable(t)]

    def beaten(values: list[float]) -> bool:
        return any(
            all(o >= v for o, v in zip(other, values, strict=True)) and other != values for _, other in scored
        )

    front = {t.number for t, values in scored if not beaten(values)}
    return [_record(t, on_front=t.number in front) for t in done]
