"""What the harmful-vs-harmless probes see (prompt sets, per prompt residual and latents) and their scores.

The features are read where the refusal direction is read: the residual at its location and its
post-instruction position, and the main SAE's latents encoded from the residual at the SAE's own hook at
that same position. (These are linear classifiers on activations, unlike `explorer.latents.probe`, which
tries one latent on a user's text.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from explorer.core.generation import encode_chats
from explorer.core.hooks import run_to
from explorer.core.jailbreaks import Wrapper
from explorer.core.models import LoadedModel
from explorer.core.progress import tqdm
from explorer.core.prompts import (
    DataError,
    PromptRecord,
    builtin_prompts,
    elsewhere_prompts,
    stratified_sample,
)
from explorer.latents.reader import LatentCache
from explorer.saes.loading import LoadedSAE
from explorer.steering.search import Selection, candidate_latents

log = logging.getLogger(__name__)

Scored = Literal["both", "harmful", "harmless"]
BORDERLINE_CATEGORIES = ("borderline", "borderline_safety")
"""Harmless categories written to look risky (the built-in set's two; the elsewhere set's "borderline")."""


@dataclass(frozen=True)
class SetInfo:
    """What a prompt set is, as a result stores it (its prompts are not stored)."""

    name: str
    description: str
    scored: str
    ood: bool
    n_harmful: int
    n_harmless: int


@dataclass(frozen=True)
class PromptSet:
    """Prompts with their labels, as one probe split or evaluation set.

    Attributes:
        name: short key ("train", "test", "jailbreak", "jailbreak:roleplay", "borderline", "elsewhere").
        description: what the set is, in a few words.
        harmful: harmful prompts (label 1).
        harmless: harmless prompts (label 0).
        scored: whose prompts accuracy counts: "both", or one label only when the other label's prompts
            are there only to pair with them for the AUC (jailbreak-wrapped harmful prompts are paired
            with plain harmless ones).
        ood: True for an out-of-distribution set.
    """

    name: str
    description: str
    harmful: tuple[str, ...]
    harmless: tuple[str, ...]
    scored: Scored = "both"
    ood: bool = False

    def __post_init__(self) -> None:
        if not self.harmful or not self.harmless:
            raise DataError(
                f"prompt set {self.name!r} needs prompts of both labels; it has {len(self.harmful)} harmful "
                f"and {len(self.harmless)} harmless"
            )

    def info(self) -> SetInfo:
        return SetInfo(
            self.name, self.description, self.scored, self.ood, len(self.harmful), len(self.harmless)
        )

    @property
    def texts(self) -> list[str]:
        return [*self.harmful, *self.harmless]

    @property
    def labels(self) -> np.ndarray:
        """[n] 1 for harmful, 0 for harmless, in the order of `texts`."""
        return np.array([1] * len(self.harmful) + [0] * len(self.harmless), dtype=np.int64)


def _texts(records: Sequence[PromptRecord]) -> tuple[str, ...]:
    return tuple(r.text for r in records)


def _sample(records: Sequence[PromptRecord], limit: int | None, seed: int) -> list[PromptRecord]:
    return stratified_sample(records, limit, seed)


def training_sets(limit: int | None = None, seed: int = 0) -> tuple[PromptSet, PromptSet]:
    """The probes' train and val splits: plain built-in prompts, `limit` per label (all by default)."""
    train, val = (
        PromptSet(
            split,
            f"built-in {split} split, plain",
            _texts(_sample(builtin_prompts("harmful", split), limit, seed)),
            _texts(_sample(builtin_prompts("harmless", split), limit, seed)),
        )
        for split in ("train", "val")
    )
    return train, val


