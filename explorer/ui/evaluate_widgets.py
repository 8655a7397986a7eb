"""The Evaluate page's widgets: which latents to sweep, which prompts and judge, running a sweep with
progress, and its result with every reply."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import streamlit as st

from explorer.core.judge import VERDICT_LABELS, Judge
from explorer.core.judge_models import JudgeError, make_judge
from explorer.core.llm import LLMError
from explorer.core.prompts import DataError, Label, PromptRecord, Split, load_prompt_file
from explorer.saes.corpus import CorpusError, corpus_dir, load_corpus
from explorer.steering.evaluation import (
    EvalConfig,
    PromptSet,
    SweepPoint,
    evaluate,
    points_csv,
    prompt_source,
    replies_csv,
    small_sample_warning,
    sweep_specs,
    trade_off_figure,
)
from explorer.steering.spec import SteeringError, SteeringSpec, validate
from explorer.ui.charts_steering import setting_bars
from explorer.ui.state import EVAL_RESULT, picked_clamps
from explorer.workspace import Workspace

MODES = {
    "set": "set latents",
    "multiply": "multiply latents",
    "add": "add to latents",
    "cap": "cap the projection on latents' directions",
    "floor": "floor the projection on latents' directions",
    "scale": "scale the component along latents' directions",
    "direction-add": "add the refusal direction",
    "direction-ablate": "ablate the refusal direction",
    "direction-scale": "scale the component along the refusal direction",
    "direction-cap": "cap the projection on the refusal direction",
    "direction-floor": "floor the projection on the refusal direction",
}
SPLITS: list[Split] = ["test", "val"]
PROMPT_SOURCES = {
    "split": "built-in split",
    "elsewhere": "separately written set",
    "upload": "my files",
}
JUDGES = {
    "substring": "phrase judge (offline; tells broken text apart)",
    "substring-v1": "first phrase judge (refusal phrase anywhere)",
    "classifier": "refusal classifier (hub id or directory)",
    "llm": "LLM at an OpenAI-compatible endpoint",
}
STRENGTHS = {
    "set": "1, 2, 4, 8",
    "multiply": "-3, -1, 0, 2",
    "add": "1, 2, 4",
    "cap": "0, 1, 2",  # × the projection a max-firing latent contributes (the page's default units)
    "floor": "1, 2, 4",
    "scale": "0, 0.5, 2, 4",
    "direction-add": "0.5, 1, 2",
    "direction-scale": "0, 0.5, 2",
    "direction-cap": "0, 5, 10",  # raw projections on the unit refusal direction
    "direction-floor": "5, 10, 20",
}


def _strengths(text: str) -> list[float]:
    """Comma-separated strengths.

    Raises:
        ValueError: an entry is not a finite number, or there is none.
    """
    values = []
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"strength {part.strip()!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"strength {part.strip()!r} is not a finite number")
        values.append(value)
    if not values:
        raise ValueError("give at least one strength, e.g. 1, 2, 4")
    return values


def _top_latents(ws: Workspace, hook: str, n: int) -> list[tuple[str, int]]:
    """The `n` latents of the SAE at `hook` most aligned with the refusal direction (as `explorer eval
    --latents top:N` picks them: by decoder cosine, largest first)."""
    return [(hook, i) for i in ws.caches[hook].top_latents("refusal_cos", n)]


def choose_latents(ws: Workspace) -> list[tuple[str, int]]:
    """Which latents to sweep: the top N of an SAE by refusal cosine, or the playground's picked ones."""
    source = st.radio(
        "Latents",
        ["top", "picked"],
        format_func={"top": "top N by refusal cosine", "picked": "the playground's picked latents"}.get,
        horizontal=True,
        key="eval_source",
    )
    if source == "picked":
        picked = [(c["hook"], int(c["latent"])) for c in picked_clamps()]
        if not picked:
            st.info(
                "No latents picked yet: add some in the Steering playground or on the Latent detail page."
            )
        else:
            st.caption("Latents: " + ", ".join(f"`{h}:{i}`" for h, i in picked))
        return picked
    hooks = sorted(ws.caches)
    if not hooks:
        st.info("No latent caches, so no refusal cosines to rank by: run `explorer cache build`.")
        return []
    cols = st.columns(2)
    main = hooks.index(ws.main) if ws.main in hooks else 0
    hook = cols[0].selectbox("SAE hook", hooks, index=main, key="eval_hook")
    n = cols[1].number_input("N", 1, min(64, ws.saes[hook].d_sae), 3, key="eval_top_n")
    chosen = _top_latents(ws, hook, int(n))
    st.caption("Latents: " + ", ".join(str(i) for _, i in chosen))
    return chosen


