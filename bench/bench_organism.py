"""Safety fine-tune cost on the offline default, measured side by side.

Times training steps of the same mixed batch under four choices (LoRA on every layer, LoRA from
`first_layer` on in float32 and under bfloat16 autocast as the build trains, full fine-tune of the
layers from `first_layer` on) and prints their ratios. With
`--full` it also runs the whole organism build into a temporary cache and prints each phase against the
10-minute budget. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import tempfile
import time
from typing import Any

import torch

from explorer.core.models import load_model
from explorer.core.prompts import builtin_prompts
from explorer.refusal.organism import OrganismConfig, _batches, _encode_pairs, weighted_loss

BUDGET_S = 600.0


def step_seconds(
    model: Any, params: list[torch.nn.Parameter], batch, steps: int = 3, autocast: bool = False
) -> float:
    ids, labels, mask, _ = batch
    optimiser = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
            loss = weighted_loss(out.hidden_states[-1], labels, model.get_output_embeddings(), 5.0)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time a whole organism build")
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    config = OrganismConfig()
    base = load_model("smollm2-135m-instruct")
    harmful = [
        (r, "I'm sorry, but I can't help with that.<|im_end|>") for r in builtin_prompts("harmful", "train")
    ]
    harmless = [
        (r, "Sure! Here is a short and helpful answer for you.") for r in builtin_prompts("harmless", "train")
    ]
    pad_id = base.tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    batch = next(
        _batches(
            _encode_pairs(base, harmful),
            _encode_pairs(base, harmless),
            config.batch_size,
            random.Random(0),
            pad_id,
        )
    )
    results = {}
    for name, first_layer in (
        ("LoRA, all layers", 0),
        (f"LoRA, layers >= {config.first_layer}", config.first_layer),
    ):
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            target_modules=list(config.target_modules),
            layers_to_transform=list(range(first_layer, base.n_layers)),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(copy.deepcopy(base.model), lora)  # pyright: ignore[reportArgumentType]
        params = [p for p in model.parameters() if p.requires_grad]
        results[name] = step_seconds(model, params, batch)
        if first_layer == config.first_layer:  # the build's choice, with and without its autocast
            results[f"{name}, bfloat16 autocast"] = step_seconds(model, params, batch, autocast=True)
    full = copy.deepcopy(base.model)
    for p in full.parameters():
        p.requires_grad_(False)
    trainable = [
        p for i, layer in enumerate(full.model.layers) if i >= config.first_layer for p in layer.parameters()
    ]
    for p in trainable:
        p.requires_grad_(True)
    results[f"full fine-tune, layers >= {config.first_layer}"] = step_seconds(full, trainable, batch)
    reference = results["LoRA, all layers"]
    tokens = int(batch[2].sum())
    print(f"one training step, batch of {config.batch_size} ({tokens} tokens):")
    for name, seconds in results.items():
        print(f"  {name:<40} {seconds:6.2f} s   ratio to LoRA all layers {seconds / reference:.2f}x")

    if args.full:
        from explorer.refusal.organism import build_organism

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["EXPLORER_CACHE_DIR"] = tmp
            start = time.perf_counter()
            out = build_organism(config, force=True)
            total = time.perf_counter() - start
            import json

            provenance = json.loads((out / "provenance.json").read_text())
        print(f"whole organism build: {total:.0f} s = {total / BUDGET_S:.2f}x the {BUDGET_S:.0f} s budget")
        for phase, seconds in provenance["timings_s"].items():
            print(f"  {phase:<18} {seconds:6.1f} s")
        print("metrics:", json.dumps(provenance["metrics"]))


if __name__ == "__main__":
    main()
