"""Bring your own model and SAE: `explorer build --model DIR --sae DIR` makes a workspace that every
command finds by `--model` alone and that the app opens, page by page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import PreTrainedTokenizerBase

from explorer.cli.main import main
from explorer.core.paths import CACHE_ENV
from explorer.manifest import WorkspaceError, find_workspace, list_workspaces, read_manifest
from explorer.refusal.direction import load_refusal
from explorer.ui.state import LATENT, STEER_CLAMPS
from explorer.workspace import load_workspace
from tests.helpers import save_tiny_model_dir, tiny_sae

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n-val", "4", "--prompts-per-label", "8", "--text-tokens", "3000", "--seq-len", "64", "--k", "8"]
PAGES = ["overview", "latents", "latent_detail", "inspector", "steering", "evaluate", "demo"]


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> dict[str, Path]:
    """A GPT-NeoX chat model (an architecture no other test builds a workspace for), two SAELens SAE
    directories with the same name at two hooks, and the workspace `explorer build` made of them."""
    root = tmp_path_factory.mktemp("byo")
    model = save_tiny_model_dir(root / "neox-chat", tokenizer, family="gpt_neox")
    saes = []
    for layer in (1, 2):
        directory = root / f"layer{layer}" / "sae"
        tiny_sae("topk", d_in=64, d_sae=96, hook=f"blocks.{layer}.hook_resid_pre", seed=layer).save_model(
            str(directory)
        )
        saes.append(directory)
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        args = ["build", "--model", str(model), "--sae", str(saes[0]), "--sae", str(saes[1]), *SMALL]
        assert main(args) == 0
    return {"root": root, "model": model, "cache": cache, "sae1": saes[0], "sae2": saes[1]}


@pytest.fixture
def in_cache(byo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv(CACHE_ENV, str(byo["cache"]))
    return byo


def test_the_build_writes_a_manifest_naming_everything(in_cache: dict[str, Path]) -> None:
    manifest = find_workspace(str(in_cache["model"]))
    assert manifest.name == "neox-chat" and manifest.model_name == "neox-chat"
    assert [e.hook for e in manifest.saes] == ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]
    assert [e.d_sae for e in manifest.saes] == [96, 96]
    # two SAEs named "sae" get a cache directory each
    assert len({e.cache for e in manifest.saes}) == 2
    assert all(manifest.path(e.cache).is_dir() for e in manifest.saes)
    assert manifest.main == "blocks.1.hook_resid_pre"
    assert manifest.corpus["tokens"] > 0 and manifest.model_fingerprint
    assert set(manifest.stages) == {"refusal", "corpus", "cache"}
    assert find_workspace("neox-chat") == manifest


def test_a_model_that_never_refuses_gets_an_unvalidated_direction(in_cache: dict[str, Path]) -> None:
    manifest = find_workspace(str(in_cache["model"]))
    assert manifest.refusal["validated"] is False and not manifest.validated
    refusal = load_refusal("neox-chat")
    assert not refusal.validated
    record = refusal.selection["unvalidated"]
    assert "no candidate direction passes the filters" in record["reason"]
    grid = record["separation_grid"]
    assert record["separation"] == pytest.approx(max(max(row) for row in grid[: len(grid) - 1]), abs=1e-3)


def test_commands_find_the_workspace_by_model_alone(
    in_cache: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(in_cache["model"])
    assert main(["cache", "top", "--model", model, "-n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t")[:2] == ["latent", "refusal_cos"] and len(lines) == 4
    assert main(["cache", "show", "5", "--model", model, "--hook", "blocks.2.hook_resid_pre", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latent"] == 5
    assert main(["cache", "top", "--model", model, "--hook", "blocks.9.hook_resid_pre"]) == 2
    assert "has no SAE 'blocks.9.hook_resid_pre'" in capsys.readouterr().err
    clamp = ["--clamp", "blocks.1.hook_resid_pre:3=set:2:max"]  # x max: needs the workspace's cache
    assert (
        main(["generate", "--model", model, "--prompt", "Hi", *clamp, "--max-new-tokens", "3", "--json"]) == 0
    )
    assert "steered" in capsys.readouterr().out
    assert main(["workspaces", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["workspaces"]
    assert [(w["name"], w["widths"], w["direction"]) for w in listed] == [
        ("neox-chat", [96, 96], "unvalidated")
    ]
    assert listed[0]["size_mb"] > 0


def test_a_second_build_skips_every_stage_and_a_lost_cache_is_rebuilt_alone(
    in_cache: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "build",
        "--model",
        str(in_cache["model"]),
        "--sae",
        str(in_cache["sae1"]),
        "--sae",
        str(in_cache["sae2"]),
    ]
    assert main([*args, *SMALL]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert all(not stage["ran"] for stage in stages.values())
    manifest = find_workspace(str(in_cache["model"]))
    lost = manifest.path(manifest.saes[1].cache)
    kept = manifest.path(manifest.saes[0].cache) / "latents.safetensors"
    before = kept.stat().st_mtime_ns
    shutil.rmtree(lost)
    assert main([*args, *SMALL]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [name for name, stage in stages.items() if stage["ran"]] == ["cache"]
    assert lost.is_dir() and kept.stat().st_mtime_ns == before


def test_the_fallback_direction_can_be_put_at_a_given_layer(
    byo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.chdir(byo["model"].parent)  # a relative model path is stored absolute
    args = ["build", "--model", byo["model"].name, "--sae", str(byo["sae1"]), "--layer", "3", *SMALL]
    assert main([*args, "--only", "refusal"]) == 0
    assert find_workspace(str(byo["model"])).model.spec == str(byo["model"].resolve())
    refusal = load_refusal("neox-chat")
    assert (refusal.layer, refusal.location, refusal.validated) == (3, "blocks.3.hook_resid_pre", False)
    assert main([*args[:-2], "--layer", "9", "--only", "refusal"]) == 2


def test_bad_input_is_a_clear_error(
    byo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert main(["build", "--sae", str(byo["sae1"])]) == 2
    assert "give --model too" in capsys.readouterr().err
    assert main(["build", "--model", str(byo["model"])]) == 2
    assert "at least one SAE" in capsys.readouterr().err
    wide = tmp_path / "wide"
    tiny_sae("topk", d_in=32, d_sae=16, hook="blocks.1.hook_resid_pre").save_model(str(wide))
    assert main(["build", "--model", str(byo["model"]), "--sae", str(wide)]) == 2
    assert "d_in" in capsys.readouterr().err
    assert not (tmp_path / "workspaces").exists()
    with pytest.raises(WorkspaceError, match="no workspace for 'nothing'"):
        find_workspace("nothing")
    corrupt = tmp_path / "workspaces" / "broken" / "workspace.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("{not json")
    workspaces, problems = list_workspaces()
    assert workspaces == [] and "corrupt" in problems[0]
    with pytest.raises(WorkspaceError, match="corrupt"):
        read_manifest(corrupt)


def test_a_cache_built_alone_joins_its_models_workspace(
    in_cache: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`explorer cache build --model DIR --sae DIR --out D`, then `cache top --model DIR` finds it."""
    model = str(in_cache["model"])
    third = tmp_path / "third"
    tiny_sae("topk", d_in=64, d_sae=40, hook="blocks.3.hook_resid_pre", seed=7).save_model(str(third))
    out = tmp_path / "elsewhere"
    manifest_file = in_cache["cache"] / "workspaces" / "neox-chat" / "workspace.json"
    saved = manifest_file.read_text()
    try:
        assert (
            main(["cache", "build", "--model", model, "--sae", str(third), "--out", str(out), "--k", "4"])
            == 0
        )
        capsys.readouterr()
        assert main(["cache", "top", "--model", model, "--hook", "blocks.3.hook_resid_pre", "-n", "2"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 3
        manifest = find_workspace(model)
        assert [e.d_sae for e in manifest.saes] == [96, 96, 40]
        assert manifest.path(manifest.saes[2].cache) == out.resolve()
    finally:
        manifest_file.write_text(saved)  # other tests see the workspace as built


def test_every_page_opens_on_the_workspace(
    in_cache: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("EXPLORER_MODEL", raising=False)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not app.exception
    picker = app.sidebar.selectbox[0]
    assert picker.label == "Workspace" and picker.value == "neox-chat"
    assert any("Unvalidated refusal direction" in w.value for w in app.sidebar.warning)
    assert any("neox-chat" in s.value for s in app.subheader)
    for page in PAGES[1:]:
        app.switch_page(f"pages/{page}.py").run()
        assert not app.exception, (page, [e.value for e in app.exception])
        assert not app.error, (page, [e.value for e in app.error])


def test_explorer_workspace_opens_a_manifest_outside_the_cache(
    in_cache: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("EXPLORER_WORKSPACE", str(in_cache["cache"] / "workspaces" / "neox-chat"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # an empty cache root: the workspace comes from the variable
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not app.exception
    assert app.sidebar.selectbox[0].value == "neox-chat (EXPLORER_WORKSPACE)"
    assert [m.value for m in app.metric][:2] == ["4", "64"]


def test_a_bfloat16_workspace_loads_on_its_manifests_device_and_dtype(
    byo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Device and dtype consistency, the part of the CUDA path a CPU can check: the build's dtype reaches
    the manifest, the app's loader and the SAEs, and an override is reported, never silently mixed."""
    cache = tmp_path / "cache"
    shutil.copytree(byo["cache"], cache)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    model = str(byo["model"])
    assert main(["build", "--model", model, "--sae", str(byo["sae1"]), "--dtype", "bfloat16", *SMALL]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [name for name, stage in stages.items() if stage["ran"]] == ["cache"]  # same direction, corpus
    manifest = find_workspace(model)
    assert manifest.model.dtype == "bfloat16"
    workspace = load_workspace(model)
    assert workspace.loaded.model.dtype == torch.bfloat16 and workspace.problems == []
    assert [sae.sae.W_dec.dtype for sae in workspace.saes.values()] == [torch.bfloat16]
    assert list(workspace.caches) == ["blocks.1.hook_resid_pre"]
    monkeypatch.setenv("EXPLORER_DEVICE", "cuda")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert manifest.model_config().device == expected
    monkeypatch.delenv("EXPLORER_DEVICE")
    monkeypatch.setenv("EXPLORER_DTYPE", "float32")
    mixed = load_workspace(model)
    assert mixed.loaded.model.dtype == torch.float32
    assert any("built on cpu/bfloat16" in p for p in mixed.problems)
    assert mixed.caches == {} and any("fingerprint" in p for p in mixed.problems)


def test_switching_workspace_forgets_the_other_workspaces_latents(
    in_cache: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Picked latents, clamps and results name hooks of one workspace: a switch clears them."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("EXPLORER_MODEL", raising=False)
    source = in_cache["cache"] / "workspaces" / "neox-chat" / "workspace.json"
    twin = in_cache["cache"] / "workspaces" / "twin" / "workspace.json"
    twin.parent.mkdir()
    twin.write_text(json.dumps({**json.loads(source.read_text()), "name": "twin"}))
    try:
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        assert app.sidebar.selectbox[0].options == ["neox-chat", "twin"]
        app.session_state[STEER_CLAMPS] = [{"hook": "blocks.1.hook_resid_pre", "latent": 3}]
        app.session_state[LATENT] = 3
        app.run()
        assert app.session_state[STEER_CLAMPS]
        app.sidebar.selectbox[0].select("twin").run()
        assert not app.exception
        assert STEER_CLAMPS not in app.session_state and LATENT not in app.session_state
        assert any("twin" in s.value for s in app.subheader)
        linked = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        linked.query_params["workspace"] = "twin"  # a link opens a workspace
        assert linked.run().sidebar.selectbox[0].value == "twin"
    finally:
        shutil.rmtree(twin.parent)
