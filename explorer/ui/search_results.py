"""The Search tab's results: a study's trials with its front marked, each re-measured prompt set's front
figure and table beside the baselines, the recipe verdicts, and share links into the steering playground.
Rendering only: everything shown was measured by `explorer.steering.search`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import streamlit as st

from explorer.steering.evaluation import SweepPoint, small_sample_warning
from explorer.steering.search import SearchConfig
from explorer.steering.search_front import Remeasured, front_figure, recipe_verdicts
from explorer.steering.search_setup import verdict_sentence
from explorer.steering.search_study import TrialRecord
from explorer.steering.share import PlaygroundSetup, encode_setup, preset_json
from explorer.steering.spec import FACTOR_MODES, SteeringSpec
from explorer.ui.evaluate_widgets import rate_columns
from explorer.ui.state import Q_SPEC

RATE = st.column_config.NumberColumn(format="percent")
LINK = st.column_config.LinkColumn("playground", display_text="open in playground")
GOAL_WORDS = {"refuse": "raising refusal", "bypass": "lowering refusal"}


def playground_link(spec: SteeringSpec) -> str:
    """The Steering playground's share link for `spec`, relative to the app (default sampling, no chat)."""
    return f"steering?{Q_SPEC}={encode_setup(PlaygroundSetup(spec))}"


def describe(spec: SteeringSpec) -> str:
    """A setting in a few words: each clamp's latent, mode and value, its scope and gate."""
    parts = [
        f"{c.latent} {c.mode} {c.value:g}{'' if c.mode in FACTOR_MODES or c.units == 'raw' else '×max'}"
        for c in spec.clamps
    ]
    text = ", ".join(parts) or "no clamp"
    if spec.scope != "all":
        text += f"; {spec.scope} tokens only"
    if spec.trigger is not None:
        text += f"; gated on {spec.trigger.latent} > {spec.trigger.threshold:g}"
    return text


def trial_rows(records: Sequence[TrialRecord], *, front: bool = True) -> list[dict[str, Any]]:
    """One row per trial, in the tables' column titles (`front`: with the on-front column)."""
    rows = []
    for r in records:
        v = r.values
        spec = SteeringSpec.from_dict(r.spec)
        rows.append(
            {
                "trial": r.number,
                **({"on front": r.on_front} if front else {}),
                "refused harmful": v.get("refusal_harmful"),
                "refused harmless (over-refusal)": v.get("refusal_harmless"),
                "borderline refused": v.get("refusal_borderline"),
                "degenerate harmless": v.get("degenerate_harmless"),
                "KL (nats)": v.get("kl"),
                "CE increase (nats)": v.get("ce_increase"),
                "setting": describe(spec),
                "seconds": v.get("seconds"),
                "playground": playground_link(spec),
            }
        )
    return rows


def trial_table(records: Sequence[TrialRecord], *, front: bool = True) -> None:
    """The trials as a table, rates as percentages, each with its playground link."""
    rates = (
        "refused harmful",
        "refused harmless (over-refusal)",
        "borderline refused",
        "degenerate harmless",
    )
    st.dataframe(
        trial_rows(records, front=front),
        hide_index=True,
        column_config={"playground": LINK, **dict.fromkeys(rates, RATE)},
    )


def point_rows(measured: Remeasured) -> list[dict[str, Any]]:
    """One row per baseline (the unsteered model first) and front point of a re-measured prompt set."""
    return [
        {
            "setting": p.label,
            **rate_columns(p),
            "KL (nats)": p.kl,
            "CE increase (nats)": p.ce_increase,
            "prompts per label": f"{p.n_harmful} / {p.n_harmless}",
            "playground": None if _spec(p).is_empty else playground_link(_spec(p)),
        }
        for p in [*measured.baselines, *measured.front]
    ]


def _spec(point: SweepPoint) -> SteeringSpec:
    return SteeringSpec.from_dict(point.spec)


def show_trials(result: dict[str, Any]) -> None:
    """The study's finished trials on val, its Pareto front marked."""
    config: SearchConfig = result["config"]
    records: list[TrialRecord] = result["records"]
    st.subheader(f"Study {result['study']}")
    if not records:
        st.info("This study has no finished trial yet: run it to fill it.")
        return
    on_front = sum(r.on_front for r in records)
    st.caption(
        f"{len(records)} finished trials on the val split ({GOAL_WORDS[config.goal]}; candidates "
        f"{result['candidates_by']}: {', '.join(str(i) for _, i in config.candidates)}), {on_front} on the "
        f"Pareto front of {', '.join(config.objectives)}. Stored in `{result['storage']}`."
    )
    trial_table(records)


def show_remeasured(result: dict[str, Any]) -> None:
    """Each re-measured prompt set: the front figure, the table beside the baselines, the recipe verdicts."""
    config: SearchConfig = result["config"]
    for n, measured in enumerate(result.get("remeasured") or []):
        st.subheader(f"On {measured.prompts}")
        warning = small_sample_warning(measured.baselines[0], config.evaluation.max_new_tokens)
        if warning:
            st.warning(f"These rates mean little: {warning}.", icon=":material/warning:")
        title = f"{config.goal} search on {result['model']}: {measured.prompts}"
        st.plotly_chart(front_figure(measured, config.goal, title), key=f"search_front_{n}")
        st.dataframe(
            point_rows(measured),
            hide_index=True,
            column_config={
                "playground": LINK,
                "refused harmful": RATE,
                "refused harmless (over-refusal)": RATE,
            },
        )
        for verdict in recipe_verdicts(measured, config.goal):
            st.markdown(verdict_sentence(verdict) + ".")


def open_setting(result: dict[str, Any]) -> None:
    """One setting of the front (or a baseline) as a link into the playground and a spec file."""
    settings = [(f"trial {r.number}", r.spec) for r in result["records"] if r.on_front]
    for measured in (result.get("remeasured") or [])[:1]:
        settings += [(p.label, p.spec) for p in measured.baselines if not _spec(p).is_empty]
    if not settings:
        return
    st.subheader("Open or save a setting")
    chosen = st.selectbox(
        "Setting (the front on val, then the baselines)",
        range(len(settings)),
        format_func=lambda i: settings[i][0],
        key="search_setting",
    )
    label, data = settings[chosen if chosen is not None and chosen < len(settings) else 0]
    spec = SteeringSpec.from_dict(data)
    st.markdown(f"[Open {label} in the steering playground]({playground_link(spec)}): {describe(spec)}")
    st.download_button(
        "Download its spec (JSON)",
        preset_json(spec),
        f"search-{re.sub(r'[^A-Za-z0-9.]+', '-', label).strip('-')}.json",
        "application/json",
        key="search_spec_json",
        on_click="ignore",
    )