def evaluation_sets(wrappers: Sequence[Wrapper], limit: int | None = None, seed: int = 0) -> list[PromptSet]:
    """The sets the probes are tested on, all from the test split or the elsewhere set.

    In distribution: test harmful vs harmless. Out of distribution: the harmful test prompts inside every
    wrapper (pooled, then one set per wrapper), paired with the plain harmless test prompts; the
    borderline harmless prompts (built-in test categories `BORDERLINE_CATEGORIES`, and the elsewhere set's
    "borderline"), paired with the harmful test prompts; the elsewhere set, harmful vs harmless.

    Args:
        wrappers: the jailbreak wrappers (at least one).
        limit: at most this many prompts per label of each source (spread over the categories).
        seed: which prompts `limit` takes.
    """
    if not wrappers:
        raise DataError("the out-of-distribution sets need at least one jailbreak wrapper")
    harmful = _texts(_sample(builtin_prompts("harmful", "test"), limit, seed))
    harmless = _texts(_sample(builtin_prompts("harmless", "test"), limit, seed))
    borderline = [r for r in builtin_prompts("harmless", "test") if r.category in BORDERLINE_CATEGORIES]
    borderline += [r for r in elsewhere_prompts("harmless") if r.category == "borderline"]
    wrapped = {w.name: tuple(w.apply(p) for p in harmful) for w in wrappers}
    sets = [
        PromptSet("test", "test split, plain (in distribution)", harmful, harmless),
        PromptSet(
            "jailbreak",
            f"harmful test prompts in {len(wrappers)} jailbreak wrappers, pooled",
            tuple(t for texts in wrapped.values() for t in texts),
            harmless,
            "harmful",
            True,
        ),
        PromptSet(
            "borderline",
            "borderline harmless prompts (built-in test and elsewhere)",
            harmful,
            _texts(_sample(borderline, limit, seed)),
            "harmless",
            True,
        ),
        PromptSet(
            "elsewhere",
            "the separately written set (other styles and topics)",
            _texts(_sample(elsewhere_prompts("harmful"), limit, seed)),
            _texts(_sample(elsewhere_prompts("harmless"), limit, seed)),
            ood=True,
        ),
    ]
    sets += [
        PromptSet(f"jailbreak:{w.name}", w.description or w.name, wrapped[w.name], harmless, "harmful", True)
        for w in wrappers
    ]
    return sets


@dataclass(frozen=True)
class FeatureSites:
    """Where the features are read.

    Attributes:
        residual_hook: the refusal direction's location (the raw residual probe reads it).
        sae_hook: the main SAE's hook (its latents are encoded from the residual there).
        position: negative index among the post-instruction positions (-1: the prompt's last token).
    """

    residual_hook: str
    sae_hook: str
    position: int

    def __post_init__(self) -> None:
        if self.position >= 0:
            raise ValueError(f"position must be a negative index from the prompt's end, got {self.position}")

    @property
    def note(self) -> str:
        """One sentence on the sites, for the record and its readers."""
        if self.residual_hook == self.sae_hook:
            return f"residual and latents both read at {self.sae_hook}, position {self.position}"
        return (
            f"the main SAE's hook {self.sae_hook} differs from the refusal location {self.residual_hook}: "
            f"each is read at its own hook, both at position {self.position}"
        )


