"""Loading SAEs through SAELens (local directories or registry releases) and checking them against a model.

Every SAELens architecture (standard, gated, jumprelu, topk, batchtopk, ...) loads through SAELens's own
classes; encode and decode are never re-implemented here. What this module adds is the check that an SAE
fits the model it will be attached to, before anything runs: its hook must be one of the model's
residual hooks, its `d_in` the model's `d_model`, and its dtype and device the model's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from safetensors import SafetensorError

from explorer.core.hooks import HookError, parse_hook_name
from explorer.core.models import LoadedModel
from explorer.core.paths import cache_dir

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
PROVENANCE_FILE = "provenance.json"
UNIT_NORM_TOLERANCE = 1e-3
# Architectures whose activation acts on each latent alone, so a subset of latents can be encoded from
# its own encoder columns; TopK-style activations compare every latent with the others and cannot.
ELEMENTWISE_ARCHITECTURES = ("standard", "jumprelu", "gated")
# Per-latent parameters besides W_enc (columns) and W_dec (rows); everything else (b_dec, scaling) is kept.
_PER_LATENT_VECTORS = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag")


class SAEError(ValueError):
    """An SAE that cannot be loaded or does not fit the model; the message says which and why."""


@dataclass(frozen=True)
class LoadedSAE:
    """An SAELens SAE with what the explorer needs to know about it.

    Attributes:
        sae: the SAELens module (never mutated after loading; derive new tensors instead).
        hook: residual hook name it reads and writes, in TransformerLens form.
        name: short display name.
        source: the directory or `release:sae_id` it came from.
        fingerprint: sha256 prefix of the weights, recorded by caches built from this SAE.
        decoder_unit_norm: True when every decoder row has norm 1 (within 1e-3), so a latent's activation
            equals the length of its contribution to the residual stream.
    """

    sae: SAE[Any]
    hook: str
    name: str
    source: str
    fingerprint: str
    decoder_unit_norm: bool

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    def decoder_norms(self) -> torch.Tensor:
        """[d_sae] the L2 norm of each decoder row."""
        with torch.no_grad():
            return self.sae.W_dec.detach().float().norm(dim=-1)

    def describe(self) -> dict[str, Any]:
        norms = self.decoder_norms()
        return {
            "name": self.name,
            "source": self.source,
            "hook": self.hook,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.sae.dtype).removeprefix("torch."),
            "device": str(self.sae.device),
            "fingerprint": self.fingerprint,
            "decoder_unit_norm": self.decoder_unit_norm,
            "decoder_norm": {
                "min": float(norms.min()),
                "mean": float(norms.mean()),
                "max": float(norms.max()),
            },
            "model_name": self.sae.cfg.metadata.get("model_name"),
        }


def latent_encoder(sae: LoadedSAE, latents: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from inputs [n, d_in] to the activations [n, len(latents)] of `latents`, in that order.

    For elementwise architectures it runs SAELens's own `encode` on a copy of the SAE that holds only
    those latents (their encoder columns and per-latent biases), so steering a few latents of a wide SAE
    costs a few columns instead of the whole encoder. Other architectures (TopK, BatchTopK, ...) and any
    SAE whose parameters this cannot slice run the full encode and select the columns.
    """
    index = torch.tensor(list(latents), dtype=torch.long)
    sub = _sliced(sae, index) if sae.architecture in ELEMENTWISE_ARCHITECTURES else None
    if sub is not None:
        return sub.encode
    columns = index.to(sae.sae.device)
    return lambda x: sae.sae.encode(x)[..., columns]


