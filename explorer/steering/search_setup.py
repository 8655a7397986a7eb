"""Setting a steering search up from a workspace's SAEs and caches, and reading stored studies back.

What the `explorer search-steering` command and the Evaluate page's Search tab share, so that both pick
the same candidates, the same harm latent to gate on, the same baselines and re-measuring prompts, and so
that a study either of them stored can be resumed or shown by the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, get_args

import torch

from explorer.core.hooks import parse_hook_name
from explorer.latents.reader import LatentCache
from explorer.saes.loading import LoadedSAE
from explorer.steering.evaluation import EvalConfig
from explorer.steering.search import (
    Goal,
    SearchConfig,
    SearchError,
    Selection,
    candidate_latents,
    harm_latent,
    parse_latent,
)
from explorer.steering.search_front import baselines
from explorer.steering.search_study import MAX_DEGENERATE, TrialRecord, trials
from explorer.steering.spec import Clamp, SteeringSpec, Trigger, validate

Setting = tuple[str, float | None, SteeringSpec]
"""A labelled setting to measure: (label, strength or None, spec), as `evaluate` takes them."""


def parse_candidates(text: str) -> list[tuple[str, int]]:
    """A comma-separated list of HOOK:LATENT candidates (blank entries skipped).

    Raises:
        SearchError: an entry that is not HOOK:LATENT.
    """
    entries = (part.strip() for part in text.split(","))
    return [parse_latent(part, "candidate") for part in entries if part]


def resolve_candidates(
    caches: Mapping[str, LatentCache], candidates: str, hook: str | None, top: int
) -> tuple[str, list[tuple[str, int]]]:
    """The candidate latents a search may clamp, and how they were chosen, in words.

    Args:
        candidates: a selection ("cosine", "attribution", "cosine+attribution": the `top` latents of the
            SAE at `hook` by it, see `candidate_latents`) or a list "HOOK:LATENT, HOOK:LATENT, ...".

    Raises:
        SearchError: a selection with no latent cache at `hook`, or a malformed list.
    """
    if candidates in get_args(Selection):
        if hook is None or hook not in caches:
            raise SearchError(
                f"no latent cache for {hook} to select candidates from (cached: {sorted(caches) or 'none'}); "
                "build it or list the candidates as HOOK:LATENT,..."
            )
        chosen = candidate_latents(caches[hook], candidates, top)  # pyright: ignore[reportArgumentType]
        return f"top {top} by {candidates} at {hook}", [(hook, i) for i in chosen]
    try:
        return "listed", parse_candidates(candidates)
    except SearchError as e:
        raise SearchError(f"{e} (or give one of {', '.join(get_args(Selection))})") from None


def auto_trigger(caches: Mapping[str, LatentCache], n_layers: int, hooks: Sequence[str]) -> tuple[str, int]:
    """The harm latent trials may gate on when none is named: the earliest cached SAE at or before every
    candidate's hook (so the gate is read before any clamp acts), its most harm-selective latent
    (`harm_latent`).

    Raises:
        SearchError: no candidate hooks, or no cached SAE at or before them.
    """
    if not hooks:
        raise SearchError("a trigger is chosen among the SAEs before the candidates, and there are none")
    first = min(parse_hook_name(h, n_layers).depth for h in hooks)
    usable = sorted(
        (h for h in caches if parse_hook_name(h, n_layers).depth <= first),
        key=lambda h: parse_hook_name(h, n_layers).depth,
    )
    if not usable:
        raise SearchError(
            f"no cached SAE at or before the candidates' hooks ({', '.join(sorted(set(hooks)))}) to find a "
            "harm latent in; build one or give the trigger as HOOK:LATENT"
        )
    return usable[0], harm_latent(caches[usable[0]])


def trigger_max(caches: Mapping[str, LatentCache], trigger: tuple[str, int]) -> float:
    """The top of the range a trigger's threshold is drawn from: twice the latent's mean activation on
    harmful prompts after the instruction (where the gate decides), capped at its corpus max. Above that
    the gate rarely opens, and a search spends its trials on settings that steer nothing (a study that
    ranged to the corpus max spent 19 of 41 trials so); the max alone when the cache has no such means.

    Raises:
        SearchError: no latent cache at the trigger's hook.
    """
    hook, latent = trigger
    if hook not in caches:
        raise SearchError(f"no latent cache for the trigger's hook {hook}; build it or gate elsewhere")
    cache = caches[hook]
    peak = float(cache.column("max")[latent])
    if "post_mean" not in cache.column_names():
        return peak
    harmful = float(cache.column("post_mean")[latent, 0])
    return round(min(peak, 2 * harmful), 4) if harmful > 0 else peak


def check_search(
    config: SearchConfig,
    saes: Mapping[str, LoadedSAE],
    n_layers: int,
    max_activations: Mapping[str, torch.Tensor],
) -> None:
    """Check every clamp a trial may make before the first trial runs: each candidate in each of the
    search's modes, gated on its trigger (latents in range, SAEs and caches loaded, the trigger early
    enough, decoder rows to project on).

    Raises:
        SteeringError: what `validate` finds wrong with a candidate or the trigger.
    """
    trigger = Trigger(*config.trigger, threshold=0.0) if config.trigger is not None else None
    for mode in config.search_modes:
        probe = SteeringSpec(
            tuple(Clamp(h, i, mode, 1.0, "max") for h, i in config.candidates), "all", trigger
        )
        validate(probe, saes, n_layers, max_activations=max_activations)


def compare_settings(
    goal: Goal,
    caches: Mapping[str, LatentCache],
    hook: str | None,
    *,
    has_direction: bool,
    recipe_k: int = 3,
    trigger: tuple[str, int] | None = None,
) -> list[Setting]:
    """The baselines a front is re-measured beside (see `baselines`), built from the caches: the recipe
    on the top `recipe_k` latents of the SAE at `hook` by decoder cosine (and by cosine + attribution
    where the cache has attributions), and, with a `trigger`, the recipe gated half-way between the harm
    latent's mean on harmful and on harmless prompts.

    Raises:
        SearchError: `recipe_k` < 1, or no latent cache at the trigger's hook.
    """
    recipe: list[tuple[str, int]] = []
    attributed: list[tuple[str, int]] = []
    if hook is not None and hook in caches:
        cache = caches[hook]
        recipe = [(hook, i) for i in candidate_latents(cache, "cosine", recipe_k)]
        if "attribution" in cache.column_names():
            attributed = [(hook, i) for i in candidate_latents(cache, "cosine+attribution", recipe_k)]
    gate = None
    if trigger is not None:
        if trigger[0] not in caches:
            raise SearchError(f"no latent cache for the trigger's hook {trigger[0]} to place the gate")
        means = caches[trigger[0]].column("post_mean")[trigger[1]]  # (harmful, harmless)
        gate = Trigger(*trigger, threshold=round(float(means.mean()), 4))
    return baselines(goal, recipe, has_direction=has_direction, attributed=attributed, gate=gate)


def remeasure_sets(evaluation: EvalConfig, n: int | None, *, elsewhere: bool = True) -> list[EvalConfig]:
    """The prompt sets a front is re-measured on: the test split and (with `elsewhere`) the separately
    written set, `n` prompts per label (None: all), replies as long as the search's and twice its
    capability transcripts."""
    common = {
        "n_harmful": n,
        "n_harmless": n,
        "max_new_tokens": evaluation.max_new_tokens,
        "batch_size": evaluation.batch_size,
        "loss_rows": evaluation.loss_rows * 2,
    }
    sets = [EvalConfig("test", **common)]
    if elsewhere:
        sets.append(EvalConfig(prompt_set="elsewhere", **common))
    return sets


def verdict_sentence(verdict: Mapping[str, Any]) -> str:
    """A `recipe_verdicts` entry in words."""
    who = ", ".join(verdict["beaten_by"]) or "no front point"
    return f"{verdict['recipe']}: beaten on both rates at equal or lower KL by {who}"


def _check_study_file(path: Path) -> None:
    """Refuse a file that is not an SQLite database of Optuna studies, without writing to it (opening it
    through Optuna would add its tables to any SQLite file)."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise SearchError(f"{path} is not a study database ({e})") from e
    if "studies" not in tables:
        raise SearchError(f"{path} is an SQLite file but holds no Optuna studies")


def stored_studies(path: Path) -> list[str]:
    """The names of the studies stored in `path`, sorted; none when the file does not exist.

    Raises:
        SearchError: the file is not a study database.
    """
    if not path.exists():
        return []
    _check_study_file(path)
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return sorted(optuna.get_all_study_names(storage=f"sqlite:///{path}"))
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as e:
        raise SearchError(f"cannot read the studies in {path}: {e}") from e


def load_stored(
    path: Path, name: str, max_degenerate: float = MAX_DEGENERATE
) -> tuple[SearchConfig, list[TrialRecord]]:
    """A stored study's search config and finished trials (front marked, see `trials`), without running
    anything.

    Raises:
        SearchError: no such study in `path`, a file that is not a study database, or a study that a
            steering search did not make.
    """
    names = stored_studies(path)
    if name not in names:
        raise SearchError(f"no study {name!r} in {path} (stored: {', '.join(names) or 'none'})")
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{path}")
    data = study.user_attrs.get("config")
    if not isinstance(data, Mapping):
        raise SearchError(f"study {name!r} in {path} was not made by a steering search (it has no config)")
    return SearchConfig.from_dict(data), trials(study, max_degenerate)
