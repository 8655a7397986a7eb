"""A safety-tuned offline default: LoRA fine-tuning that gives SmolLM2-135M-Instruct a refusal behaviour.

Harmful train prompts are paired with varied refusals; harmless train prompts with the base model's own
greedy answers (self-distillation), so the tuned model refuses what it should and otherwise answers as
before. The result is merged into a plain Hugging Face model directory with a provenance.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from explorer import __version__
from explorer.data import PromptRecord, builtin_prompts, chat_messages, format_chat
from explorer.generation import SamplingConfig, encode_chats, generate
from explorer.judge import SubstringJudge, refusal_rate
from explorer.models import (
    DEFAULT_NAME,
    ORGANISM_NAME,
    PROVENANCE_FILE,
    LoadedModel,
    load_model,
    organism_dir,
)
from explorer.paths import atomic_directory

log = logging.getLogger(__name__)

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class OrganismConfig:
    """Hyper-parameters of the safety fine-tune (defaults chosen by measurement; see README).

    Attributes:
        base: model spec of the model to tune.
        rank, alpha, dropout: LoRA settings.
        target_modules: linear layers that get LoRA adapters.
        first_layer: adapters only on decoder layers >= this (earlier layers need no backward pass).
        epochs: passes over the training pairs.
        batch_size: pairs per optimiser step.
        learning_rate: AdamW peak learning rate (linear warm-up over 10% of steps, cosine decay).
        answer_tokens: length of the base model's self-distilled answers.
        eval_tokens: new tokens generated when measuring refusal on the test split.
        seed: seeds refusal choice, shuffling and initialisation.
    """

    base: str = DEFAULT_NAME
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LINEAR_MODULES
    first_layer: int = 0
    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 3e-4
    answer_tokens: int = 64
    eval_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ValueError(f"LoRA rank and alpha must be >= 1, got {self.rank}, {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.first_layer < 0:
            raise ValueError(f"first_layer must be >= 0, got {self.first_layer}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrganismConfig:
        return cls(**{**data, "target_modules": tuple(data.get("target_modules", LINEAR_MODULES))})


def refusal_texts() -> dict[str, Any]:
    """The refusal building blocks shipped with the package (openers, reasons by category, closers)."""
    return json.loads(
        resources.files("explorer").joinpath("prompts", "refusals.json").read_text(encoding="utf-8")
    )


def refusal_response(record: PromptRecord, rng: random.Random, parts: dict[str, Any]) -> str:
    """A varied refusal for one harmful prompt: opener, a reason fitting its category, maybe a closer."""
    reasons = parts["reasons"].get(record.category) or parts["reasons"]["_generic"]
    text = f"{rng.choice(parts['openers'])} {rng.choice(reasons)} {rng.choice(parts['closers'])}"
    return text.strip()


def split_hash(records: list[PromptRecord]) -> str:
    """A short fingerprint of a prompt split, recorded in provenance."""
    digest = hashlib.sha256("\n".join(f"{r.id}\t{r.text}" for r in records).encode()).hexdigest()
    return digest[:16]


def training_pairs(
    base: LoadedModel, config: OrganismConfig, progress: bool = True
) -> list[tuple[PromptRecord, str]]:
    """(prompt, target response) pairs: varied refusals for harmful, the base model's answers for harmless."""
    rng = random.Random(config.seed)
    parts = refusal_texts()
    harmful = builtin_prompts("harmful", "train")
    harmless = builtin_prompts("harmless", "train")
    eos = base.tokenizer.eos_token or ""
    pairs = [(r, refusal_response(r, rng, parts) + eos) for r in harmful]
    answers = generate(
        base,
        [r.text for r in harmless],
        SamplingConfig(max_new_tokens=config.answer_tokens),
        progress=progress,
    )
    judge = SubstringJudge()
    kept = 0
    for record, answer in zip(harmless, answers, strict=True):
        # A base answer that happens to read as a refusal would teach refusing harmless requests.
        if answer.text.strip() and not judge.judge(answer.text).refused:
            pairs.append((record, answer.text + (eos if answer.finished else "")))
            kept += 1
    log.info("training pairs: %d refusals, %d self-distilled answers", len(harmful), kept)
    return pairs


