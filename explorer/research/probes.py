"""Linear probes for harmful vs harmless on the residual, on all latents and on the top-K refusal latents.

The second refusal paper claims that probes on refusal latents generalise to out-of-distribution
(adversarial) prompts better than probes on the raw residual. Each probe here is a scikit-learn
`Pipeline(StandardScaler, LogisticRegression)` trained on the plain train-split prompts, with its
regularisation C (and, for the top-K probe, K) chosen on the val split only, then scored on the test split
and on the out-of-distribution sets of `explorer.research.probe_features`. The result is stored as
`research_dir(model) / "probes.json"`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from explorer.core.jailbreaks import Wrapper
from explorer.core.models import LoadedModel
from explorer.core.paths import utc_now, write_json_atomic
from explorer.latents.reader import LatentCache
from explorer.refusal.direction import RefusalDirection
from explorer.research import read_result, research_dir
from explorer.research.probe_features import (
    FeatureSites,
    ProbeData,
    SetInfo,
    SetScore,
    evaluation_sets,
    probe_data,
    read_features,
    refusal_rankings,
    score_set,
    training_sets,
)
from explorer.saes.loading import LoadedSAE
from explorer.steering.search import Selection

log = logging.getLogger(__name__)

ProbeKind = Literal["residual", "latents", "refusal_latents"]
PROBES: tuple[ProbeKind, ...] = get_args(ProbeKind)
PROBE_TITLES: dict[ProbeKind, str] = {"residual": "raw residual", "latents": "all latents",
                                      "refusal_latents": "top-K refusal latents"}  # fmt: skip
RESULT_FILE = "probes.json"


class ProbeResultError(ValueError):
    """A stored probe result that is missing or corrupt; the message names the file and what to run."""


@dataclass(frozen=True)
class ProbeConfig:
    """How the probes are trained, chosen and scored.

    Attributes:
        k_max: the largest K of the top-K refusal-latent probe (K runs over 1, 2, 4, ... up to it).
        selection: how refusal latents are ranked (`explorer.steering.search.candidate_latents`).
        c_grid: the inverse regularisation strengths tried on val.
        limit: at most this many prompts per label of each split and set (None: all).
        seed: fixes the sampled prompts (with `limit`) and the solver.
        batch_size: prompts per forward pass.
        max_iter: the solver's iteration limit.
        roc_points: at most this many (fpr, tpr) points are stored per ROC curve.
    """

    k_max: int = 256
    selection: Selection = "cosine"
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_iter: int = 5000
    roc_points: int = 101

    def __post_init__(self) -> None:
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        if self.selection not in get_args(Selection):
            raise ValueError(f"selection {self.selection!r} is not one of {get_args(Selection)}")
        if not self.c_grid or not all(math.isfinite(c) and c > 0 for c in self.c_grid):
            raise ValueError(f"c_grid must be positive finite numbers, got {self.c_grid}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2 prompts per label (or None for all), got {self.limit}")
        for name, low in (("batch_size", 1), ("max_iter", 1), ("roc_points", 2)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "c_grid": list(self.c_grid)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeConfig:
        return cls(**{**data, "c_grid": tuple(float(c) for c in data["c_grid"])})


@dataclass(frozen=True)
class KPoint:
    """The top-K probe's best val scores at one K (over C)."""

    k: int
    c: float
    val_accuracy: float
    val_auc: float


@dataclass(frozen=True)
class ProbeFit:
    """One trained probe and how it was chosen.

    Attributes:
        probe: which features it reads.
        c: the regularisation chosen on val.
        k: the number of refusal latents chosen on val (None for the other probes).
        latents: the refusal latents it reads, in ranking order (empty for the other probes).
        n_features: its input width.
        val_accuracy, val_auc: its scores on val, which chose it.
    """

    probe: ProbeKind
    c: float
    k: int | None
    latents: list[int]
    n_features: int
    val_accuracy: float
    val_auc: float


