"""Replies to label by reading them, so a judge's agreement can be measured on this model.

A judge is only trustworthy on the kinds of reply it will see, so the sample spans them: unsteered
replies to harmful and harmless prompts, the refusal direction ablated (answers to harmful prompts) and
added at growing strengths (induced refusals, then broken text), the latents most aligned with refusal
clamped mildly and hard, flipped (×−3), and unsteered replies to the separately written prompts. Each
reply is written with an empty `kind` for a reader to fill in (see `JUDGE_LABELS.md`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import PromptRecord, builtin_prompts, elsewhere_prompts, stratified_sample
from explorer.steering.decode import Steerer, decode_many
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec


def sample_settings(
    latents: Sequence[tuple[str, int]], *, has_direction: bool
) -> list[tuple[str, str, SteeringSpec]]:
    """(name, prompt label, spec) of every setting sampled: the direction ones only with a direction,
    the latent ones only with latents."""
    settings: list[tuple[str, str, SteeringSpec]] = [
        ("unsteered", "harmful", SteeringSpec()),
        ("unsteered", "harmless", SteeringSpec()),
    ]
    if has_direction:
        settings += [
            ("direction ablate", "harmful", SteeringSpec(direction=DirectionBaseline("ablate"))),
            ("direction add 1", "harmless", SteeringSpec(direction=DirectionBaseline("add", 1.0))),
            ("direction add 3", "harmless", SteeringSpec(direction=DirectionBaseline("add", 3.0))),
            ("direction add 6", "harmful", SteeringSpec(direction=DirectionBaseline("add", 6.0))),
        ]
    if latents:
        for name, label, mode, value, units in (
            ("set 1xmax", "harmless", "set", 1.0, "max"),
            ("set 4xmax", "harmless", "set", 4.0, "max"),
            ("set 10xmax", "harmful", "set", 10.0, "max"),
            ("multiply -3", "harmful", "multiply", -3.0, "raw"),
        ):
            clamps = tuple(Clamp(hook, i, mode, value, units) for hook, i in latents)  # pyright: ignore[reportArgumentType]
            settings.append((f"{name} on {len(latents)} latents", label, SteeringSpec(clamps)))
    return settings


def sample_replies(
    steerer: Steerer,
    latents: Sequence[tuple[str, int]],
    *,
    per_setting: int = 32,
    elsewhere: int = 24,
    max_new_tokens: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Greedy replies of every setting of `sample_settings` to `per_setting` val-split prompts each, and
    unsteered replies to `elsewhere` prompts of each label of the separately written set, shuffled so a
    reader cannot tell the setting from the order.

    Returns:
        Rows of id, prompt, prompt_label, setting, reply and an empty kind.
    """
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    rng = random.Random(seed)
    jobs: list[tuple[str, str, SteeringSpec, list[PromptRecord]]] = []
    for name, label, spec in sample_settings(latents, has_direction=steerer.refusal is not None):
        pool = builtin_prompts(label, "val")  # pyright: ignore[reportArgumentType]
        jobs.append((name, label, spec, stratified_sample(pool, per_setting, rng.randrange(2**31))))
    if elsewhere:
        for label in ("harmful", "harmless"):
            pool = elsewhere_prompts(label)  # pyright: ignore[reportArgumentType]
            jobs.append(
                ("unsteered elsewhere", label, SteeringSpec(), stratified_sample(pool, elsewhere, seed))
            )
    rows = []
    for name, label, spec, records in jobs:
        replies = decode_many(steerer, [r.text for r in records], spec, sampling, progress=progress)
        rows += [
            {"prompt": r.text, "prompt_label": label, "setting": name, "reply": reply.text, "kind": ""}
            for r, reply in zip(records, replies, strict=True)
        ]
    rng.shuffle(rows)
    return [{"id": f"reply-{n:03d}", **row} for n, row in enumerate(rows)]
