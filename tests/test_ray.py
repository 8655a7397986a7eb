"""`explorer cache build --ray`: shards built by Ray tasks merge into exactly the single-process cache, a
task whose worker dies is retried, and bad options or a missing corpus are named before any work starts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from explorer.cli.main import main
from explorer.core.models import LoadedModel, ModelConfig
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import builtin_prompts
from explorer.latents.build import build_sae_cache
from explorer.latents.distributed import (
    INSTALL_HINT,
    RayBuildError,
    ShardJob,
    build_shard,
    ray_build_sae_cache,
)
from explorer.latents.schema import ARRAYS_FILE, CacheConfig
from explorer.saes.activations import activations_dir, collect
from explorer.saes.corpus import CorpusConfig, build_corpus, corpus_dir
from explorer.saes.loading import load_sae_for
from tests.helpers import tiny_sae

HOOK = "blocks.2.hook_resid_pre"
# What the CLI makes of `--k 5 --groups 8 --per-group 5` (small, so the tiny corpus fills every group).
CONFIG = CacheConfig(k=5, n_groups=8, examples_per_group=5)
CONFIG_ARGS = ["--k", "5", "--groups", "8", "--per-group", "5", "--attribution", "none"]


def _sae_dir(directory: Path) -> Path:
    tiny_sae("topk", d_in=64, d_sae=48, hook=HOOK, seed=1).save_model(directory)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> Iterator[tuple[Path, Path]]:
    """A cache root holding the tiny model's corpus and stored activations, an SAE directory, and the
    single-process cache of that SAE under `<root>/whole`."""
    root = tmp_path_factory.mktemp("ray-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        prompts = builtin_prompts("harmful", "val")[:4] + builtin_prompts("harmless", "val")[:4]
        corpus = build_corpus(tiny, CorpusConfig(seq_len=48, response_tokens=5, text_tokens=2000), prompts)
        for part in ("train", "heldout"):
            collect(tiny, corpus, [HOOK], activations_dir(tiny.name), part)  # pyright: ignore[reportArgumentType]
        sae_dir = _sae_dir(root / "sae")
        sae = load_sae_for(tiny, str(sae_dir))
        build_sae_cache(tiny, sae, corpus, directory=root / "whole", attribution="none", config=CONFIG)
        yield root, sae_dir


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """A local Ray of 2 CPUs for this module, started without the cache root or offline mode in its
    environment: its workers see them only if the build forwards them."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(CACHE_ENV, raising=False)
        patch.delenv("HF_HUB_OFFLINE", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _assert_same(a: Path, b: Path) -> None:
    left, right = load_file(str(a / ARRAYS_FILE)), load_file(str(b / ARRAYS_FILE))
    assert set(left) == set(right)
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_ray_shards_merge_into_the_single_process_cache(
    setup: tuple[Path, Path],
    ray_session: Any,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, sae_dir = setup
    monkeypatch.setenv(CACHE_ENV, str(root))
    out = root / "ray-cli"
    args = ["cache", "build", "--model", str(tiny_dir), "--sae", str(sae_dir), "--out", str(out)]
    assert main([*args, *CONFIG_ARGS, "--ray", "--shards", "3"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["source"] == "merge of 3 shards" and manifest["ray"]["shards"] == 3
    _assert_same(root / "whole", out)
    assert not (out / "shards").exists()


def _dies_once(marker: Path, shard: int, cache: str) -> Callable[[ShardJob, int], dict[str, Any]]:
    """A Ray task that checks the worker's environment, then kills its own worker process the first time
    it runs shard `shard` (creating `marker`) and builds the shard normally on any later attempt."""

    def task(job: ShardJob, index: int) -> dict[str, Any]:
        seen = (os.environ.get(CACHE_ENV), os.environ.get("HF_HUB_OFFLINE"))
        if seen != (cache, "1"):
            raise RuntimeError(f"worker environment {seen}, expected {(cache, '1')}")
        if index == shard:
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a real worker death: no exception, no cleanup, the process is gone
        return build_shard(job, index)

    return task


def test_a_task_whose_worker_dies_is_retried(
    setup: tuple[Path, Path], ray_session: Any, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, sae_dir = setup
    monkeypatch.setenv(CACHE_ENV, str(root))
    options: dict[str, Any] = {"attribution": "none", "config": CONFIG}
    model = ModelConfig(spec=str(tiny_dir))

    marker = root / "died-once"
    task = _dies_once(marker, 1, str(root))
    manifest = ray_build_sae_cache(
        model, str(sae_dir), 3, directory=root / "retried", max_retries=1, task=task, **options
    )
    # Shard 1's first worker died before writing anything, so its shard can only come from a retry.
    assert marker.exists()
    assert manifest["source"] == "merge of 3 shards"
    _assert_same(root / "whole", root / "retried")

    # The same death without retries fails the build, naming the shard.
    task = _dies_once(root / "died-again", 1, str(root))
    with pytest.raises(RayBuildError, match=r"shard 1/3 failed: its worker or node died, with 0 retries"):
        ray_build_sae_cache(
            model, str(sae_dir), 3, directory=root / "no-retry", max_retries=0, task=task, **options
        )
    assert (root / "died-again").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray"], "--ray needs --shards N"),
        (["--ray", "--shards", "3", "--shard", "0/3"], "drop --shard i/n"),
        (["--shards", "3"], "--shards N needs --ray"),
    ],
)
def test_ray_options_are_checked_before_any_work(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No model or SAE exists under these names: the options are rejected before anything is loaded.
    assert main(["cache", "build", "--model", "nowhere", "--sae", "nothing", *extra]) == 2
    assert message in capsys.readouterr().err


def test_ray_missing_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    assert main(["cache", "build", "--model", "nowhere", "--sae", "nothing", "--ray", "--shards", "2"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_shard_jobs_and_merges_read_the_corpus_and_never_build_it(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sae = str(_sae_dir(tmp_path / "sae"))
    command = f"`explorer cache corpus --model {tiny_dir}`"
    for args in (["build", "--shard", "0/2"], ["merge", "--shards", "2"]):
        assert main(["cache", args[0], "--model", str(tiny_dir), "--sae", sae, *args[1:]]) == 2
        assert command in capsys.readouterr().err
    assert not corpus_dir(tiny_dir.name).exists()