@dataclass(frozen=True)
class ProbeResult:
    """Everything `explorer probe` measured, as stored.

    Attributes:
        model: the model's name.
        config: the settings.
        sites: where the features were read (`FeatureSites`, with its note).
        n_train, n_val: prompts per label ({"harmful": n, "harmless": n}) of the train and val splits.
        sets: the evaluation sets, in distribution first.
        fits: the three probes.
        k_curve: the top-K probe's val scores per K.
        labels: the label of each of the chosen refusal latents, in order.
        scores: every probe on every set.
        wrappers: the jailbreak wrappers' names.
        seconds: the run's wall time.
        created: when it was made (UTC).
    """

    model: str
    config: ProbeConfig
    sites: dict[str, Any]
    n_train: dict[str, int]
    n_val: dict[str, int]
    sets: list[SetInfo]
    fits: list[ProbeFit]
    k_curve: list[KPoint]
    labels: list[str]
    scores: list[SetScore]
    wrappers: list[str]
    seconds: float
    created: str

    def fit(self, probe: ProbeKind) -> ProbeFit:
        return next(f for f in self.fits if f.probe == probe)

    def score(self, probe: ProbeKind, prompt_set: str) -> SetScore:
        """The score of `probe` on the set named `prompt_set` (KeyError: no such set)."""
        for s in self.scores:
            if s.probe == probe and s.prompt_set == prompt_set:
                return s
        raise KeyError(f"no score of {probe} on {prompt_set!r}; sets: {[s.name for s in self.sets]}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        records = {"sets": SetInfo, "fits": ProbeFit, "k_curve": KPoint, "scores": SetScore}
        return cls(
            **{
                **data,
                "config": ProbeConfig.from_dict(data["config"]),
                **{name: [kind(**row) for row in data[name]] for name, kind in records.items()},
            }
        )


def _pipeline(c: float, config: ProbeConfig) -> Pipeline:
    logistic = LogisticRegression(C=c, max_iter=config.max_iter, random_state=config.seed)
    return Pipeline([("scale", StandardScaler()), ("logistic", logistic)])


def _best_c(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], config: ProbeConfig
) -> tuple[Pipeline, KPoint]:
    """The pipeline with the best (val accuracy, val AUC) over `c_grid`, ties to the smaller C, and its
    val scores (k = its input width)."""
    best: tuple[Pipeline, KPoint] | None = None
    for c in sorted(config.c_grid):
        pipeline = _pipeline(c, config).fit(*train)
        accuracy = float((pipeline.predict(val[0]) == val[1]).mean())
        point = KPoint(
            train[0].shape[1], c, accuracy, float(roc_auc_score(val[1], pipeline.decision_function(val[0])))
        )
        if best is None or _better(point, best[1]):
            best = (pipeline, point)
    assert best is not None
    return best


def _better(a: KPoint, b: KPoint) -> bool:
    return (a.val_accuracy, round(a.val_auc, 12)) > (b.val_accuracy, round(b.val_auc, 12))


def fit_probes(
    train: ProbeData, val: ProbeData, rankings: Mapping[int, Sequence[int]], config: ProbeConfig
) -> tuple[dict[ProbeKind, Pipeline], list[ProbeFit], list[KPoint]]:
    """Train the three probes on `train`, choosing C (and K) by val accuracy, then val AUC; ties go to the
    smaller C and K. Nothing but `train` and `val` is seen here.

    Args:
        rankings: K -> the K refusal latents (columns of the latents) the top-K probe reads at that K.

    Returns:
        The fitted pipelines by probe, their fits, and the top-K probe's val curve over K.
    """
    if not rankings:
        raise ValueError("the top-K probe needs at least one K with its ranked latents")
    pipelines: dict[ProbeKind, Pipeline] = {}
    fits: list[ProbeFit] = []
    pairs: tuple[tuple[ProbeKind, np.ndarray, np.ndarray], ...] = (
        ("residual", train.residual, val.residual),
        ("latents", train.latents, val.latents),
    )
    for probe, x_train, x_val in pairs:
        pipelines[probe], p = _best_c((x_train, train.labels), (x_val, val.labels), config)
        fits.append(ProbeFit(probe, p.c, None, [], p.k, p.val_accuracy, p.val_auc))
    curve: list[KPoint] = []
    chosen: KPoint | None = None
    for k in sorted(rankings):
        columns = list(rankings[k])
        x_train, x_val = train.latents[:, columns], val.latents[:, columns]
        pipeline, p = _best_c((x_train, train.labels), (x_val, val.labels), config)
        curve.append(p)
        if chosen is None or _better(p, chosen):  # strictly better only: ties keep the smaller K
            pipelines["refusal_latents"], chosen = pipeline, p
    assert chosen is not None
    latents = [int(i) for i in rankings[chosen.k]]
    fits.append(
        ProbeFit(
            "refusal_latents", chosen.c, chosen.k, latents, chosen.k, chosen.val_accuracy, chosen.val_auc
        )
    )
    return pipelines, fits, curve


def _inputs(probe: ProbeKind, fit: ProbeFit, data: ProbeData) -> np.ndarray:
    if probe == "residual":
        return data.residual
    return data.latents[:, fit.latents] if probe == "refusal_latents" else data.latents


def evaluate_probes(
    pipelines: Mapping[ProbeKind, Pipeline],
    fits: Sequence[ProbeFit],
    sets: Sequence[tuple[str, ProbeData]],
    roc_points: int = 101,
) -> list[SetScore]:
    """Every probe on every (name, data) set."""
    scores = []
    for fit in fits:
        for name, data in sets:
            decision = pipelines[fit.probe].decision_function(_inputs(fit.probe, fit, data))
            scores.append(score_set(fit.probe, name, decision, data, roc_points))
    return scores


