"""Steered generation speed, measured side by side on this machine:

- steered decoding (three clamped latents, per-token records on) vs plain decoding (no hook at all) of
  the same model, prompt and length: tokens/s and their ratio (target >= 0.9x);
- side-by-side generation (one batched pass of two rows) vs the two generations run one after the other
  (target <= 0.6x the time);
- for reference, our plain decoding loop vs transformers' `generate`;
- why decoding uses `few_row_linear`: the model's unembedding applied to one and two rows with PyTorch's
  `linear`, and inside `few_row_linear` (W @ Xᵀ).

Uses the built default with its main SAE and refusal direction when present, as the app does; otherwise
the base model and a random TopK SAE of the same width (speed does not depend on what the latents mean).
Every variant runs once per round, in rotating order, and each ratio compares runs of the same round;
medians and ranges are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext
from statistics import median

import torch
from sae_lens import TopKSAE, TopKSAEConfig

from explorer.core.few_rows import few_row_linear
from explorer.core.generation import SamplingConfig, generate
from explorer.core.models import ORGANISM_NAME, load_model, organism_dir
from explorer.saes.loading import wrap_sae
from explorer.steering.decode import Steerer, decode, generate_side_by_side
from explorer.steering.spec import Clamp, SteeringSpec
from explorer.workspace import load_workspace

PROMPT = "Write a long story about a dragon who learns to bake bread."
SAMPLING = SamplingConfig(max_new_tokens=48, temperature=0.7, top_p=0.95, seed=3)


def setup() -> tuple[Steerer, str, str]:
    """The steerer the app would use (the built default, its SAEs, maxima and refusal direction, so the
    per-token records include the refusal projection), or the base model with a random TopK SAE."""
    if organism_dir().is_dir():
        workspace = load_workspace(ORGANISM_NAME)
        if workspace.main is not None:
            which = "the built default, its main SAE and refusal direction"
            return workspace.steerer(), workspace.main, which
    loaded = load_model("default")
    hook = f"blocks.{loaded.n_layers * 3 // 4}.hook_resid_pre"
    cfg = TopKSAEConfig(d_in=loaded.d_model, d_sae=4096, k=32)
    cfg.metadata.hook_name = hook
    torch.manual_seed(0)
    sae = wrap_sae(TopKSAE(cfg).eval(), "random", "random")
    return Steerer(loaded, {hook: sae}), hook, "the base model and a random TopK SAE (no build found)"


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """(seconds, tokens generated)."""
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    steerer, hook, which = setup()
    loaded = steerer.loaded
    spec = SteeringSpec(tuple(Clamp(hook, latent, "multiply", 1.5) for latent in (0, 1, 2)))
    print(f"{which} ({hook}); {SAMPLING.max_new_tokens} new tokens, sampled")

    def plain() -> int:
        return len(decode(steerer, [PROMPT], None, sampling=SAMPLING, record=False)[0].token_ids)

    def steered() -> int:
        return len(decode(steerer, [PROMPT], spec, sampling=SAMPLING)[0].token_ids)

    def both() -> int:
        result = generate_side_by_side(steerer, PROMPT, spec, SAMPLING)
        return len(result.default.token_ids) + len(result.steered.token_ids)

    def hf() -> int:
        return len(generate(loaded, [PROMPT], SAMPLING)[0].token_ids)

    runs: dict[str, Callable[[], int]] = {"plain": plain, "steered": steered, "pair": both, "hf": hf}
    for fn in runs.values():  # warm-up: the first call of each shape pays for allocation and kernels
        fn()
    # Interleaved rounds, the order rotating each round, so drift and noise hit every variant alike;
    # each ratio compares runs of the same round.
    times: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name]))

    def rate(name: str, i: int) -> float:
        seconds, n = times[name][i]
        return n / seconds

    rounds = range(args.rounds)
    steer_ratio = [rate("steered", i) / rate("plain", i) for i in rounds]
    pair_ratio = [times["pair"][i][0] / (times["plain"][i][0] + times["steered"][i][0]) for i in rounds]
    loop_ratio = [rate("plain", i) / rate("hf", i) for i in rounds]
    print(
        f"plain decoding {median([rate('plain', i) for i in rounds]):.1f} tok/s, steered "
        f"{median([rate('steered', i) for i in rounds]):.1f} tok/s (medians of {args.rounds} rounds)"
    )
    print(
        f"steered/plain tokens/s: median {median(steer_ratio):.2f}x, range {min(steer_ratio):.2f}-"
        f"{max(steer_ratio):.2f}x (target >= 0.9x)"
    )
    print(
        f"side by side / (plain + steered) time: median {median(pair_ratio):.2f}x, range "
        f"{min(pair_ratio):.2f}-{max(pair_ratio):.2f}x (target <= 0.6x)"
    )
    print(f"reference: our plain loop / transformers generate tokens/s: median {median(loop_ratio):.2f}x")
    head = loaded.model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear)
    unembedding(head.weight.detach(), args.rounds)


def unembedding(weight: torch.Tensor, rounds: int) -> None:
    """Milliseconds of `linear` on the unembedding [vocab, d_model] for one and two rows, plain and inside
    `few_row_linear`, interleaved like the decoding runs (medians)."""
    variants: dict[str, tuple[int, bool]] = {
        "1 row": (1, False),
        "2 rows": (2, False),
        "1 row, few_row_linear": (1, True),
        "2 rows, few_row_linear": (2, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for name, (rows, fast) in variants.items():
                x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
                with few_row_linear(weight.device) if fast else nullcontext():
                    start = time.perf_counter()
                    for _ in range(10):
                        torch.nn.functional.linear(x, weight)
                    times[name].append((time.perf_counter() - start) / 10 * 1e3)
    shown = ", ".join(f"{name} {median(t[1:]):.1f} ms" for name, t in times.items())
    print(f"unembedding {tuple(weight.shape)}: {shown}")


if __name__ == "__main__":
    main()
