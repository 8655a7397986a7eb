"""The forward hooks that apply a steering spec, reading per-call masks from a `StepState`.

Built by `steering_hooks` from a validated spec (`explorer.steering.spec`); attached only for the duration
of one forward call by the decoding loop (`explorer.steering.decode`) or the evaluation, so a shared model
never keeps a hook after a call returns.

One hook per SAE hook applies all of that SAE's clamps at the steered positions, in this order:

1. the latent-encoder modes (set, multiply, add) together: their latents are encoded from the incoming
   residual x and x + sum_i (f'_i - f_i) * W_dec[i] is formed;
2. then the residual-direction modes (cap, floor, scale) one after another in the spec's order, each on the
   result of the step before (their decoder directions need not be orthogonal, so a later one can move an
   earlier one's projection).

A refusal-direction baseline at the same hook acts before both, and the refusal projection is read after
everything. The recorded latent activations are all read from the incoming residual, before any clamp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from explorer.core.hooks import HookFn
from explorer.refusal.direction import RefusalDirection, location_names
from explorer.saes.loading import LoadedSAE, latent_encoder
from explorer.steering.spec import (
    DIRECTION_MODES,
    FACTOR_MODES,
    Clamp,
    DirectionBaseline,
    SteeringSpec,
    Trigger,
    validate,
)


@dataclass
class StepState:
    """What the hooks of one steered forward call need to know, set by the decoding loop before each call.

    Attributes:
        mask: [batch, pos] True where steering applies in this call (steered rows, positions in scope).
        real: [batch, pos] True at real tokens (not padding, not each row's first token), for recording.
        gate: [batch, pos] trigger result of this call (set by the trigger's hook).
        record: hook -> [batch, n_clamped] each clamped latent's activation before the clamp (whatever its
            mode), at the last position of this call, in the spec's order; "refusal_projection" -> [batch]
            the residual's projection on the unit refusal direction at its location, after steering.
    """

    mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    real: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    gate: torch.Tensor | None = None
    record: dict[str, torch.Tensor] = field(default_factory=dict)


def resolve_values(
    clamps: Sequence[Clamp],
    max_activations: Mapping[str, torch.Tensor] | None,
    saes: Mapping[str, LoadedSAE] | None = None,
) -> list[float]:
    """Each clamp's value in raw units: activations, or residual projections for `cap` and `floor` (whose
    "max" unit is the projection a max-firing latent contributes, so it needs `saes`); factors stay factors.
    """
    out = []
    for c in clamps:
        if c.units == "max" and c.mode not in FACTOR_MODES:
            assert max_activations is not None  # checked by validate
            value = c.value * float(max_activations[c.hook][c.latent])
            if c.mode in DIRECTION_MODES:
                assert saes is not None, "cap and floor in units of the max need the SAEs' decoder norms"
                value *= float(saes[c.hook].sae.W_dec.detach()[c.latent].float().norm())
            out.append(value)
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
    for clamp, value in zip(spec.clamps, resolve_values(spec.clamps, max_activations, saes), strict=True):
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
    by_encoder = [j for j, (c, _) in enumerate(items) if c.mode not in DIRECTION_MODES]
    by_direction = [j for j, (c, _) in enumerate(items) if c.mode in DIRECTION_MODES]
    values = torch.tensor([v for _, v in items])
    # New tensors: the shared SAE is never touched.
    w_dec = sae.sae.W_dec.detach()[[latents[j] for j in by_encoder]].float()  # [n_encoder, d_model]
    dec_rows = sae.sae.W_dec.detach()[[latents[j] for j in by_direction]].float()  # [n_direction, d_model]
    directions = dec_rows / dec_rows.norm(dim=-1, keepdim=True)  # unit; validate rejects all-zero rows

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
        v = values.to(current.device)
        y = x[steer].float()  # [n_steered, d_model]
        if by_encoder:
            now = current[steer][:, by_encoder]
            new = now.clone()
            for k, j in enumerate(by_encoder):
                mode = items[j][0].mode
                if mode == "set":
                    new[:, k] = v[j]
                elif mode == "multiply":
                    new[:, k] = now[:, k] * v[j]
                else:
                    new[:, k] = now[:, k] + v[j]
            y = y + (new - now) @ w_dec.to(y.device)
        for k, j in enumerate(by_direction):
            y = _along(y, directions[k].to(y.device), items[j][0].mode, v[j])
        out = act.clone()
        index = rows.nonzero()[steer]
        out[index[:, 0], index[:, 1]] = y.to(act.dtype)
        return out

    return edit


def _along(y: torch.Tensor, d: torch.Tensor, mode: str, value: torch.Tensor | float) -> torch.Tensor:
    """Cap, floor or scale the projection p = y . d of each row of `y` [n, d_model] on the unit vector `d`
    [d_model]: y - max(0, p - v) d, y + max(0, v - p) d, or y + (v - 1) p d."""
    p = y @ d  # [n]
    if mode == "cap":
        shift = -(p - value).clamp_min(0)
    elif mode == "floor":
        shift = (value - p).clamp_min(0)
    elif mode == "scale":
        shift = (value - 1) * p
    else:
        raise ValueError(f"{mode!r} is not a residual-direction mode")
    return y + shift[:, None] * d


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

    def along(act: torch.Tensor, _name: str) -> torch.Tensor | None:
        if not state.mask.any():
            return None
        out = act.clone()
        moved = _along(act[state.mask].float(), unit.to(act.device).float(), baseline.kind, baseline.alpha)
        out[state.mask] = moved.to(act.dtype)
        return out

    if baseline.kind in ("ablate", "scale"):
        # resid_post of layer i is resid_pre of layer i+1: the n_layers + 1 distinct locations suffice.
        return dict.fromkeys(location_names(n_layers), ablate if baseline.kind == "ablate" else along)
    return {refusal.location: add if baseline.kind == "add" else along}


def _projection_hook(refusal: RefusalDirection, state: StepState) -> HookFn:
    unit = refusal.direction / refusal.direction.norm()

    def read(act: torch.Tensor, _name: str) -> None:
        state.record["refusal_projection"] = (act[:, -1].float() @ unit.to(act.device).float()).cpu()

    return read
