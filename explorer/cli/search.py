"""`explorer search-steering`: a multi-objective search over steering settings, its front re-measured on
prompts it never saw beside the baselines."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

from explorer.cli.options import add_judge_arg, add_model_args, load_workspace_for, rate_ci
from explorer.core.paths import user_dir, write_text_atomic
from explorer.steering.search import DEFAULT_OBJECTIVES, Goal, Selection
from explorer.steering.search_study import MAX_DEGENERATE


def studies_file(model: str) -> Path:
    """Where a model's studies are stored by default (user data: the build never touches it)."""
    return user_dir() / "searches" / f"{model}.sqlite3"


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _trigger(args: argparse.Namespace, workspace: Any, hooks: list[str]) -> tuple[str, int] | None:
    """The harm latent trials may gate on: none, `auto` (see `auto_trigger`) or HOOK:LATENT."""
    from explorer.steering.search import SearchError, parse_latent
    from explorer.steering.search_setup import auto_trigger

    if args.trigger == "none":
        return None
    if args.trigger == "auto":
        return auto_trigger(workspace.caches, workspace.loaded.n_layers, hooks)
    try:
        return parse_latent(args.trigger, "--trigger")
    except SearchError:
        raise SearchError(f"--trigger {args.trigger!r} is not none, auto or HOOK:LATENT") from None


def _trials_csv(records: list[Any]) -> str:
    out = io.StringIO()
    keys = sorted({k for r in records for k in r.values})
    writer = csv.writer(out)
    writer.writerow(["trial", "on_front", *keys, "spec"])
    for r in records:
        writer.writerow([r.number, r.on_front, *(r.values.get(k, "") for k in keys), json.dumps(r.spec)])
    return out.getvalue()


