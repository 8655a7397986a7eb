"""Stars, notes, lists and labels in the app: the Latent detail page's panel, the Latents page's list filter
and note/label search, sending a whole list to the steering playground, and list export and import.

Everything lives in the workspace's user database (`explorer.latents.notes`), never in session state, so a
note written in one browser session shows in every other one on its next rerun. Widgets whose value comes
from the database carry a digest of that value in their key: when the stored value changes (here or in
another session) the widget is created afresh with it instead of keeping a stale one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import streamlit as st

from explorer.latents.notes import Label, NotesError, UserNotes, user_db_path
from explorer.latents.notes_format import MAX_LABEL_CHARS, MAX_NOTE_CHARS, list_format
from explorer.latents.table import COLUMN_TITLES, LatentTable, Rows, search_mask
from explorer.ui.state import add_to_steering
from explorer.workspace import Workspace

SEND_LIST = "Send list to steering"
"""The label of the Latents page's button that picks every latent of the chosen list for the playground."""
STEERING_PAGE = "pages/steering.py"
_IMPORTED = "_lists_imported"
"""Session key: what the last import did, shown after the rerun that makes the new lists selectable."""


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_notes(path: str, inode: int) -> UserNotes:
    """One store per file and process (it opens a connection per operation, so sessions may share it);
    keyed by inode too, so a file moved aside is replaced by a fresh database."""
    return UserNotes(path)


def user_notes(workspace: Workspace, *, report: bool = True) -> UserNotes | None:
    """The workspace's user database, or None (after an `st.error` saying what is wrong with its file, if
    `report`; a page reports it once)."""
    try:
        path = user_db_path(workspace.loaded.name)
        return _open_notes(str(path), path.stat().st_ino if path.exists() else 0)
    except NotesError as e:
        if report:
            st.error(f"Stars, notes and lists are unavailable: {e}")
        return None


def _key(name: str, *state: object) -> str:
    return f"notes_{name}_{hashlib.sha1(repr(state).encode()).hexdigest()[:10]}"


def describe_label(label: Label) -> str:
    """A label's provenance in words: who wrote it, with what, its score and date."""
    day = label.created_at[:10]
    if label.source == "user":
        return f"your label, {day}"
    made_by = " ".join(v for v in (label.provider, label.model) if v) or "an automatic labeller"
    prompt = f", prompt {label.prompt_version}" if label.prompt_version else ""
    score = f", score {label.score:.2f}" if label.score is not None else ""
    return f"automatic label by {made_by}{prompt}{score}, {day}"


def notes_panel(workspace: Workspace, hook: str, latent: int) -> None:
    """The Latent detail page's star toggle, list membership, note editor and label, saved as they change."""
    notes = user_notes(workspace)
    if notes is None:
        return
    try:
        _panel(notes, hook, latent)
    except NotesError as e:
        st.error(str(e))


def _panel(notes: UserNotes, hook: str, latent: int) -> None:
    with st.container(border=True):
        top = st.columns([1, 4])
        starred = notes.is_starred(hook, latent)
        if top[0].toggle("Star", value=starred, key=_key("star", hook, latent, starred)) != starred:
            _ = notes.unstar(hook, latent) if starred else notes.star(hook, latent)
        label_slot = top[1].empty()  # filled last, so it shows a label saved in this run

        left, right = st.columns([3, 2])
        with right, st.form(_key("new_list", hook, latent), clear_on_submit=True, border=False):
            name = st.text_input("New list", placeholder="e.g. refusal core", max_chars=100)
            if st.form_submit_button("Create list and add", icon=":material/playlist_add:") and name.strip():
                notes.create_list(name, exist_ok=True)
                notes.add_to_list(name, hook, latent)
        member_of, names = notes.lists_of(hook, latent), [b.name for b in notes.lists()]
        with left:
            picked = st.multiselect(
                "Lists", names, default=member_of, key=_key("lists", hook, latent, member_of, names)
            )
        for name in set(picked) - set(member_of):
            notes.add_to_list(name, hook, latent)
        for name in set(member_of) - set(picked):
            notes.remove_from_list(name, hook, latent)

        note = notes.note(hook, latent)
        with st.form(_key("note", hook, latent, note), border=False):
            text = st.text_area(
                "Note",
                value=note.text if note else "",
                max_chars=MAX_NOTE_CHARS,
                placeholder="What this latent does, the evidence, what to try next",
            )
            if st.form_submit_button("Save note", icon=":material/save:"):
                notes.set_note(hook, latent, text)
                st.toast(f"Note on latent {latent} saved." if text.strip() else "Note deleted.")

        label = notes.label_for(hook, latent)
        own = label.text if label and label.source == "user" else ""
        with st.form(_key("label", hook, latent, own), border=False):
            cols = st.columns([4, 1, 1], vertical_alignment="bottom")
            text = cols[0].text_input("Your label", value=own, max_chars=MAX_LABEL_CHARS)
            if cols[1].form_submit_button("Save label") and text.strip():
                label = notes.set_label(hook, latent, text)
            if cols[2].form_submit_button("Clear label", disabled=not own):
                notes.remove_label(hook, latent)
                label = notes.label_for(hook, latent)
        if label is None:
            label_slot.caption("No stored label: write your own below, or run an automatic labeller.")
        else:
            label_slot.markdown(f"**{label.text}**  \n:gray[{describe_label(label)}]")


