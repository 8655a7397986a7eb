"""What a session works on, loaded together: the model, its SAEs, their latent caches, the refusal direction.

The CLI and the app both start here. Everything missing is reported by name (an SAE without a cache
still steers in raw units; a model without a refusal direction has no direction baselines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from explorer.core.models import LoadedModel, ModelConfig, load_model, model_fingerprint
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import latent_cache_dir
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
    """

    loaded: LoadedModel
    saes: dict[str, LoadedSAE]
    caches: dict[str, LatentCache]
    refusal: RefusalDirection | None
    main: str | None
    problems: list[str] = field(default_factory=list)

    def max_activations(self) -> dict[str, torch.Tensor]:
        """hook -> [d_sae] each latent's max on its cache's corpus."""
        return {hook: cache.column("max") for hook, cache in self.caches.items()}

    def steerer(self) -> Steerer:
        return Steerer(self.loaded, self.saes, self.refusal, self.max_activations())


def load_workspace(model: str | ModelConfig = "default", sae_specs: list[str] | None = None) -> Workspace:
    """Load a model with the SAEs the build trained for it (or the SAEs given), their caches and the
    refusal direction.

    Args:
        model: a model spec or config.
        sae_specs: SAE specs (directories, built names, `release:sae_id`); default: the SAE stage's.

    Raises:
        ModelError: the model cannot be loaded.
        SAEError: a given SAE does not load or does not fit the model.
    """
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
    try:
        refusal = load_refusal(loaded.name)
    except RefusalCacheError as e:
        refusal = None
        problems.append(str(e))
    for problem in problems:
        log.warning("%s", problem)
    return Workspace(loaded, saes, caches, refusal, main, problems)
