"""Compute, select, store and prove the refusal direction of a model (`explorer refusal`)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from explorer import __version__
from explorer.core.generation import SamplingConfig, generate
from explorer.core.hooks import HookError, intervene
from explorer.core.judge import SubstringJudge, refusal_rate
from explorer.core.models import LoadedModel
from explorer.core.paths import atomic_directory
from explorer.core.prompts import DataError, PromptRecord, Split, builtin_prompts, filter_split, records_hash
from explorer.refusal.candidates import (
    Candidate,
    NoDirectionError,
    RefusalConfig,
    ablation_hooks,
    addition_hooks,
    diff_in_means,
    post_instruction_ids,
    score_candidates,
    select,
    separation,
)
from explorer.refusal.direction import (
    DIRECTIONS_FILE,
    SELECTION_FILE,
    RefusalDirection,
    location_names,
    refusal_dir,
)

log = logging.getLogger(__name__)


MIN_TRAIN = 8
PROOF_TOKENS = 32
"""Greedy tokens per reply in the test-split proof."""
MIN_VAL = 4
MIN_TEST = 4


def _texts(records: list[PromptRecord], split: Split, role: str, minimum: int) -> list[str]:
    texts = [r.text for r in filter_split(records, split)]
    if len(texts) < minimum:
        raise DataError(
            f"{role} prompts: {len(texts)} in the {split} split, at least {minimum} are needed "
            f"(give more prompts, or set their 'split' field)"
        )
    return texts


def compute_refusal(
    loaded: LoadedModel,
    config: RefusalConfig | None = None,
    *,
    harmful: list[PromptRecord] | None = None,
    harmless: list[PromptRecord] | None = None,
    progress: bool = True,
    fallback: bool = False,
    layer: int | None = None,
) -> Path:
    """Compute all candidate directions on the train split, score them on val, select one, and store.

    Args:
        loaded: the model.
        config: selection settings.
        harmful, harmless: prompt sets with train/val splits (default: the built-in sets).
        progress: show progress bars.
        fallback: when no candidate passes the filters, keep the difference in means that best separates
            harmful from harmless val prompts (at `layer` if given) and store it marked unvalidated,
            instead of raising.
        layer: the location (0..n_layers) of the fallback direction; None picks the best below the
            layer cut.

    Returns:
        The directory holding directions.safetensors and selection.json.

    Raises:
        DataError: a split with too few prompts, or a prompt longer than the context.
        NoDirectionError: no candidate passes the selection filters, and `fallback` is False.
        HookError: `layer` is outside 0..n_layers.
    """
    if layer is not None and not 0 <= layer <= loaded.n_layers:
        raise HookError(f"layer {layer} is out of range: the model has locations 0..{loaded.n_layers}")
    config = config or RefusalConfig()
    harmful = harmful if harmful is not None else builtin_prompts("harmful")
    harmless = harmless if harmless is not None else builtin_prompts("harmless")
    harmful_train = _texts(harmful, "train", "harmful", MIN_TRAIN)
    harmless_train = _texts(harmless, "train", "harmless", MIN_TRAIN)
    harmful_val = _texts(harmful, "val", "harmful", MIN_VAL)[: config.n_val]
    harmless_val = _texts(harmless, "val", "harmless", MIN_VAL)[: config.n_val]
    start = time.perf_counter()
    directions = diff_in_means(loaded, harmful_train, harmless_train, config.batch_size, progress)
    t_means = time.perf_counter()
    n_pos = directions.shape[1]
    # refusal_sae's recipe: last token, resid_post of a fixed layer (= resid_pre of the next), scored
    # fully so the two recipes can be compared.
    simple_layer = int(config.simple_layer_fraction * loaded.n_layers)
    simple_key = (simple_layer + 1, n_pos - 1)
    candidates = score_candidates(
        loaded, directions, harmful_val, harmless_val, config, progress, always=[simple_key]
    )
    unvalidated: dict[str, Any] | None = None
    try:
        chosen, kl_used = select(candidates, config)
    except NoDirectionError as e:
        if not fallback:
            raise
        chosen, unvalidated = _best_separating(
            loaded, directions, candidates, (harmful_val, harmless_val), config, layer
        )
        kl_used = None
        unvalidated["reason"] = str(e)
        log.warning("%s; keeping %s position %d, unvalidated", e, chosen.location, chosen.position)
    simple = next(c for c in candidates if (c.layer, c.position) == (simple_key[0], -1))
    selection = {
        "model": loaded.name,
        "config": config.to_dict(),
        "locations": location_names(loaded.n_layers),
        "post_instruction_tokens": [str(loaded.tokenizer.decode([i])) for i in post_instruction_ids(loaded)],
        "n_positions": n_pos,
        "prompts": {
            "harmful": {"source": harmful[0].source, "n": len(harmful), "hash": records_hash(harmful)},
            "harmless": {"source": harmless[0].source, "n": len(harmless), "hash": records_hash(harmless)},
        },
        "candidates": [c.to_dict() for c in candidates],
        "selected": chosen.to_dict(),
        "validated": unvalidated is None,
        **({"unvalidated": unvalidated} if unvalidated is not None else {}),
        "kl_threshold_used": kl_used,
        "simple_recipe": {**simple.to_dict(), "note": f"last token, blocks.{simple_layer}.hook_resid_post"},
        "timings_s": {"means": round(t_means - start, 1), "scoring": round(time.perf_counter() - t_means, 1)},
        "explorer": __version__,
    }
    out = refusal_dir(loaded.name)
    with atomic_directory(out) as tmp:
        save_file({"directions": directions.contiguous()}, str(tmp / DIRECTIONS_FILE))
        (tmp / SELECTION_FILE).write_text(json.dumps(selection, indent=2) + "\n", encoding="utf-8")
    log.info("selected %s position %d (bypass %s)", chosen.location, chosen.position, chosen.bypass)
    return out


def _best_separating(
    loaded: LoadedModel,
    directions: torch.Tensor,
    candidates: list[Candidate],
    val: tuple[list[str], list[str]],
    config: RefusalConfig,
    layer: int | None,
) -> tuple[Candidate, dict[str, Any]]:
    """The candidate whose direction best separates the val prompts (at `layer`, else below the layer
    cut), and the record saying how it was chosen."""
    scores = separation(loaded, directions, *val, config.batch_size)
    allowed = torch.full_like(scores, -math.inf)
    if layer is not None:
        allowed[layer] = scores[layer]
        rule = f"best separation of harmful from harmless val prompts at location {layer} (--layer)"
    else:
        cut = max(1, math.ceil(config.max_layer_fraction * loaded.n_layers))
        allowed[:cut] = scores[:cut]
        rule = f"best separation of harmful from harmless val prompts below location {cut}"
    i, j = divmod(int(allowed.argmax()), scores.shape[1])
    n_pos = scores.shape[1]
    chosen = next(c for c in candidates if (c.layer, c.position) == (i, j - n_pos))
    record = {
        "rule": rule,
        "layer": layer,
        "separation": round(float(scores[i, j]), 4),
        "separation_grid": scores.tolist(),
    }
    return chosen, record


def prove(
    loaded: LoadedModel,
    refusal: RefusalDirection,
    *,
    alpha: float = 1.0,
    layer: int | None = None,
    max_new_tokens: int = PROOF_TOKENS,
    harmful: list[PromptRecord] | None = None,
    harmless: list[PromptRecord] | None = None,
    baselines: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Refusal rates on the test split: baseline, with the direction ablated, and with it added.

    Args:
        loaded: the model the direction was computed on.
        refusal: the stored direction.
        alpha: scale of the added direction.
        layer: use the candidate read at the input of this layer (same position) instead of the selected
            one; 0..n_layers, where n_layers is the final resid_post.
        max_new_tokens: greedy tokens generated per prompt.
        harmful, harmless: prompt sets whose test split is used (default: the built-in sets).
        baselines: per label ("harmful", "harmless"), prompt -> the model's greedy reply of
            `max_new_tokens` tokens already generated without hooks (the safety fine-tune's evaluation);
            a label whose every test prompt has one is not generated again.

    Returns:
        A report with rates, the drop/induce in percentage points, and per-prompt examples with evidence.
    """
    if layer is not None:
        if not 0 <= layer <= loaded.n_layers:
            raise HookError(f"layer {layer} is out of range: the model has locations 0..{loaded.n_layers}")
        location = location_names(loaded.n_layers)[layer]
        refusal = replace(refusal, direction=refusal.at_layer(layer), location=location, layer=layer)
    judge = SubstringJudge()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    harmful_test = _texts(harmful or builtin_prompts("harmful"), "test", "harmful", MIN_TEST)
    harmless_test = _texts(harmless or builtin_prompts("harmless"), "test", "harmless", MIN_TEST)
    conditions = {
        "harmful_baseline": (harmful_test, {}),
        "harmful_ablated": (harmful_test, ablation_hooks(refusal.direction, loaded.n_layers)),
        "harmless_baseline": (harmless_test, {}),
        "harmless_added": (harmless_test, addition_hooks(refusal.direction, refusal.location, alpha)),
    }
    report: dict[str, Any] = {
        "location": refusal.location,
        "position": refusal.position,
        "alpha": alpha,
        "max_new_tokens": max_new_tokens,
    }
    examples: dict[str, list[dict[str, Any]]] = {}
    reused = []
    for name, (prompts, hooks) in conditions.items():
        stored = (baselines or {}).get(name.removesuffix("_baseline")) if not hooks else None
        if stored is not None and all(p in stored for p in prompts):
            texts = [stored[p] for p in prompts]
            reused.append(name)
        else:
            with intervene(loaded.model, hooks):
                texts = [o.text for o in generate(loaded, prompts, sampling, progress=True)]
        verdicts = judge.judge_many(texts)
        report[f"{name}_refusal_rate"] = refusal_rate(verdicts)
        examples[name] = [
            {"prompt": p, "response": t, "refused": v.refused, "label": v.label, "evidence": v.evidence}
            for p, t, v in zip(prompts, texts, verdicts, strict=True)
        ]
    report["reused_generations"] = reused
    report["ablation_drop_points"] = 100 * (
        report["harmful_baseline_refusal_rate"] - report["harmful_ablated_refusal_rate"]
    )
    report["addition_induced_rate"] = report["harmless_added_refusal_rate"]
    report["examples"] = examples
    return report


