"""Workspace manifests: which model, SAEs, latent caches and refusal direction make up a workspace.

A workspace is a chat model with everything built for it: its refusal direction, its corpus, the latent
caches of its SAEs. `explorer build` writes the manifest of the offline default (the workspace `default`);
`explorer build --model SPEC --sae SAE` one per model, at `<cache>/workspaces/<name>/workspace.json`.
Paths inside the cache root are stored relative to it, so a cache root copied from a GPU box opens as is.
Commands and the app find a workspace by its name, its model spec or its model's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from explorer.core.models import ORGANISM_NAME, ModelConfig, ModelError, is_complete_model_dir, organism_dir
from explorer.core.paths import cache_dir, write_json_atomic
from explorer.latents.schema import latent_cache_dir
from explorer.refusal.direction import SELECTION_FILE, refusal_dir
from explorer.saes.build import read_index, sae_dir
from explorer.saes.corpus import corpus_dir
from explorer.saes.loading import SAEError

WORKSPACES_DIR = "workspaces"
MANIFEST_FILE = "workspace.json"
DEFAULT_WORKSPACE = "default"
WORKSPACE_ENV = "EXPLORER_WORKSPACE"
"""A workspace directory or manifest file the app opens first (it may live outside the cache root)."""
DEVICE_ENV, DTYPE_ENV = "EXPLORER_DEVICE", "EXPLORER_DTYPE"
"""Override the device and dtype a workspace's manifest names (e.g. browse a GPU build on a laptop)."""
MANIFEST_VERSION = 1


class WorkspaceError(ValueError):
    """A workspace that does not exist or whose manifest is corrupt; the message says what to run."""


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of a workspace.

    Attributes:
        spec: how to load it (a directory, relative to the cache root when inside it, or release:sae_id).
        cache: its latent cache directory (relative to the cache root when inside it).
    """

    spec: str
    hook: str
    name: str
    d_sae: int
    fingerprint: str
    cache: str


@dataclass(frozen=True)
class Manifest:
    """What a workspace holds and where.

    Attributes:
        name: the workspace's name (its directory under `workspaces/`).
        model: how the model was loaded for the build (spec, device, dtype, ...).
        model_name: the name its per-model directories (refusal, corpus, latents) are stored under.
        refusal: the direction's directory, location, position and whether it passed the behavioural
            filters (`validated`); no location when the workspace has no direction.
        corpus: the corpus directory and fingerprint.
        root: the cache root the manifest's relative paths start from (not stored).
    """

    name: str
    model: ModelConfig
    model_name: str
    model_fingerprint: str
    saes: tuple[SAEEntry, ...]
    main: str | None
    refusal: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    built: str = ""
    stages: dict[str, Any] = field(default_factory=dict)
    root: Path = field(default_factory=cache_dir, compare=False)

    def path(self, stored: str) -> Path:
        """A stored path made absolute against the workspace's cache root."""
        return Path(stored) if Path(stored).is_absolute() else self.root / stored

    def sae_spec(self, entry: SAEEntry) -> str:
        """The entry's SAE spec, with a relative directory made absolute."""
        return str(self.path(entry.spec)) if self.path(entry.spec).is_dir() else entry.spec

    def model_config(self) -> ModelConfig:
        """The model config, with `$EXPLORER_DEVICE`/`$EXPLORER_DTYPE` applied, and CUDA replaced by the
        CPU where this machine has none (the caches match, only slower)."""
        device = os.environ.get(DEVICE_ENV) or self.model.device
        dtype = os.environ.get(DTYPE_ENV) or self.model.dtype
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        try:
            return replace(self.model, device=device, dtype=dtype)  # pyright: ignore[reportArgumentType]
        except ModelError as e:
            raise WorkspaceError(f"{DEVICE_ENV}/{DTYPE_ENV}: {e}") from e

    @property
    def validated(self) -> bool:
        """False when the refusal direction did not pass the behavioural filters (or there is none)."""
        return bool(self.refusal.get("validated", False))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        data["model"] = self.model.to_dict()
        return {"version": MANIFEST_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path) -> Manifest:
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["model"] = ModelConfig.from_dict(fields["model"])
        fields["saes"] = tuple(SAEEntry(**entry) for entry in fields["saes"])
        return cls(**fields, root=root)


def relative(path: Path | str, root: Path | None = None) -> str:
    """`path` relative to the cache root when it lies inside it, else absolute."""
    root = (root or cache_dir()).resolve()
    resolved = Path(path).expanduser().resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def stored_spec(spec: str) -> str:
    """An SAE spec as a manifest stores it: a directory relative to the cache root (absolute outside it),
    a registry id (`release:sae_id`) as is."""
    return relative(spec) if Path(spec).expanduser().is_dir() else spec


def canonical(model: ModelConfig) -> ModelConfig:
    """The config with a local model path made absolute, so the manifest finds it from any directory."""
    path = Path(model.spec).expanduser()
    return replace(model, spec=str(path.resolve())) if path.exists() else model


