"""One SAE's latent cache built on many machines with Ray: one task per shard, then the exact merge.

The driver loads the model, the SAE and the corpus (building the corpus once if it is missing), submits
one Ray task per shard and merges the shards with `merge_sae_cache`. Each task loads the model and the SAE
itself and reads the corpus from disk, so the cache root (`EXPLORER_CACHE_DIR`, forwarded to the workers)
must be storage every node sees. Ray is an optional dependency, imported only when a build starts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from explorer.core.models import LoadedModel, ModelConfig, load_model
from explorer.core.paths import CACHE_ENV, cache_dir
from explorer.core.progress import tqdm
from explorer.latents.build import AttributionChoice, Source, build_sae_cache, merge_sae_cache
from explorer.latents.reader import CacheError
from explorer.latents.schema import CacheConfig, latent_cache_dir
from explorer.saes.build import SAEStageConfig, ensure_corpus
from explorer.saes.corpus import Corpus, CorpusError, corpus_dir, load_corpus
from explorer.saes.loading import load_sae_for

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'refusal-explorer[ray]'"
# Environment the workers need to find the same files and behave like the driver (offline stays offline).
# Credentials are not forwarded: each node uses its own Hugging Face login.
WORKER_ENV = (CACHE_ENV, "HF_HUB_OFFLINE", "HF_HOME")


class RayBuildError(ValueError):
    """A Ray build that cannot start (Ray missing, bad options) or whose shard failed after its retries."""


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to build one shard; every path is absolute, so any node resolves it alike.

    Attributes:
        model: how to load the model (spec, device, dtype, ...), the same on every worker.
        sae: the SAE spec (a directory, a built name or `release:sae_id`).
        sae_fingerprint: the weights the driver loaded; a worker that loads others fails.
        corpus: the corpus directory, read and never built by a worker.
        corpus_fingerprint: the corpus the driver loaded; a worker that reads another fails.
        directory: the cache directory; shards go to its `shards/`.
        n_shards: how many shards the corpus is split into.
        source: "auto", "stored" or "model", as for `build_sae_cache`.
        config: the cache config every shard shares.
    """

    model: ModelConfig
    sae: str
    sae_fingerprint: str
    corpus: str
    corpus_fingerprint: str
    directory: str
    n_shards: int
    source: Source
    config: CacheConfig

    def __post_init__(self) -> None:
        if self.n_shards < 2:
            raise RayBuildError(f"a Ray build needs at least 2 shards, got {self.n_shards}")


def _import_ray() -> Any:
    """The `ray` module, or a RayBuildError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayBuildError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


def build_shard(job: ShardJob, index: int) -> dict[str, Any]:
    """Build shard `index` of `job` in this process (a Ray task): load the model, the SAE and the corpus,
    check they are the driver's, and store the shard's accumulators.

    Returns:
        What `build_sae_cache` returns for a shard (its identity, path and token count).
    """
    host = socket.gethostname()
    loaded = load_model(job.model)
    sae = load_sae_for(loaded, job.sae)
    if sae.fingerprint != job.sae_fingerprint:
        raise CacheError(
            f"worker on {host} loaded SAE {job.sae} with fingerprint {sae.fingerprint}, but the driver's is "
            f"{job.sae_fingerprint}; every node must read the same SAE"
        )
    try:
        corpus = load_corpus(Path(job.corpus), loaded.tokenizer)
    except CorpusError as e:
        raise CorpusError(
            f"worker on {host} cannot read the corpus ({e}); {CACHE_ENV} must be storage every node sees"
        ) from e
    if corpus.fingerprint() != job.corpus_fingerprint:
        raise CorpusError(
            f"worker on {host} read another corpus at {job.corpus} than the driver "
            f"({corpus.fingerprint()} vs {job.corpus_fingerprint}); is {CACHE_ENV} shared storage?"
        )
    return build_sae_cache(
        loaded,
        sae,
        corpus,
        source=job.source,
        shard=(index, job.n_shards),
        directory=Path(job.directory),
        config=job.config,
    )


def _absolute(spec: str) -> str:
    """A spec naming a local path, made absolute so that workers with another working directory find it."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _driver_corpus(loaded: LoadedModel) -> Corpus:
    """The stored corpus (whatever config it was built with), or one built now, once, by the driver."""
    try:
        return load_corpus(corpus_dir(loaded.name), loaded.tokenizer)
    except CorpusError as e:
        log.info("no usable corpus (%s): building it once before the shards start", e)
        return ensure_corpus(loaded, SAEStageConfig())


