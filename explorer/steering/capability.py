"""What a steering setting costs in capability: the cross-entropy and KL it adds on held-out harmless
transcripts (teacher-forced, steered as the spec's scope says), and multiple-choice accuracy on a user's
dataset (lm-eval style: the choice with the highest log-likelihood as the assistant's reply wins).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from explorer.core.hooks import forward
from explorer.core.prompts import DataError, chat_messages, format_chat
from explorer.refusal.candidates import kl_divergence
from explorer.saes.corpus import Corpus
from explorer.steering.decode import Steerer
from explorer.steering.hooks import StepState
from explorer.steering.spec import SteeringSpec


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: the index of the right choice in `choices`."""

    question: str
    choices: list[str]
    answer: int


def load_mc_file(path: str | Path) -> list[MCItem]:
    """Read a JSONL multiple-choice file: {"question", "choices": [...], "answer": index}.

    Raises:
        DataError: a line is malformed (the message gives the line).
    """
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = MCItem(str(row["question"]), [str(c) for c in row["choices"]], int(row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}:{n}: expected question, choices and answer ({e})") from e
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise DataError(f"{path}:{n}: answer {item.answer} is not one of {len(item.choices)} choices")
        items.append(item)
    if not items:
        raise DataError(f"{path} has no questions")
    return items


def _state_for(spec: SteeringSpec, mask: torch.Tensor, n_prompt: torch.Tensor) -> StepState:
    """Teacher-forced steering masks (on `mask`'s device): the reply positions play the generated tokens."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    state = StepState(real=mask)
    if spec.scope == "prompt":
        state.mask = mask & (positions < n_prompt[:, None])
    elif spec.scope == "generated":
        state.mask = mask & (positions >= n_prompt[:, None])
    else:
        state.mask = mask.clone()
    return state


@torch.no_grad()
def capability_cost(
    steerer: Steerer, spec: SteeringSpec, corpus: Corpus, rows: Sequence[int], batch_size: int = 8
) -> tuple[float, float]:
    """(CE increase in nats, mean KL(unsteered || steered)) over the reply tokens of `rows`."""
    loaded, device = steerer.loaded, steerer.loaded.device
    total_ce = total_kl = 0.0
    count = 0
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start : start + batch_size])
        width = max(corpus.sequences[r].length for r in chunk)
        lengths = torch.tensor([corpus.sequences[r].length for r in chunk], device=device)
        n_prompt = torch.tensor([corpus.sequences[r].n_prompt for r in chunk], device=device)
        ids = corpus.input_ids[chunk, :width].long().to(device)
        positions = torch.arange(width, device=device)[None, :]
        attention = (positions < lengths[:, None]).long()
        real = attention.bool() & (positions > 0)
        # Position p predicts token p + 1: score predictions of reply tokens only.
        scored = (positions >= n_prompt[:, None] - 1) & (positions < lengths[:, None] - 1)
        inputs = {"input_ids": ids, "attention_mask": attention, "use_cache": False}
        clean = forward(loaded.model, **inputs).logits.float()
        hooks = steerer.hooks(spec, _state_for(spec, real, n_prompt), record=False)
        steered = forward(loaded.model, hooks, **inputs).logits.float()
        targets = ids[:, 1:]
        logp_clean = clean[:, :-1].log_softmax(-1)
        logp_steered = steered[:, :-1].log_softmax(-1)
        keep = scored[:, :-1]
        nll_clean = -logp_clean.gather(-1, targets[..., None])[..., 0][keep]
        nll_steered = -logp_steered.gather(-1, targets[..., None])[..., 0][keep]
        kl = kl_divergence(logp_clean, logp_steered)[keep]
        total_ce += float((nll_steered - nll_clean).sum())
        total_kl += float(kl.sum())
        count += int(keep.sum())
    return (total_ce / count, total_kl / count) if count else (math.nan, math.nan)


@torch.no_grad()
def mc_accuracy(steerer: Steerer, spec: SteeringSpec, items: Sequence[MCItem]) -> float:
    """Fraction of questions whose right choice has the highest summed log-likelihood as the reply."""
    loaded, device = steerer.loaded, steerer.loaded.device
    right = 0
    for item in items:
        prompt = format_chat(loaded.tokenizer, chat_messages(item.question))
        prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in item.choices:
            choice_ids = loaded.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([list(prompt_ids) + list(choice_ids)], device=device)  # pyright: ignore[reportArgumentType]
            real = torch.arange(ids.shape[1], device=device)[None, :] > 0
            n_prompt = torch.tensor([len(prompt_ids)], device=device)  # pyright: ignore[reportArgumentType]
            hooks = steerer.hooks(spec, _state_for(spec, real, n_prompt), record=False)
            logits = forward(loaded.model, hooks, input_ids=ids, use_cache=False).logits[0].float()
            n = len(prompt_ids)  # pyright: ignore[reportArgumentType]
            logp = logits[n - 1 : -1].log_softmax(-1).gather(-1, ids[0, n:, None])
            scores.append(float(logp.sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return right / len(items)
