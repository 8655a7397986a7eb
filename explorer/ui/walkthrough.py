"""The walkthrough's steps: the refusal direction, the latents that write it, and steering them.

Every number shown comes from the workspace's files (the organism's provenance metrics, the refusal
direction's selection and report, the latent cache); each generation runs only on its button.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import builtin_prompts
from explorer.latents.inspector import latent_summaries
from explorer.latents.reader import CacheError
from explorer.steering.decode import Reply, SideBySide, generate_side_by_side
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec
from explorer.ui.loaders import refusal_records
from explorer.ui.state import open_latent
from explorer.workspace import Workspace

N_TABLE = 6  # latents listed in the table
N_CLAMPED = 3  # top latents the one-click demos steer
# Induce refusal: the top latents set to this multiple of their corpus max. The README's `explorer eval`
# table measures its effect on the default's test split; larger factors break the model.
INDUCE_FACTOR = 1.0
JAILBREAK_FACTOR = -3.0  # jailbreak: the latents are multiplied by this
N_PROMPTS = 3
REFUSED, ANSWERED = ":material/block: refused", ":material/check_circle: answered"


def _rate(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def _score(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def reply_box(column: Any, title: str, reply: Reply) -> None:
    """A reply in a bordered box under its title, with the judge's verdict and evidence."""
    box = column.container(border=True)
    box.markdown(f"**{title}**")
    box.markdown(reply.text.strip() or "_(empty reply)_")
    verdict = reply.verdict
    box.caption(
        (REFUSED if verdict.get("refused") else ANSWERED)
        + (f" · {verdict['evidence']}" if verdict.get("evidence") else "")
    )


def direction_step(ws: Workspace) -> None:
    """Step 1: the organism's safety-tuning metrics and the refusal direction, from their files."""
    metrics = ws.loaded.provenance.get("metrics")
    if metrics:
        st.markdown(
            f"`{ws.loaded.name}` was safety-tuned from its base model. On held-out test prompts it now "
            "refuses harmful requests and still answers harmless ones:"
        )
        cols = st.columns(3)
        cols[0].metric("Harmful refused", _rate(metrics.get("harmful_refusal_rate")))
        cols[1].metric("Harmless refused", _rate(metrics.get("harmless_refusal_rate")))
        cols[2].metric("KL to base, harmless", f"{metrics.get('kl_answer', float('nan')):.2f} nats")
    else:
        st.caption(f"`{ws.loaded.name}` records no safety-tuning metrics in its provenance.")
    refusal = ws.refusal
    if refusal is None:
        st.info("This model has no refusal direction yet: run `make build` (or `explorer refusal`).")
        return
    chosen = refusal.selection.get("selected", {})
    st.markdown(
        "Refusal is mediated by one direction in the residual stream: the difference between the mean "
        f"activations on harmful and harmless prompts, read at **`{refusal.location}`**, position "
        f"{refusal.position} (`{chosen.get('token', '?')!r}`), "
        + (
            "chosen as in Arditi et al. (2024)."
            if refusal.validated
            else "**unvalidated**: no candidate passed Arditi et al.'s behavioural filters on this model, so "
            "the build kept the one that best separates harmful from harmless prompts; the steps below may "
            "show no refusal at all."
        )
    )
    cols = st.columns(3)
    cols[0].metric("Induce (harmless, added)", _score(chosen.get("induce")))
    cols[1].metric("Bypass (harmful, ablated)", _score(chosen.get("bypass")))
    cols[2].metric("KL (harmless, ablated)", _score(chosen.get("kl")))
    try:
        report = refusal_records(ws.loaded.name)[1]
    except ValueError as e:
        st.error(str(e))
        return
    if report is not None:
        ablated = _rate(report.get("harmful_ablated_refusal_rate"))
        added = _rate(report.get("harmless_added_refusal_rate"))
        st.caption(
            f"Test split: ablating it drops harmful refusals to {ablated}; "
            f"adding it makes {added} of harmless prompts refused."
        )


