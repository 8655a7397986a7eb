"""The `explorer` command line: JSON out, clear errors with exit status 2."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_generate_json(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["generate", "--model", str(tiny_dir), "--prompt", "Hi there", "--max-new-tokens", "5", "--json"]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    [row] = out["results"]
    assert row["prompt"] == "Hi there" and isinstance(row["completion"], str)
    assert row["n_new_tokens"] <= 5
    assert set(row["verdict"]) == {"refused", "evidence", "judge", "score", "label"}
    assert out["sampling"]["max_new_tokens"] == 5


def test_generate_from_file(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "one", "text": "Hi"}\n{"id": "two", "text": "Bye"}\n')
    args = [
        "generate",
        "--model",
        str(tiny_dir),
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "3",
        "--json",
    ]
    assert main(args) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == ["one", "two"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--prompt", "  "], "--prompt is empty"),
        (["generate", "--model", "gemma", "--prompt", "hi"], "unknown model spec"),
        (["generate", "--model", "missing.gguf", "--prompt", "hi"], "GGUF file not found"),
        (["generate", "--prompt", "hi", "--temperature", "nan"], "finite"),
        (["generate"], "exactly one of --prompt"),
        (["prompts", "--file", "/nowhere.jsonl"], "not found"),
        (["build", "--only", "everything"], "unknown build stage"),
        (["organism", "--learning-rate", "5"], "learning_rate must be in (0, 1)"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_refusal_on_a_model_that_never_refuses_is_a_clear_error(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    assert main(["refusal", "--model", str(tiny_dir), "--n-val", "4"]) == 2
    assert "no candidate direction passes the filters" in capsys.readouterr().err
    assert not (tmp_path / "refusal").exists()


def test_prompts_summary_and_judge(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "--label", "harmful", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "weapons" in out and out.strip().endswith("prompts")
    assert main(["judge", "I’m sorry, I can’t help with that."]) == 0
    assert json.loads(capsys.readouterr().out)["refused"] is True


def test_console_script_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "explorer.cli.main", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--max-new-tokens" in result.stdout and "--model" in result.stdout


@pytest.mark.integration
def test_generate_on_the_offline_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "What is the capital of France?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # "default" is the safety-tuned model once `explorer build` made it, the base model before
    assert out["model"] in ("smollm2-135m-instruct", "smollm2-135m-instruct-safety")
    assert "Paris" in out["results"][0]["completion"]


def test_sae_info_checks_an_sae_against_a_model(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import tiny_sae

    good, bad = tmp_path / "good", tmp_path / "bad"
    tiny_sae(d_in=64).save_model(good)
    tiny_sae(d_in=32).save_model(bad)
    assert main(["sae", "info", str(good), "--model", str(tiny_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["compatible_with"] == tiny_dir.name and info["hook"] == "blocks.2.hook_resid_pre"
    assert main(["sae", "info", str(bad), "--model", str(tiny_dir)]) == 2
    assert "d_in 32 but model" in capsys.readouterr().err


def test_sae_report_without_saes_says_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    assert main(["sae", "report"]) == 2
    assert "run `explorer sae train`" in capsys.readouterr().err


def _subcommand(
    parser: argparse.ArgumentParser, words: list[str]
) -> tuple[argparse.ArgumentParser, list[str]]:
    """The deepest subparser that `words` name, and the words left over."""
    while words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or words[0] not in actions[0].choices:
            break
        parser, words = actions[0].choices[words[0]], words[1:]
    return parser, words


def test_every_command_the_library_tells_users_to_run_exists() -> None:
    """Error messages and docs name commands like `explorer refusal --force`: each must parse."""
    mentions = set()
    for path in [*sorted((ROOT / "explorer").rglob("*.py")), *sorted((ROOT / "pages").glob("*.py"))]:
        mentions.update(re.findall(r"`explorer ([a-z][^`]*)`", path.read_text(encoding="utf-8")))
    assert len(mentions) > 10
    parser = build_parser()
    wrong = []
    for mention in sorted(mentions):
        for alternative in re.split(r"\s*\|\s*", mention):  # `explorer info | prompts` names two commands
            words = alternative.replace("{", "").split()
            sub, rest = _subcommand(parser, [w.split(",")[0] for w in words])
            options = {s for a in sub._actions for s in a.option_strings}
            unknown = [w for w in rest if w.startswith("--") and w not in options]
            if sub is parser or unknown:
                wrong.append(f"`explorer {mention}`: {unknown or 'no such command'}")
    assert wrong == []
