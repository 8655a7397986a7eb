"""`explorer notes ...`: the stars, notes, lists and labels the app shows; bad input exits 2."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from explorer.cli.main import build_parser, main
from explorer.cli.notes import model_name
from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.latents.notes import UserNotes, user_db_path

HOOK = "blocks.2.hook_resid_pre"
MODEL = ["--model", "tiny-test"]
AT = [*MODEL, "--hook", HOOK]


@pytest.fixture(autouse=True)
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(USER_ENV, str(tmp_path / "user"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "user"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["notes", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_stars_notes_lists_and_labels_land_in_the_apps_database(capsys: pytest.CaptureFixture[str]) -> None:
    assert "3 starred" in run(capsys, "star", "3", "5", *AT)
    assert "already starred" in run(capsys, "star", "3", *AT)
    run(capsys, "unstar", "5", *AT)
    run(capsys, "note", "3", "Fires on refusal openers", *AT)
    run(capsys, "list-create", "refusal core", *MODEL)
    run(capsys, "list-add", "refusal core", "3", "blocks.3.hook_resid_pre:7", *AT)
    run(capsys, "label", "3", "refusal opener", *AT)

    notes = UserNotes(user_db_path("tiny-test"))  # what the app reads
    assert notes.starred(HOOK) == [3]
    assert notes.note(HOOK, 3).text == "Fires on refusal openers"  # pyright: ignore[reportOptionalMemberAccess]
    assert notes.list_members("refusal core") == [(HOOK, 3), ("blocks.3.hook_resid_pre", 7)]
    assert notes.label_for(HOOK, 3).source == "user"  # pyright: ignore[reportOptionalMemberAccess]

    shown = json.loads(run(capsys, "show", "3", *AT))
    assert (
        shown["starred"]
        and shown["note"] == "Fires on refusal openers"
        and shown["lists"] == ["refusal core"]
    )
    assert shown["label"]["text"] == "refusal opener"
    assert run(capsys, "note", "3", *AT) == "Fires on refusal openers\n"
    assert json.loads(run(capsys, "starred", *AT))["starred"] == [3]
    assert json.loads(run(capsys, "search", "OPENER", *AT))["latents"] == [3]
    assert run(capsys, "labels", *AT) == "3\tuser\trefusal opener\n"
    assert [b["size"] for b in json.loads(run(capsys, "lists", *MODEL))] == [2]
    run(capsys, "list-remove", "refusal core", "3", *AT)
    run(capsys, "list-rename", "refusal core", "core", *MODEL)
    assert json.loads(run(capsys, "list-show", "core", *MODEL))["latents"] == [
        {"hook": "blocks.3.hook_resid_pre", "latent": 7}
    ]
    run(capsys, "note", "3", "", *AT)
    run(capsys, "label", "3", "--clear", *AT)
    assert json.loads(run(capsys, "show", "3", *AT))["note"] is None
    run(capsys, "list-delete", "core", *MODEL)
    assert json.loads(run(capsys, "lists", *MODEL)) == []


def test_lists_export_and_import_through_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "list-create", "harm detectors", *MODEL)
    run(capsys, "list-add", "harm detectors", "4", "1", *AT)
    for suffix in ("json", "csv"):
        out = tmp_path / f"lists.{suffix}"
        run(capsys, "export", str(out), *MODEL)
        summary = json.loads(run(capsys, "import", str(out), "--model", "other-model"))
        assert summary["added"] == (2 if suffix == "json" else 0)
    assert UserNotes(user_db_path("other-model")).list_members("harm detectors") == [(HOOK, 4), (HOOK, 1)]
    assert (tmp_path / "lists.csv").read_text().splitlines() == [
        "list,hook,latent",
        f"harm detectors,{HOOK},4",
        f"harm detectors,{HOOK},1",
    ]


def test_the_default_hook_is_the_models_main_sae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = tmp_path / "cache" / "saes" / "tiny-test" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({"main": HOOK, "hooks": [HOOK]}))
    run(capsys, "star", "8", *MODEL)
    assert UserNotes(user_db_path("tiny-test")).starred(HOOK) == [8]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["star", "3", *MODEL], "no --hook given and no main SAE known"),
        (["star", "x3", *AT], "latent 'x3' is not a non-negative integer or HOOK:LATENT"),
        (["list-add", "missing", "3", *AT], "no list named 'missing'"),
        (["list-create", " ", *MODEL], "is empty"),
        (["export", "lists.txt", *MODEL], "use a .json or .csv file"),
        (["import", "/nowhere/lists.json", *MODEL], "cannot read /nowhere/lists.json"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["notes", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_import_exits_2_and_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "lists.csv"
    bad.write_text(f"list,hook,latent\nfine,{HOOK},1\nbroken,{HOOK},one\n")
    assert main(["notes", "import", str(bad), *MODEL]) == 2
    assert "line 3: latent 'one' is not a non-negative integer" in capsys.readouterr().err
    assert UserNotes(user_db_path("tiny-test")).lists() == []


def test_a_corrupt_database_exits_2_and_is_kept(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = user_db_path("tiny-test")
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database at all" * 40)
    assert main(["notes", "lists", *MODEL]) == 2
    assert "corrupt or not a notes database" in capsys.readouterr().err
    assert db.read_bytes() == b"not a database at all" * 40


def test_model_names_match_what_the_app_loads(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert model_name(str(model_dir)) == "my-model"
    assert model_name("path/to/SmolLM.Q4.gguf") == "SmolLM.Q4"
    assert model_name("google/gemma-2-2b-it") == "google/gemma-2-2b-it"
    assert model_name("default").startswith("smollm2-135m-instruct")


def test_the_readme_examples_parse() -> None:
    parser = build_parser()
    for line in (
        "notes star 3357 5 --hook blocks.23.hook_resid_pre",
        "notes note 3357 'Fires on the first token of a refusal'",
        "notes list-create 'refusal core'",
        "notes list-add 'refusal core' 3357 933 blocks.17.hook_resid_pre:199",
        "notes label 3357 'refusal opener'",
        "notes search refusal",
        "notes export lists.json",
        "notes import lists.csv --model smollm2-135m-instruct-safety",
    ):
        assert parser.parse_args(shlex.split(line)).notes_command == line.split()[1]
