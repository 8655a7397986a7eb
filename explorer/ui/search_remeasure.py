"""The Search tab's re-measurement: the front on the test split (and the elsewhere set) beside the
baselines, with progress; and the corpus both the search and the re-measurement take KL and CE from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from explorer.core.judge import Judge
from explorer.core.prompts import builtin_prompts
from explorer.saes.corpus import Corpus, CorpusError, corpus_dir, load_corpus
from explorer.steering.evaluation import prompt_source
from explorer.steering.search import SearchConfig
from explorer.steering.search_front import front_specs, remeasure
from explorer.steering.search_setup import compare_settings, remeasure_sets
from explorer.ui.state import SEARCH_RESULT
from explorer.workspace import Workspace

FAILURES = (ValueError,)


def corpus_for(ws: Workspace, rows: int) -> Corpus | None:
    """The model's corpus for KL and CE, or None (with a warning) when it was not built."""
    if rows <= 0:
        return None
    try:
        return load_corpus(corpus_dir(ws.loaded.name), ws.loaded.tokenizer)
    except CorpusError as e:
        st.warning(f"No capability cost (CE, KL): {e}")
        return None


def remeasure_form(ws: Workspace, judge: Judge | None, result: dict[str, Any]) -> None:
    """Re-measure the front on the test split (and the elsewhere set) beside the baselines, with progress."""
    st.subheader("Re-measure the front")
    st.caption(
        "The front was chosen on the val split: measure it on prompts the search never saw, beside the "
        "unsteered model, the refusal direction and the papers' recipe."
    )
    n_test = max(len(builtin_prompts(label, "test")) for label in ("harmful", "harmless"))
    cols = st.columns(3)
    points = cols[0].number_input("Front points", 1, 32, 4, key="search_front_n")
    n = cols[1].number_input(
        "Prompts per label (test)",
        1,
        n_test,
        n_test,
        key="search_test_n",
        help=f"{n_test} takes every prompt",
    )
    elsewhere = cols[2].checkbox("Also the elsewhere set", True, key="search_elsewhere")
    if not st.button("Re-measure front", key="search_remeasure", disabled=judge is None) or judge is None:
        return
    config: SearchConfig = result["config"]
    chosen = front_specs(result["records"], int(points), config.goal)
    try:
        compare = compare_settings(
            config.goal,
            ws.caches,
            result["hook"],
            has_direction=ws.refusal is not None,
            trigger=config.trigger,
        )
        sets = remeasure_sets(config.evaluation, None if n >= n_test else int(n), elsewhere=elsewhere)
    except FAILURES as e:
        st.error(f"Cannot re-measure: {e}. Nothing was run.")
        return
    corpus = corpus_for(ws, sets[0].loss_rows)
    bar = st.progress(0.0, text="unsteered model…")
    steerer = ws.steerer(judge)
    measured = []
    try:
        for evaluation in sets:
            measured.append(
                remeasure(
                    steerer,
                    corpus,
                    chosen,
                    compare,
                    evaluation,
                    on_progress=_progress(bar, len(measured), len(sets), prompt_source(evaluation)),
                )
            )
    except FAILURES as e:
        st.error(f"The re-measurement stopped: {e}.")
        return
    finally:
        bar.empty()
    st.session_state[SEARCH_RESULT] = {**result, "remeasured": measured, "judge": judge.name}


def _progress(bar: Any, index: int, count: int, where: str) -> Callable[[int, int, str], None]:
    """A progress callback for prompt set `index` of `count`."""

    def on_progress(done: int, total: int, label: str) -> None:
        bar.progress((index + done / total) / count, text=f"{where}: {label} done ({done}/{total})")

    return on_progress