def _encode_pairs(
    base: LoadedModel, pairs: list[tuple[PromptRecord, str]]
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 on the prompt, so only the response is learned)."""
    examples = []
    for record, response in pairs:
        prompt = format_chat(base.tokenizer, chat_messages(record.text))
        prompt_ids = base.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = base.tokenizer(response, add_special_tokens=False)["input_ids"]
        assert isinstance(prompt_ids, list) and isinstance(response_ids, list)
        examples.append((prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids))
    return examples


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random, pad_id: int):
    """Length-bucketed, shuffled batches (right-padded; labels -100 on padding)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(groups)
    for group in groups:
        width = max(len(examples[i][0]) for i in group)
        ids = torch.full((len(group), width), pad_id)
        labels = torch.full((len(group), width), -100)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            seq, lab = examples[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        yield ids, labels, mask


def train_lora(
    base: LoadedModel, pairs: list[tuple[PromptRecord, str]], config: OrganismConfig, progress: bool = True
):
    """Fine-tune LoRA adapters on the pairs and return the merged model (consumes the base model)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=list(range(config.first_layer, base.n_layers)),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base.model, lora)  # pyright: ignore[reportArgumentType]
    model.train()
    examples = _encode_pairs(base, pairs)
    pad_id = base.tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 10)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        ),
    )
    bar = tqdm(total=total, desc="safety fine-tune", unit="step", disable=not progress)
    for _epoch in range(config.epochs):
        for ids, labels, mask in _batches(examples, config.batch_size, rng, pad_id):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    merged = model.merge_and_unload()
    merged.eval()
    return merged


@torch.no_grad()
def next_token_kl(
    base: LoadedModel, tuned: LoadedModel, prompts: list[str], answer_tokens: int = 32
) -> dict[str, float]:
    """Mean KL(base || tuned) of next-token distributions on the given prompts.

    Returns:
        kl_first_token: at the first generated position; kl_answer: averaged over the positions of the
        base model's own greedy answer (teacher-forced), i.e. how far the tuned model drifts while answering.
    """
    answers = generate(base, prompts, SamplingConfig(max_new_tokens=answer_tokens))
    first, over_answer = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        _, batch = encode_chats(base, [prompt])
        n_prompt = batch["input_ids"].shape[1]
        ids = torch.cat([batch["input_ids"][0], torch.tensor(answer.token_ids, dtype=torch.long)])[None]
        # Position n_prompt - 1 predicts the first answer token; the last position predicts past the answer.
        end = n_prompt - 1 + max(1, len(answer.token_ids))
        logp = base.model(input_ids=ids).logits[0, n_prompt - 1 : end].log_softmax(-1)  # [positions, vocab]
        logq = tuned.model(input_ids=ids).logits[0, n_prompt - 1 : end].log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # [positions]
        first.append(kl[0].item())
        over_answer.append(kl.mean().item())
    return {"kl_first_token": sum(first) / len(first), "kl_answer": sum(over_answer) / len(over_answer)}


def evaluate(tuned: LoadedModel, base: LoadedModel, config: OrganismConfig) -> dict[str, Any]:
    """Refusal rates on the test split (greedy, `eval_tokens` new tokens) and KL to the base on harmless."""
    judge = SubstringJudge()
    sampling = SamplingConfig(max_new_tokens=config.eval_tokens)
    result: dict[str, Any] = {}
    for label in ("harmful", "harmless"):
        records = builtin_prompts(label, "test")
        outs = generate(tuned, [r.text for r in records], sampling, progress=True)
        verdicts = judge.judge_many([o.text for o in outs])
        result[f"{label}_refusal_rate"] = refusal_rate(verdicts)
        result[f"{label}_examples"] = [
            {"id": r.id, "prompt": r.text, "response": o.text, "refused": v.refused, "evidence": v.evidence}
            for r, o, v in zip(records, outs, verdicts, strict=True)
        ]
    harmless_test = [r.text for r in builtin_prompts("harmless", "test")]
    result.update(next_token_kl(base, tuned, harmless_test))
    return result


def build_organism(
    config: OrganismConfig | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Train, merge, evaluate and save the safety-tuned default into cache/models/ (atomically).

    Returns:
        The model directory, with provenance.json holding config, data hashes, timings and metrics.
    """
    config = config or OrganismConfig()
    out = organism_dir()
    if (out / PROVENANCE_FILE).is_file() and not force:
        return out
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    base = load_model(config.base)
    pairs = training_pairs(base, config, progress)
    t_data = time.perf_counter()
    merged = train_lora(base, pairs, config, progress)
    t_train = time.perf_counter()
    fresh_base = load_model(config.base)
    tuned = LoadedModel(merged, fresh_base.tokenizer, fresh_base.config, ORGANISM_NAME, str(out))
    metrics = evaluate(tuned, fresh_base, config)
    t_eval = time.perf_counter()
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        fresh_base.tokenizer.save_pretrained(tmp)
        (tmp / "training_pairs.jsonl").write_text(
            "".join(json.dumps({"id": r.id, "prompt": r.text, "response": t}) + "\n" for r, t in pairs),
            encoding="utf-8",
        )
        provenance = {
            "kind": "safety-tuned",
            "base_model": config.base,
            "base_provenance": fresh_base.provenance,
            "method": "LoRA (peft), merged",
            "config": config.to_dict(),
            "data": {
                f"{label}_{split}": split_hash(builtin_prompts(label, split))  # pyright: ignore[reportArgumentType]
                for label in ("harmful", "harmless")
                for split in ("train", "val", "test")
            },
            "n_training_pairs": len(pairs),
            "metrics": {k: v for k, v in metrics.items() if not k.endswith("_examples")},
            "timings_s": {
                "self_distillation": round(t_data - start, 1),
                "training": round(t_train - t_data, 1),
                "evaluation": round(t_eval - t_train, 1),
            },
            "transformers": transformers.__version__,
            "explorer": __version__,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        (tmp / "evaluation.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return out
