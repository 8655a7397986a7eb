"""The `explorer` command line: build the offline default, inspect models and prompt sets, generate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from explorer import __version__

log = logging.getLogger("explorer")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="default",
        help="'default' (offline SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument("--device-map", choices=["auto"], help="spread a large model over all GPUs")
    group.add_argument("--chat-template", help="Jinja file replacing the tokenizer's chat template")


def _model_config(args: argparse.Namespace):
    from explorer.models import ModelConfig

    return ModelConfig(
        spec=args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        chat_template=args.chat_template,
    )


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def cmd_build(args: argparse.Namespace) -> int:
    from explorer.build import build_default

    report = build_default(args.only, force=args.force)
    _emit(report)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from explorer.hooks import hook_names
    from explorer.models import load_model

    loaded = load_model(_model_config(args))
    info = loaded.describe()
    info["hooks"] = hook_names(loaded.n_layers)
    _emit(info)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from explorer.data import Label, builtin_prompts, filter_split, load_prompt_file

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
    from explorer.judge import SubstringJudge

    verdict = SubstringJudge().judge(args.text)
    _emit(verdict.to_dict())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from explorer.data import DataError, load_prompt_file
    from explorer.generation import SamplingConfig, generate
    from explorer.judge import SubstringJudge
    from explorer.models import load_model

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
    from explorer.cli_steer import print_steered, run_steered, wants_steering

    if wants_steering(args):
        print_steered(run_steered(args, prompts, ids, sampling), args.json)
        return 0
    loaded = load_model(_model_config(args))
    if (
        sampling.frequency_penalty
    ):  # transformers' generate has no frequency penalty; the steering decoder has
        from explorer.generation import Completion
        from explorer.side_by_side import Steerer, decode_many

        replies = decode_many(Steerer(loaded), prompts, None, sampling, system=args.system, progress=True)
        completions = [
            Completion(p, r.text, r.token_ids, 0, r.finished) for p, r in zip(prompts, replies, strict=True)
        ]
    else:
        completions = generate(loaded, prompts, sampling, system=args.system, progress=True)
    judge = SubstringJudge()
    rows = []
    for rid, prompt, completion in zip(ids, prompts, completions, strict=True):
        verdict = judge.judge(completion.text)
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
        _emit({"model": loaded.name, "sampling": sampling.to_dict(), "system": args.system, "results": rows})
    else:
        for row in rows:
            tag = "REFUSED" if row["verdict"]["refused"] else "answered"
            sys.stdout.write(f"[{row['id']}] {row['prompt']}\n→ ({tag}) {row['completion']}\n\n")
    return 0


def cmd_organism(args: argparse.Namespace) -> int:
    from explorer.models import PROVENANCE_FILE
    from explorer.organism import OrganismConfig, build_organism

    config = OrganismConfig(
        rank=args.rank,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        first_layer=args.first_layer,
        seed=args.seed,
    )
    out = build_organism(config, force=args.force)
    provenance = json.loads((out / PROVENANCE_FILE).read_text(encoding="utf-8"))
    _emit({"model_dir": str(out), "metrics": provenance["metrics"], "timings_s": provenance["timings_s"]})
    return 0


def cmd_refusal(args: argparse.Namespace) -> int:
    from explorer.data import load_prompt_file
    from explorer.models import load_model
    from explorer.paths import write_json_atomic
    from explorer.refusal import RefusalConfig
    from explorer.refusal_build import (
        REPORT_FILE,
        compute_refusal,
        format_report,
        load_refusal,
        prove,
        refusal_dir,
    )

    harmful = load_prompt_file(args.harmful, label="harmful") if args.harmful else None
    harmless = load_prompt_file(args.harmless, label="harmless") if args.harmless else None
    loaded = load_model(_model_config(args))
    directory = refusal_dir(loaded.name)
    if args.force or harmful or harmless or not (directory / "selection.json").is_file():
        compute_refusal(loaded, RefusalConfig(n_val=args.n_val), harmful=harmful, harmless=harmless)
    refusal = load_refusal(loaded.name)
    report = None
    if args.report:
        report = prove(loaded, refusal, alpha=args.alpha, layer=args.layer)
        write_json_atomic(directory / REPORT_FILE, report)
    sys.stdout.write(format_report(refusal.selection, report) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from explorer.organism import OrganismConfig

    parser = argparse.ArgumentParser(
        prog="explorer", description="Find, inspect and steer the SAE latents that mediate refusal."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build the offline default into cache/ (skips complete stages)")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild stages even when complete")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", help="load a model and print its description and hook names as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prompts", help="summarise or list prompt sets (built-in or a file)")
    p.add_argument("--label", choices=["harmful", "harmless"], help="built-in set to show (default both)")
    p.add_argument("--file", help="a JSONL or CSV prompt file instead of the built-in sets")
    p.add_argument("--split", choices=["train", "val", "test"])
    p.add_argument("--category")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("organism", help="safety fine-tune the offline default so it refuses harmful requests")
    defaults = OrganismConfig()
    p.add_argument("--force", action="store_true", help="retrain even if the tuned model exists")
    p.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument(
        "--first-layer", type=int, default=defaults.first_layer, help="LoRA only on layers >= this"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("refusal", help="compute and select the refusal direction; --report proves it on test")
    _add_model_args(p)
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--n-val", type=int, default=16, help="val prompts per label used for selection")
    p.add_argument("--report", action="store_true", help="ablate/add the direction on the test split")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the added direction in --report")
    p.add_argument("--layer", type=int, help="in --report, use the direction read at this layer instead")
    p.add_argument(
        "--harmful", metavar="FILE", help="harmful prompts (JSONL/CSV) instead of the built-in set"
    )
    p.add_argument(
        "--harmless", metavar="FILE", help="harmless prompts (JSONL/CSV) instead of the built-in set"
    )
    p.set_defaults(func=cmd_refusal)

    p = sub.add_parser("judge", help="judge whether a response text is a refusal")
    p.add_argument("text")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("generate", help="generate chat replies and judge them")
    _add_model_args(p)
    p.add_argument("--prompt", help="one user prompt")
    p.add_argument("--prompts", metavar="FILE", help="a JSONL/CSV prompt file")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    from explorer.cli_steer import add_steering_args

    add_steering_args(p)
    p.set_defaults(func=cmd_generate)

    from explorer.cli_sae import add_sae_parser

    add_sae_parser(sub)
    from explorer.cli_cache import add_cache_parser

    add_cache_parser(sub)
    from explorer.cache_export import add_export_parser

    add_export_parser(sub)
    from explorer.cli_eval import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explorer` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from explorer.cache_reader import CacheError
    from explorer.data import DataError
    from explorer.hooks import HookError
    from explorer.models import ModelError
    from explorer.sae import SAEError

    try:
        return int(args.func(args))
    except (ModelError, DataError, HookError, SAEError, CacheError, ValueError) as e:
        sys.stderr.write(f"explorer {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
