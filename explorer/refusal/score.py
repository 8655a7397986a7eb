"""Would the model refuse a prompt: its refusal score, as the direction selection computes it, and its
greedy reply with a judge's verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from explorer.core.generation import SamplingConfig, generate
from explorer.core.judge import Judge, SubstringJudge
from explorer.core.models import LoadedModel
from explorer.refusal.candidates import RefusalConfig, refusal_scores, refusal_token_ids
from explorer.refusal.direction import RefusalDirection

REPLY_TOKENS = 48
"""New tokens in a judged reply: enough for a refusal phrase to appear, short enough to stay quick."""


@dataclass(frozen=True)
class JudgedReply:
    """The model's greedy reply to one prompt and a judge's verdict on it.

    Attributes:
        prompt: the user prompt.
        text: the reply (at most `n_new` tokens, special tokens dropped).
        n_new: how many new tokens were allowed.
        finished: True if the model ended its reply before `n_new` tokens.
        refused: the judge's verdict.
        evidence: what decided it (the matched phrase in context, or the classifier's label).
        judge: the judge's name.
    """

    prompt: str
    text: str
    n_new: int
    finished: bool
    refused: bool
    evidence: str
    judge: str


def refusal_strings(refusal: RefusalDirection | None) -> list[str]:
    """The refusal-opening strings the direction was selected with (the default selection's without one)."""
    config = refusal.selection.get("config", {}) if refusal is not None else {}
    return list(config.get("refusal_tokens") or RefusalConfig().refusal_tokens)


def refusal_score_of(loaded: LoadedModel, logits: torch.Tensor, strings: list[str]) -> list[float]:
    """Refusal scores from next-token logits at the reply's start: [batch, vocab] -> one per row.

    The log-odds that the reply opens with a refusal token, exactly as the direction selection scores
    candidates (`refusal_scores` of the first generated token's log-probabilities): above 0, a refusal
    opening is more likely than not.

    Args:
        loaded: the model (its tokenizer turns `strings` into token ids).
        logits: [batch, vocab] logits at each prompt's last position.
        strings: refusal-opening strings; the first token of each counts.

    Raises:
        DataError: strings that tokenize to nothing.
    """
    logprobs = logits.float().log_softmax(-1).cpu()  # [batch, vocab]
    return refusal_scores(logprobs, refusal_token_ids(loaded, strings)).tolist()


def score_probability(score: float) -> float:
    """The probability of a refusal opening that a log-odds score stands for."""
    return 1.0 / (1.0 + math.exp(-score))


def judged_replies(
    loaded: LoadedModel, prompts: list[str], n_new: int = REPLY_TOKENS, judge: Judge | None = None
) -> list[JudgedReply]:
    """Each prompt's greedy reply and a judge's verdict on it.

    Prompts are generated one at a time, so a reply does not depend on the prompts beside it (left padding
    in a batch changes the numbers slightly).

    Args:
        loaded: the model.
        prompts: user prompts.
        n_new: new tokens per reply.
        judge: the refusal judge (the offline substring judge by default).

    Raises:
        DataError: an empty prompt, or one that with `n_new` tokens exceeds the context.
    """
    judge = judge or SubstringJudge()
    completions = generate(loaded, prompts, SamplingConfig(max_new_tokens=n_new), batch_size=1)
    replies = []
    for prompt, completion in zip(prompts, completions, strict=True):
        verdict = judge.judge(completion.text, prompt)
        replies.append(
            JudgedReply(
                prompt,
                completion.text,
                n_new,
                completion.finished,
                verdict.refused,
                verdict.evidence,
                verdict.judge,
            )
        )
    return replies
