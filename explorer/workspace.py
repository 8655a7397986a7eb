"""What a session works on, loaded together: the model, its SAEs, their latent caches, the refusal direction.

The CLI and the app both start here, from a workspace manifest (`explorer.manifest`) when the model has
one, else from what the stage-by-stage commands left under the cache root. Everything missing is reported by
name (an SAE without a cache still steers in raw units; a model without a refusal direction has no direction
baselines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from explorer.core.judge import Judge, SubstringJudge
from explorer.core.models import LoadedModel, ModelConfig, load_model, model_fingerprint
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import latent_cache_dir
from explorer.manifest import Manifest, WorkspaceError, find_workspace
from explorer.refusal.direction import RefusalCacheError, RefusalDirection, load_refusal
from explorer.saes.build import read_index, sae_dir
from explorer.saes.loading import LoadedSAE, SAEError, load_sae_for
from explorer.steering.decode import Steerer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    """A model with its SAEs (by hook), their caches, and its refusal direction.

    Attributes:
        main: the hook of the main SAE (the refusal layer's for the default).
        problems: what could not be loaded, in words, for the UI and CLI to show.
        manifest: the workspace manifest it was loaded from (None for a model without one).
    """

    loaded: LoadedModel
    saes: dict[str, LoadedSAE]
    caches: dict[str, LatentCache]
    refusal: RefusalDirection | None
    main: str | None
    problems: list[str] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest is not None else self.loaded.name

    @property
    def validated(self) -> bool:
        """True when the refusal direction passed the behavioural filters (False: none, or a fallback)."""
        return self.refusal is not None and self.refusal.validated

    def max_activations(self) -> dict[str, torch.Tensor]:
        """hook -> [d_sae] each latent's max on its cache's corpus."""
        return {hook: cache.column("max") for hook, cache in self.caches.items()}

    def steerer(self, judge: Judge | None = None) -> Steerer:
        """What steering needs from this workspace; `judge` judges each reply (default: the offline one)."""
        return Steerer(
            self.loaded, self.saes, self.refusal, self.max_activations(), judge or SubstringJudge()
        )


def load_workspace(
    model: str | ModelConfig | Manifest = "default",
    sae_specs: list[str] | None = None,
    *,
    config: ModelConfig | None = None,
) -> Workspace:
    """Load a model with its SAEs, their caches and its refusal direction.

    Args:
        model: a workspace manifest, or a model spec or config: the workspace built for it when there is
            one (found by name, spec or model name), else the SAEs the SAE stage trained for it.
        sae_specs: load these SAEs instead (directories, built names, `release:sae_id`).
        config: load a manifest's model with this config (e.g. the CLI's --device) instead of its own.

    Raises:
        ModelError: the model cannot be loaded.
        SAEError: a given SAE does not load or does not fit the model.
    """
    if not isinstance(model, Manifest) and sae_specs is None:
        spec = model.spec if isinstance(model, ModelConfig) else model
        try:
            found = find_workspace(spec)
        except WorkspaceError:
            found = None
        if found is not None:
            given = model if isinstance(model, ModelConfig) else None
            return load_workspace(found, config=config or given)
    if isinstance(model, Manifest):
        return _from_manifest(model, config or model.model_config())
    loaded = load_model(model)
    problems: list[str] = []
    main: str | None = None
    if sae_specs is None:
        try:
            index = read_index(loaded.name)
            sae_specs, main = [str(sae_dir(loaded.name, h)) for h in index["hooks"]], index["main"]
        except SAEError as e:
            sae_specs = []
            problems.append(str(e))
    saes: dict[str, LoadedSAE] = {}
    for spec in sae_specs:
        sae = load_sae_for(loaded, spec)
        if sae.hook in saes:
            raise SAEError(f"two SAEs read {sae.hook} ({saes[sae.hook].name}, {sae.name}); load one per hook")
        saes[sae.hook] = sae
    main = main or next(iter(saes), None)
    fingerprint = model_fingerprint(loaded.model)
    caches: dict[str, LatentCache] = {}
    for hook, sae in saes.items():
        directory = latent_cache_dir(loaded.name, sae.name)
        try:
            caches[hook] = LatentCache(
                directory, sae_fingerprint=sae.fingerprint, model_fingerprint=fingerprint
            )
        except CacheError as e:
            problems.append(str(e))
    refusal = _refusal(loaded.name, None, problems)
    for problem in problems:
        log.warning("%s", problem)
    return Workspace(loaded, saes, caches, refusal, main, problems)


def _from_manifest(manifest: Manifest, config: ModelConfig) -> Workspace:
    """Everything a manifest names; an SAE or cache that does not load is a problem, not an error."""
    loaded = load_model(config)
    problems: list[str] = []
    if config.device != manifest.model.device or config.dtype != manifest.model.dtype:
        problems.append(
            f"the model runs on {config.device}/{config.dtype}; the workspace was built on "
            f"{manifest.model.device}/{manifest.model.dtype}"
        )
    fingerprint = model_fingerprint(loaded.model)
    saes: dict[str, LoadedSAE] = {}
    caches: dict[str, LatentCache] = {}
    for entry in manifest.saes:
        try:
            sae = load_sae_for(loaded, manifest.sae_spec(entry))
        except SAEError as e:
            problems.append(f"SAE {entry.name} ({entry.hook}) did not load: {e}")
            continue
        saes[sae.hook] = sae
        try:
            caches[sae.hook] = LatentCache(
                manifest.path(entry.cache), sae_fingerprint=sae.fingerprint, model_fingerprint=fingerprint
            )
        except CacheError as e:
            problems.append(str(e))
    directory = manifest.path(manifest.refusal["path"]) if "path" in manifest.refusal else None
    refusal = _refusal(manifest.model_name, directory, problems)
    if refusal is not None and not refusal.validated:
        log.warning("the refusal direction of workspace %s is unvalidated", manifest.name)
    main = manifest.main if manifest.main in saes else next(iter(saes), None)
    for problem in problems:
        log.warning("%s", problem)
    return Workspace(loaded, saes, caches, refusal, main, problems, manifest)


def _refusal(model_name: str, directory: Path | None, problems: list[str]) -> RefusalDirection | None:
    try:
        return load_refusal(model_name, directory)
    except RefusalCacheError as e:
        problems.append(str(e))
        return None