def _task_options(ray: Any, model: ModelConfig, max_retries: int) -> dict[str, Any]:
    """One GPU per task when the cluster has GPUs and the model runs on one; else one CPU."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_gpu = bool(gpus) if model.device == "auto" else model.device != "cpu"
    if model.device.startswith("cuda:") and model.device != "cuda:0":
        # Ray shows each task only its own GPU, as cuda:0.
        raise RayBuildError(f"each Ray task gets one GPU: use --device cuda, not {model.device!r}")
    if on_gpu and not gpus:
        raise RayBuildError(f"the model's device is {model.device!r} but the Ray cluster has no GPUs")
    if gpus and not on_gpu:
        log.warning("the Ray cluster has %d GPUs but the model's device is cpu; pass --device cuda", gpus)
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    env[CACHE_ENV] = str(cache_dir())
    return {
        "num_gpus": 1 if on_gpu else 0,
        "num_cpus": 1,
        # Worker and node deaths (OOM kills, preemption) are always retried up to max_retries; of the
        # errors a task raises, only transient ones are, since a bad SAE or corpus fails every attempt.
        "max_retries": max_retries,
        "retry_exceptions": [OSError, torch.cuda.OutOfMemoryError],
        "runtime_env": {"env_vars": env},
    }


def _run_tasks(
    ray: Any, task: Callable[[ShardJob, int], dict[str, Any]], job: ShardJob, options: dict[str, Any]
) -> None:
    remote = ray.remote(task).options(**options)
    pending = {remote.remote(job, i): i for i in range(job.n_shards)}
    with tqdm(total=job.n_shards, desc="shards", unit="shard") as bar:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                for other in pending:
                    ray.cancel(other, force=True)
                if isinstance(e, ray.exceptions.RayTaskError):
                    raise RayBuildError(f"shard {index}/{job.n_shards} failed: {e.cause}") from e
                raise RayBuildError(
                    f"shard {index}/{job.n_shards} failed: its worker or node died, with "
                    f"{options['max_retries']} retries allowed ({type(e).__name__}: {e})"
                ) from e
            bar.update()


def ray_build_sae_cache(
    model: ModelConfig,
    sae_spec: str,
    n_shards: int,
    *,
    address: str | None = None,
    source: Source = "auto",
    directory: Path | None = None,
    attribution: AttributionChoice = "grad",
    config: CacheConfig | None = None,
    max_retries: int = 3,
    task: Callable[[ShardJob, int], dict[str, Any]] = build_shard,
) -> dict[str, Any]:
    """Build one SAE's latent cache with one Ray task per shard, then merge the shards exactly.

    Args:
        model: how the driver and every worker load the model.
        sae_spec: the SAE (a directory, a built name or `release:sae_id`).
        n_shards: tasks to split the corpus into (>= 2).
        address: a running Ray cluster (`ray://host:10001`, `auto`, ...); None calls `ray.init()`, which
            starts a local Ray. A Ray already initialised in this process is used as is.
        directory: the cache directory (default `cache/latents/<model>/<sae>/`).
        max_retries: how many times a task whose worker or node died is run again.
        task: the function each task runs; `build_shard` unless a caller wraps it.

    Returns:
        The finished cache's manifest, with the Ray build's timing under "ray".

    Raises:
        RayBuildError: Ray is not installed, the options do not fit the cluster, or a shard failed.
    """
    ray = _import_ray()
    if n_shards < 2:
        raise RayBuildError(f"a Ray build needs at least 2 shards, got {n_shards}; use one process instead")
    start = time.perf_counter()
    model = replace(
        model,
        spec=_absolute(model.spec),
        chat_template=_absolute(model.chat_template) if model.chat_template else None,
    )
    loaded = load_model(model)
    sae = load_sae_for(loaded, _absolute(sae_spec))
    corpus = _driver_corpus(loaded)
    directory = (directory or latent_cache_dir(loaded.name, sae.name)).resolve()
    job = ShardJob(
        model=model,
        sae=_absolute(sae_spec),
        sae_fingerprint=sae.fingerprint,
        corpus=str(corpus_dir(loaded.name)),
        corpus_fingerprint=corpus.fingerprint(),
        directory=str(directory),
        n_shards=n_shards,
        source=source,
        config=config or CacheConfig(),
    )
    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    try:
        options = _task_options(ray, model, max_retries)
        mark = time.perf_counter()
        _run_tasks(ray, task, job, options)
        t_shards = time.perf_counter() - mark
    finally:
        if started:
            ray.shutdown()
    manifest = merge_sae_cache(loaded, sae, corpus, n_shards, directory=directory, attribution=attribution)
    manifest["ray"] = {
        "shards": n_shards,
        "address": address,
        "shards_seconds": round(t_shards, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return manifest
