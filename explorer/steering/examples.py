"""The walkthrough's examples, chosen from measured results: the strength at which steering the top
refusal latents most clearly induces refusal on harmless prompts (and bypasses it on harmful ones), and
the prompts where it does.

For each strength every prompt gets a greedy unsteered and a greedy steered reply, both judged. A prompt
counts for inducing when the unsteered reply complies and the steered one is a refusal that is not broken
text (a degenerate reply is neither: `explorer.core.judge`); for bypassing, the other way round. The
clearest strength flips the most prompts, ties going to the gentler one. `explorer demo-examples` measures
and writes the result next to the refusal direction; the walkthrough reads it and ignores it, saying why,
when the SAE, its latents or the model changed since.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from explorer.core.generation import SamplingConfig
from explorer.core.judge import VerdictLabel
from explorer.core.models import model_fingerprint
from explorer.core.paths import utc_now, write_json_atomic
from explorer.core.progress import tqdm
from explorer.core.prompts import Label, PromptRecord, Split, builtin_prompts, stratified_sample
from explorer.latents.reader import LatentCache
from explorer.refusal.direction import refusal_dir
from explorer.steering.decode import Reply, Steerer, decode_many
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringError, SteeringSpec, validate

EXAMPLES_FILE = "walkthrough_examples.json"
EXAMPLES_VERSION = 1
DEMO_LATENTS = 3
"""How many of the main SAE's latents (most aligned with the refusal direction) the walkthrough steers."""
INDUCE_STRENGTHS = (0.5, 1.0, 2.0, 4.0)
BYPASS_FACTORS = (-1.0, -2.0, -3.0, -4.0)
N_PROMPTS = 40
N_EXAMPLES = 3
SKIPPED_CATEGORIES = ("borderline", "borderline_safety")
"""Harmless categories an induced refusal is no clear example on (killing a process, signs of poisoning)."""

Goal = Literal["induce", "bypass"]
_FLIP: dict[Goal, tuple[VerdictLabel, VerdictLabel]] = {
    "induce": ("compliance", "refusal"),
    "bypass": ("refusal", "compliance"),
}


class ExamplesError(ValueError):
    """A stored examples file that cannot be read; the message names it and says what to run."""


@dataclass(frozen=True)
class Example:
    """One prompt steering flipped, with both replies and their verdicts (`Verdict.to_dict`)."""

    prompt: str
    category: str
    default_reply: str
    default_verdict: dict[str, Any]
    steered_reply: str
    steered_verdict: dict[str, Any]


@dataclass(frozen=True)
class Trial:
    """One strength's counts over the prompts.

    Attributes:
        strength: the set value in × max (induce) or the factor (bypass); 1 for the direction ablated.
        n: the prompts tried.
        flipped: prompts whose unsteered reply complied (induce; refused for bypass) and whose steered
            reply is a clean refusal (compliance for bypass).
        degenerate: prompts whose steered reply is broken text.
    """

    strength: float
    n: int
    flipped: int
    degenerate: int

    @property
    def flip_rate(self) -> float:
        return self.flipped / self.n if self.n else float("nan")

    @property
    def degenerate_rate(self) -> float:
        return self.degenerate / self.n if self.n else float("nan")


@dataclass(frozen=True)
class Measured:
    """Every strength of one goal, the one chosen and its examples.

    Attributes:
        goal: "induce" (set the latents on harmless prompts) or "bypass" (multiply them on harmful ones).
        unsteered: prompts whose unsteered reply could flip (complied for induce, refused for bypass).
        chosen: the strength with most flips (the gentlest of a tie); None when none flipped a prompt.
        examples: up to `N_EXAMPLES` prompts the chosen strength flipped, shortest steered reply first.
    """

    goal: Goal
    n_prompts: int
    unsteered: int
    trials: tuple[Trial, ...]
    chosen: float | None
    examples: tuple[Example, ...]

    def trial(self, strength: float | None) -> Trial | None:
        return next((t for t in self.trials if t.strength == strength), None)


