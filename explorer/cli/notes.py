"""`explorer notes ...`: stars, notes, named lists and labels of latents, in the workspace's user database."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.options import emit, main_hook

if TYPE_CHECKING:
    from explorer.latents.notes import UserNotes


def model_name(spec: str) -> str:
    """The workspace name a model spec loads as (what the app's user database is named after), without
    loading the model: 'default', a model directory, a .gguf file, or a model name or hub id as is."""
    from explorer.core.models import DEFAULT_NAME, ORGANISM_NAME, is_complete_model_dir, organism_dir

    if spec == "default":
        return ORGANISM_NAME if is_complete_model_dir(organism_dir()) else DEFAULT_NAME
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        return path.stem
    if path.is_dir():
        return path.resolve().name
    return spec


def _store(args: argparse.Namespace) -> UserNotes:
    from explorer.latents.notes import UserNotes, user_db_path

    return UserNotes(user_db_path(model_name(args.model)))


def _hook(args: argparse.Namespace) -> str:
    """`--hook`, else the model's main SAE (the refusal layer's for the default)."""
    return args.hook or main_hook(model_name(args.model))


def _refs(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The LATENT arguments as (hook, latent): `N` is a latent of `--hook`, `HOOK:N` names its SAE."""
    refs = []
    for item in args.latents:
        hook, _, latent = item.rpartition(":")
        if not latent.strip().isdigit():
            raise ValueError(f"latent {item!r} is not a non-negative integer or HOOK:LATENT")
        refs.append((hook or _hook(args), int(latent)))
    return refs


def cmd_star(args: argparse.Namespace) -> int:
    notes = _store(args)
    for hook, latent in _refs(args):
        if args.unstar:
            said = "unstarred" if notes.unstar(hook, latent) else "was not starred"
        else:
            said = "starred" if notes.star(hook, latent) else "already starred"
        sys.stdout.write(f"{hook}:{latent} {said}\n")
    return 0


def cmd_starred(args: argparse.Namespace) -> int:
    hook = _hook(args)
    emit({"hook": hook, "starred": _store(args).starred(hook)})
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    notes, hook = _store(args), _hook(args)
    if args.text is not None:
        saved = notes.set_note(hook, args.latent, args.text)
        sys.stdout.write(f"{hook}:{args.latent} note {'saved' if saved else 'deleted'}\n")
        return 0
    note = notes.note(hook, args.latent)
    sys.stdout.write(f"{note.text}\n" if note else "")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    notes, hook = _store(args), _hook(args)
    note, label = notes.note(hook, args.latent), notes.label_for(hook, args.latent)
    emit(
        {
            "hook": hook,
            "latent": args.latent,
            "starred": notes.is_starred(hook, args.latent),
            "note": note.text if note else None,
            "lists": notes.lists_of(hook, args.latent),
            "label": asdict(label) if label else None,
        }
    )
    return 0


def cmd_lists(args: argparse.Namespace) -> int:
    emit([asdict(b) for b in _store(args).lists()])
    return 0


def cmd_list_edit(args: argparse.Namespace) -> int:
    notes, command = _store(args), args.notes_command
    if command in ("list-add", "list-remove"):
        change = notes.add_to_list if command == "list-add" else notes.remove_from_list
        n = sum(change(args.name, hook, latent) for hook, latent in _refs(args))
        sys.stdout.write(f"{args.name}: {n} latent(s) {'added' if command == 'list-add' else 'removed'}\n")
        return 0
    if command == "list-create":
        notes.create_list(args.name)
    elif command == "list-delete":
        notes.delete_list(args.name)
    else:
        notes.rename_list(args.name, args.new_name)
    to = f" to {args.new_name!r}" if command == "list-rename" else ""
    sys.stdout.write(f"{command.removeprefix('list-')}d list {args.name!r}{to}\n")
    return 0


