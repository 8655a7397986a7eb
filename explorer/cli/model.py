"""`explorer info | prompts | judge | generate`: model description, prompt sets, the judge, replies."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from explorer.cli.options import add_judge_arg, add_model_args, emit, model_config
from explorer.cli.steer import add_steering_args, print_steered, run_steered, wants_steering


def cmd_info(args: argparse.Namespace) -> int:
    from explorer.core.hooks import hook_names
    from explorer.core.models import load_model

    loaded = load_model(model_config(args))
    info = loaded.describe()
    info["hooks"] = hook_names(loaded.n_layers)
    emit(info)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from explorer.core.prompts import Label, builtin_prompts, filter_split, load_prompt_file

    if args.file:
        records = filter_split(load_prompt_file(args.file), args.split)
    else:
        labels: list[Label] = [args.label] if args.label else ["harmful", "harmless"]
        records = [r for label in labels for r in builtin_prompts(label, args.split)]
    if args.category:
        records = [r for r in records if r.category == args.category]
    if args.json:
        for r in records:
            sys.stdout.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        return 0
    counts = Counter((r.label or "-", r.category or "-", r.split) for r in records)
    by_group: dict[tuple[str, str], Counter[str]] = {}
    for (label, category, split), n in counts.items():
        by_group.setdefault((label, category), Counter())[split] += n
    sys.stdout.write(f"{'label':<9} {'category':<18} {'train':>6} {'val':>5} {'test':>5}\n")
    for (label, category), splits in sorted(by_group.items()):
        sys.stdout.write(
            f"{label:<9} {category:<18} {splits['train']:>6} {splits['val']:>5} {splits['test']:>5}\n"
        )
    sys.stdout.write(f"{len(records)} prompts\n")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from explorer.core.judge_models import make_judge

    if args.sample:
        from explorer.cli.judging import write_sample

        write_sample(args)
        return 0
    if (args.text is None) == (args.agreement is None):
        raise ValueError("give a reply TEXT to judge, --agreement [FILE] to measure judges, or --sample OUT")
    if args.text is not None:
        emit(make_judge(args.judge[0] if args.judge else "substring").judge(args.text).to_dict())
        return 0
    from explorer.cli.judging import print_agreement

    print_agreement(args.agreement or None, args.judge or ["substring-v1", "substring"], args.json)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from explorer.core.generation import SamplingConfig, generate
    from explorer.core.judge_models import make_judge
    from explorer.core.models import load_model
    from explorer.core.prompts import DataError, load_prompt_file

    if (args.prompt is None) == (args.prompts is None):
        raise DataError("give exactly one of --prompt TEXT or --prompts FILE")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise DataError("--prompt is empty")
        prompts, ids = [args.prompt], ["prompt"]
    else:
        records = load_prompt_file(args.prompts)
        prompts, ids = [r.text for r in records], [r.id for r in records]
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        frequency_penalty=args.frequency_penalty,
    )
    if wants_steering(args):
        print_steered(run_steered(args, prompts, ids, sampling), args.json)
        return 0
    loaded = load_model(model_config(args))
    if (
        sampling.frequency_penalty
    ):  # transformers' generate has no frequency penalty; the steering decoder has
        from explorer.core.generation import Completion
        from explorer.steering.decode import Steerer, decode_many

        replies = decode_many(Steerer(loaded), prompts, None, sampling, system=args.system, progress=True)
        completions = [
            Completion(p, r.text, r.token_ids, 0, r.finished) for p, r in zip(prompts, replies, strict=True)
        ]
    else:
        completions = generate(loaded, prompts, sampling, system=args.system, progress=True)
    judge = make_judge(args.judge)
    rows = []
    for rid, prompt, completion in zip(ids, prompts, completions, strict=True):
        verdict = judge.judge(completion.text, prompt)
        rows.append(
            {
                "id": rid,
                "prompt": prompt,
                "completion": completion.text,
                "n_new_tokens": len(completion.token_ids),
                "finished": completion.finished,
                "verdict": verdict.to_dict(),
            }
        )
    if args.json:
        emit({"model": loaded.name, "sampling": sampling.to_dict(), "system": args.system, "results": rows})
    else:
        for row in rows:
            tag = {"refusal": "REFUSED", "degenerate": "DEGENERATE"}.get(row["verdict"]["label"], "answered")
            sys.stdout.write(f"[{row['id']}] {row['prompt']}\n→ ({tag}) {row['completion']}\n\n")
    return 0


def add_model_parsers(sub: Any) -> None:
    """Register `explorer info`, `prompts`, `judge` and `generate` on `sub`."""
    p = sub.add_parser("info", help="load a model and print its description and hook names as JSON")
    add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prompts", help="summarise or list prompt sets (built-in or a file)")
    p.add_argument("--label", choices=["harmful", "harmless"], help="built-in set to show (default both)")
    p.add_argument("--file", help="a JSONL or CSV prompt file instead of the built-in sets")
    p.add_argument("--split", choices=["train", "val", "test"])
    p.add_argument("--category")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser(
        "judge", help="judge a reply (refusal, compliance or degenerate), or measure judges against labels"
    )
    p.add_argument("text", nargs="?", help="the reply to judge")
    add_judge_arg(p, repeatable=True)
    p.add_argument(
        "--agreement",
        nargs="?",
        const="",
        metavar="FILE",
        help="agreement (accuracy, Cohen's kappa, confusion) with replies labelled by reading them: the "
        "built-in set, or a JSONL of id, prompt, reply, kind (default judges: substring-v1 and substring)",
    )
    p.add_argument(
        "--sample",
        metavar="OUT",
        help="write replies of the model (unsteered, direction and latent steering) to label, as JSONL",
    )
    p.add_argument("--per-setting", type=int, default=32, help="replies per setting with --sample")
    add_model_args(p)
    p.add_argument("--sae", action="append", metavar="SPEC", help="SAEs (default: the build's SAEs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("generate", help="generate chat replies and judge them")
    add_model_args(p)
    p.add_argument("--prompt", help="one user prompt")
    p.add_argument("--prompts", metavar="FILE", help="a JSONL/CSV prompt file")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_judge_arg(p)
    add_steering_args(p)
    p.set_defaults(func=cmd_generate)
