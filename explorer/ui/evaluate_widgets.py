"""The Evaluate page's widgets: which latents to sweep, running a sweep with progress, and its result."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import streamlit as st

from explorer.core.prompts import Split
from explorer.saes.corpus import CorpusError, corpus_dir, load_corpus
from explorer.steering.evaluation import (
    EvalConfig,
    SweepPoint,
    evaluate,
    points_csv,
    sweep_specs,
    trade_off_figure,
)
from explorer.steering.spec import SteeringError, validate
from explorer.ui.charts_steering import setting_bars
from explorer.ui.state import EVAL_RESULT, picked_clamps
from explorer.workspace import Workspace

MODES = {
    "set": "set latents",
    "multiply": "multiply latents",
    "add": "add to latents",
    "direction-add": "add the refusal direction",
    "direction-ablate": "ablate the refusal direction",
}
SPLITS: list[Split] = ["test", "val"]
STRENGTHS = {"set": "1, 2, 4, 8", "multiply": "-3, -1, 0, 2", "add": "1, 2, 4", "direction-add": "0.5, 1, 2"}


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


def run_sweep(
    ws: Workspace, mode: str, latents: list[tuple[str, int]], strengths: str, units: str, config: EvalConfig
) -> None:
    """Validate every setting, then evaluate them with a progress bar and keep the result."""
    try:
        values = [] if mode == "direction-ablate" else _strengths(strengths)
        settings = sweep_specs(mode, latents, values, units)  # pyright: ignore[reportArgumentType]
        for _, _, spec in settings:
            validate(
                spec, ws.saes, ws.loaded.n_layers, max_activations=ws.max_activations(), refusal=ws.refusal
            )
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

    points = evaluate(ws.steerer(), settings, corpus, config, on_progress=on_progress)
    st.session_state[EVAL_RESULT] = {
        "model": ws.loaded.name,
        "mode": mode,
        "latents": [f"{h}:{i}" for h, i in latents],
        "units": units,
        "config": config.to_dict(),
        "points": points,
    }


def _table(points: list[SweepPoint]) -> list[dict[str, Any]]:
    """One row per setting, in the table's column titles."""
    return [
        {
            "setting": p.label,
            "strength": p.strength,
            "refused harmful": p.refusal_harmful,
            "refused harmless (over-refusal)": p.refusal_harmless,
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
    split = result["config"]["split"]
    st.subheader("Trade-off")
    what = " ".join([MODES[result["mode"]], ", ".join(result["latents"])]).strip()
    st.caption(
        f"{what} ({split} split, {result['config']['max_new_tokens']} tokens per greedy reply, "
        "substring judge)."
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