def cmd_list_show(args: argparse.Namespace) -> int:
    members = _store(args).list_members(args.name)
    emit({"name": args.name, "latents": [{"hook": h, "latent": i} for h, i in members]})
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    notes, hook = _store(args), _hook(args)
    if args.clear:
        removed = notes.remove_label(hook, args.latent)
        sys.stdout.write(f"{hook}:{args.latent} {'label removed' if removed else 'had no label of yours'}\n")
    elif args.text is not None:
        notes.set_label(hook, args.latent, args.text)
        sys.stdout.write(f"{hook}:{args.latent} labelled {args.text.strip()!r}\n")
    else:
        emit([asdict(b) for b in notes.label_history(hook, args.latent)])
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    hook = _hook(args)
    for latent, label in _store(args).labels(hook).items():
        sys.stdout.write(f"{latent}\t{label.source}\t{label.text}\n")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    hook = _hook(args)
    emit({"hook": hook, "text": args.text, "latents": _store(args).search(hook, args.text)})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from explorer.core.paths import write_text_atomic
    from explorer.latents.notes_format import list_format

    text = _store(args).export_lists(list_format(args.out, args.format), args.list)
    write_text_atomic(Path(args.out), text)
    sys.stdout.write(f"{args.out}\n")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from explorer.latents.notes_format import NotesError, list_format

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NotesError(f"cannot read {path}: {e}") from e
    summary = _store(args).import_lists(text, list_format(path, args.format))
    emit(asdict(summary))
    return 0


def add_notes_parser(sub: Any) -> None:
    """Register `explorer notes {star,unstar,starred,note,show,lists,list-*,label,labels,search,export,
    import}` on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default="default",
        help="the workspace: 'default', a model name as the app shows it, a model directory or a hub id",
    )
    common.add_argument("--hook", help="SAE hook of bare LATENT numbers (default: the model's main SAE)")
    latents = argparse.ArgumentParser(add_help=False)
    latents.add_argument("latents", nargs="+", metavar="LATENT", help="N (a latent of --hook) or HOOK:N")

    notes = sub.add_parser("notes", help="star latents, write notes, keep named lists, label latents")
    nsub = notes.add_subparsers(dest="notes_command", required=True, metavar="NOTES_COMMAND")

    def add(name: str, func: Any, what: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p = nsub.add_parser(name, help=what, parents=[common, *parents])
        p.set_defaults(func=func)
        return p

    add("star", cmd_star, "star latents", latents).set_defaults(unstar=False)
    add("unstar", cmd_star, "remove latents' stars", latents).set_defaults(unstar=True)
    add("starred", cmd_starred, "the starred latents of an SAE")
    p = add("note", cmd_note, "show a latent's note, or write it (an empty TEXT deletes it)")
    p.add_argument("latent", type=int)
    p.add_argument("text", nargs="?", metavar="TEXT")
    add("show", cmd_show, "a latent's star, note, lists and label").add_argument("latent", type=int)
    add("lists", cmd_lists, "every list with its size")
    for name, what in (("list-create", "create an empty list"), ("list-delete", "delete a list")):
        add(name, cmd_list_edit, what).add_argument("name", metavar="NAME")
    p = add("list-rename", cmd_list_edit, "rename a list")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEW_NAME")
    for name, what in (
        ("list-add", "append latents to a list"),
        ("list-remove", "remove latents from a list"),
    ):
        p = nsub.add_parser(name, help=what, parents=[common])
        p.add_argument("name", metavar="NAME")
        p.add_argument("latents", nargs="+", metavar="LATENT", help="N (a latent of --hook) or HOOK:N")
        p.set_defaults(func=cmd_list_edit)
    add("list-show", cmd_list_show, "a list's latents in order").add_argument("name", metavar="NAME")
    p = add("label", cmd_label, "a latent's labels, or set your own label (it wins over automatic ones)")
    p.add_argument("latent", type=int)
    p.add_argument("text", nargs="?", metavar="TEXT")
    p.add_argument("--clear", action="store_true", help="remove your own label")
    add("labels", cmd_labels, "the label shown for every labelled latent of an SAE")
    add("search", cmd_search, "latents whose note or label contains TEXT").add_argument(
        "text", metavar="TEXT"
    )
    p = add("export", cmd_export, "write lists to a JSON or CSV file")
    p.add_argument("out", metavar="FILE", help="a .json or .csv file (or give --format)")
    p.add_argument("--format", choices=["json", "csv"])
    p.add_argument("--list", action="append", metavar="NAME", help="export only this list (repeatable)")
    p = add("import", cmd_import, "merge lists from a JSON or CSV file (nothing is imported on any error)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=["json", "csv"])
