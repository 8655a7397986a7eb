"""Steering specs: which SAE latents to clamp (or the refusal direction), where, and checked against the
model before anything runs. The forward hooks that apply a spec are in `explorer.steering.hooks`.

Latent-encoder modes change one latent's activation f_i to f'_i and write back only the difference, so the
SAE's error term is preserved:

    x' = x + decode(f') - decode(f) = x + sum over clamped i of (f'_i - f_i) * W_dec[i]

(an empty spec attaches no hook at all, so it is exactly the identity). They are `set` (f'_i = v),
`multiply` (f'_i = v * f_i; v = -3 flips a latent as refusal_sae's jailbreak does) and `add`
(f'_i = f_i + v, i.e. adding v * W_dec[i], Neuronpedia's additive steering). Values are raw activations,
or with `units="max"` multiples of the latent's max activation on the cache's corpus.

Residual-direction modes act on the residual x itself, not through the encoder, along the latent's unit
decoder direction d = W_dec[i] / ||W_dec[i]||, with p = x . d:

    cap     x' = x - max(0, p - v) * d       the projection is capped at v, never raised
    floor   x' = x + max(0, v - p) * d       the projection is raised to at least v, never lowered
    scale   x' = x + (s - 1) * p * d         only the component along d is scaled (s = 0 removes it)

`cap` and `floor` values are raw residual projections, or with `units="max"` multiples of the projection a
max-firing latent contributes (v = value * max activation * ||W_dec[i]||); `scale` takes a factor, like
`multiply`. At one hook the encoder modes act first, then the residual-direction ones in the spec's order
(see `explorer.steering.hooks`).

Scope picks positions: the whole sequence, the prompt only, or generated tokens only; each row's first
real token (the attention sink) is never steered. A `Trigger` makes steering conditional: clamps act only
at positions where a chosen latent (e.g. a harm latent) exceeds a threshold, as in conditional activation
steering. The refusal-direction baselines can be used alone or beside clamps; they act before the clamps at
a shared hook. With r the unit refusal direction and p = x . r: `ablate` (x' = x - p * r at every layer),
`scale` (x' = x + (alpha - 1) * p * r at every layer; ablate is scale 0), `add` (alpha times the
difference in means, at its layer), `cap` and `floor` (as above with v = alpha in raw projection units, at
its layer).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch

from explorer.core.hooks import HookError, parse_hook_name
from explorer.refusal.direction import RefusalDirection
from explorer.saes.loading import LoadedSAE

Mode = Literal["set", "multiply", "add", "cap", "floor", "scale"]
Units = Literal["raw", "max"]
Scope = Literal["all", "prompt", "generated"]
DirectionKind = Literal["ablate", "add", "cap", "floor", "scale"]
FACTOR_MODES: tuple[Mode, ...] = ("multiply", "scale")
"""Modes whose value is a factor: `units` does not apply to them."""
DIRECTION_MODES: tuple[Mode, ...] = ("cap", "floor", "scale")
"""Modes that act on the residual along the latent's decoder direction rather than through the encoder."""

MAX_RAW = 1e4
"""Largest |value| accepted in raw activation or projection units (the default's residual norms are a
few hundred)."""
MAX_FACTOR = 100.0
"""Largest |value| accepted for a factor (`multiply`, `scale`), and for values in units of the latent's
max."""
SPEC_VERSION = 1


class SteeringError(ValueError):
    """A steering spec that cannot run on the loaded model and SAEs; the message says what is allowed."""


