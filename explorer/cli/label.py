"""`explorer label`: auto-interp with any OpenAI-compatible LLM; scored labels land in the user database."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.notes import model_name
from explorer.cli.options import add_model_args, model_config, open_cache
from explorer.core.paths import utc_now

if TYPE_CHECKING:
    from explorer.latents.autointerp import LatentTask, RowActivations
    from explorer.latents.reader import LatentCache

log = logging.getLogger(__name__)


def _activations(args: argparse.Namespace, cache: LatentCache) -> RowActivations | None:
    """A forward pass that proves windows non-activating (`--negatives model`, or `auto` when the model
    and SAE load and match the cache); None to choose them from the cache alone."""
    if args.negatives == "cache":
        return None
    from explorer.core.models import ModelError, load_model, model_fingerprint
    from explorer.latents.autointerp import sae_activations
    from explorer.latents.reader import CacheError, LatentCache
    from explorer.saes.build import sae_dir
    from explorer.saes.loading import SAEError, load_sae_for

    try:
        loaded = load_model(model_config(args))
        sae = load_sae_for(loaded, args.sae or str(sae_dir(loaded.name, cache.manifest["hook"])))
        # The cache refuses a model or SAE other than the ones it was built from.
        fingerprint = model_fingerprint(loaded.model)
        LatentCache(cache.directory, sae_fingerprint=sae.fingerprint, model_fingerprint=fingerprint)
    except (ModelError, SAEError, CacheError) as e:
        if args.negatives == "model":
            raise
        sys.stderr.write(
            f"cannot check non-activating windows with the model ({e}); choosing them from the cache "
            "(exact for latents that fire in few rows, otherwise unverified). Give --model/--sae to check.\n"
        )
        return None
    return sae_activations(loaded, sae)


def _show_prompts(tasks: list[LatentTask]) -> None:
    from explorer.latents.autointerp import task_prompts

    for task in tasks:
        sys.stdout.write(f"===== latent {task.latent} (non-activating windows: {task.negatives})\n")
        if task.problem:
            sys.stdout.write(f"skipped: {task.problem}\n")
            continue
        for title, messages in zip(("explanation", "detection"), task_prompts(task), strict=True):
            sys.stdout.write(f"--- {title} prompt\n")
            sys.stdout.write("".join(f"[{m['role']}]\n{m['content']}\n" for m in messages))


def cmd_label(args: argparse.Namespace) -> int:
    from explorer.core.llm import ChatClient, EndpointConfig
    from explorer.core.paths import write_text_atomic
    from explorer.latents.autointerp import (
        AutoInterpConfig,
        auto_labels,
        label_latents,
        prepare_tasks,
        select_latents,
    )
    from explorer.latents.autointerp_client import PROMPT_VERSION
    from explorer.latents.notes import UserNotes, user_db_path
    from explorer.latents.reader import LatentCache

    # Settings are checked before anything slow.
    endpoint = EndpointConfig(
        endpoint=args.endpoint,
        model=args.llm or "",
        api_key_env=args.api_key_env,
        timeout_s=args.timeout,
        max_retries=args.retries,
    )
    given = {"n_top": args.examples, "n_detect": args.held_out, "before": args.before, "after": args.after}
    config = AutoInterpConfig.from_dict(
        {k: v for k, v in {**given, "seed": args.seed}.items() if v is not None}
    )
    cache = LatentCache(Path(args.cache)) if args.cache else open_cache(model_name(args.model), args.hook)
    hook: str = cache.manifest["hook"]
    latents = select_latents(cache, args.latents, args.by)
    tasks = prepare_tasks(cache, latents, config, _activations(args, cache))
    if args.dry_run:
        _show_prompts(tasks)
        return 0
    client = ChatClient(endpoint)
    llm = client.resolve_model()
    provider = args.provider or endpoint.provider
    notes = UserNotes(user_db_path(model_name(args.model)))
    results = []
    try:
        for result in label_latents(tasks, client, config, progress=not args.quiet):
            results.append(result)
            notes.add_labels(auto_labels([result], hook, provider, llm))  # saved as they come
    finally:
        if args.out and results:
            now = utc_now()
            meta = {"hook": hook, "provider": provider, "model": llm, "prompt_version": PROMPT_VERSION}
            lines = [
                json.dumps({**meta, "created_at": now, **asdict(r)}, ensure_ascii=False) for r in results
            ]
            write_text_atomic(Path(args.out), "\n".join(lines) + "\n")
    sys.stdout.write(f"{'latent':>7}  {'score':>5}  {'TPR':>4}  {'TNR':>4}  explanation\n")
    for r in results:
        if r.score is None:
            sys.stdout.write(f"{r.latent:>7}  {'-':>5}  {'-':>4}  {'-':>4}  failed: {r.error}\n")
        else:
            sys.stdout.write(f"{r.latent:>7}  {r.score:5.2f}  {r.tpr:4.2f}  {r.tnr:4.2f}  {r.explanation}\n")
    scored = sum(r.score is not None for r in results)
    sys.stdout.write(
        f"{scored} of {len(results)} latents labelled by {llm} at {provider} ({PROMPT_VERSION}), saved to "
        f"{notes.path}; your own labels still win.\n"
    )
    return 0


def add_label_parser(sub: Any) -> None:
    """Register `explorer label` on the top-level subparsers."""
    from explorer.core.llm import DEFAULT_ENDPOINT, EndpointConfig

    p = sub.add_parser(
        "label",
        help="explain latents with an OpenAI-compatible LLM and score the explanations by detection",
        description="Each latent's activating windows go to the LLM, which names what it detects; the "
        "LLM then picks held-out activating windows out of a shuffled mix with non-activating ones, and "
        "the balanced accuracy of its picks is the label's score. Labels are saved to the workspace's "
        "user database (a label of your own still wins). Endpoints: vLLM http://localhost:8000/v1, "
        "Ollama http://localhost:11434/v1, llama.cpp http://localhost:8080/v1, or a hosted API. --model is "
        "the model whose latents are labelled (it picks the cache and the user database); --llm is the "
        "labelling model.",
    )
    add_model_args(p)
    p.add_argument("--hook", help="the SAE's hook (default: the model's main SAE)")
    p.add_argument("--cache", metavar="DIR", help="a latent cache directory (instead of --model/--hook)")
    p.add_argument("--sae", help="the SAE that proves windows non-activating (default: the built one)")
    p.add_argument("--latents", default="top:20", help="top:N (highest --by first) or latent ids like 0,5,7")
    p.add_argument("--by", default="refusal_cos", help="column that ranks latents for top:N")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"API base URL (default {DEFAULT_ENDPOINT})")
    p.add_argument("--llm", metavar="NAME", help="the labelling model (default: the endpoint's first)")
    p.add_argument("--provider", help="name stored with the labels (default: the endpoint's host:port)")
    p.add_argument(
        "--api-key-env",
        default=EndpointConfig.api_key_env,
        metavar="VAR",
        help="variable holding the API key",
    )
    p.add_argument("--timeout", type=float, default=EndpointConfig.timeout_s, help="seconds per request")
    p.add_argument(
        "--retries", type=int, default=EndpointConfig.max_retries, help="retries after 429/5xx or a timeout"
    )
    p.add_argument(
        "--negatives",
        default="auto",
        choices=["auto", "model", "cache"],
        help="check non-activating windows with a forward pass (model), from the cache alone (cache), "
        "or with the model when it loads (auto)",
    )
    window = p.add_argument_group("windows (defaults: explorer.latents.autointerp.AutoInterpConfig)")
    window.add_argument("--examples", type=int, help="top examples shown to the explainer (8)")
    window.add_argument("--held-out", type=int, help="activating and as many non-activating test windows (8)")
    window.add_argument("--before", type=int, help="tokens shown before an activating token (12)")
    window.add_argument("--after", type=int, help="tokens shown after it (4)")
    window.add_argument("--seed", type=int, help="seeds the choice of windows and their order (0)")
    p.add_argument("--out", metavar="FILE", help="also write every result (failures too) as JSON lines")
    p.add_argument("--dry-run", action="store_true", help="print the prompts; do not contact the endpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_label)
