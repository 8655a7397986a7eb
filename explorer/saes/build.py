"""The SAE stage of the default build: corpus -> activations -> SAEs at three layers -> quality reports.

Layout under `cache/`:

    corpus/<model>/                       token rows of transcripts and general text (explorer.corpus)
    activations/<model>/<part>/<hook>/    fp16 shards (explorer.activations)
    saes/<model>/<hook>/                  SAELens cfg.json + sae_weights.safetensors + provenance.json
    saes/<model>/<hook>/report.json       the quality report (also printed by `explorer sae report`)
    saes/<model>/index.json               which SAEs exist, which is the main one, stage timings
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from explorer.core.models import ORGANISM_NAME, LoadedModel, ModelConfig, load_model
from explorer.core.paths import models_dir, write_json_atomic
from explorer.core.precision import fast_bfloat16
from explorer.refusal.direction import SELECTION_FILE, RefusalDirection, load_refusal, refusal_dir
from explorer.saes.activations import (
    ActivationError,
    Activations,
    activations_dir,
    collect,
    load_activations,
    read_manifest,
)
from explorer.saes.corpus import (
    Corpus,
    CorpusConfig,
    CorpusError,
    Part,
    build_corpus,
    corpus_dir,
    load_corpus,
)
from explorer.saes.loading import LoadedSAE, SAEError, load_sae_dir, sae_root
from explorer.saes.quality import (
    by_source,
    check_targets,
    decoder_norm_stats,
    loss_recovered,
    post_instruction,
    reconstruction_metrics,
    refusal_fit,
    refusal_location_index,
    source_groups,
)
from explorer.saes.training import SAETrainConfig, save_sae, train_sae

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class SAEStageConfig:
    """What the SAE stage trains.

    Attributes:
        layer_offsets: layers relative to the refusal direction's layer; 0 is the main SAE.
        main: recipe of the main SAE (at the refusal layer).
        side: recipe of the comparison SAEs at the other layers (fewer samples, to fit the time budget).
        corpus: how the token corpus is made.
        fast_dtype: dtype of the model copy that generates the transcripts and collects activations
            (bfloat16 runs ~3x faster on CPUs with AMX, and is used only where the device has native
            bfloat16 (`core.precision`); on the default its activations differ from float32
            ones by a median 1.5% relative error, 0.06% of their variance: `make bench`). The CE-loss
            evaluation always runs the model in its own dtype. None uses the model's dtype throughout.
        loss_rows: held-out rows used for the CE-loss evaluation.
    """

    layer_offsets: tuple[int, ...] = (-6, 0, 2)
    main: SAETrainConfig = field(default_factory=SAETrainConfig)
    side: SAETrainConfig = field(default_factory=lambda: SAETrainConfig(training_samples=200_000))
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    fast_dtype: str | None = "bfloat16"
    loss_rows: int = 32

    def __post_init__(self) -> None:
        if 0 not in self.layer_offsets:
            raise ValueError(f"layer_offsets must include 0 (the refusal layer), got {self.layer_offsets}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer_offsets": list(self.layer_offsets),
            "main": self.main.to_dict(),
            "side": self.side.to_dict(),
            "corpus": self.corpus.to_dict(),
            "fast_dtype": self.fast_dtype,
            "loss_rows": self.loss_rows,
        }


def stage_hooks(refusal: RefusalDirection, n_layers: int, offsets: tuple[int, ...]) -> list[str]:
    """Hooks of the SAEs: the refusal direction's location, shifted by each offset (clipped to the model)."""
    site = refusal.location.rsplit("_", 1)[-1]
    layers = sorted({min(max(refusal.layer + o, 0), n_layers - 1) for o in offsets})
    return [f"blocks.{layer}.hook_resid_{site}" for layer in layers]


def sae_dir(model_name: str, hook: str) -> Path:
    return sae_root() / model_name / hook


def _fast_model(loaded: LoadedModel, dtype: str | None) -> LoadedModel:
    if dtype is None or dtype == str(next(loaded.model.parameters()).dtype).removeprefix("torch."):
        return loaded
    if dtype == "bfloat16" and not fast_bfloat16(loaded.device):
        log.info("no native bfloat16 on %s: collecting in the model's own dtype", loaded.device)
        return loaded
    return load_model(replace(loaded.config, dtype=dtype))  # pyright: ignore[reportArgumentType]


