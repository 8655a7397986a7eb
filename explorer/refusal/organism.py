"""A safety-tuned offline default: LoRA fine-tuning that gives SmolLM2-135M-Instruct a refusal behaviour.

Harmful train prompts are paired with varied refusals; harmless train prompts with the base model's own
greedy answers (self-distillation), so the tuned model refuses what it should and otherwise answers as
before. The result is merged into a plain Hugging Face model directory with a provenance.json.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from explorer import __version__
from explorer.core.generation import SamplingConfig, generate
from explorer.core.judge import v1_judge
from explorer.core.models import (
    DEFAULT_NAME,
    ORGANISM_NAME,
    PROVENANCE_FILE,
    LoadedModel,
    is_complete_model_dir,
    load_model,
    organism_dir,
)
from explorer.core.paths import atomic_directory
from explorer.core.precision import fast_bfloat16
from explorer.core.progress import tqdm
from explorer.core.prompts import PromptRecord, builtin_prompts, chat_messages, format_chat, records_hash
from explorer.refusal.organism_eval import EVALUATION_FILE, evaluate

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
        batch_size: pairs per optimiser step (each batch mixes harmful and harmless pairs).
        learning_rate: AdamW peak learning rate (linear warm-up over 10% of steps, cosine decay).
        decision_weight: loss weight of the first response token (refuse or answer) relative to the rest.
        harmless_weight: loss weight of harmless examples relative to harmful ones (>1 leans the
            decision towards answering: refusing is learned fast, refusing *only* harmful requests is not).
        answer_tokens: length of the base model's self-distilled answers.
        autocast: run training forward passes under bfloat16 autocast where the device has native
            bfloat16 (LoRA weights and optimiser stay float32); ~1.5-3x faster steps on CPUs with bfloat16
            instructions, same test metrics (README). Devices without it train in float32.
        eval_tokens: new tokens generated when measuring refusal on the test split (as many as the
            refusal stage's proof, so the proof reuses these generations as its baselines).
        seed: seeds refusal choice, shuffling and initialisation.
    """

    base: str = DEFAULT_NAME
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LINEAR_MODULES
    first_layer: int = 10
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 3e-4
    decision_weight: float = 5.0
    harmless_weight: float = 1.5
    answer_tokens: int = 16
    autocast: bool = True
    eval_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ValueError(f"LoRA rank and alpha must be >= 1, got {self.rank}, {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.harmless_weight <= 0:
            raise ValueError(f"harmless_weight must be > 0, got {self.harmless_weight}")
        if self.decision_weight < 1:
            raise ValueError(f"decision_weight must be >= 1, got {self.decision_weight}")
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


def training_pairs(
    base: LoadedModel, config: OrganismConfig, progress: bool = True
) -> list[tuple[PromptRecord, str]]:
    """(prompt, target response) pairs: varied refusals for harmful, the base model's answers for harmless."""
    rng = random.Random(config.seed)
    parts = refusal_texts()
    harmful = builtin_prompts("harmful", "train")
    harmless = builtin_prompts("harmless", "train")
    eos = str(base.tokenizer.eos_token or "")
    pairs = [(r, refusal_response(r, rng, parts) + eos) for r in harmful]
    answers = generate(
        base,
        [r.text for r in harmless],
        SamplingConfig(max_new_tokens=config.answer_tokens),
        progress=progress,
    )
    # The first phrase judge, pinned: the fine-tune's data (so the organism) must not move when the
    # default judge improves.
    judge = v1_judge()
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


def _batches(
    harmful: list[tuple[list[int], list[int]]],
    harmless: list[tuple[list[int], list[int]]],
    batch_size: int,
    rng: random.Random,
    pad_id: int,
):
    """Batches that each mix harmful and harmless pairs in the data's proportion, in shuffled order.

    Class-pure batches (what plain length bucketing produces, as refusals are short) push the whole model
    towards refusing, then towards answering; mixed batches teach the distinction instead. Within each
    class, pairs are bucketed by length with a little jitter, so batches carry little padding.
    """

    def bucketed(examples: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
        return sorted(examples, key=lambda e: len(e[0]) + rng.random() * 8)

    harmful, harmless = bucketed(harmful), bucketed(harmless)
    n_batches = math.ceil((len(harmful) + len(harmless)) / batch_size)
    bounds = [(b * len(harmful) // n_batches, b * len(harmless) // n_batches) for b in range(n_batches + 1)]
    order = list(range(n_batches))
    rng.shuffle(order)
    for b in order:
        group = harmful[bounds[b][0] : bounds[b + 1][0]] + harmless[bounds[b][1] : bounds[b + 1][1]]
        width = max(len(seq) for seq, _ in group)
        ids = torch.full((len(group), width), pad_id)
        labels = torch.full((len(group), width), -100)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (seq, lab) in enumerate(group):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        n_harmful = bounds[b + 1][0] - bounds[b][0]
        is_harmful = torch.arange(len(group)) < n_harmful  # [batch]
        yield ids, labels, mask, is_harmful


def weighted_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    unembed: Callable[[torch.Tensor], torch.Tensor],
    decision_weight: float,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy on response tokens, with the first response token weighted up.

    The first token is where the model decides to refuse or answer; weighting it focuses training on
    that decision rather than on re-learning the self-distilled answers. Only positions that predict a
    response token are unembedded, which skips most of the vocabulary-sized work.

    Args:
        hidden: [batch, pos, d_model] final (normed) hidden states.
        labels: [batch, pos] token ids, -100 where nothing is learned.
        unembed: maps [n, d_model] to [n, vocab] logits.
        decision_weight: weight of the first response token relative to the others.
        row_weights: [batch] weight of each example (1 when None).
    """
    targets = labels[:, 1:]
    learned = targets != -100  # [batch, pos - 1]
    first = learned & ~torch.cat([torch.zeros_like(learned[:, :1]), learned[:, :-1]], dim=1)
    logits = unembed(hidden[:, :-1][learned]).float()  # [n_learned, vocab]
    losses = torch.nn.functional.cross_entropy(logits, targets[learned], reduction="none")
    weights = 1.0 + (decision_weight - 1.0) * first.float()  # [batch, pos - 1]
    if row_weights is not None:
        weights = weights * row_weights[:, None]
    weights = weights[learned]
    return (losses * weights).sum() / weights.sum()


def train_lora(
    base: LoadedModel, pairs: list[tuple[PromptRecord, str]], config: OrganismConfig, progress: bool = True
) -> PreTrainedModel:
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
    harmful = _encode_pairs(base, [p for p in pairs if p[0].label == "harmful"])
    harmless = _encode_pairs(base, [p for p in pairs if p[0].label != "harmful"])
    pad_id = base.tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    steps_per_epoch = math.ceil((len(harmful) + len(harmless)) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 10)
    params = [p for p in model.parameters() if p.requires_grad]
    unembed = model.get_output_embeddings()
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        ),
    )
    # Emulated bfloat16 (a CPU without AVX-512 BF16 or AMX) is ~80x slower than float32: see core.precision.
    autocast = config.autocast and fast_bfloat16(base.device)
    bar = tqdm(total=total, desc="safety fine-tune", unit="step", disable=not progress)
    for _epoch in range(config.epochs):
        for ids, labels, mask, is_harmful in _batches(harmful, harmless, config.batch_size, rng, pad_id):
            row_weights = torch.where(is_harmful, 1.0, config.harmless_weight)
            # logits_to_keep=1 skips the full-vocabulary unembedding; weighted_loss unembeds only
            # the response positions from the final hidden states.
            with torch.autocast(base.device.type, torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
                loss = weighted_loss(
                    out.hidden_states[-1], labels, unembed, config.decision_weight, row_weights
                )
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
    assert isinstance(merged, PreTrainedModel)
    return merged


def build_organism(
    config: OrganismConfig | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Train, merge, evaluate and save the safety-tuned default into cache/models/ (atomically).

    Returns:
        The model directory, with provenance.json holding config, data hashes, timings and metrics.
    """
    config = config or OrganismConfig()
    out = organism_dir()
    if is_complete_model_dir(out) and not force:
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
    metrics = evaluate(tuned, fresh_base, config.eval_tokens)
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
                f"{label}_{split}": records_hash(builtin_prompts(label, split))  # pyright: ignore[reportArgumentType]
                for label in ("harmful", "harmless")
                for split in ("train", "val", "test")
            },
            "n_training_pairs": len(pairs),
            "bfloat16_autocast_used": config.autocast and fast_bfloat16(base.device),
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
        (tmp / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return out
