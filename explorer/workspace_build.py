"""The workspace of any chat model and SAELens SAEs: `explorer build --model SPEC --sae SAE ...`.

Stages: the refusal direction (on the built-in prompt sets or the user's; when no candidate passes the
behavioural filters, the best-separating difference in means, marked unvalidated), the corpus (the prompts
with the model's own replies, plus general text), every SAE's latent cache (a forward pass to its hook),
then the manifest. Each stage is skipped when complete, and the cache stage skips each finished SAE, so a
killed build resumes where it was.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from explorer.build import BUILD_LOCK, BUILD_STATUS, Stage, build_lock, run_stages
from explorer.core.models import ORGANISM_NAME, LoadedModel, ModelConfig, load_model, model_fingerprint
from explorer.core.paths import utc_now, write_json_atomic
from explorer.core.prompts import DataError, PromptRecord, builtin_prompts, load_prompt_file, records_hash
from explorer.latents.build import build_sae_cache
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import CacheConfig, latent_cache_dir
from explorer.manifest import (
    DEFAULT_WORKSPACE,
    Manifest,
    SAEEntry,
    WorkspaceError,
    canonical,
    find_workspace,
    manifest_path,
    refusal_summary,
    relative,
    stored_spec,
    workspace_name,
    write_manifest,
)
from explorer.refusal.build import compute_refusal, prove
from explorer.refusal.candidates import RefusalConfig
from explorer.refusal.direction import REPORT_FILE, RefusalCacheError, load_refusal, refusal_dir
from explorer.saes.corpus import Corpus, CorpusConfig, CorpusError, build_corpus, corpus_dir, load_corpus
from explorer.saes.loading import LoadedSAE, load_sae_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkspaceRequest:
    """What `explorer build --model SPEC --sae SAE ...` builds.

    Attributes:
        saes: SAE specs (directories, built names, `release:sae_id`); the first is the main SAE.
        harmful, harmless: prompt files (JSONL/CSV with train/val/test splits) replacing the built-in sets.
        layer: where to keep the direction when no candidate passes the behavioural filters (0..n_layers);
            None keeps the location that best separates harmful from harmless prompts.
    """

    model: ModelConfig
    saes: tuple[str, ...]
    harmful: str | None = None
    harmless: str | None = None
    layer: int | None = None
    refusal: RefusalConfig = field(default_factory=RefusalConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def prompts(self, label: str) -> list[PromptRecord]:
        path = self.harmful if label == "harmful" else self.harmless
        return load_prompt_file(path, label=label) if path else builtin_prompts(label)  # pyright: ignore[reportArgumentType]


class _Session:
    """The model and SAEs of one workspace build, loaded on first use and shared by its stages."""

    def __init__(self, request: WorkspaceRequest):
        self.request = request

    @cached_property
    def loaded(self) -> LoadedModel:
        return load_model(self.request.model)

    @cached_property
    def saes(self) -> list[tuple[LoadedSAE, str]]:
        """Each SAE with the name of its cache directory (its own name, or name@hook if two share it)."""
        saes = [load_sae_for(self.loaded, spec) for spec in self.request.saes]
        hooks = [sae.hook for sae in saes]
        if len(set(hooks)) < len(hooks):
            raise ValueError(f"two SAEs read the same hook ({hooks}); give one SAE per hook")
        names = [sae.name for sae in saes]
        return [(sae, sae.name if names.count(sae.name) == 1 else f"{sae.name}@{sae.hook}") for sae in saes]

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.loaded.model)

    def prompts_hash(self) -> dict[str, str]:
        return {label: records_hash(self.request.prompts(label)) for label in ("harmful", "harmless")}

    def refusal_complete(self) -> bool:
        """True when the stored direction was computed from the same prompts and settings (and, for an
        unvalidated one, the same `--layer`)."""
        try:
            selection = load_refusal(self.loaded.name).selection
        except RefusalCacheError:
            return False
        prompts = {k: v.get("hash") for k, v in selection.get("prompts", {}).items()}
        same_layer = selection.get("unvalidated", {}).get("layer", self.request.layer) == self.request.layer
        config = selection.get("config") == self.request.refusal.to_dict()
        return prompts == self.prompts_hash() and config and same_layer

    def run_refusal(self, force: bool) -> None:
        del force
        request = self.request
        harmful, harmless = request.prompts("harmful"), request.prompts("harmless")
        compute_refusal(
            self.loaded,
            request.refusal,
            harmful=harmful,
            harmless=harmless,
            fallback=True,
            layer=request.layer,
        )
        refusal = load_refusal(self.loaded.name)
        if not refusal.validated:
            return
        try:
            report = prove(self.loaded, refusal, harmful=harmful, harmless=harmless)
        except DataError as e:  # e.g. user prompts with no test split
            log.warning("no test-split proof of the direction: %s", e)
            return
        write_json_atomic(refusal_dir(self.loaded.name) / REPORT_FILE, report)

    def corpus_prompts(self) -> list[PromptRecord] | None:
        if self.request.harmful is None and self.request.harmless is None:
            return None  # the built-in sets, spread as the corpus config says
        return self.request.prompts("harmful") + self.request.prompts("harmless")

    def corpus(self) -> Corpus | None:
        try:
            corpus = load_corpus(corpus_dir(self.loaded.name), self.loaded.tokenizer)
        except CorpusError:
            return None
        prompts = self.corpus_prompts()
        same_prompts = prompts is None or corpus.manifest["prompts"]["sha256"] == records_hash(prompts)
        return corpus if same_prompts and corpus.manifest["config"] == self.request.corpus.to_dict() else None

    def run_corpus(self, force: bool) -> None:
        del force
        build_corpus(self.loaded, self.request.corpus, self.corpus_prompts())

    def cache_dirs(self) -> list[tuple[LoadedSAE, Path]]:
        return [(sae, latent_cache_dir(self.loaded.name, name)) for sae, name in self.saes]

    def cache_complete(self, sae: LoadedSAE, directory: Path) -> bool:
        try:
            LatentCache(directory, sae_fingerprint=sae.fingerprint, model_fingerprint=self.fingerprint)
        except CacheError:
            return False
        return True

    def run_caches(self, force: bool) -> None:
        corpus = self.corpus()
        if corpus is None:
            raise CorpusError(f"no corpus for {self.loaded.name}: run the corpus stage first")
        todo = [(sae, d) for sae, d in self.cache_dirs() if force or not self.cache_complete(sae, d)]
        for n, (sae, directory) in enumerate(todo, 1):
            log.info("cache %d/%d: %s (%d latents) -> %s", n, len(todo), sae.name, sae.d_sae, directory)
            build_sae_cache(
                self.loaded, sae, corpus, source="model", directory=directory, config=self.request.cache
            )

    def manifest(self, name: str, stages: dict[str, Any]) -> Manifest:
        corpus = self.corpus()
        entries = tuple(
            SAEEntry(
                stored_spec(sae.source),
                sae.hook,
                sae.name,
                sae.d_sae,
                sae.fingerprint,
                relative(directory),
            )
            for sae, directory in self.cache_dirs()
        )
        return Manifest(
            name,
            self.request.model,
            self.loaded.name,
            self.fingerprint,
            entries,
            entries[0].hook if entries else None,
            refusal=refusal_summary(self.loaded.name),
            corpus={
                "path": relative(corpus_dir(self.loaded.name)),
                **({"fingerprint": corpus.fingerprint(), "tokens": corpus.n_tokens()} if corpus else {}),
            },
            built=utc_now(),
            stages=stages,
        )


def build_workspace(
    request: WorkspaceRequest, only: list[str] | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Build the workspace of a chat model and its SAEs: refusal direction, corpus, latent caches, manifest.

    Returns:
        The manifest written to `<cache>/workspaces/<name>/workspace.json`, with per-stage timings.

    Raises:
        ModelError, SAEError: the model or an SAE does not load, or an SAE does not fit the model.
        DataError: a prompt file is unreadable or has too few prompts in a split.
        WorkspaceError: a workspace of this name belongs to another model.
    """
    if not request.saes:
        raise ValueError("give at least one SAE (--sae DIR or release:sae_id)")
    request = replace(request, model=canonical(request.model))
    session = _Session(request)
    session.saes  # load and check every SAE before hours of work  # noqa: B018
    name = workspace_name(session.loaded.name)
    _check_name(name, request.model)
    stages = [
        Stage(
            "refusal", "difference-in-means refusal direction", session.refusal_complete, session.run_refusal
        ),
        Stage(
            "corpus",
            "prompts with the model's replies, plus general text",
            lambda: session.corpus() is not None,
            session.run_corpus,
        ),
        Stage(
            "cache",
            "every SAE's latent cache",
            lambda: all(session.cache_complete(sae, d) for sae, d in session.cache_dirs()),
            session.run_caches,
        ),
    ]
    directory = manifest_path(name).parent
    with build_lock(directory / BUILD_LOCK):
        report = run_stages(stages, only, force, status=directory / BUILD_STATUS)
        manifest = session.manifest(name, report["stages"])
        path = write_manifest(manifest)
    return {**manifest.to_dict(), "path": str(path)}


