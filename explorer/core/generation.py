"""Plain chat generation: encode conversations, sample, decode. Steering builds on top of this."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import BatchEncoding

from explorer.core.hooks import model_lock
from explorer.core.models import LoadedModel
from explorer.core.progress import tqdm
from explorer.core.prompts import DataError, chat_messages, format_chat

Conversation = str | list[dict[str, str]]
"""A single user prompt, or a list of chat messages ({"role", "content"})."""


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; temperature 0 means greedy.

    Attributes:
        max_new_tokens: tokens generated after the prompt.
        temperature: 0 for greedy, else softmax temperature.
        top_p: nucleus sampling mass (1 keeps every token).
        repetition_penalty: >1 discourages repeating tokens (1 is off).
        seed: seeds sampling so a run can be reproduced.
        frequency_penalty: subtracted from a token's logit once per time it was generated (0 is off;
            applied by the steering decoder, `explorer.side_by_side`).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}")
        for name in ("temperature", "top_p", "repetition_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.5 <= self.repetition_penalty <= 3.0:
            raise ValueError(f"repetition_penalty must be in [0.5, 3], got {self.repetition_penalty}")
        if not 0.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [0, 2], got {self.frequency_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingConfig:
        return cls(**data)


@dataclass(frozen=True)
class Completion:
    """One generated reply."""

    prompt_text: str
    text: str
    token_ids: list[int]
    n_prompt_tokens: int
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_messages(conversation: Conversation, system: str | None = None) -> list[dict[str, str]]:
    """Normalise a prompt or message list into chat messages, checking it is not empty."""
    if isinstance(conversation, str):
        return chat_messages(conversation, system)
    if not conversation or not any(m.get("content", "").strip() for m in conversation):
        raise DataError("conversation is empty")
    if system and conversation[0]["role"] != "system":
        return [{"role": "system", "content": system}, *conversation]
    return list(conversation)


def encode_chats(
    loaded: LoadedModel,
    conversations: Sequence[Conversation],
    *,
    system: str | None = None,
    max_new_tokens: int = 0,
) -> tuple[list[str], BatchEncoding]:
    """Chat-template and tokenize conversations into one left-padded batch.

    Raises:
        DataError: an empty prompt, or a prompt that with `max_new_tokens` exceeds the context length.
    """
    texts = [format_chat(loaded.tokenizer, to_messages(c, system)) for c in conversations]
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit is not None:
        longest = int(batch["attention_mask"].sum(-1).max())
        if longest + max_new_tokens > limit:
            raise DataError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's context "
                f"of {limit}; shorten the prompt"
            )
    return texts, batch.to(loaded.device)


def generate(
    loaded: LoadedModel,
    conversations: Sequence[Conversation],
    sampling: SamplingConfig | None = None,
    *,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Completion]:
    """Generate one reply per conversation, in batches.

    Args:
        loaded: the model and tokenizer.
        conversations: prompts or message lists.
        sampling: decoding settings (greedy, 64 tokens by default).
        system: a system prompt put before each conversation that has none.
        batch_size: conversations per forward batch.
        progress: show a progress bar.
    """
    sampling = sampling or SamplingConfig()
    if sampling.frequency_penalty:
        raise ValueError("frequency_penalty is applied by explorer.side_by_side.decode, not by generate()")
    eos = loaded.tokenizer.eos_token_id
    completions: list[Completion] = []
    starts = range(0, len(conversations), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
        chunk = conversations[start : start + batch_size]
        texts, batch = encode_chats(loaded, chunk, system=system, max_new_tokens=sampling.max_new_tokens)
        with model_lock(loaded.model), torch.no_grad():
            torch.manual_seed(sampling.seed + start)
            out = loaded.model.generate(  # pyright: ignore[reportCallIssue]
                **batch,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not sampling.greedy,
                temperature=sampling.temperature if not sampling.greedy else None,
                top_p=sampling.top_p if not sampling.greedy else None,
                top_k=None,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        n_prompt = batch["input_ids"].shape[1]
        for text, row, mask in zip(texts, out, batch["attention_mask"], strict=True):
            ids = row[n_prompt:].tolist()
            finished = eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            ids = [i for i in ids if i != loaded.tokenizer.pad_token_id]
            reply = str(loaded.tokenizer.decode(ids, skip_special_tokens=True))
            completions.append(Completion(text, reply, ids, int(mask.sum()), finished))
    return completions