@dataclass(frozen=True)
class NotesFilter:
    """What the Latents page's list and star filters and the search picked, for one SAE.

    Attributes:
        list_name: the chosen list, or None for every latent.
        members: the chosen list's latents (of any SAE), in order; empty without a list.
        keep: the latents of this SAE the list and star filters let through; None lets every latent through.
        found: latents of this SAE whose note or label contains the search text.
        starred: the starred latents of this SAE.
        labels: latent -> the label shown for it.
    """

    list_name: str | None
    members: tuple[tuple[str, int], ...]
    keep: frozenset[int] | None
    found: frozenset[int]
    starred: frozenset[int]
    labels: dict[int, str]


def notes_filter(workspace: Workspace, hook: str, search: str) -> NotesFilter:
    """The list selectbox and "Starred only" toggle of the Latents page, with what they and `search` pick."""
    nothing = NotesFilter(None, (), None, frozenset(), frozenset(), {})
    notes = user_notes(workspace)
    if notes is None:
        return nothing
    try:
        names = [b.name for b in notes.lists()]
        cols = st.columns([3, 2], vertical_alignment="bottom")
        list_name = cols[0].selectbox(
            "List",
            [None, *names],
            format_func=lambda n: "All latents" if n is None else n,
            key="latents_list",
        )
        starred_only = cols[1].toggle("Starred only", key="latents_starred")
        members = tuple(notes.list_members(list_name)) if list_name else ()
        starred = frozenset(notes.starred(hook))
        keep = frozenset(i for h, i in members if h == hook) if list_name else None
        if starred_only:
            keep = starred if keep is None else keep & starred
        labels = {i: b.text for i, b in notes.labels(hook).items()}
        return NotesFilter(list_name, members, keep, frozenset(notes.search(hook, search)), starred, labels)
    except NotesError as e:
        st.error(str(e))
        return nothing


def narrow_rows(table: LatentTable, rows: Rows, search: str, chosen: NotesFilter) -> Rows:
    """The `rows` (table positions) the list and star filters keep and that match `search` in their token
    text (top logits, top example) or in their note or label (vectorised: one mask per filter)."""
    latents = table.latent[rows]
    keep = np.ones(len(rows), dtype=bool)
    if chosen.keep is not None:
        keep &= np.isin(latents, np.fromiter(chosen.keep, dtype=np.int64, count=len(chosen.keep)))
    if search.strip():
        found = np.fromiter(chosen.found, dtype=np.int64, count=len(chosen.found))
        keep &= search_mask(table, search)[rows] | np.isin(latents, found)
    return rows[keep]


def notes_columns(table: LatentTable, rows: Rows, chosen: NotesFilter) -> dict[str, list[bool] | list[str]]:
    """The chosen rows' "starred" column, and their label column with each stored label (the user's, else
    the best automatic one) in place of the build's heuristic label. Pass one page of rows."""
    latents, labels = table.latent[rows].tolist(), table.label[rows].tolist()
    return {
        COLUMN_TITLES["label"]: [
            chosen.labels.get(i) or label for i, label in zip(latents, labels, strict=True)
        ],
        "starred": [i in chosen.starred for i in latents],
    }


def send_list_button(workspace: Workspace, chosen: NotesFilter) -> None:
    """With a list chosen, a button that picks every latent of it for the steering playground at once."""
    if chosen.list_name is None:
        return
    usable = [(h, i) for h, i in chosen.members if h in workspace.saes and i < workspace.saes[h].d_sae]
    if not st.button(SEND_LIST, icon=":material/tune:", disabled=not usable, key="latents_send_list"):
        return
    added = sum(add_to_steering(h, i) for h, i in usable)
    st.toast(
        f"{added} latent(s) of {chosen.list_name!r} added to the steering playground"
        + (f"; {len(usable) - added} were already there." if added < len(usable) else "."),
        icon=":material/check_circle:",
    )
    if len(usable) < len(chosen.members):
        st.warning(
            f"{len(chosen.members) - len(usable)} latent(s) of the list are not in this workspace's SAEs."
        )
    st.page_link(STEERING_PAGE, label="Open the steering playground", icon=":material/tune:")


def lists_exchange(workspace: Workspace) -> None:
    """An expander to download every list as JSON or CSV and to merge lists from such a file."""
    notes = user_notes(workspace, report=False)
    if notes is None:
        return
    with st.expander("Export or import lists", icon=":material/import_export:"):
        if done := st.session_state.pop(_IMPORTED, None):
            st.success(done)
        try:
            cols = st.columns(2)
            for col, fmt in zip(cols, ("json", "csv"), strict=True):
                col.download_button(
                    f"Download lists ({fmt.upper()})",
                    notes.export_lists(fmt),
                    file_name=f"{workspace.loaded.name.replace('/', '_')}-lists.{fmt}",
                    mime="application/json" if fmt == "json" else "text/csv",
                    icon=":material/download:",
                )
            upload = st.file_uploader("Merge lists from a JSON or CSV file", type=["json", "csv"])
            if upload is not None and st.button("Import lists", icon=":material/upload:"):
                try:
                    text = upload.getvalue().decode("utf-8")
                except UnicodeDecodeError as e:
                    raise NotesError(f"{upload.name} is not UTF-8 text ({e})") from e
                counts = {hook: sae.d_sae for hook, sae in workspace.saes.items()}
                summary = notes.import_lists(text, list_format(upload.name), counts)
                st.session_state[_IMPORTED] = (
                    f"Imported {summary.added} latent(s): new lists {list(summary.created) or 'none'}, "
                    f"extended {list(summary.extended) or 'none'}."
                )
                st.rerun()  # so the list filter above offers the new lists
        except NotesError as e:
            st.error(str(e))