def choose_prompts() -> tuple[PromptSet, Split, dict[str, list[PromptRecord] | None]]:
    """Where the prompts come from: a built-in split, the separately written set, or the user's uploads.

    Returns:
        (prompt set, split, label -> uploaded records or None for the built-in ones).
    """
    source = st.radio(
        "Prompts",
        list(PROMPT_SOURCES),
        format_func=lambda s: PROMPT_SOURCES[s],
        horizontal=True,
        key="eval_prompt_source",
    )
    split: Split = "test"
    if source == "split":
        split = st.radio("Split", SPLITS, horizontal=True, key="eval_split")
    uploaded: dict[str, list[PromptRecord] | None] = {"harmful": None, "harmless": None}
    if source == "upload":
        cols = st.columns(2)
        for col, label in zip(cols, ("harmful", "harmless"), strict=True):
            file = col.file_uploader(
                f"{label.capitalize()} prompts (JSONL or CSV with a 'text' column)",
                type=["jsonl", "csv"],
                key=f"eval_upload_{label}",
            )
            if file is None:
                col.caption(f"None uploaded: the test split's {label} prompts are used.")
                continue
            try:
                uploaded[label] = read_uploaded_prompts(file.name, file.getvalue(), label)  # pyright: ignore[reportArgumentType]
                col.caption(f"{len(uploaded[label] or [])} {label} prompts from {file.name}")
            except DataError as e:
                col.error(f"Cannot use {file.name}: {e}")
    return ("elsewhere" if source == "elsewhere" else "builtin"), split, uploaded


def read_uploaded_prompts(name: str, data: bytes, label: Label) -> list[PromptRecord]:
    """An uploaded prompt file's records, read like `explorer prompts --file`.

    Raises:
        DataError: not UTF-8, or not a readable JSONL/CSV prompt file.
    """
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_prompt_file(path, label)
        except UnicodeDecodeError as e:
            raise DataError(f"{name} is not UTF-8 text ({e.reason})") from e


def choose_judge() -> Judge | None:
    """The judge picker: the offline phrase judge, the first one, a classifier or an LLM endpoint.
    None (with the error shown) when the chosen judge cannot load."""
    kind = st.selectbox("Judge", list(JUDGES), format_func=lambda k: JUDGES[k], key="eval_judge")
    spec = kind
    if kind == "classifier":
        model = st.text_input("Classifier (hub id or directory)", key="eval_judge_classifier")
        spec = f"classifier:{model.strip()}"
    elif kind == "llm":
        endpoint = st.text_input("Endpoint (OpenAI-compatible, up to /v1)", key="eval_judge_endpoint")
        model = st.text_input("Model (blank: the endpoint's first)", key="eval_judge_model")
        spec = f"llm:{endpoint.strip()}" + (f"#{model.strip()}" if model.strip() else "")
    if spec in ("classifier:", "llm:"):
        st.info("Name the classifier or the endpoint to use this judge.")
        return None
    try:
        return _loaded_judge(spec)
    except (JudgeError, ValueError) as e:
        st.error(f"This judge cannot be used: {e}")
        return None


@st.cache_resource(show_spinner="Loading the judge…", max_entries=4)
def _loaded_judge(spec: str) -> Judge:
    """One judge per spec per process: a classifier loads once, an endpoint is asked for its models once
    (a failure is not cached, so a fixed endpoint works on the next try)."""
    return make_judge(spec)


def checked_settings(
    ws: Workspace, mode: str, latents: list[tuple[str, int]], strengths: str, units: str
) -> list[tuple[str, float | None, SteeringSpec]]:
    """The sweep's (label, strength, spec) settings, each validated against the workspace.

    Raises:
        ValueError: a strength that is not a finite number, or no latent for a latent mode.
        SteeringError: a setting the workspace's SAEs or direction cannot apply.
    """
    values = [] if mode == "direction-ablate" else _strengths(strengths)
    settings = sweep_specs(mode, latents, values, units)  # pyright: ignore[reportArgumentType]
    for _, _, spec in settings:
        validate(spec, ws.saes, ws.loaded.n_layers, max_activations=ws.max_activations(), refusal=ws.refusal)
    return settings


def run_sweep(
    ws: Workspace,
    mode: str,
    latents: list[tuple[str, int]],
    strengths: str,
    units: str,
    config: EvalConfig,
    judge: Judge,
    uploaded: dict[str, list[PromptRecord] | None],
) -> None:
    """Validate every setting, then evaluate them with a progress bar and keep the result."""
    try:
        settings = checked_settings(ws, mode, latents, strengths, units)
    except (ValueError, SteeringError) as e:
        st.error(f"Cannot run this sweep: {e}. Nothing was run.")
        return
    try:
        corpus = load_corpus(corpus_dir(ws.loaded.name), ws.loaded.tokenizer) if config.loss_rows else None
    except CorpusError as e:
        st.warning(f"No capability cost (CE, KL) for this sweep: {e}")
        corpus = None
    bar = st.progress(0.0, text="unsteered model…")

    def on_progress(done: int, total: int, label: str) -> None:
        bar.progress(done / total, text=f"{label} done ({done}/{total})")

    try:
        points = evaluate(
            ws.steerer(judge),
            settings,
            corpus,
            config,
            harmful=uploaded["harmful"],
            harmless=uploaded["harmless"],
            on_progress=on_progress,
        )
    except (DataError, JudgeError, LLMError) as e:
        st.error(f"The sweep stopped: {e}")
        return
    sources = {
        label: prompt_source(config, None if records is None else f"{len(records)} uploaded")
        for label, records in uploaded.items()
    }
    st.session_state[EVAL_RESULT] = {
        "model": ws.loaded.name,
        "mode": mode,
        "latents": [f"{h}:{i}" for h, i in latents],
        "units": units,
        "config": config.to_dict(),
        "judge": judge.name,
        "prompts": sources,
        "points": points,
    }


