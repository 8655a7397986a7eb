"""How good the safety fine-tune is: refusal on the test split, drift from the base model, and the stored
replies later stages reuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from explorer.core.generation import SamplingConfig, encode_chats, generate
from explorer.core.hooks import forward
from explorer.core.judge import SubstringJudge, label_rate, refusal_rate
from explorer.core.models import PROVENANCE_FILE, LoadedModel
from explorer.core.prompts import builtin_prompts
from explorer.refusal.candidates import kl_divergence

EVALUATION_FILE = "evaluation.json"


@torch.no_grad()
def next_token_kl(
    base: LoadedModel, tuned: LoadedModel, prompts: list[str], answer_tokens: int = 32, batch_size: int = 16
) -> dict[str, float]:
    """Mean KL(base || tuned) of next-token distributions on the given prompts.

    Returns:
        kl_first_token: at the first generated position; kl_answer: averaged over the positions of the
        base model's own greedy answer (teacher-forced), i.e. how far the tuned model drifts while answering.
    """
    answers = generate(base, prompts, SamplingConfig(max_new_tokens=answer_tokens), batch_size=batch_size)
    pad_id = base.tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    first, over_answer = [], []
    for start in range(0, len(prompts), batch_size):
        _, batch = encode_chats(base, prompts[start : start + batch_size])
        rows = answers[start : start + batch_size]
        n_prompt, width = batch["input_ids"].shape[1], max(1, *(len(a.token_ids) for a in rows))
        answer_ids = torch.full((len(rows), width), pad_id)
        answer_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, a in enumerate(rows):
            answer_ids[r, : len(a.token_ids)] = torch.tensor(a.token_ids, dtype=torch.long)
            answer_mask[r, : len(a.token_ids)] = 1
        ids = torch.cat([batch["input_ids"], answer_ids], dim=1)
        mask = torch.cat([batch["attention_mask"], answer_mask], dim=1)
        # Position n_prompt - 1 predicts the first answer token, n_prompt - 1 + k the token after k of them.
        span = slice(n_prompt - 1, n_prompt - 1 + width)
        logp = forward(base.model, input_ids=ids, attention_mask=mask).logits[:, span].float().log_softmax(-1)
        logq = (
            forward(tuned.model, input_ids=ids, attention_mask=mask).logits[:, span].float().log_softmax(-1)
        )
        kl = kl_divergence(logp, logq)  # [batch, width]
        for r, a in enumerate(rows):
            first.append(kl[r, 0].item())
            over_answer.append(kl[r, : max(1, len(a.token_ids))].mean().item())
    return {"kl_first_token": sum(first) / len(first), "kl_answer": sum(over_answer) / len(over_answer)}


def evaluate(tuned: LoadedModel, base: LoadedModel, eval_tokens: int) -> dict[str, Any]:
    """Refusal rates on the test split (greedy, `eval_tokens` new tokens) and KL to the base on harmless."""
    judge = SubstringJudge()
    sampling = SamplingConfig(max_new_tokens=eval_tokens)
    result: dict[str, Any] = {}
    for label in ("harmful", "harmless"):
        records = builtin_prompts(label, "test")
        outs = generate(tuned, [r.text for r in records], sampling, progress=True)
        verdicts = judge.judge_many([o.text for o in outs])
        result[f"{label}_refusal_rate"] = refusal_rate(verdicts)
        result[f"{label}_degenerate_rate"] = label_rate(verdicts, "degenerate")
        result[f"{label}_examples"] = [
            {
                "id": r.id,
                "prompt": r.text,
                "response": o.text,
                "refused": v.refused,
                "label": v.label,
                "evidence": v.evidence,
            }
            for r, o, v in zip(records, outs, verdicts, strict=True)
        ]
    harmless_test = [r.text for r in builtin_prompts("harmless", "test")]
    result.update(next_token_kl(base, tuned, harmless_test, answer_tokens=16))
    return result


def stored_replies(model_dir: Path, max_new_tokens: int) -> dict[str, dict[str, str]] | None:
    """The test-split replies the fine-tune's evaluation generated (greedy, no hooks), per label
    ("harmful", "harmless") as prompt -> reply, when they are `max_new_tokens` long; else None."""
    try:
        provenance = json.loads((model_dir / PROVENANCE_FILE).read_text())
        evaluation = json.loads((model_dir / EVALUATION_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if provenance.get("config", {}).get("eval_tokens") != max_new_tokens:
        return None
    return {
        label: {e["prompt"]: e["response"] for e in evaluation.get(f"{label}_examples", [])}
        for label in ("harmful", "harmless")
    }
