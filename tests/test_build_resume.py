"""A build killed with `kill -9` in the middle of a stage resumes: the stages done before the kill are
skipped, not redone, and the workspace it ends with is the one an uninterrupted build makes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from explorer.build import BUILD_LOCK, BUILD_STATUS, lock_held
from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import Label, Split, builtin_prompts
from tests.helpers import tiny_model, tiny_sae

ROOT = Path(__file__).resolve().parents[1]
SPLITS: dict[Split, int] = {"train": 8, "val": 4, "test": 4}  # the fewest prompts a build accepts


@pytest.fixture(scope="module")
def request_args(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """`explorer build` arguments for a tiny GPT-NeoX model, one SAE and small prompt files."""
    root = tmp_path_factory.mktemp("resume")
    model = root / "tiny-neox"
    net = tiny_model("gpt_neox", vocab_size=len(tokenizer), n_layers=2)  # two layers: few candidates
    net.generation_config.eos_token_id = tokenizer.eos_token_id
    net.save_pretrained(model)
    tokenizer.save_pretrained(model)
    tiny_sae("topk", d_in=64, d_sae=96, hook="blocks.1.hook_resid_pre", seed=1).save_model(str(root / "sae"))
    files = []
    labels: tuple[Label, ...] = ("harmful", "harmless")
    for label in labels:
        rows = [r for split, n in SPLITS.items() for r in builtin_prompts(label, split)[:n]]
        path = root / f"{label}.jsonl"
        path.write_text(
            "".join(json.dumps({"id": r.id, "text": r.text, "split": r.split}) + "\n" for r in rows)
        )
        files += [f"--{label}", str(path)]
    small = ["--n-val", "4", "--text-tokens", "1000", "--seq-len", "64", "--k", "8"]
    return ["build", "--model", str(model), "--sae", str(root / "sae"), *files, *small]


def _build(args: list[str], cache: Path) -> dict:
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setenv(CACHE_ENV, str(cache))
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def whole(request_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """An uninterrupted build: its report and its cache root."""
    cache = tmp_path_factory.mktemp("whole")
    report = _build(request_args, cache)
    assert all(stage["ran"] for stage in report["stages"].values())
    return report, cache


def _digest(cache: Path) -> dict[str, str]:
    """Every file of the built workspace that does not record a time: path -> SHA-256."""
    timed = {"workspace.json", "manifest.json", "selection.json", BUILD_STATUS, BUILD_LOCK}
    return {
        str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(cache.rglob("*"))
        if p.is_file() and p.name not in timed
    }


def _stable(manifest: dict, cache: Path) -> dict:
    """The workspace's manifest and its direction's selection, without their times."""
    selection = json.loads((cache / "refusal" / "tiny-neox" / "selection.json").read_text())
    return {
        "manifest": {k: v for k, v in manifest.items() if k not in ("built", "stages", "path")},
        "selection": {k: v for k, v in selection.items() if k != "timings_s"},
    }


STAGES = ("refusal", "corpus", "cache")


@pytest.mark.parametrize("killed_in", STAGES)
def test_a_build_killed_mid_stage_resumes_and_ends_as_an_uninterrupted_one(
    request_args: list[str], whole: tuple[dict, Path], tmp_path: Path, killed_in: str
) -> None:
    cache = tmp_path / "killed"
    workspace = cache / "workspaces" / "tiny-neox"
    build = subprocess.Popen(
        [sys.executable, "-m", "explorer.cli.main", *request_args],
        env={**os.environ, CACHE_ENV: str(cache)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # kill -9 as soon as the chosen stage runs
            try:
                status = json.loads((workspace / BUILD_STATUS).read_text())
            except (OSError, ValueError):
                status = {"stages": {}}
            if status["stages"].get(killed_in, {}).get("state") == "running":
                break
            assert time.monotonic() < deadline and build.poll() is None, (
                f"the build never reached {killed_in}"
            )
            time.sleep(0.05)
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
    finally:
        build.kill()
    done_before = STAGES[: STAGES.index(killed_in)]
    assert all(status["stages"][name]["state"] == "done" for name in done_before)
    assert json.loads((workspace / BUILD_STATUS).read_text())["state"] == "running"  # left by the killed one
    assert not lock_held(workspace / BUILD_LOCK)  # ... which holds no lock: stopped, not running
    assert not (workspace / "workspace.json").exists()
    outputs = {"refusal": cache / "refusal", "corpus": cache / "corpus"}
    done = [p for name in done_before if name in outputs for p in outputs[name].rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in done if p.is_file()}

    resumed = _build(request_args, cache)
    assert {name: stage["ran"] for name, stage in resumed["stages"].items()} == {
        name: name not in done_before for name in STAGES
    }
    assert {p: p.stat().st_mtime_ns for p in before} == before  # what was complete is not made again
    report, whole_cache = whole
    assert _stable(resumed, cache) == _stable(report, whole_cache)  # fingerprints, the direction
    assert _digest(cache) == _digest(whole_cache)  # every array, the latent cache's included
