"""Stars, notes, lists and labels in the app, on the tiny workspace: a note written in one browser session
shows in another, the Latents table filters by list and searches notes, a list goes to steering at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.latents.notes import Label, UserNotes, user_db_path
from explorer.latents.table import COLUMN_TITLES
from explorer.ui.notes_widgets import SEND_LIST
from explorer.ui.state import MODEL_ENV, Q_LATENT, STEER_CLAMPS
from explorer.workspace import Workspace, load_workspace

ROOT = Path(__file__).resolve().parents[1]
LATENTS, DETAIL = "pages/latents.py", "pages/latent_detail.py"
LATENT_COL = COLUMN_TITLES["latent"]


@pytest.fixture(scope="module")
def workspace(app_cache: Path, tiny_dir: Path) -> Workspace:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(app_cache))
        return load_workspace(str(tiny_dir))


@pytest.fixture
def notes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_cache: Path, tiny_dir: Path, workspace: Workspace
) -> UserNotes:
    """The workspace's user database in a fresh user directory, and the app pointed at the tiny workspace."""
    monkeypatch.setenv(USER_ENV, str(tmp_path / "user"))
    monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    monkeypatch.chdir(ROOT)
    return UserNotes(user_db_path(workspace.loaded.name))


def session(page: str, query: dict[str, str] | None = None) -> AppTest:
    """A new browser session (its own session state) opened on `page`."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    app.run()
    app.switch_page(page)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, app.exception
    return app


def live_latents(workspace: Workspace, hook: str, n: int) -> list[int]:
    density = workspace.caches[hook].column("density")
    return [int(i) for i in (density > 0).nonzero().flatten()[:n]]


def shown_latents(app: AppTest) -> list[int]:
    assert not app.exception, app.exception
    return [int(i) for i in app.dataframe[0].value[LATENT_COL]]


def test_a_note_written_in_one_session_appears_in_another(notes: UserNotes, workspace: Workspace) -> None:
    hook = workspace.main
    assert hook is not None
    first = session(DETAIL, {Q_LATENT: "6"})
    next(t for t in first.text_area if t.label == "Note").input("Fires on «I cannot» openers")
    next(b for b in first.button if b.label == "Save note").click().run()
    next(t for t in first.toggle if t.label == "Star").set_value(True).run()
    next(t for t in first.text_input if t.label == "Your label").input("refusal opener")
    next(b for b in first.button if b.label == "Save label").click().run()
    next(t for t in first.text_input if t.label == "New list").input("refusal core")
    next(b for b in first.button if b.label == "Create list and add").click().run()
    assert not first.exception and not first.error

    second = session(DETAIL, {Q_LATENT: "6"})  # another browser session, after the writes
    assert next(t for t in second.text_area if t.label == "Note").value == "Fires on «I cannot» openers"
    assert next(t for t in second.toggle if t.label == "Star").value is True
    assert next(m for m in second.multiselect if m.label == "Lists").value == ["refusal core"]
    assert any("refusal opener" in m.value for m in second.markdown)
    assert notes.list_members("refusal core") == [(hook, 6)]

    next(t for t in second.toggle if t.label == "Star").set_value(False).run()  # and back again
    next(t for t in second.text_area if t.label == "Note").input("")
    next(b for b in second.button if b.label == "Save note").click().run()
    first.run()  # the first session's next rerun reads the database again
    assert next(t for t in first.toggle if t.label == "Star").value is False
    assert next(t for t in first.text_area if t.label == "Note").value == ""
    assert notes.note(hook, 6) is None and not notes.is_starred(hook, 6)


def test_automatic_labels_show_their_provenance_until_the_user_writes_one(
    notes: UserNotes, workspace: Workspace
) -> None:
    hook = workspace.main
    assert hook is not None
    notes.add_labels([Label(hook, 4, "weapon requests", "auto", "openai", "gpt-4o-mini", "v2", 0.82)])
    app = session(DETAIL, {Q_LATENT: "4"})
    shown = " ".join(m.value for m in app.markdown)
    assert "weapon requests" in shown and "gpt-4o-mini" in shown and "prompt v2" in shown and "0.82" in shown
    next(t for t in app.text_input if t.label == "Your label").input("mine")
    next(b for b in app.button if b.label == "Save label").click().run()
    assert any("**mine**" in m.value and "your label" in m.value for m in app.markdown)


def test_the_latents_table_filters_by_list_stars_and_searches_notes(
    notes: UserNotes, workspace: Workspace
) -> None:
    hook = workspace.main
    assert hook is not None
    a, b, c = live_latents(workspace, hook, 3)
    notes.create_list("refusal core")
    notes.add_to_list("refusal core", hook, [b, a])
    notes.star(hook, c)
    notes.set_note(hook, c, "the zebrafish latent")
    notes.set_label(hook, a, "Quokka detector")
    app = session(LATENTS)
    everything = shown_latents(app)
    assert {a, b, c} <= set(everything)

    next(s for s in app.selectbox if s.label == "List").set_value("refusal core").run()
    assert sorted(shown_latents(app)) == sorted([a, b])
    next(s for s in app.selectbox if s.label == "List").set_value(None).run()
    next(t for t in app.toggle if t.label == "Starred only").set_value(True).run()
    assert shown_latents(app) == [c]
    next(t for t in app.toggle if t.label == "Starred only").set_value(False).run()

    app.text_input[0].input("ZEBRAFISH").run()
    assert shown_latents(app) == [c]
    app.text_input[0].input("quokka").run()
    assert shown_latents(app) == [a]
    assert list(app.dataframe[0].value[COLUMN_TITLES["label"]]) == [
        "Quokka detector"
    ]  # the stored label shows


def test_a_whole_list_goes_to_the_steering_playground_in_one_click(
    notes: UserNotes, workspace: Workspace
) -> None:
    hook = workspace.main
    assert hook is not None
    other = next(h for h in workspace.saes if h != hook)
    a, b = live_latents(workspace, hook, 2)
    notes.create_list("harm detectors")
    notes.add_to_list("harm detectors", hook, [a, b])
    notes.add_to_list("harm detectors", other, 1)
    app = session(LATENTS)
    assert not any(x.label == SEND_LIST for x in app.button)  # only with a list chosen
    next(s for s in app.selectbox if s.label == "List").set_value("harm detectors").run()
    next(x for x in app.button if x.label == SEND_LIST).click().run()
    assert not app.exception
    picked = [(c["hook"], c["latent"]) for c in app.session_state[STEER_CLAMPS]]
    assert picked == [(hook, a), (hook, b), (other, 1)]
    assert any("3 latent(s)" in t.value for t in app.toast)
    next(x for x in app.button if x.label == SEND_LIST).click().run()
    assert len(app.session_state[STEER_CLAMPS]) == 3


def test_a_corrupt_database_is_an_error_and_the_pages_still_work(
    notes: UserNotes, workspace: Workspace
) -> None:
    db = notes.path
    db.unlink()
    db.write_bytes(b"garbage, not SQLite" * 100)
    app = session(DETAIL, {Q_LATENT: "2"})
    assert any("corrupt or not a notes database" in e.value for e in app.error)
    assert any(s.value.startswith("Latent 2") for s in app.subheader)  # the latent cache is untouched
    app = session(LATENTS)
    assert any("corrupt" in e.value for e in app.error)
    assert len(shown_latents(app)) > 0
    assert db.read_bytes() == b"garbage, not SQLite" * 100


def test_lists_import_on_the_latents_page_and_a_bad_file_imports_nothing(
    notes: UserNotes, workspace: Workspace
) -> None:
    hook = workspace.main
    assert hook is not None
    a, b = live_latents(workspace, hook, 2)
    app = session(LATENTS)
    bad = f"list,hook,latent\nimported,{hook},{a}\nimported,{hook},9999\n".encode()
    app.file_uploader[0].set_value(("lists.csv", bad, "text/csv")).run()
    next(x for x in app.button if x.label == "Import lists").click().run()
    assert any("line 3: latent 9999 is out of range" in e.value for e in app.error)
    assert notes.lists() == []

    good = f"list,hook,latent\nimported,{hook},{b}\nimported,{hook},{a}\n".encode()
    app.file_uploader[0].set_value(("lists.csv", good, "text/csv")).run()
    next(x for x in app.button if x.label == "Import lists").click().run()
    assert not app.exception and not app.error
    assert any("Imported 2 latent(s)" in s.value for s in app.success)
    assert notes.list_members("imported") == [(hook, b), (hook, a)]
    next(s for s in app.selectbox if s.label == "List").set_value("imported").run()
    assert sorted(shown_latents(app)) == sorted([a, b])