def _finite(name: str, value: float, limit: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SteeringError(f"{name} must be a finite number, got {value!r}")
    if abs(value) > limit:
        raise SteeringError(f"{name} {value:g} is out of range: |value| must be <= {limit:g}")


@dataclass(frozen=True)
class Clamp:
    """One latent to change.

    Attributes:
        hook: the SAE's hook, e.g. `blocks.23.hook_resid_pre`.
        latent: latent index in that SAE.
        mode: "set", "multiply" or "add" (through the encoder), or "cap", "floor" or "scale" (on the
            residual along the latent's unit decoder direction); see the module docstring.
        value: the value, the factor or the amount (see `units`).
        units: "raw" activation units ("raw" residual projection for cap and floor), or "max": multiples of
            the latent's max activation on the corpus (for cap and floor, of the projection a max-firing
            latent contributes); ignored for `multiply` and `scale`, whose value is a factor.
    """

    hook: str
    latent: int
    mode: Mode
    value: float
    units: Units = "raw"

    def __post_init__(self) -> None:
        if self.mode not in get_args(Mode):
            raise SteeringError(f"clamp mode {self.mode!r} is not one of {get_args(Mode)}")
        if self.units not in get_args(Units):
            raise SteeringError(f"clamp units {self.units!r} are not one of {get_args(Units)}")
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise SteeringError(f"latent must be a non-negative integer, got {self.latent!r}")
        raw = self.mode not in FACTOR_MODES and self.units == "raw"
        _finite(f"{self.mode} value for latent {self.latent}", self.value, MAX_RAW if raw else MAX_FACTOR)

    @property
    def key(self) -> tuple[str, int]:
        return self.hook, self.latent


@dataclass(frozen=True)
class Trigger:
    """Conditional steering: clamps act only where `latent` at `hook` is above `threshold` (raw units)."""

    hook: str
    latent: int
    threshold: float

    def __post_init__(self) -> None:
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise SteeringError(f"trigger latent must be a non-negative integer, got {self.latent!r}")
        _finite("trigger threshold", self.threshold, MAX_RAW)


@dataclass(frozen=True)
class DirectionBaseline:
    """The refusal direction as a steering baseline.

    With r the unit refusal direction and p = x . r: `ablate` projects it out at every layer, `scale`
    multiplies the component along it by `alpha` at every layer (ablate is scale 0), `add` adds `alpha`
    times the (unnormalised) difference in means at its layer, `cap` and `floor` bound p above or below
    by `alpha` (a raw projection, may be negative) at its layer.
    """

    kind: DirectionKind
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(DirectionKind):
            raise SteeringError(f"direction baseline {self.kind!r} is not one of {get_args(DirectionKind)}")
        projection = self.kind in ("cap", "floor")
        _finite(f"direction {self.kind} alpha", self.alpha, MAX_RAW if projection else MAX_FACTOR)


@dataclass(frozen=True)
class SteeringSpec:
    """Everything that says how a steered run differs from the default one.

    Attributes:
        clamps: latents to change (at most one clamp per hook and latent).
        scope: "all" positions, "prompt" only, or "generated" tokens only.
        trigger: optional conditional trigger.
        direction: optional refusal-direction baseline.
        provenance: model, SAE and cache fingerprints, judge, seed: what a saved spec was made against.
    """

    clamps: tuple[Clamp, ...] = ()
    scope: Scope = "all"
    trigger: Trigger | None = None
    direction: DirectionBaseline | None = None
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.scope not in get_args(Scope):
            raise SteeringError(f"scope {self.scope!r} is not one of {get_args(Scope)}")
        seen: set[tuple[str, int]] = set()
        for clamp in self.clamps:
            if clamp.key in seen:
                raise SteeringError(
                    f"conflicting clamps on latent {clamp.latent} at {clamp.hook}: give one clamp per latent"
                )
            seen.add(clamp.key)
        if self.trigger is not None and not self.clamps:
            raise SteeringError("a trigger needs at least one clamp to gate")

    @property
    def is_empty(self) -> bool:
        return not self.clamps and self.direction is None

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, **asdict(self), "clamps": [asdict(c) for c in self.clamps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SteeringSpec:
        """Rebuild a spec from `to_dict` output.

        Raises:
            SteeringError: a field is missing or malformed, or the spec is from a newer version.
        """
        if int(data.get("version", SPEC_VERSION)) > SPEC_VERSION:
            raise SteeringError(f"spec version {data['version']} is newer than this explorer reads")
        try:
            return cls(
                clamps=tuple(Clamp(**c) for c in data.get("clamps", ())),
                scope=data.get("scope", "all"),
                trigger=Trigger(**data["trigger"]) if data.get("trigger") else None,
                direction=DirectionBaseline(**data["direction"]) if data.get("direction") else None,
                provenance=dict(data.get("provenance") or {}),
            )
        except TypeError as e:
            raise SteeringError(f"malformed steering spec: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SteeringSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SteeringError(f"steering spec is not valid JSON: {e}") from e


_CLAMP = re.compile(r"^(?P<hook>[^:=]+):(?P<latent>\d+)=(?P<mode>\w+):(?P<value>[^:]+)(?::(?P<units>\w+))?$")


def parse_clamp(text: str) -> Clamp:
    """Parse `HOOK:LATENT=MODE:VALUE[:max]`, e.g. `blocks.23.hook_resid_pre:3357=set:8`, `...=multiply:-3`,
    `...=cap:3.5`, `...=floor:1:max` or `...=scale:0`.

    Raises:
        SteeringError: the text does not have that form, or a part is invalid.
    """
    match = _CLAMP.match(text.strip())
    if match is None:
        raise SteeringError(f"clamp {text!r} is not of the form HOOK:LATENT=MODE:VALUE[:max]")
    try:
        value = float(match.group("value"))
    except ValueError as e:
        raise SteeringError(f"clamp {text!r}: {match.group('value')!r} is not a number") from e
    return Clamp(
        match.group("hook"),
        int(match.group("latent")),
        match.group("mode"),  # pyright: ignore[reportArgumentType]
        value,
        match.group("units") or "raw",  # pyright: ignore[reportArgumentType]
    )


def validate(
    spec: SteeringSpec,
    saes: Mapping[str, LoadedSAE],
    n_layers: int,
    *,
    max_activations: Mapping[str, torch.Tensor] | None = None,
    refusal: RefusalDirection | None = None,
) -> None:
    """Check a spec against the loaded model and SAEs before anything runs.

    Args:
        saes: hook -> the SAE loaded at that hook.
        max_activations: hook -> [d_sae] each latent's max on the corpus (needed for `units="max"`).

    Raises:
        SteeringError: an unknown hook, a hook with no SAE, a latent out of range, "max" units without a
            cache, a cap, floor or scale along an all-zero decoder row, a trigger after a clamped hook, or a
            direction baseline without a refusal direction.
    """
    for clamp in spec.clamps:
        _check_latent("clamp", clamp.hook, clamp.latent, saes, n_layers)
        relative = clamp.units == "max" and clamp.mode not in FACTOR_MODES
        if relative and (max_activations is None or clamp.hook not in max_activations):
            raise SteeringError(
                f"latent {clamp.latent} at {clamp.hook} is given in units of its max activation, but no "
                "latent cache is loaded for that SAE; build it or use raw units"
            )
        if clamp.mode in DIRECTION_MODES and not saes[clamp.hook].sae.W_dec[clamp.latent].abs().any():
            raise SteeringError(
                f"latent {clamp.latent} at {clamp.hook} has an all-zero decoder row, so there is no "
                f"direction to {clamp.mode} along; use set, multiply or add"
            )
    if spec.trigger is not None:
        _check_latent("trigger", spec.trigger.hook, spec.trigger.latent, saes, n_layers)
        depth = parse_hook_name(spec.trigger.hook, n_layers).depth
        late = [c.hook for c in spec.clamps if parse_hook_name(c.hook, n_layers).depth < depth]
        if late:
            raise SteeringError(
                f"the trigger at {spec.trigger.hook} comes after the clamped hook {late[0]} in the forward "
                "pass; put the trigger at or before every clamped hook"
            )
    if spec.direction is not None and refusal is None:
        raise SteeringError("the direction baseline needs a refusal direction; run `explorer refusal`")


def _check_latent(what: str, hook: str, latent: int, saes: Mapping[str, LoadedSAE], n_layers: int) -> None:
    try:
        parse_hook_name(hook, n_layers)
    except HookError as e:
        raise SteeringError(f"{what} hook: {e}") from e
    if hook not in saes:
        raise SteeringError(f"{what} at {hook}: no SAE is loaded there (loaded: {sorted(saes) or 'none'})")
    d_sae = saes[hook].d_sae
    if not 0 <= latent < d_sae:
        raise SteeringError(
            f"{what} latent {latent} is out of range: the SAE at {hook} has latents 0..{d_sae - 1}"
        )
