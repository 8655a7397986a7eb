"""The jailbreak lens on one prompt: plain and wrapped side by side, forward passes only (fast)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import capture, forward
from explorer.core.jailbreaks import Wrapper
from explorer.core.prompts import DataError
from explorer.latents.inspector import token_pieces
from explorer.refusal.candidates import post_instruction_ids
from explorer.research.jailbreak_latents import (
    LatentChange,
    Lensable,
    cache_labels,
    extremes,
    latent_changes,
    unit_direction,
)

MAX_PROMPT_TOKENS = 1024
"""The live comparison's cap on a chat-templated prompt (its passes stay within seconds on a CPU)."""


@dataclass(frozen=True)
class PromptView:
    """One prompt as the live comparison shows it.

    Attributes:
        text: the chat-templated prompt; tokens: its token pieces.
        post_start: index of the first post-instruction token.
        projection: per token, the residual at the refusal location · the unit direction (empty without
            a direction).
        top: the latents most active at the post-instruction positions (their mean there), strongest first.
    """

    text: str
    tokens: list[str]
    post_start: int
    projection: list[float]
    top: list[LatentChange]


@dataclass(frozen=True)
class LiveComparison:
    """A wrapper on one prompt, forward passes only.

    Attributes:
        wrapper: its name; hook: the SAE read; prompt: the plain request.
        plain, wrapped: the two prompts' views (in `top`, `plain` and `wrapped` hold the activation and
            `change` wrapped − plain of that latent).
        suppressed: the latents this wrapper lowers most on this prompt, most lowered first.
    """

    wrapper: str
    hook: str
    prompt: str
    plain: PromptView
    wrapped: PromptView
    suppressed: list[LatentChange]


@torch.no_grad()
def compare_prompt(
    lens: Lensable, wrapper: Wrapper, prompt: str, hook: str | None = None, k: int = 10
) -> LiveComparison:
    """The plain and wrapped prompt side by side: per-token refusal projection, the top latents at the
    post-instruction positions of each, and the latents the wrapper suppresses most on this prompt.

    Args:
        lens: the workspace.
        wrapper: the jailbreak.
        prompt: the plain request.
        hook: the SAE read (default: the main SAE).
        k: latents listed.

    Raises:
        DataError: an empty prompt, or one longer than `MAX_PROMPT_TOKENS` once wrapped and templated.
        ValueError: no such SAE.
    """
    if not prompt.strip():
        raise DataError("the prompt is empty; type a request to compare")
    hook = hook or lens.main
    if hook is None or hook not in lens.saes:
        raise ValueError(f"no SAE at {hook!r}; the loaded SAEs are at {sorted(lens.saes) or 'no hook'}")
    loaded, sae = lens.loaded, lens.saes[hook].sae
    n_post = len(post_instruction_ids(loaded))
    names = [hook] + ([lens.refusal.location] if lens.refusal is not None else [])
    labels = cache_labels(lens, hook)
    views: list[tuple[str, list[int], torch.Tensor, list[float]]] = []
    for text in (prompt, wrapper.apply(prompt)):
        texts, batch = encode_chats(loaded, [text])
        ids = batch["input_ids"][:1]  # [1, pos]
        if ids.shape[1] > MAX_PROMPT_TOKENS:
            raise DataError(
                f"the wrapped prompt has {ids.shape[1]:,} tokens; "
                f"the lens reads at most {MAX_PROMPT_TOKENS:,}"
            )
        with capture(loaded.model, names) as store:
            forward(loaded.model, input_ids=ids, use_cache=False, logits_to_keep=1)
        acts = (
            sae.encode(store[hook][0][0, -n_post:].to(sae.device, sae.dtype)).float().cpu()
        )  # [n_post, d_sae]
        projection = (
            (store[lens.refusal.location][0][0].float().cpu() @ unit_direction(lens.refusal)).tolist()
            if lens.refusal is not None
            else []
        )
        views.append((texts[0], ids[0].tolist(), acts.mean(0, keepdim=True), projection))
    plain_acts, wrapped_acts = views[0][2], views[1][2]  # [1, d_sae] each

    def view(index: int) -> PromptView:
        text, ids, acts, projection = views[index]
        values, order = acts[0].topk(min(k, acts.shape[1]))
        top = [int(i) for v, i in zip(values, order, strict=True) if v > 0]
        return PromptView(
            text,
            token_pieces(loaded.tokenizer, text, ids),
            len(ids) - n_post,
            projection,
            latent_changes(plain_acts, wrapped_acts, top, labels),
        )

    suppressed, _ = extremes(plain_acts, wrapped_acts, k, labels)
    return LiveComparison(wrapper.name, hook, prompt, view(0), view(1), suppressed)