def latents_step(ws: Workspace) -> list[int]:
    """Step 2: the main SAE's latents most aligned with the refusal direction, each with an open button.

    Returns:
        Those latents, most aligned first (empty when there is no main SAE or cache to rank them by).
    """
    hook = ws.main
    if hook is None:
        st.info("No SAEs for this model yet: run `make build` to train them and build their latent caches.")
        return []
    if hook not in ws.caches:
        st.info(
            f"The main SAE (`{hook}`) has no latent cache: run `explorer build` (or `explorer cache build`)."
        )
        return []
    try:
        top = ws.caches[hook].top_latents("refusal_cos", N_TABLE, active=True)
        summaries = latent_summaries(ws.caches[hook], top)
    except CacheError as e:
        st.info(f"{e}. Build the refusal direction, then the cache (`make build`).")
        return []
    if not top:
        return []
    st.markdown(
        f"The latents of the main SAE (`{hook}`) that fire on the corpus and whose decoder rows point most "
        "along the refusal direction. *Promotes*: the tokens each one pushes up most through the unembedding."
    )
    rows = [
        {
            "latent": s.latent,
            "refusal cosine": s.refusal_cos,
            "density": s.density,
            "max": s.max,
            "promotes": " ".join(repr(t) for t in s.top_logits),
        }
        for s in summaries
    ]
    st.dataframe(rows, hide_index=True)
    for column, latent in zip(st.columns(len(top)), top, strict=True):
        if column.button(f"Open #{latent}", key=f"demo_open_{latent}"):
            open_latent(hook, latent)
            st.switch_page("pages/latent_detail.py")
    return top


def induce_step(
    ws: Workspace, hook: str, clamped: list[int], sampling: SamplingConfig, results: dict[str, Any]
) -> None:
    """Step 3: set the top latents on a harmless prompt; the (prompt, result) is kept in `results`."""
    harmless = [r.text for r in builtin_prompts("harmless", "test")[:N_PROMPTS]]
    prompt = st.selectbox("Harmless prompt", harmless, key="demo_harmless")
    st.markdown(
        f"Set latents {', '.join(f'#{i}' for i in clamped)} to {INDUCE_FACTOR:g} × their max at every "
        "position, and compare with the unsteered reply (same seed)."
    )
    if st.button("Induce refusal", type="primary"):
        spec = SteeringSpec(clamps=tuple(Clamp(hook, i, "set", INDUCE_FACTOR, "max") for i in clamped))
        with st.spinner("Generating…"):
            try:
                results["induce"] = (prompt, generate_side_by_side(ws.steerer(), prompt, spec, sampling))
            except ValueError as e:
                st.error(f"Could not generate: {e}")
    if "induce" in results:
        asked, induced = results["induce"]
        st.caption(f"Prompt: {asked}")
        left, right = st.columns(2)
        reply_box(left, "Default", induced.default)
        reply_box(right, f"Steered: latents set to {INDUCE_FACTOR:g} × max", induced.steered)


def jailbreak_step(
    ws: Workspace, hook: str | None, clamped: list[int], sampling: SamplingConfig, results: dict[str, Any]
) -> None:
    """Step 4: on a harmful prompt, ablate the refusal direction and flip the top latents."""
    harmful = [r.text for r in builtin_prompts("harmful", "test")[:N_PROMPTS]]
    prompt = st.selectbox("Harmful prompt", harmful, key="demo_harmful")
    st.markdown(
        "Two ways to bypass refusal on a harmful prompt: project the refusal direction out of the residual "
        f"at every layer, or multiply the top latents by {JAILBREAK_FACTOR:g}."
    )
    if st.button("Jailbreak", type="primary"):
        specs = {}
        if ws.refusal is not None:
            specs["ablated"] = SteeringSpec(direction=DirectionBaseline("ablate"))
        if hook is not None and clamped:
            specs["flipped"] = SteeringSpec(
                clamps=tuple(Clamp(hook, i, "multiply", JAILBREAK_FACTOR) for i in clamped)
            )
        with st.spinner("Generating…"):
            try:
                steerer = ws.steerer()
                replies = {
                    name: generate_side_by_side(steerer, prompt, spec, sampling)
                    for name, spec in specs.items()
                }
                results["jailbreak"] = (prompt, replies)
            except ValueError as e:
                st.error(f"Could not generate: {e}")
    if "jailbreak" in results:
        asked, broken = results["jailbreak"]
        first: SideBySide = next(iter(broken.values()))
        st.caption(f"Prompt: {asked}")
        columns = st.columns(1 + len(broken))
        reply_box(columns[0], "Default", first.default)
        titles = {"ablated": "Refusal direction ablated", "flipped": f"Latents × {JAILBREAK_FACTOR:g}"}
        for column, (name, result) in zip(columns[1:], broken.items(), strict=True):
            reply_box(column, titles[name], result.steered)
