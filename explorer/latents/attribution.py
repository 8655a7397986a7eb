"""How much each SAE latent drives the refusal score: activation x gradient, or integrated gradients.

The refusal score is the log-odds that the first generated token opens a refusal (`explorer.refusal`).
For a latent i at hook h, activation x gradient is

    attr_i = sum over counted prompt positions of f_i(pos) * (W_dec[i] . d score / d x_h(pos)),

the first-order effect of removing the latent's contribution while the SAE's error term stays fixed.
`method="ig"` integrates that gradient along the path that scales every latent at the hook from 0 to its
value (refusal_sae's LA-IG; `steps` midpoint evaluations). Counted positions are the corpus's: real
tokens that are neither the first position nor a special token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers import BatchEncoding

from explorer.core.generation import encode_chats
from explorer.core.hooks import forward, parse_hook_name, run_to
from explorer.core.models import LoadedModel, special_token_ids
from explorer.saes.loading import LoadedSAE

Method = Literal["grad", "ig"]


def refusal_log_odds(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """[batch] log p(refusal token) - log(1 - p) at the last position, differentiable throughout."""
    logp = logits.float().log_softmax(-1)[:, list(token_ids)].logsumexp(-1)
    return logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-7))


def counted_positions(loaded: LoadedModel, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True at real, non-special tokens after each row's first (left-padded batches)."""
    real = attention.bool()
    first = real.long().argmax(-1)
    later = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] > first[:, None]
    special = torch.tensor(sorted(special_token_ids(loaded.tokenizer)), device=input_ids.device)
    return real & later & ~torch.isin(input_ids, special)


def latent_attributions(
    loaded: LoadedModel,
    saes: Sequence[LoadedSAE],
    prompts: Sequence[str],
    token_ids: Sequence[int],
    *,
    method: Method = "grad",
    steps: int = 8,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Mean attribution of every latent of every SAE on the refusal score over `prompts`.

    Args:
        saes: SAEs on this model; with `method="grad"` all are scored in one forward/backward pass.
        prompts: user prompts (chat-templated here).
        token_ids: first tokens of a refusal (`explorer.refusal.refusal_token_ids`).
        method: "grad" (activation x gradient) or "ig" (integrated gradients, `steps` passes per SAE).

    Returns:
        hook -> [d_sae] float32 mean over prompts of each latent's summed attribution.
    """
    if not prompts:
        raise ValueError("attribution needs at least one prompt")
    if method not in ("grad", "ig"):
        raise ValueError(f"attribution method {method!r} is not 'grad' or 'ig'")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    totals = {sae.hook: torch.zeros(sae.d_sae, dtype=torch.float64) for sae in saes}
    for start in range(0, len(prompts), batch_size):
        _, batch = encode_chats(loaded, prompts[start : start + batch_size])
        mask = counted_positions(loaded, batch["input_ids"], batch["attention_mask"])
        if method == "grad":
            parts = _grad_batch(loaded, saes, batch, mask, token_ids)
        else:
            parts = {sae.hook: _ig_batch(loaded, sae, batch, mask, token_ids, steps) for sae in saes}
        for hook, part in parts.items():
            totals[hook] += part.double().cpu()
    return {hook: (total / len(prompts)).float() for hook, total in totals.items()}


def _grad_batch(
    loaded: LoadedModel,
    saes: Sequence[LoadedSAE],
    batch: BatchEncoding,
    mask: torch.Tensor,  # [batch, pos]
    token_ids: Sequence[int],
) -> dict[str, torch.Tensor]:
    hooks = sorted({s.hook for s in saes}, key=lambda h: parse_hook_name(h, loaded.n_layers).depth)
    acts: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, name: str) -> torch.Tensor:
        # The earliest hook becomes a leaf, so the graph (and gradients) start there whatever the
        # parameters' requires_grad; gradients are taken with autograd.grad and never touch `.grad`.
        if name == hooks[0]:
            act = act.detach().requires_grad_(True)
        acts[name] = act
        return act

    with torch.enable_grad():
        logits = forward(loaded.model, dict.fromkeys(hooks, keep), **batch, use_cache=False).logits[:, -1]
        score = refusal_log_odds(logits, token_ids).sum()
        grads = dict(zip(hooks, torch.autograd.grad(score, [acts[h] for h in hooks]), strict=True))
    out = {}
    with torch.no_grad():
        for sae in saes:
            x, g = acts[sae.hook].detach()[mask], grads[sae.hook][mask]  # [n, d_model]
            f = sae.sae.encode(x.to(sae.sae.dtype)).float()
            out[sae.hook] = (f * (g.float() @ sae.sae.W_dec.float().T)).sum(0)
    return out


def _ig_batch(
    loaded: LoadedModel,
    sae: LoadedSAE,
    batch: BatchEncoding,
    mask: torch.Tensor,  # [batch, pos]
    token_ids: Sequence[int],
    steps: int,
) -> torch.Tensor:
    x = _capture_counted(loaded, sae.hook, batch, mask).to(sae.sae.dtype)  # [n, d_model]
    with torch.no_grad():
        f = sae.sae.encode(x)
        error = x - sae.sae.decode(f)
    total = torch.zeros_like(f, dtype=torch.float32)
    for step in range(steps):
        scaled = ((step + 0.5) / steps * f).requires_grad_(True)
        with torch.enable_grad():
            edited = sae.sae.decode(scaled) + error

            def splice(act: torch.Tensor, _name: str, edited: torch.Tensor = edited) -> torch.Tensor:
                out = act.detach().clone()
                out[mask] = edited.to(act.dtype)
                return out

            logits = forward(loaded.model, {sae.hook: splice}, **batch, use_cache=False).logits[:, -1]
            (grad,) = torch.autograd.grad(refusal_log_odds(logits, token_ids).sum(), [scaled])
        total += grad.float()
    return (f.float() * total / steps).sum(0)


@torch.no_grad()
def _capture_counted(
    loaded: LoadedModel, hook: str, batch: BatchEncoding, mask: torch.Tensor
) -> torch.Tensor:
    """[n, d_model] the residual at `hook` at the counted positions (the forward stops there)."""
    acts = run_to(loaded.model, batch["input_ids"], [hook], attention_mask=batch["attention_mask"])
    return acts[hook][mask]