@dataclass(frozen=True)
class Features:
    """Per prompt, the residual and the latents at the sites.

    Attributes:
        texts: the prompts, in row order.
        residual: [n, d_model] float32.
        latents: [n, d_sae] float32.
    """

    texts: tuple[str, ...]
    residual: np.ndarray
    latents: np.ndarray

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts)] the row of each of `texts`.

        Raises:
            KeyError: a text whose features were not read.
        """
        index = {t: i for i, t in enumerate(self.texts)}
        return np.array([index[t] for t in texts], dtype=np.int64)


@torch.no_grad()
def read_features(
    loaded: LoadedModel,
    sae: LoadedSAE,
    sites: FeatureSites,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> Features:
    """One forward pass per batch, as far as the deeper of the two hooks, over the chat-templated `texts`
    (each distinct text once).

    Args:
        loaded: the model.
        sae: the main SAE (its hook must be `sites.sae_hook`).
        sites: where to read.
        texts: the prompts (the user's text; the chat template is applied here).
        batch_size: prompts per forward pass (batches are of similar length, to pad little).
        progress: show a progress bar.
        on_batch: called with (prompts done, prompts in all) after each batch.
    """
    if sae.hook != sites.sae_hook:
        raise ValueError(f"the SAE reads {sae.hook}, the sites name {sites.sae_hook}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unique = list(dict.fromkeys(texts))
    if not unique:
        raise DataError("no prompts to read features from")
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
    residual = np.zeros((len(unique), loaded.d_model), dtype=np.float32)
    latents = np.zeros((len(unique), sae.d_sae), dtype=np.float32)
    parameter = next(sae.sae.parameters())
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="probe features", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        _, batch = encode_chats(loaded, [unique[i] for i in rows])
        acts = run_to(
            loaded.model, batch["input_ids"], [sites.residual_hook, sites.sae_hook], batch["attention_mask"]
        )  # hook -> [batch, pos, d_model]; left padding puts every prompt's end at the last position
        x = acts[sites.sae_hook][:, sites.position]  # [batch, d_model]
        codes = sae.sae.encode(x.to(device=parameter.device, dtype=parameter.dtype))  # [batch, d_sae]
        residual[rows] = acts[sites.residual_hook][:, sites.position].float().cpu().numpy()
        latents[rows] = codes.float().cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    log.info("read probe features of %d prompts (%s)", len(unique), sites.note)
    return Features(tuple(unique), residual, latents)


@dataclass(frozen=True)
class ProbeData:
    """The features and labels of one prompt set, as the probes take them.

    Attributes:
        residual: [n, d_model].
        latents: [n, d_sae].
        labels: [n] 1 harmful, 0 harmless.
        scored: [n] True for the prompts whose accuracy counts (see `PromptSet.scored`).
    """

    residual: np.ndarray
    latents: np.ndarray
    labels: np.ndarray
    scored: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (len(self.residual) == len(self.latents) == len(self.scored) == n):
            raise ValueError(
                f"probe data rows disagree: residual {len(self.residual)}, latents {len(self.latents)}, "
                f"labels {n}, scored {len(self.scored)}"
            )


def probe_data(features: Features, prompts: PromptSet) -> ProbeData:
    """The rows of `features` for `prompts`, with their labels."""
    rows = features.rows(prompts.texts)
    labels = prompts.labels
    scored = np.ones(len(labels), dtype=bool) if prompts.scored == "both" else None
    if scored is None:
        scored = labels == (1 if prompts.scored == "harmful" else 0)
    return ProbeData(features.residual[rows], features.latents[rows], labels, scored)


def k_values(k_max: int, available: int) -> list[int]:
    """The K the top-K probe tries: 1, 2, 4, ... up to min(k_max, available), that bound included."""
    top = min(k_max, available)
    ks = [2**i for i in range(top.bit_length()) if 2**i <= top]
    return ks + ([top] if ks and ks[-1] != top else [])


def refusal_rankings(cache: LatentCache, selection: Selection, k_max: int) -> dict[int, list[int]]:
    """K -> the K refusal latents the top-K probe reads at that K, by `candidate_latents` (for "cosine"
    each K's latents are the first K of the ranking; "cosine+attribution" picks each K afresh)."""
    available = len(candidate_latents(cache, selection, k_max))
    if not available:
        raise ValueError("the latent cache has no active latent to rank as a refusal latent")
    return {k: candidate_latents(cache, selection, k) for k in k_values(k_max, available)}


@dataclass(frozen=True)
class SetScore:
    """One probe on one evaluation set.

    Attributes:
        probe: which probe.
        prompt_set: the set's name.
        accuracy: the share of the set's scored prompts classified correctly.
        auc: area under the ROC curve over all its prompts (scored and paired-in).
        recall: the share of its harmful prompts called harmful (None when those are not scored).
        specificity: the share of its harmless prompts called harmless (None when those are not scored).
        n: scored prompts; n_harmful, n_harmless: all its prompts by label.
        fpr, tpr: the ROC curve, at most `ProbeConfig.roc_points` points.
    """

    probe: str
    prompt_set: str
    accuracy: float
    auc: float
    recall: float | None
    specificity: float | None
    n: int
    n_harmful: int
    n_harmless: int
    fpr: list[float] = field(default_factory=list)
    tpr: list[float] = field(default_factory=list)


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, points: int) -> tuple[list[float], list[float]]:
    """At most `points` of a ROC curve's points, evenly spread over it, first and last kept."""
    keep = np.arange(len(fpr))
    if len(fpr) > points:
        keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, points)).astype(int))
    return [float(v) for v in fpr[keep]], [float(v) for v in tpr[keep]]


def score_set(probe: str, name: str, decision: np.ndarray, data: ProbeData, roc_points: int) -> SetScore:
    """One probe's scores on one set from its decision values ([n] log-odds of harmful; > 0 calls harmful)."""
    predicted = (decision > 0).astype(np.int64)
    correct = predicted == data.labels
    harmful, harmless = data.labels == 1, data.labels == 0
    recall = float(correct[harmful].mean()) if data.scored[harmful].any() else None
    specificity = float(correct[harmless].mean()) if data.scored[harmless].any() else None
    fpr, tpr, _ = roc_curve(data.labels, decision)
    fpr_kept, tpr_kept = thin_curve(fpr, tpr, roc_points)
    return SetScore(
        probe,
        name,
        float(correct[data.scored].mean()),
        float(roc_auc_score(data.labels, decision)),
        recall,
        specificity,
        int(data.scored.sum()),
        int(harmful.sum()),
        int(harmless.sum()),
        fpr_kept,
        tpr_kept,
    )