def cmd_search(args: argparse.Namespace) -> int:
    from explorer.core.judge_models import make_judge
    from explorer.core.prompts import load_prompt_file
    from explorer.saes.corpus import CorpusError, corpus_dir, load_corpus
    from explorer.steering.evaluation import EvalConfig, replies_csv
    from explorer.steering.search import SearchConfig, SearchError, default_study_name
    from explorer.steering.search_front import (
        front_figure,
        front_specs,
        recipe_verdicts,
        remeasure,
        with_replies_dropped,
    )
    from explorer.steering.search_setup import (
        check_search,
        compare_settings,
        remeasure_sets,
        resolve_candidates,
        trigger_max,
    )
    from explorer.steering.search_study import open_study, run_search, trials, val_measure
    from explorer.steering.share import PlaygroundSetup, encode_setup
    from explorer.steering.spec import SteeringSpec

    if args.trials is None and args.budget is None:
        raise SearchError("give --trials, --budget (minutes) or both")
    harmful = load_prompt_file(args.harmful, "harmful") if args.harmful else None
    harmless = load_prompt_file(args.harmless, "harmless") if args.harmless else None
    judge = make_judge(args.judge)
    workspace = load_workspace_for(args)
    hook = args.hook or workspace.main
    chosen_by, candidates = resolve_candidates(workspace.caches, args.candidates, hook, args.top)
    trigger = _trigger(args, workspace, [h for h, _ in candidates])
    config = SearchConfig(
        args.goal,
        tuple(candidates),
        _split_list(args.modes) if args.modes else (),  # pyright: ignore[reportArgumentType]
        _split_list(args.scopes),  # pyright: ignore[reportArgumentType]
        trigger,
        trigger_max(workspace.caches, trigger) if trigger else 0.0,
        _split_list(args.objectives),  # pyright: ignore[reportArgumentType]
        EvalConfig(
            "val", args.n_harmful, args.n_harmless, args.max_new_tokens, args.batch_size, args.loss_rows
        ),
        seed=args.seed,
        sampler=args.sampler,
    )
    check_search(config, workspace.saes, workspace.loaded.n_layers, workspace.max_activations())
    storage = Path(args.storage) if args.storage else studies_file(workspace.loaded.name)
    name = args.study or default_study_name(config)
    study = open_study(config, storage, name)
    try:
        corpus = load_corpus(corpus_dir(workspace.loaded.name), workspace.loaded.tokenizer)
    except CorpusError as e:
        sys.stderr.write(f"no capability cost: {e}\n")
        corpus = None
    steerer = workspace.steerer(judge)
    before = len(trials(study))
    sys.stderr.write(
        f"study {name!r} in {storage} ({before} trials so far): {args.goal}, candidates {chosen_by}: "
        f"{', '.join(str(i) for _, i in candidates)}"
        + (f"; gate on {trigger[0]}:{trigger[1]}" if trigger else "")
        + "\n"
    )

    def report(done: int, seconds: float, record: Any) -> None:
        v = record.values
        sys.stderr.write(
            f"trial {record.number}: refused harmful {v['refusal_harmful']:.0%}, harmless "
            f"{v['refusal_harmless']:.0%}, KL {v['kl']:.3f} ({seconds / max(done, 1):.0f} s a trial)\n"
        )

    if (args.trials or 0) > 0 or (args.trials is None and args.budget > 0):
        run_search(
            config,
            study,
            val_measure(steerer, corpus, config, harmful=harmful, harmless=harmless),
            n_trials=args.trials,
            budget_s=args.budget * 60 if args.budget else None,
            on_trial=report,
            progress=not args.json,
        )
    records = trials(study, args.max_degenerate)
    if not records:
        raise SearchError(f"study {name!r} has no finished trial yet; run it with --trials or --budget")
    chosen = front_specs(records, args.remeasure, args.goal)
    if not chosen:
        sys.stderr.write(
            f"no trial is on the front: every one broke the model (more than {args.max_degenerate:.0%} "
            "degenerate replies); only the baselines are re-measured\n"
        )
    compare = compare_settings(
        args.goal,
        workspace.caches,
        hook,
        has_direction=workspace.refusal is not None,
        recipe_k=args.recipe_k,
        trigger=trigger,
    )
    document: dict[str, Any] = {
        "model": workspace.loaded.name,
        "study": name,
        "storage": str(storage),
        "config": config.to_dict(),
        "candidates_by": chosen_by,
        "judge": judge.name,
        "trials": [asdict(r) for r in records],
        "front_on_val": [asdict(r) for r in records if r.on_front],
        "remeasured": {},
    }
    sets = (
        remeasure_sets(config.evaluation, args.test_n, elsewhere=not args.no_elsewhere)
        if args.remeasure > 0
        else []
    )
    out = Path(args.out) if args.out else None
    for evaluation in sets:
        measured = remeasure(steerer, corpus, chosen, compare, evaluation, progress=not args.json)
        key = "elsewhere" if evaluation.prompt_set == "elsewhere" else evaluation.split
        document["remeasured"][key] = {
            "prompts": measured.prompts,
            "front": [with_replies_dropped(p) for p in measured.front],
            "baselines": [with_replies_dropped(p) for p in measured.baselines],
            "recipe_beaten": recipe_verdicts(measured, args.goal),
            "links": {
                p.label: encode_setup(PlaygroundSetup(SteeringSpec.from_dict(p.spec)))
                for p in [*measured.front, *measured.baselines]
            },
        }
        if out is not None:
            figure = front_figure(
                measured, args.goal, f"{args.goal} search on {workspace.loaded.name}: {measured.prompts}"
            )
            write_text_atomic(
                out / f"front_{key}.html", figure.to_html(include_plotlyjs=True, full_html=True)
            )
            write_text_atomic(out / f"replies_{key}.csv", replies_csv([*measured.baselines, *measured.front]))
        if not args.json:
            _print_set(document["remeasured"][key])
    if out is not None:
        write_text_atomic(out / "search.json", json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(out / "trials.csv", _trials_csv(records))
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return 0
    front = [r for r in records if r.on_front]
    sys.stdout.write(f"{len(records)} trials, {len(front)} on the front (val):\n")
    for r in sorted(front, key=lambda r: -r.values["refusal_harmful"]):
        v = r.values
        spec = SteeringSpec.from_dict(r.spec)
        clamps = ", ".join(f"{c.latent} {c.mode} {c.value:g}" for c in spec.clamps) or "none"
        gate = f" gated {spec.trigger.threshold:g}" if spec.trigger else ""
        sys.stdout.write(
            f"  trial {r.number:3d}: harmful {v['refusal_harmful']:6.1%}  "
            f"harmless {v['refusal_harmless']:6.1%}  KL {v['kl']:.3f}  [{clamps}; {spec.scope}{gate}]\n"
        )
    return 0


def _print_set(measured: dict[str, Any]) -> None:
    from explorer.steering.search_setup import verdict_sentence

    sys.stdout.write(f"\non {measured['prompts']}:\n")
    sys.stdout.write(
        "setting                               refused harmful [95% CI]  harmless [95% CI]     KL\n"
    )
    for p in [*measured["baselines"], *measured["front"]]:
        sys.stdout.write(
            f"{p['label'][:37]:37s} {rate_ci(p['refusal_harmful'], p['refusal_harmful_ci'])}  "
            f"{rate_ci(p['refusal_harmless'], p['refusal_harmless_ci'])}  {p['kl']:.3f}\n"
        )
    for verdict in measured["recipe_beaten"]:
        sys.stdout.write(verdict_sentence(verdict) + "\n")


def add_search_parser(sub: Any) -> None:
    """Register `explorer search-steering` on the top-level subparsers."""
    p = sub.add_parser(
        "search-steering",
        help="multi-objective search over latents, modes and strengths; its front re-measured on test",
    )
    add_model_args(p)
    p.add_argument("--sae", action="append", metavar="SPEC", help="SAEs (default: the build's SAEs)")
    p.add_argument(
        "--goal",
        default="refuse",
        choices=get_args(Goal),
        help="refuse: raise refusal on harmful prompts; bypass: lower it (red-teaming)",
    )
    p.add_argument(
        "--candidates",
        default="cosine+attribution",
        help=f"{', '.join(get_args(Selection))} (top --top latents of --hook's SAE), or HOOK:LATENT,...",
    )
    p.add_argument("--top", type=int, default=4, help="how many candidates a selection takes")
    p.add_argument("--hook", help="SAE the candidates come from (default: the main SAE)")
    p.add_argument("--modes", help="modes a candidate may take besides off (default: by goal)")
    p.add_argument("--scopes", default="all", help="scopes to choose from: all, prompt, generated")
    p.add_argument(
        "--trigger", default="none", help="gate the clamps: none, auto (a harm latent) or HOOK:LATENT"
    )
    p.add_argument(
        "--objectives",
        default=",".join(DEFAULT_OBJECTIVES),
        help="refusal, over-refusal, kl, ce (comma-separated)",
    )
    p.add_argument("--trials", type=int, help="trials to run now (a stored study resumes)")
    p.add_argument("--budget", type=float, help="minutes to run trials for (the trial in flight finishes)")
    p.add_argument("--n-harmful", type=int, default=32, help="val harmful prompts per trial")
    p.add_argument("--n-harmless", type=int, default=32, help="val harmless prompts per trial")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loss-rows", type=int, default=16, help="held-out transcripts for KL and CE per trial")
    p.add_argument("--harmful", metavar="FILE", help="your harmful prompts to select on (instead of val)")
    p.add_argument("--harmless", metavar="FILE", help="your harmless prompts to select on (instead of val)")
    p.add_argument("--study", help="study name (default: the goal and a fingerprint of the settings)")
    p.add_argument("--storage", metavar="FILE", help="SQLite file of studies (default: under the user dir)")
    p.add_argument(
        "--remeasure",
        type=int,
        default=4,
        help="front points re-measured on test and the elsewhere set (0: none)",
    )
    p.add_argument("--test-n", type=int, help="prompts per label when re-measuring (default: all)")
    p.add_argument("--no-elsewhere", action="store_true", help="re-measure on the test split only")
    p.add_argument(
        "--max-degenerate",
        type=float,
        default=MAX_DEGENERATE,
        help="a trial with more than this share of degenerate replies (either label) is never on the front",
    )
    p.add_argument("--recipe-k", type=int, default=3, help="latents of the papers' recipe baseline")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="write search.json, trials.csv, front_*.html, replies_*.csv")
    add_judge_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
