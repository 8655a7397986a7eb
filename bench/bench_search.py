"""Steering-search speed on the built default, measured side by side on this machine:

- trials per minute of `run_search` with the study in SQLite (what `explorer search-steering` stores) and
  in memory, and the time of one bare `measure` on the same prompts: each trial draws and stores its
  setting as a real search does but measures one fixed setting (three latents set to 1x max), so the
  ratios say what Optuna's sampler and the stored study add to a trial (target: <= 1.1x a bare measure);
- the trial itself is generation and judging on the val prompts plus KL/CE on held-out transcripts, so
  trials per minute scale with `--n`, `--tokens` and `--rows`; the defaults here are small (8 prompts per
  label, 16 tokens, 8 transcripts) so a round takes about a minute; `explorer search-steering`'s own
  defaults (32, 32, 16) take about 4x as long per trial.

Needs the built default (`make build`). Each round runs the three variants in rotating order; medians and
ranges are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import optuna

from explorer.core.models import ORGANISM_NAME, organism_dir
from explorer.saes.corpus import corpus_dir, load_corpus
from explorer.steering.evaluation import EvalConfig, eval_prompts, loss_rows, measure
from explorer.steering.search import SearchConfig, candidate_latents
from explorer.steering.search_study import open_study, run_search, val_measure
from explorer.steering.spec import Clamp, SteeringSpec
from explorer.workspace import load_workspace


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3, help="trials per variant and round")
    parser.add_argument("--n", type=int, default=8, help="val prompts per label")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rows", type=int, default=8, help="held-out transcripts for KL and CE")
    args = parser.parse_args()
    if not organism_dir().is_dir():
        raise SystemExit("the built default is missing; run `make build` first")
    workspace = load_workspace(ORGANISM_NAME)
    hook = workspace.main
    assert hook is not None
    corpus = load_corpus(corpus_dir(workspace.loaded.name), workspace.loaded.tokenizer)
    steerer = workspace.steerer()
    latents = candidate_latents(workspace.caches[hook], "cosine", 3)
    evaluation = EvalConfig("val", args.n, args.n, args.tokens, loss_rows=args.rows)
    config = SearchConfig("refuse", tuple((hook, i) for i in latents), evaluation=evaluation)
    prompts = {label: eval_prompts(label, evaluation) for label in ("harmful", "harmless")}
    rows = loss_rows(corpus, args.rows)
    spec = SteeringSpec(tuple(Clamp(hook, i, "set", 1.0, "max") for i in latents))
    measured = val_measure(steerer, corpus, config)

    def measure_trial(sampled: SteeringSpec, label: str) -> Any:
        # The sampled setting is drawn and stored as in a real search, but the fixed `spec` is measured,
        # so the three variants generate the same tokens and differ only by what Optuna adds.
        return measured(spec, label)

    print(
        f"{workspace.loaded.name}, main SAE {hook}; {args.n} prompts per label, {args.tokens} tokens, "
        f"{args.rows} transcripts; {args.trials} trials per variant and round"
    )

    def sqlite_trials(directory: Path, round_: int) -> float:
        study = open_study(config, directory / "bench.sqlite3", f"bench-{round_}")
        start = time.perf_counter()
        run_search(config, study, measure_trial, n_trials=args.trials)
        return (time.perf_counter() - start) / args.trials

    def memory_trials(round_: int) -> float:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            directions=config.directions, sampler=optuna.samplers.TPESampler(seed=round_)
        )
        start = time.perf_counter()
        run_search(config, study, measure_trial, n_trials=args.trials)
        return (time.perf_counter() - start) / args.trials

    def bare() -> float:
        start = time.perf_counter()
        for _ in range(args.trials):
            measure(steerer, "bare", None, spec, prompts, corpus, rows, evaluation)
        return (time.perf_counter() - start) / args.trials

    results: dict[str, list[float]] = {"sqlite": [], "memory": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            variants = [
                ("sqlite", lambda r=round_: sqlite_trials(Path(tmp), r)),
                ("memory", lambda r=round_: memory_trials(r)),
                ("bare", bare),
            ]
            shift = round_ % len(variants)
            for name, run in variants[shift:] + variants[:shift]:
                results[name].append(run())
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items()))
    for name in ("sqlite", "memory", "bare"):
        values = results[name]
        print(
            f"{name:7s} {median(values):6.2f} s a trial ({min(values):.2f}-{max(values):.2f}), "
            f"{60 / median(values):5.1f} trials/min"
        )
    ratios = [s / b for s, b in zip(results["sqlite"], results["bare"], strict=True)]
    memory = [s / m for s, m in zip(results["sqlite"], results["memory"], strict=True)]
    print(f"stored trial / bare measure: {median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    print(f"stored trial / in-memory trial: {median(memory):.2f}x ({min(memory):.2f}-{max(memory):.2f})")


if __name__ == "__main__":
    main()