def run_probes(
    loaded: LoadedModel,
    sae: LoadedSAE,
    cache: LatentCache,
    refusal: RefusalDirection,
    wrappers: Sequence[Wrapper],
    config: ProbeConfig | None = None,
    *,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Read the features of every prompt, train the probes and score them (see the module docstring).

    Args:
        sae: the main SAE; `cache` is its latent cache (it ranks the refusal latents).
        refusal: the refusal direction (its location and position are where the features are read).
        wrappers: the jailbreak wrappers of the out-of-distribution sets.
        on_batch: called with (prompts done, prompts in all) after each forward batch.
    """
    config = config or ProbeConfig()
    began = time.monotonic()
    sites = FeatureSites(refusal.location, sae.hook, refusal.position)
    if sites.residual_hook != sites.sae_hook:
        log.warning("%s", sites.note)
    rankings = refusal_rankings(cache, config.selection, config.k_max)
    train, val = training_sets(config.limit, config.seed)
    sets = evaluation_sets(wrappers, config.limit, config.seed)
    texts = [t for s in (train, val, *sets) for t in s.texts]
    features = read_features(
        loaded, sae, sites, texts, batch_size=config.batch_size, progress=progress, on_batch=on_batch
    )
    pipelines, fits, curve = fit_probes(
        probe_data(features, train), probe_data(features, val), rankings, config
    )
    scores = evaluate_probes(
        pipelines, fits, [(s.name, probe_data(features, s)) for s in sets], config.roc_points
    )
    every_label = cache.labels()
    chosen = next(f for f in fits if f.probe == "refusal_latents").latents
    return ProbeResult(
        model=loaded.name,
        config=config,
        sites={**asdict(sites), "note": sites.note},
        n_train={"harmful": len(train.harmful), "harmless": len(train.harmless)},
        n_val={"harmful": len(val.harmful), "harmless": len(val.harmless)},
        sets=[s.info() for s in sets],
        fits=fits,
        k_curve=curve,
        labels=[every_label[i] for i in chosen],
        scores=scores,
        wrappers=[w.name for w in wrappers],
        seconds=round(time.monotonic() - began, 1),
        created=utc_now(),
    )


def claim(result: ProbeResult) -> str:
    """What the result says about the paper's claim (refusal latents generalise better), in one sentence
    from its numbers: each probe's accuracy in distribution and its mean over the pooled
    out-of-distribution sets, and which of the two probes loses less (within a point counts as a tie)."""
    ood = [s.name for s in result.sets if s.ood and ":" not in s.name]
    seen = {}
    for probe in ("refusal_latents", "residual"):
        outside = [result.score(probe, name) for name in ood]
        mean_accuracy, mean_auc = np.mean([(s.accuracy, s.auc) for s in outside], axis=0)
        seen[probe] = (result.score(probe, "test").accuracy, float(mean_accuracy), float(mean_auc))
    (k_in, k_out, k_auc), (r_in, r_out, r_auc) = seen["refusal_latents"], seen["residual"]
    gap = (k_in - k_out) - (r_in - r_out)
    verdict = (
        "about as much accuracy as the raw residual probe: no support either way for"
        if abs(gap) < 0.01
        else "less accuracy than the raw residual probe, as in"
        if gap < 0
        else "more accuracy than the raw residual probe, against"
    )
    return (
        f"Out of distribution (mean over {', '.join(ood)}), the top-{result.fit('refusal_latents').k} "
        f"refusal-latent probe goes from {k_in:.1%} accuracy in distribution to {k_out:.1%} "
        f"(AUC {k_auc:.3f}) and the raw residual probe from {r_in:.1%} to {r_out:.1%} (AUC {r_auc:.3f}): "
        f"the refusal-latent probe loses {verdict} the paper's claim that refusal latents generalise better."
    )


def probes_path(model_name: str) -> Path:
    """Where a model's probe result is stored."""
    return research_dir(model_name) / RESULT_FILE


def store_probes(result: ProbeResult, path: Path | None = None) -> Path:
    """Write `result` atomically (default: `probes_path(result.model)`); returns the path."""
    path = path or probes_path(result.model)
    write_json_atomic(path, result.to_dict())
    return path


def load_probes(model_name: str, path: Path | None = None) -> ProbeResult:
    """Read a stored probe result (default: `probes_path(model_name)`); ProbeResultError when the file is
    missing or is not a probe result."""
    path = path or probes_path(model_name)
    return read_result(path, ProbeResult.from_dict, "probe result", "explorer probe", ProbeResultError)
