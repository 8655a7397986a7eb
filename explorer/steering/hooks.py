"""The forward hooks that apply a steering spec, reading per-call masks from a `StepState`.

Built by `steering_hooks` from a validated spec (`explorer.steering`); attached only for the duration of
one forward call by the decoding loop (`explorer.side_by_side`) or the evaluation, so a shared model never
keeps a hook after a call returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from explorer.core.hooks import HookFn
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.saes.loading import LoadedSAE, latent_encoder
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec, Trigger, validate


@dataclass
class StepState:
    """What the hooks of one steered forward call need to know, set by the decoding loop before each call.

    Attributes:
        mask: [batch, pos] True where steering applies in this call (steered rows, positions in scope).
        real: [batch, pos] True at real tokens (not padding, not each row's first token), for recording.
        gate: [batch, pos] trigger result of this call (set by the trigger's hook).
        record: hook -> [batch, n_clamped] each clamped latent's activation before the clamp, at the last
            position of this call; "refusal_projection" -> [batch] the residual's projection on the unit
            refusal direction at its location, after steering.
    """

    mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    real: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    gate: torch.Tensor | None = None
    record: dict[str, torch.Tensor] = field(default_factory=dict)


def resolve_values(
    clamps: Sequence[Clamp], max_activations: Mapping[str, torch.Tensor] | None
) -> list[float]:
    """Each clamp's value in raw units (factors stay factors)."""
    out = []
    for c in clamps:
        if c.units == "max" and c.mode != "multiply":
            assert max_activations is not None  # checked by validate
            out.append(c.value * float(max_activations[c.hook][c.latent]))
        else:
            out.append(c.value)
    return out


def steering_hooks(
    spec: SteeringSpec,
    saes: Mapping[str, LoadedSAE],
    state: StepState,
    n_layers: int,
    *,
    max_activations: Mapping[str, torch.Tensor] | None = None,
    refusal: RefusalDirection | None = None,
    record: bool = True,
) -> dict[str, HookFn]:
    """The hook functions that apply `spec` (validated first), reading masks from `state`.

    With `record`, the clamped latents' pre-clamp activations (every clamped hook) and the refusal
    projection (at the direction's location) are written to `state.record` on every call.
    """
    validate(spec, saes, n_layers, max_activations=max_activations, refusal=refusal)
    chains: dict[str, list[HookFn]] = {}
    if spec.direction is not None and refusal is not None:
        for name, fn in _direction_hooks(spec.direction, refusal, state, n_layers).items():
            chains.setdefault(name, []).append(fn)
    by_hook: dict[str, list[tuple[Clamp, float]]] = {}
    for clamp, value in zip(spec.clamps, resolve_values(spec.clamps, max_activations), strict=True):
        by_hook.setdefault(clamp.hook, []).append((clamp, value))
    trigger = spec.trigger
    if trigger is not None and trigger.hook not in by_hook:
        chains.setdefault(trigger.hook, []).append(_trigger_hook(trigger, saes[trigger.hook], state))
    for hook, items in by_hook.items():
        own_trigger = trigger if trigger is not None and trigger.hook == hook else None
        chains.setdefault(hook, []).append(
            _clamp_hook(saes[hook], items, state, own_trigger, gated=trigger is not None, record=record)
        )
    if record and refusal is not None:
        chains.setdefault(refusal.location, []).append(_projection_hook(refusal, state))
    return {name: _compose(fns) for name, fns in chains.items()}


def _compose(fns: list[HookFn]) -> HookFn:
    def run(act: torch.Tensor, name: str) -> torch.Tensor | None:
        changed = False
        for fn in fns:
            new = fn(act, name)
            if new is not None:
                act, changed = new, True
        return act if changed else None

    return run


def _clamp_hook(
    sae: LoadedSAE,
    items: list[tuple[Clamp, float]],
    state: StepState,
    trigger: Trigger | None,
    *,
    gated: bool,
    record: bool,
) -> HookFn:
    latents = [c.latent for c, _ in items]
    # The trigger's latent, when it lives on this SAE, is encoded with the clamped ones (last column).
    encode = latent_encoder(sae, latents + ([trigger.latent] if trigger is not None else []))
    values = torch.tensor([v for _, v in items])
    modes = [c.mode for c, _ in items]
    w_dec = sae.sae.W_dec.detach()[latents]  # [n_clamped, d_model]: a new tensor, the SAE is untouched

    def edit(act: torch.Tensor, name: str) -> torch.Tensor | None:
        rows = state.real | state.mask
        if not rows.any():
            return None
        x = act[rows]  # [n, d_model]
        with torch.no_grad():
            f = encode(x.to(sae.sae.dtype))  # [n, n_clamped (+ 1 for the trigger)]
        current = f[:, : len(items)].float()
        if record:
            last = torch.zeros(act.shape[0], len(items))
            where = rows.nonzero()
            ends = rows.shape[1] - 1
            keep = where[:, 1] == ends
            last[where[keep, 0].cpu()] = current[keep].cpu()
            state.record[name] = last
        steer = state.mask[rows]
        if trigger is not None:
            state.gate = torch.zeros_like(state.mask)
            state.gate[rows] = f[:, -1] > trigger.threshold
        if gated:
            gate = state.gate if state.gate is not None else torch.zeros_like(state.mask)
            steer = steer & gate[rows]
        if not steer.any():
            return None
        new = current.clone()
        v = values.to(current.device)
        for j, mode in enumerate(modes):
            if mode == "set":
                new[:, j] = v[j]
            elif mode == "multiply":
                new[:, j] = current[:, j] * v[j]
            else:
                new[:, j] = current[:, j] + v[j]
        delta = (new - current)[steer] @ w_dec.to(current.device, current.dtype)
        out = act.clone()
        index = rows.nonzero()[steer]
        out[index[:, 0], index[:, 1]] = (x[steer].float() + delta).to(act.dtype)
        return out

    return edit


def _trigger_hook(trigger: Trigger, sae: LoadedSAE, state: StepState) -> HookFn:
    encode = latent_encoder(sae, [trigger.latent])

    def read(act: torch.Tensor, _name: str) -> None:
        state.gate = torch.zeros_like(state.mask)
        if state.real.any():
            with torch.no_grad():
                f = encode(act[state.real].to(sae.sae.dtype))  # [n, 1]
            state.gate[state.real] = f[:, 0] > trigger.threshold

    return read


def _direction_hooks(
    baseline: DirectionBaseline, refusal: RefusalDirection, state: StepState, n_layers: int
) -> dict[str, HookFn]:
    unit = refusal.direction / refusal.direction.norm()

    def ablate(act: torch.Tensor, _name: str) -> torch.Tensor | None:
        if not state.mask.any():
            return None
        r = unit.to(act.device, act.dtype)
        out = act.clone()
        x = act[state.mask]
        out[state.mask] = x - (x @ r)[:, None] * r
        return out

    def add(act: torch.Tensor, _name: str) -> torch.Tensor | None:
        if not state.mask.any():
            return None
        out = act.clone()
        out[state.mask] = act[state.mask] + baseline.alpha * refusal.direction.to(act.device, act.dtype)
        return out

    if baseline.kind == "ablate":
        # resid_post of layer i is resid_pre of layer i+1: the n_layers + 1 distinct locations suffice.
        return dict.fromkeys(location_names(n_layers), ablate)
    return {refusal.location: add}


def _projection_hook(refusal: RefusalDirection, state: StepState) -> HookFn:
    unit = refusal.direction / refusal.direction.norm()

    def read(act: torch.Tensor, _name: str) -> None:
        state.record["refusal_projection"] = (act[:, -1].float() @ unit.to(act.device).float()).cpu()

    return read