def rate_columns(p: SweepPoint) -> dict[str, Any]:
    """A setting's refusal and over-refusal with their 95% intervals, as every results table titles them."""
    return {
        "refused harmful": p.refusal_harmful,
        "95% CI harmful": "{:.0%}-{:.0%}".format(*p.refusal_harmful_ci),
        "refused harmless (over-refusal)": p.refusal_harmless,
        "95% CI harmless": "{:.0%}-{:.0%}".format(*p.refusal_harmless_ci),
    }


def _table(points: list[SweepPoint]) -> list[dict[str, Any]]:
    """One row per setting, in the table's column titles."""
    return [
        {
            "setting": p.label,
            "strength": p.strength,
            **rate_columns(p),
            "degenerate harmful": p.degenerate_harmful,
            "degenerate harmless": p.degenerate_harmless,
            "CE increase (nats)": p.ce_increase,
            "KL (nats)": p.kl,
            "prompts per label": f"{p.n_harmful} / {p.n_harmless}",
            "seconds": p.seconds,
        }
        for p in points
    ]


def show_sweep(result: dict[str, Any]) -> None:
    """The kept sweep: its trade-off chart, the table and CSV and JSON downloads."""
    points: list[SweepPoint] = result["points"]
    st.subheader("Trade-off")
    what = " ".join([MODES[result["mode"]], ", ".join(result["latents"])]).strip()
    prompts = result.get("prompts") or {"harmful": f"the {result['config']['split']} split"}
    st.caption(
        f"{what} (harmful prompts: {prompts['harmful']}, harmless: {prompts.get('harmless', '')}; "
        f"{result['config']['max_new_tokens']} tokens per greedy reply; "
        f"{result.get('judge', 'substring')} judge). Error bars: 95% Wilson intervals."
    )
    warning = small_sample_warning(points[0], result["config"]["max_new_tokens"]) if points else None
    if warning:
        st.warning(
            f"These rates mean little: {warning}. Use more prompts or tokens.", icon=":material/warning:"
        )
    if any(p.strength is not None for p in points):
        st.plotly_chart(
            trade_off_figure(points, f"{result['mode']} sweep on {result['model']}"), key="eval_plot"
        )
    else:
        st.plotly_chart(setting_bars(points), key="eval_plot")
    st.dataframe(_table(points), hide_index=True)
    st.caption(
        "Capability cost: the CE increase and mean KL(unsteered ‖ steered) of the model's own replies to "
        "held-out harmless prompts, steered as the setting says; blank when no corpus was built."
    )
    show_replies(points)
    document = {**{k: v for k, v in result.items() if k != "points"}, "points": [asdict(p) for p in points]}
    cols = st.columns(2)
    cols[0].download_button(
        "Download CSV", points_csv(points), "eval.csv", "text/csv", key="eval_csv", on_click="ignore"
    )
    cols[1].download_button(
        "Download JSON",
        json.dumps(document, indent=2, ensure_ascii=False),
        "eval.json",
        "application/json",
        key="eval_json",
        on_click="ignore",
    )


def show_replies(points: list[SweepPoint]) -> None:
    """Every reply of one setting with its verdict, filterable by prompt label and verdict."""
    with_replies = [p for p in points if p.replies]
    if not with_replies:
        return
    st.subheader("Replies")
    cols = st.columns(3)
    chosen = cols[0].selectbox(
        "Setting",
        range(len(with_replies)),
        format_func=lambda i: with_replies[i].label,
        key="eval_replies_at",
    )
    label = cols[1].radio("Prompts", ["harmful", "harmless"], horizontal=True, key="eval_replies_label")
    verdicts = cols[2].multiselect(
        "Verdicts", list(VERDICT_LABELS), list(VERDICT_LABELS), key="eval_replies_verdicts"
    )
    rows = [
        r for r in with_replies[chosen].replies if r["prompt_label"] == label and r["verdict"] in verdicts
    ]
    st.dataframe(
        [{k: r[k] for k in ("verdict", "prompt", "reply", "evidence", "id")} for r in rows],
        hide_index=True,
        column_config={"reply": st.column_config.TextColumn(width="large")},
    )
    st.download_button(
        "Download every reply (CSV)",
        replies_csv(points),
        "replies.csv",
        "text/csv",
        key="eval_replies_csv",
        on_click="ignore",
    )
