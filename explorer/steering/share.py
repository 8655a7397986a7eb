"""Share links and presets for the steering playground: its setup as versioned, URL-safe JSON."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from explorer.core.generation import SamplingConfig
from explorer.steering.spec import SteeringError, SteeringSpec

SHARE_VERSION = 1
"""Version of the share-link payload; a link from a newer explorer is refused, not misread."""
MAX_LINK_CHARS = 200_000
"""Longest `spec` query value accepted (a long chat is a few kB; this stops runaway input)."""
MAX_SEED = 2**32 - 1
ROLES = ("system", "user", "assistant")
_INT_FIELDS = ("max_new_tokens", "seed")


class ShareError(ValueError):
    """A share link or preset that cannot be read; the message says what is wrong with it."""


@dataclass(frozen=True)
class PlaygroundSetup:
    """Everything the steering playground needs to reproduce a run.

    Attributes:
        spec: the steering of the steered column.
        sampling: decoding settings (seed included), shared by both columns.
        prompt: the prompt box's text (the next user turn).
        chat: the earlier turns of a multi-turn chat ({"role", "content"} messages), as the default
            column had them (its own replies).
        steered_chat: the steered column's earlier turns (the same user turns, its own replies); empty
            when the columns' histories are the same, as in links written before each column kept its own.
    """

    spec: SteeringSpec = field(default_factory=SteeringSpec)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: str = ""
    chat: tuple[dict[str, str], ...] = ()
    steered_chat: tuple[dict[str, str], ...] = ()

    @property
    def steered_history(self) -> tuple[dict[str, str], ...]:
        """The steered column's conversation: `steered_chat`, or `chat` where that is empty."""
        return self.steered_chat or self.chat

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SHARE_VERSION,
            "spec": self.spec.to_dict(),
            "sampling": self.sampling.to_dict(),
            "prompt": self.prompt,
            "chat": [dict(m) for m in self.chat],
            **({"steered_chat": [dict(m) for m in self.steered_chat]} if self.steered_chat else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> PlaygroundSetup:
        """Rebuild a setup from `to_dict` output, checking every field.

        Raises:
            ShareError: not an object, a newer version, or a malformed spec, sampling, prompt or chat.
        """
        if not isinstance(data, Mapping):
            raise ShareError(f"expected a JSON object, got {type(data).__name__}")
        _check_version(data.get("version"), "share link")
        spec = data.get("spec", {})
        if not isinstance(spec, Mapping):
            raise ShareError(f"'spec' must be an object, got {type(spec).__name__}")
        prompt = data.get("prompt", "")
        if not isinstance(prompt, str):
            raise ShareError(f"'prompt' must be text, got {type(prompt).__name__}")
        return cls(
            read_spec(spec),
            read_sampling(data.get("sampling") or {}),
            prompt,
            read_chat(data.get("chat") or []),
            read_chat(data.get("steered_chat") or [], "steered_chat"),
        )


def _check_version(version: Any, what: str) -> None:
    if version is None:
        raise ShareError(f"{what} has no 'version'")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ShareError(f"{what} version {version!r} is not a positive integer")
    if version > SHARE_VERSION:
        raise ShareError(
            f"{what} version {version} is newer than this explorer reads ({SHARE_VERSION}); upgrade it"
        )


def read_spec(data: Mapping[str, Any]) -> SteeringSpec:
    """A steering spec from its dict, with every error as a `ShareError`."""
    try:
        spec = SteeringSpec.from_dict(data)
    except (SteeringError, TypeError, ValueError, AttributeError) as e:
        raise ShareError(f"steering spec: {e}") from e
    hooks = [c.hook for c in spec.clamps] + ([spec.trigger.hook] if spec.trigger else [])
    for hook in hooks:
        if not isinstance(hook, str):
            raise ShareError(
                f"steering spec: hook {hook!r} is not a hook name such as blocks.3.hook_resid_pre"
            )
    return spec


def read_sampling(data: Any) -> SamplingConfig:
    """Sampling settings from their dict: known fields only, integers where integers belong.

    Raises:
        ShareError: an unknown field, a value of the wrong type, or one out of its range.
    """
    if not isinstance(data, Mapping):
        raise ShareError(f"'sampling' must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(SamplingConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ShareError(f"unknown sampling setting(s) {unknown}; expected some of {sorted(known)}")
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ShareError(f"sampling {name} must be a number, got {value!r}")
        if name in _INT_FIELDS and not (isinstance(value, int) or float(value).is_integer()):
            raise ShareError(f"sampling {name} must be a whole number, got {value!r}")
        if not math.isfinite(value):
            raise ShareError(f"sampling {name} must be finite, got {value!r}")
    values = {k: int(v) if k in _INT_FIELDS else float(v) for k, v in data.items()}
    if not 0 <= values.get("seed", 0) <= MAX_SEED:
        raise ShareError(f"sampling seed {values['seed']} is out of range: use 0..{MAX_SEED}")
    try:
        return SamplingConfig.from_dict(values)
    except ValueError as e:
        raise ShareError(f"sampling: {e}") from e


def read_chat(data: Any, name: str = "chat") -> tuple[dict[str, str], ...]:
    """Chat messages, each {"role": system|user|assistant, "content": text}.

    Args:
        name: the field being read, for the error message.

    Raises:
        ShareError: not a list of such messages.
    """
    if not isinstance(data, Sequence) or isinstance(data, str):
        raise ShareError(f"'{name}' must be a list of messages, got {type(data).__name__}")
    out = []
    for n, message in enumerate(data):
        if (
            not isinstance(message, Mapping)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ShareError(f"{name} message {n} must be {{'role': one of {ROLES}, 'content': text}}")
        out.append({"role": str(message["role"]), "content": str(message["content"])})
    return tuple(out)


def encode_setup(setup: PlaygroundSetup) -> str:
    """The setup as a share-link value: URL-safe base64 (no padding) of its compact JSON."""
    text = json.dumps(setup.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode_setup(value: str) -> PlaygroundSetup:
    """Read a share-link value written by `encode_setup`.

    Raises:
        ShareError: the value is too long, not URL-safe base64, not JSON, or not a valid setup.
    """
    value = value.strip()
    if not value:
        raise ShareError("the share link's spec is empty")
    if len(value) > MAX_LINK_CHARS:
        raise ShareError(f"the share link's spec has {len(value)} characters; at most {MAX_LINK_CHARS}")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise ShareError(f"the share link's spec is not URL-safe base64 ({e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShareError(f"the share link's spec is not UTF-8 text ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShareError(f"the share link's spec is not JSON ({e})") from e
    return PlaygroundSetup.from_dict(data)


def preset_json(spec: SteeringSpec, sampling: SamplingConfig | None = None) -> str:
    """A preset file: the spec's JSON (readable by `explorer generate --spec`) with the sampling beside it."""
    data = spec.to_dict()
    if sampling is not None:
        data["sampling"] = sampling.to_dict()
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def read_preset(text: str) -> tuple[SteeringSpec, SamplingConfig | None]:
    """Read a preset (or a bare spec file saved by the CLI).

    Returns:
        The spec, and the sampling settings if the preset has them.

    Raises:
        ShareError: not JSON, not an object, a newer version, or a malformed spec or sampling.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShareError(f"preset is not valid JSON ({e})") from e
    if not isinstance(data, Mapping):
        raise ShareError(f"preset must be a JSON object, got {type(data).__name__}")
    _check_version(data.get("version"), "preset")
    if "clamps" not in data and "direction" not in data:
        raise ShareError("preset has neither 'clamps' nor 'direction': it is not a steering spec")
    sampling = read_sampling(data["sampling"]) if data.get("sampling") is not None else None
    return read_spec(data), sampling


def provenance_mismatches(
    spec: SteeringSpec, model_name: str, sae_fingerprints: Mapping[str, str]
) -> list[str]:
    """What differs between where a spec was made (its provenance) and what is loaded now, in words."""
    out = []
    made_for = spec.provenance.get("model")
    if made_for and made_for != model_name:
        out.append(f"it was made for model {made_for!r}, and {model_name!r} is loaded")
    for hook, fingerprint in (spec.provenance.get("saes") or {}).items():
        loaded = sae_fingerprints.get(hook)
        if loaded is not None and loaded != fingerprint:
            out.append(f"the SAE at {hook} has other weights ({fingerprint} then, {loaded} now)")
    return out