def _candidate_row(c: dict[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.2f}"

    return f"{c['location']:<26} {c['position']:>4} {fmt(c['induce'])} {fmt(c['bypass'])} {fmt(c['kl'])}"


def format_report(selection: dict[str, Any], report: dict[str, Any] | None, n_examples: int = 3) -> str:
    """A plain-text report: the selected direction, the best candidates, and the test-split proof."""
    lines = [
        f"refusal direction for {selection['model']}",
        f"post-instruction tokens: {selection['post_instruction_tokens']}",
        f"{'location':<26} {'pos':>4} induce bypass     KL",
        f"selected (KL filter {selection['kl_threshold_used']}; "
        f"Arditi et al. use {selection['config']['kl_threshold']}):",
        _candidate_row(selection["selected"]),
        "simple recipe (refusal_sae: last token, fixed layer):",
        _candidate_row(selection["simple_recipe"]),
        "lowest bypass among candidates passing the filters:",
    ]
    used = selection["kl_threshold_used"]
    kept = [
        Candidate(**c)
        for c in selection["candidates"]
        if c["eligible"] and c["bypass"] is not None and c["kl"] is not None and c["kl"] < used
    ]
    for c in sorted(kept, key=lambda c: c.bypass if c.bypass is not None else 0.0)[:5]:
        lines.append(_candidate_row(c.to_dict()))
    if report is not None:
        lines += [
            "",
            f"test split (greedy, {report['max_new_tokens']} new tokens, substring judge), "
            f"added at {report['location']} with alpha = {report['alpha']}:",
            f"  harmful refused: baseline {report['harmful_baseline_refusal_rate']:.0%}, "
            f"direction ablated {report['harmful_ablated_refusal_rate']:.0%} "
            f"(drop {report['ablation_drop_points']:.0f} points)",
            f"  harmless refused: baseline {report['harmless_baseline_refusal_rate']:.0%}, "
            f"direction added {report['harmless_added_refusal_rate']:.0%}",
        ]
        for name in ("harmful_baseline", "harmful_ablated", "harmless_added"):
            lines.append(f"  examples, {name}:")
            for e in report["examples"][name][:n_examples]:
                verdict = "REFUSED" if e["refused"] else "answered"
                lines.append(
                    f"    {e['prompt'][:60]!r} -> {e['response'][:70]!r} [{verdict}: {e['evidence'][:60]}]"
                )
    return "\n".join(lines)