def ensure_corpus(loaded: LoadedModel, config: SAEStageConfig, *, force: bool = False) -> Corpus:
    """The stored corpus if it was built with this config and tokenizer, else a freshly built one."""
    directory = corpus_dir(loaded.name)
    if not force:
        try:
            corpus = load_corpus(directory, loaded.tokenizer)
            if corpus.manifest.get("config") == config.corpus.to_dict():
                return corpus
            log.info("corpus at %s was built with another config; rebuilding", directory)
        except CorpusError as e:
            log.info("building the corpus (%s)", e)
    return build_corpus(_fast_model(loaded, config.fast_dtype), config.corpus)


def ensure_activations(
    loaded: LoadedModel, corpus: Corpus, hooks: list[str], config: SAEStageConfig, *, force: bool = False
) -> dict[str, dict[str, Any]]:
    """Stored activations of both parts for `hooks`, collected again only when missing or stale."""
    directory = activations_dir(loaded.name)
    manifests: dict[str, dict[str, Any]] = {}
    model: LoadedModel | None = None
    parts: tuple[Part, ...] = ("train", "heldout")
    for part in parts:
        manifest: dict[str, Any] = {}
        try:
            manifest = read_manifest(directory, part)
            fresh = manifest["corpus"] == corpus.fingerprint() and set(hooks) <= set(manifest["hooks"])
        except ActivationError:
            fresh = False
        if force or not fresh:
            model = model or _fast_model(loaded, config.fast_dtype)
            manifest = collect(model, corpus, hooks, directory, part)
        manifests[part] = manifest
    return manifests