def workspace_name(model_name: str) -> str:
    """A directory-safe workspace name for a model name (hub ids lose their slash)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", model_name).strip("_") or "workspace"


def manifest_path(name: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / WORKSPACES_DIR / name / MANIFEST_FILE


def write_manifest(manifest: Manifest) -> Path:
    """Write the manifest atomically under its cache root; returns its path."""
    path = manifest_path(manifest.name, manifest.root)
    write_json_atomic(path, manifest.to_dict())
    return path


def read_manifest(path: Path) -> Manifest:
    """Read a manifest from its file or its workspace directory.

    Raises:
        WorkspaceError: the file is missing or corrupt.
    """
    path = Path(path).expanduser()
    file = path / MANIFEST_FILE if path.is_dir() else path
    if not file.is_file():
        raise WorkspaceError(f"no workspace manifest at {file}; build one with `explorer build --model ...`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        file = file.resolve()
        in_root = file.parents[1].name == WORKSPACES_DIR
        return Manifest.from_dict(data, root=file.parents[2] if in_root else cache_dir())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise WorkspaceError(f"{file} is corrupt ({e}); rebuild it with `explorer build`") from e


def default_manifest() -> Manifest:
    """The offline default's manifest, derived from what its build stages wrote under the cache root.

    Raises:
        WorkspaceError: the default build has not made its model, SAEs and caches yet.
    """
    root = cache_dir()
    if not is_complete_model_dir(organism_dir()):
        raise WorkspaceError("the offline default is not built yet: run `explorer build` (or `make demo`)")
    try:
        index = read_index(ORGANISM_NAME)
    except SAEError as e:
        raise WorkspaceError(f"the offline default has no SAEs yet ({e})") from e
    entries, fingerprint = [], ""
    for hook in index["hooks"]:
        cache = latent_cache_dir(ORGANISM_NAME, hook)
        try:
            built = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            built = {}
        fingerprint = built.get("model_fingerprint", fingerprint)
        entries.append(
            SAEEntry(
                relative(sae_dir(ORGANISM_NAME, hook), root),
                hook,
                hook,
                int(built.get("sae", {}).get("d_sae", 0)),
                built.get("sae_fingerprint", ""),
                relative(cache, root),
            )
        )
    return Manifest(
        DEFAULT_WORKSPACE,
        ModelConfig(spec=ORGANISM_NAME),
        ORGANISM_NAME,
        fingerprint,
        tuple(entries),
        index["main"],
        refusal=refusal_summary(ORGANISM_NAME),
        corpus={"path": relative(corpus_dir(ORGANISM_NAME), root)},
        built=_build_time(root),
        root=root,
    )


def refusal_summary(model_name: str) -> dict[str, Any]:
    """The stored direction's directory, location, position and validation (only the directory when
    there is no direction yet)."""
    directory = refusal_dir(model_name)
    try:
        selection = json.loads((directory / SELECTION_FILE).read_text(encoding="utf-8"))
        chosen = selection["selected"]
    except (OSError, json.JSONDecodeError, KeyError):
        return {"path": relative(directory)}
    return {
        "path": relative(directory),
        "location": chosen["location"],
        "position": chosen["position"],
        "validated": selection.get("validated", True),
        **({"unvalidated": selection["unvalidated"]["rule"]} if "unvalidated" in selection else {}),
    }


def _build_time(root: Path) -> str:
    try:
        return json.loads((root / "build.json").read_text(encoding="utf-8")).get("finished", "")
    except (OSError, json.JSONDecodeError):
        return ""


def list_workspaces() -> tuple[list[Manifest], list[str]]:
    """Every workspace under the cache root (the default first, derived if the build wrote no manifest),
    and the problems of those that could not be read."""
    root = cache_dir()
    found: dict[str, Manifest] = {}
    problems: list[str] = []
    for file in sorted((root / WORKSPACES_DIR).glob(f"*/{MANIFEST_FILE}")):
        try:
            manifest = read_manifest(file)
            found[manifest.name] = manifest
        except WorkspaceError as e:
            problems.append(str(e))
    if DEFAULT_WORKSPACE not in found:
        with contextlib.suppress(WorkspaceError):  # no default built yet: not a problem to report
            found[DEFAULT_WORKSPACE] = default_manifest()
    ordered = sorted(found.values(), key=lambda m: (m.name != DEFAULT_WORKSPACE, m.name))
    return ordered, problems


def find_workspace(model: str) -> Manifest:
    """The workspace a `--model` value names: a workspace name, a manifest path, the model spec it was
    built from, or its model's name ("default" is the offline default).

    Raises:
        WorkspaceError: none matches (the message lists those that exist).
    """
    model = model.strip()
    if model.endswith(MANIFEST_FILE) or (Path(model).expanduser() / MANIFEST_FILE).is_file():
        return read_manifest(Path(model))
    workspaces, problems = list_workspaces()
    resolved = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    aliases = {DEFAULT_WORKSPACE: {DEFAULT_WORKSPACE, ORGANISM_NAME}}
    for manifest in workspaces:
        names = {manifest.name, manifest.model_name, manifest.model.spec, *aliases.get(manifest.name, ())}
        if model in names or resolved in names:
            return manifest
    known = ", ".join(f"{m.name} ({m.model.spec})" for m in workspaces) or "none"
    raise WorkspaceError(
        f"no workspace for {model!r}: build it with `explorer build --model {model} --sae SAE`. "
        f"Workspaces: {known}." + (f" Unreadable: {'; '.join(problems)}" if problems else "")
    )


def disk_size(manifest: Manifest) -> int:
    """Bytes on disk of the workspace's own directories: refusal direction, corpus and latent caches
    (not the model, which may be shared or on the hub, nor stored SAE training activations)."""
    directories = [
        manifest.path(part["path"]) for part in (manifest.refusal, manifest.corpus) if "path" in part
    ]
    directories += [manifest.path(entry.cache) for entry in manifest.saes]
    return sum(f.stat().st_size for d in directories if d.is_dir() for f in d.rglob("*") if f.is_file())