@dataclass(frozen=True)
class WalkthroughExamples:
    """What `explorer demo-examples` measured, and against which model, SAE and latents.

    Attributes:
        ablation: the refusal direction ablated on the same harmful prompts (None without a direction).
    """

    model: str
    model_fingerprint: str
    hook: str
    sae_fingerprint: str
    latents: tuple[int, ...]
    judge: str
    split: str
    max_new_tokens: int
    seed: int
    induce: Measured
    bypass: Measured
    ablation: Trial | None
    measured: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"version": EXAMPLES_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WalkthroughExamples:
        """Rebuild from `to_dict`'s output.

        Raises:
            ExamplesError: a newer version, or a missing or malformed field.
        """
        version = data.get("version")
        if not isinstance(version, int) or version > EXAMPLES_VERSION:
            raise ExamplesError(f"examples version {version!r} is not one this explorer reads")
        try:
            fields = {k: v for k, v in data.items() if k != "version"}
            fields["latents"] = tuple(int(i) for i in fields["latents"])
            fields["induce"], fields["bypass"] = _measured(fields["induce"]), _measured(fields["bypass"])
            fields["ablation"] = None if fields["ablation"] is None else Trial(**fields["ablation"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as e:
            raise ExamplesError(f"examples are malformed ({type(e).__name__}: {e})") from e


def _measured(data: Mapping[str, Any]) -> Measured:
    if data["goal"] not in _FLIP:
        raise ValueError(f"goal {data['goal']!r} is not one of {tuple(_FLIP)}")
    return Measured(
        data["goal"],
        int(data["n_prompts"]),
        int(data["unsteered"]),
        tuple(Trial(**t) for t in data["trials"]),
        None if data["chosen"] is None else float(data["chosen"]),
        tuple(Example(**e) for e in data["examples"]),
    )


def demo_latents(cache: LatentCache) -> list[int]:
    """The latents the walkthrough steers: the `DEMO_LATENTS` active ones most aligned with the refusal
    direction by decoder cosine.

    Raises:
        CacheError: the cache has no refusal cosines (built without a refusal direction).
    """
    return cache.top_latents("refusal_cos", DEMO_LATENTS, active=True)


def example_prompts(label: Label, split: Split, n: int, seed: int = 0) -> list[PromptRecord]:
    """`n` built-in prompts of `label` and `split`, spread over the categories (harmless borderline ones
    left out)."""
    pool = [r for r in builtin_prompts(label, split) if r.category not in SKIPPED_CATEGORIES]
    return stratified_sample(pool, n, seed)


def steering_spec(goal: Goal, hook: str, latents: Sequence[int], strength: float) -> SteeringSpec:
    """Induce: the latents set to `strength` × their max; bypass: multiplied by `strength`."""
    if goal == "induce":
        return SteeringSpec(clamps=tuple(Clamp(hook, i, "set", strength, "max") for i in latents))
    return SteeringSpec(clamps=tuple(Clamp(hook, i, "multiply", strength) for i in latents))


def trial_examples(
    goal: Goal,
    strength: float,
    prompts: Sequence[PromptRecord],
    default: Sequence[Reply],
    steered: Sequence[Reply],
) -> tuple[Trial, list[Example]]:
    """One strength's counts, and the prompts it flipped (shortest steered reply first)."""
    before, after = _FLIP[goal]
    flipped = [
        Example(p.text, p.category, d.text, d.verdict, s.text, s.verdict)
        for p, d, s in zip(prompts, default, steered, strict=True)
        if d.verdict.get("label") == before and s.verdict.get("label") == after
    ]
    degenerate = sum(s.verdict.get("label") == "degenerate" for s in steered)
    flipped.sort(key=lambda e: len(e.steered_reply.strip()))  # stable: ties keep the prompts' order
    return Trial(strength, len(prompts), len(flipped), degenerate), flipped


def clearest(trials: Sequence[Trial]) -> Trial | None:
    """The trial with the most flips, the gentlest (smallest |strength|) of a tie; None if none flipped."""
    best = max(trials, key=lambda t: (t.flipped, -abs(t.strength)), default=None)
    return best if best is not None and best.flipped > 0 else None


def measure(
    steerer: Steerer,
    goal: Goal,
    hook: str,
    latents: Sequence[int],
    strengths: Sequence[float],
    prompts: Sequence[PromptRecord],
    sampling: SamplingConfig,
    *,
    default: Sequence[Reply] | None = None,
    progress: bool = False,
) -> Measured:
    """Decode every prompt unsteered (unless `default` has those replies) and at every strength; choose."""
    texts = [p.text for p in prompts]
    default = default if default is not None else decode_many(steerer, texts, None, sampling)
    trials, flipped = [], {}
    for strength in tqdm(strengths, desc=f"{goal} strengths", unit="strength", disable=not progress):
        steered = decode_many(steerer, texts, steering_spec(goal, hook, latents, strength), sampling)
        trial, examples = trial_examples(goal, strength, prompts, default, steered)
        trials.append(trial)
        flipped[strength] = examples
    best = clearest(trials)
    before = _FLIP[goal][0]
    return Measured(
        goal,
        len(prompts),
        sum(r.verdict.get("label") == before for r in default),
        tuple(trials),
        None if best is None else best.strength,
        () if best is None else tuple(flipped[best.strength][:N_EXAMPLES]),
    )


def choose_examples(
    steerer: Steerer,
    hook: str,
    latents: Sequence[int],
    *,
    induce_strengths: Sequence[float] = INDUCE_STRENGTHS,
    bypass_factors: Sequence[float] = BYPASS_FACTORS,
    n_prompts: int = N_PROMPTS,
    max_new_tokens: int = 32,
    split: Split = "test",
    seed: int = 0,
    progress: bool = False,
) -> WalkthroughExamples:
    """Measure where steering `latents` of the SAE at `hook` most clearly induces and bypasses refusal.

    Args:
        steerer: the model, SAEs, maxima (for "× max") and refusal direction; its judge labels replies.
        induce_strengths: set values in × max, tried on `n_prompts` harmless prompts of `split`.
        bypass_factors: multiply factors, tried on `n_prompts` harmful prompts of `split`.
        seed: which prompts are taken (`stratified_sample`).

    Raises:
        SteeringError: no SAE at `hook`, a latent out of range, or no maxima for "× max".
    """
    if hook not in steerer.saes:
        raise SteeringError(f"no SAE at {hook}; loaded: {sorted(steerer.saes)}")
    goals: tuple[tuple[Goal, Sequence[float]], ...] = (
        ("induce", induce_strengths),
        ("bypass", bypass_factors),
    )
    for goal, strengths in goals:  # every spec is checked before the first reply is decoded
        for strength in strengths:
            spec = steering_spec(goal, hook, latents, strength)
            validate(spec, steerer.saes, steerer.loaded.n_layers, max_activations=steerer.max_activations)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    harmless = example_prompts("harmless", split, n_prompts, seed)
    harmful = example_prompts("harmful", split, n_prompts, seed)
    induce = measure(
        steerer, "induce", hook, latents, induce_strengths, harmless, sampling, progress=progress
    )
    default = decode_many(steerer, [p.text for p in harmful], None, sampling)
    bypass = measure(
        steerer,
        "bypass",
        hook,
        latents,
        bypass_factors,
        harmful,
        sampling,
        default=default,
        progress=progress,
    )
    ablation = None
    if steerer.refusal is not None:
        spec = SteeringSpec(direction=DirectionBaseline("ablate"))
        ablated = decode_many(steerer, [p.text for p in harmful], spec, sampling)
        ablation = trial_examples("bypass", 1.0, harmful, default, ablated)[0]
    return WalkthroughExamples(
        model=steerer.loaded.name,
        model_fingerprint=model_fingerprint(steerer.loaded.model),
        hook=hook,
        sae_fingerprint=steerer.saes[hook].fingerprint,
        latents=tuple(int(i) for i in latents),
        judge=getattr(steerer.judge, "name", "judge"),
        split=split,
        max_new_tokens=max_new_tokens,
        seed=seed,
        induce=induce,
        bypass=bypass,
        ablation=ablation,
    )


def examples_path(model_name: str) -> Path:
    """Where a model's measured walkthrough examples live: beside its refusal direction (rebuilding the
    direction, which changes the latents aligned with it, removes them)."""
    return refusal_dir(model_name) / EXAMPLES_FILE


def write_examples(examples: WalkthroughExamples, path: Path | None = None) -> Path:
    """Write the examples atomically (default: `examples_path` of their model); returns the path."""
    path = path or examples_path(examples.model)
    write_json_atomic(path, examples.to_dict())
    return path


def read_examples(path: Path) -> WalkthroughExamples | None:
    """The examples stored at `path`, or None when there is no file.

    Raises:
        ExamplesError: the file is unreadable, not JSON, or malformed (its path named).
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ExamplesError(f"expected a JSON object, got {type(data).__name__}")
        return WalkthroughExamples.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ExamplesError) as e:
        raise ExamplesError(f"{path} is corrupt ({e}); run `explorer demo-examples` again") from e


def stale_reasons(
    examples: WalkthroughExamples,
    *,
    model: str,
    hook: str,
    latents: Sequence[int],
    sae_fingerprint: str,
    model_fingerprint: str | None = None,
) -> list[str]:
    """What differs between what the examples were measured on and what is loaded now, in words (empty
    when they still hold). `model_fingerprint` None skips the weights check."""
    out = []
    if examples.model != model:
        out.append(f"they were measured on model {examples.model!r}, and {model!r} is loaded")
    if model_fingerprint and examples.model_fingerprint and examples.model_fingerprint != model_fingerprint:
        out.append(
            f"the model has other weights ({examples.model_fingerprint} then, {model_fingerprint} now)"
        )
    if examples.hook != hook:
        out.append(f"they steer the SAE at {examples.hook}, and the main SAE is at {hook}")
    elif examples.sae_fingerprint != sae_fingerprint:
        out.append(
            f"the SAE at {hook} has other weights ({examples.sae_fingerprint} then, {sae_fingerprint} now)"
        )
    if list(examples.latents) != list(latents):
        then, now = (", ".join(f"#{i}" for i in group) for group in (examples.latents, latents))
        out.append(f"they steer latents {then}, and the top latents are now {now}")
    return out
