"""One latent's activation on any text a user types ("try it on my text"), as an example like the cache's."""

from __future__ import annotations

import torch

from explorer.core.hooks import run_to
from explorer.core.models import LoadedModel, special_token_ids
from explorer.core.prompts import chat_messages, format_chat
from explorer.latents.builder import readable_piece
from explorer.latents.reader import Example
from explorer.saes.loading import LoadedSAE

MAX_PROBE_TOKENS = 512
"""Longer texts are refused: the box is for a sentence or a request, and must answer in a second."""


class ProbeError(ValueError):
    """Text that cannot be probed: empty, too long, or a latent out of range."""


@torch.no_grad()
def probe_text(loaded: LoadedModel, sae: LoadedSAE, latent: int, text: str, *, chat: bool = False) -> Example:
    """The latent's activation at every token of `text` (chat-templated as a user turn when `chat`).

    The first position and special tokens are not counted, as in the cache (value None); the focus is
    the token where the latent peaks (the last counted token when it never fires).

    Raises:
        ProbeError: empty text, more than `MAX_PROBE_TOKENS` tokens, or a latent out of range.
    """
    if not 0 <= latent < sae.d_sae:
        raise ProbeError(f"latent {latent} is out of range: this SAE has latents 0..{sae.d_sae - 1}")
    if not text.strip():
        raise ProbeError("the text is empty: type a sentence or a request")
    tokenizer = loaded.tokenizer
    rendered = format_chat(tokenizer, chat_messages(text)) if chat else text
    ids = tokenizer(rendered, add_special_tokens=not chat, return_tensors="pt")["input_ids"]
    if ids.shape[1] > MAX_PROBE_TOKENS:
        raise ProbeError(
            f"the text is {ids.shape[1]} tokens long; the limit here is {MAX_PROBE_TOKENS}: shorten it"
        )
    acts = run_to(loaded.model, ids.to(loaded.device), [sae.hook])[sae.hook][0]
    module = sae.sae
    codes = module.encode(acts.to(module.device, module.dtype))[:, latent].float().cpu()
    special = special_token_ids(tokenizer)
    token_ids = ids[0].tolist()
    counted = [n > 0 and t not in special for n, t in enumerate(token_ids)]
    values: list[float | None] = [
        float(v) if c else None for v, c in zip(codes.tolist(), counted, strict=True)
    ]
    scores = torch.where(torch.tensor(counted), codes, -torch.inf)
    focus = int(scores.argmax()) if any(counted) else len(token_ids) - 1
    peak = values[focus]
    return Example(
        row=-1,
        pos=focus,
        value=0.0 if peak is None else peak,
        context=[readable_piece(tokenizer, t) for t in token_ids],
        focus=focus,
        values=values,
        request=text,
    )