def _check_name(name: str, model: ModelConfig) -> None:
    """Refuse to overwrite the workspace of another model that happens to share the name."""
    if name == DEFAULT_WORKSPACE:
        raise WorkspaceError("the workspace 'default' is the offline default's: run plain `explorer build`")
    try:
        existing = find_workspace(name)
    except WorkspaceError:
        return
    if existing.name == name and existing.model.spec != model.spec:
        raise WorkspaceError(
            f"workspace {name!r} already holds {existing.model.spec}; its per-model directories would be "
            f"shared with {model.spec}: rename one model's directory"
        )


def register_cache(model: ModelConfig, directory: Path) -> Path:
    """Add the SAE whose finished latent cache is at `directory` to its model's workspace (replacing one
    at the same hook), creating the workspace if needed, so commands find it by `--model` alone.

    Returns:
        The manifest's path.

    Raises:
        CacheError: `directory` holds no finished cache.
        WorkspaceError: the workspace of that name belongs to another model.
    """
    try:
        built = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        model_name, sae = built["model"], built["sae"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CacheError(f"{directory} holds no finished latent cache ({e})") from e
    model = canonical(model)
    default = model_name == ORGANISM_NAME
    name = DEFAULT_WORKSPACE if default else workspace_name(model_name)
    try:
        manifest = find_workspace(name)
    except WorkspaceError:
        manifest = Manifest(
            name,
            model,
            model_name,
            built["model_fingerprint"],
            (),
            None,
            refusal=refusal_summary(model_name),
            corpus={"path": relative(corpus_dir(model_name))},
        )
    if not default and manifest.model.spec != model.spec:
        raise WorkspaceError(f"workspace {name!r} holds {manifest.model.spec}, not {model.spec}")
    entry = SAEEntry(
        stored_spec(str(sae["source"])),
        sae["hook"],
        sae["name"],
        int(sae["d_sae"]),
        built["sae_fingerprint"],
        relative(directory),
    )
    saes = (*(e for e in manifest.saes if e.hook != entry.hook), entry)
    return write_manifest(replace(manifest, saes=saes, main=manifest.main or entry.hook, built=utc_now()))