def _sliced(sae: LoadedSAE, index: torch.Tensor) -> SAE[Any] | None:
    """A new SAE of the same class holding only the latents in `index`; None if it cannot be built."""
    sliced: dict[str, torch.Tensor] = {}
    for name, tensor in sae.sae.state_dict().items():
        if name == "W_enc":
            tensor = tensor[:, index]
        elif name == "W_dec" or name in _PER_LATENT_VECTORS:
            tensor = tensor[index]
        sliced[name] = tensor.detach().clone()
    try:
        with torch.random.fork_rng(devices=[]):  # the constructor's random init must not move the seed
            sub = type(sae.sae)(replace(sae.sae.cfg, d_sae=len(index)))
        sub.load_state_dict(sliced, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        log.debug("cannot slice %s (%s); encoding all latents", sae.name, e)
        return None
    return sub.to(sae.sae.device).eval()


def sae_root() -> Path:
    """Where the explorer's own SAEs are stored."""
    return cache_dir() / "saes"


def weights_fingerprint(sae: SAE[Any]) -> str:
    """sha256 prefix over the SAE's parameters (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


_HF_LAYER_OUTPUT = re.compile(r"^(?:model\.)?(?:language_model\.)?layers\.(\d+)$")


def residual_hook(name: str) -> str:
    """The explorer's hook name for an SAE's `hook_name`.

    TransformerLens names (`blocks.12.hook_resid_post`, what SAELens uses) pass through; Hugging Face
    module paths of a decoder layer (`model.layers.12`, whose output is the residual stream after
    layer 12) become `blocks.12.hook_resid_post`. Anything else (attention or MLP outputs, `hook_resid_mid`)
    is returned unchanged and rejected by `check_compatible`, since only residual hooks are supported.
    """
    match = _HF_LAYER_OUTPUT.match(name)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else name


def _hook_of(sae: SAE[Any], source: str) -> str:
    hook = sae.cfg.metadata.get("hook_name")
    if not hook:
        raise SAEError(f"SAE {source} has no hook_name in its metadata; cannot tell where it attaches")
    return residual_hook(str(hook))


def wrap_sae(sae: SAE[Any], source: str, name: str) -> LoadedSAE:
    """Wrap an SAELens SAE already in memory (e.g. just trained) with its hook, fingerprint and norms."""
    norms = sae.W_dec.detach().float().norm(dim=-1)
    unit = bool(((norms - 1).abs() <= UNIT_NORM_TOLERANCE).all())
    return LoadedSAE(sae.eval(), _hook_of(sae, source), name, source, weights_fingerprint(sae), unit)


def load_sae_dir(path: str | Path, *, device: str = "cpu", dtype: str | None = None) -> LoadedSAE:
    """Load an SAE saved in SAELens format (`cfg.json` + `sae_weights.safetensors`).

    Raises:
        SAEError: the directory or a file is missing, or a file is corrupt.
    """
    directory = Path(path)
    for file in (CFG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise SAEError(f"{directory} is not an SAELens SAE directory: {file} is missing")
    try:
        sae = SAE.load_from_disk(directory, device=device, dtype=dtype)
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise SAEError(f"SAE at {directory} is corrupt ({e}); delete it and rebuild or re-download") from e
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SAEError(f"SAE at {directory} could not be loaded by SAELens: {e}") from e
    return wrap_sae(sae, str(directory), directory.name)


def load_sae_release(release: str, sae_id: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
    """Load an SAE from the SAELens registry (downloads from the Hugging Face hub; needs network).

    Example: `load_sae_release("gemma-scope-2b-pt-res-canonical", "layer_15/width_16k/canonical")`.
    The release and id are checked against SAELens's registry first, so a typo fails offline too.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    registry = get_pretrained_saes_directory()
    if release not in registry:
        close = sorted(r for r in registry if release.split("-")[0] in r)[:8]
        raise SAEError(f"SAELens has no release {release!r}" + (f"; similar: {close}" if close else ""))
    ids = registry[release].saes_map
    if sae_id not in ids:
        raise SAEError(
            f"release {release!r} has no SAE {sae_id!r}; it has e.g. {sorted(ids)[:5]} ({len(ids)} in all)"
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except OSError as e:  # every hub error (offline, gated, HTTP, missing file) is an OSError subclass
        raise SAEError(
            f"could not download {release}:{sae_id} for {registry[release].model} "
            f"(offline or no access?): {e}"
        ) from e
    return wrap_sae(sae, f"{release}:{sae_id}", f"{release}:{sae_id}")


def load_sae(spec: str, *, device: str = "cpu", dtype: str | None = None) -> LoadedSAE:
    """Load an SAE from a spec: a directory, a name under `cache/saes/`, or `release:sae_id`.

    Raises:
        SAEError: the spec names nothing that exists, or the SAE is unreadable.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_sae_dir(path, device=device, dtype=dtype)
    if (sae_root() / spec).is_dir():
        return load_sae_dir(sae_root() / spec, device=device, dtype=dtype)
    if ":" in spec:
        release, sae_id = spec.split(":", 1)
        return load_sae_release(release, sae_id, device=device, dtype=dtype or "float32")
    known = sorted(p.name for p in sae_root().glob("*") if p.is_dir()) if sae_root().is_dir() else []
    raise SAEError(
        f"no SAE {spec!r}: not a directory, not one of the built SAEs {known}, and not release:sae_id"
    )


def load_sae_for(loaded: LoadedModel, spec: str) -> LoadedSAE:
    """Load an SAE on the model's device and dtype, and check that it fits the model."""
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    sae = load_sae(spec, device=str(loaded.device), dtype=dtype)
    check_compatible(sae, loaded)
    return sae


def check_compatible(sae: LoadedSAE, loaded: LoadedModel) -> None:
    """Raise SAEError unless the SAE can be attached to the model as is.

    Checks that the hook is a residual hook of this model, that `d_in` equals `d_model`, and that
    dtype and device match (a clash would fail, or silently cast, in the middle of a forward pass).
    """
    try:
        parse_hook_name(sae.hook, loaded.n_layers)
    except HookError as e:
        raise SAEError(
            f"SAE {sae.name} reads {sae.hook!r}, which model {loaded.name} does not have: {e}"
        ) from e
    if sae.d_in != loaded.d_model:
        raise SAEError(
            f"SAE {sae.name} has d_in {sae.d_in} but model {loaded.name} has d_model {loaded.d_model}; "
            "it was trained for another model"
        )
    model_dtype = next(loaded.model.parameters()).dtype
    if sae.sae.dtype != model_dtype:
        raise SAEError(
            f"SAE {sae.name} is {sae.sae.dtype} but the model is {model_dtype}; load it with dtype="
            f"{str(model_dtype).removeprefix('torch.')!r}"
        )
    if sae.sae.device.type != loaded.device.type:
        raise SAEError(f"SAE {sae.name} is on {sae.sae.device} but the model is on {loaded.device}")
    model_name = sae.sae.cfg.metadata.get("model_name")
    if model_name and model_name not in (loaded.name, getattr(loaded.config, "spec", None)):
        log.warning("SAE %s was trained on %s; attaching it to %s", sae.name, model_name, loaded.name)