def quality_report(
    loaded: LoadedModel,
    sae: LoadedSAE,
    corpus: Corpus,
    refusal: RefusalDirection,
    *,
    loss: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every quality number of one SAE, on held-out tokens."""
    directory = activations_dir(loaded.name)
    heldout = load_activations(directory, sae.hook, "heldout")
    groups, sources = source_groups(heldout, corpus)
    reconstruction = reconstruction_metrics(sae, heldout.acts, groups=groups)
    report: dict[str, Any] = {
        "sae": sae.describe(),
        "units": "activations are raw SAE latent values; decoder rows "
        + ("have unit norm" if sae.decoder_unit_norm else "are not unit norm (see decoder_norm)"),
        "reconstruction": reconstruction,
        "by_source": by_source(reconstruction, sources, trained_on=corpus.train_sources()),
        "decoder_norm": decoder_norm_stats(sae),
        "loss": loss,
    }
    index = refusal_location_index(sae.hook, loaded.n_layers)
    direction = refusal.directions[index, refusal.position]
    # Transcripts of every prompt split, at the post-instruction position only: a few thousand tokens.
    train = load_activations(directory, sae.hook, "train")
    post = [post_instruction(a, corpus, refusal.position) for a in (train, heldout)]
    del train
    both = Activations(*(torch.cat([getattr(p, f) for p in post]) for f in ("acts", "row", "pos")))
    report["refusal"] = {
        "location": refusal.location,
        "direction_at": f"{sae.hook}, position {refusal.position}",
        "is_selected_location": sae.hook == refusal.location,
        **refusal_fit(sae, direction, both, corpus, refusal.position),
    }
    report["targets"] = check_targets(report)
    return report


def upstream_fingerprint(model: str) -> str:
    """A hash of what the SAEs depend on (the model's provenance and the refusal selection), so the stage
    reruns when either is rebuilt."""
    digest = hashlib.sha256()
    for path in (models_dir() / model / "provenance.json", refusal_dir(model) / SELECTION_FILE):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:16]


def build_saes(
    model: str = ORGANISM_NAME, config: SAEStageConfig | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Run the whole SAE stage for `model` and write `cache/saes/<model>/index.json`.

    Returns:
        The index: hooks, the main hook, per-SAE summaries and stage timings.
    """
    config = config or SAEStageConfig()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_model(ModelConfig(spec=model))
    refusal = load_refusal(loaded.name)
    hooks = stage_hooks(refusal, loaded.n_layers, config.layer_offsets)
    main_hook = refusal.location
    corpus = ensure_corpus(loaded, config, force=force)
    timings["corpus"] = time.perf_counter() - start
    mark = time.perf_counter()
    manifests = ensure_activations(loaded, corpus, hooks, config, force=force)
    timings["activations"] = time.perf_counter() - mark
    saes: list[LoadedSAE] = []
    summaries: dict[str, Any] = {}
    for hook in hooks:
        mark = time.perf_counter()
        recipe = config.main if hook == main_hook else config.side
        train = load_activations(activations_dir(loaded.name), hook, "train")
        trained, summary = train_sae(train.acts, recipe, hook=hook, model_name=loaded.name)
        del train
        provenance = {
            "model": loaded.name,
            "hook": hook,
            "role": "main" if hook == main_hook else "comparison",
            "recipe": recipe.to_dict(),
            "training": summary,
            "corpus": corpus.manifest,
            "activations": manifests["train"],
        }
        save_sae(trained, sae_dir(loaded.name, hook), provenance)
        saes.append(load_sae_dir(sae_dir(loaded.name, hook)))
        summaries[hook] = {"training": summary}
        timings[f"train {hook}"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows = _loss_rows(corpus, config.loss_rows)
    losses = loss_recovered(loaded, saes, corpus, rows)
    timings["loss evaluation"] = time.perf_counter() - mark
    mark = time.perf_counter()
    for sae in saes:
        report = quality_report(loaded, sae, corpus, refusal, loss=losses[sae.name])
        write_json_atomic(sae_dir(loaded.name, sae.hook) / REPORT_FILE, report)
        summaries[sae.hook] |= {
            "explained_variance": report["reconstruction"]["explained_variance"],
            "l0": report["reconstruction"]["l0"]["mean"],
            "dead_fraction": report["reconstruction"]["dead_fraction"],
            "fraction_recovered": report["loss"]["fraction_recovered"],
            "targets": report["targets"],
        }
    timings["reports"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    index = {
        "model": loaded.name,
        "upstream": upstream_fingerprint(loaded.name),
        "hooks": hooks,
        "main": main_hook,
        "config": config.to_dict(),
        "saes": summaries,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json_atomic(sae_root() / loaded.name / INDEX_FILE, index)
    return index


def _loss_rows(corpus: Corpus, n: int) -> list[int]:
    """Held-out rows for the CE evaluation: half transcripts, half text, spread evenly over each."""
    chat, text = corpus.rows("heldout", "chat"), corpus.rows("heldout", "text")
    picked: list[int] = []
    for rows, share in ((chat, n // 2), (text, n - n // 2)):
        step = max(1, len(rows) // max(share, 1))
        picked += rows[::step][:share]
    return picked


def read_index(model: str = ORGANISM_NAME) -> dict[str, Any]:
    """The SAE stage's index for `model`.

    Raises:
        SAEError: it is missing or corrupt.
    """
    path = sae_root() / model / INDEX_FILE
    if not path.is_file():
        raise SAEError(f"no SAEs built for {model} ({path} is missing); run `explorer sae train`")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SAEError(f"{path} is corrupt ({e}); run `explorer sae train --force`") from e


def read_report(model: str, hook: str) -> dict[str, Any]:
    """The stored quality report of the SAE at `hook`."""
    path = sae_dir(model, hook) / REPORT_FILE
    if not path.is_file():
        raise SAEError(f"no quality report at {path}; run `explorer sae train`")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SAEError(
            f"{path} is corrupt ({e}); run `explorer build --only saes --force` to retrain and re-measure"
        ) from e


def is_complete(model: str = ORGANISM_NAME) -> bool:
    """True when the index exists and every SAE it lists has its weights and report."""
    try:
        index = read_index(model)
    except SAEError:
        return False
    if index.get("upstream") != upstream_fingerprint(model):
        return False
    return all(
        (sae_dir(model, h) / f).is_file()
        for h in index["hooks"]
        for f in ("cfg.json", "sae_weights.safetensors", REPORT_FILE)
    )
