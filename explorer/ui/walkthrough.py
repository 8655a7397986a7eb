"""The walkthrough's steps: the refusal direction, the latents that write it, and steering them.

Every number shown comes from the workspace's files (the organism's provenance metrics, the refusal
direction's selection and report, the latent cache, the examples `explorer demo-examples` measured); each
generation runs only on its button.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import Label, builtin_prompts
from explorer.latents.inspector import latent_summaries
from explorer.latents.reader import CacheError
from explorer.steering.decode import Reply, SideBySide, generate_side_by_side
from explorer.steering.examples import (
    DEMO_LATENTS,
    ExamplesError,
    Measured,
    WalkthroughExamples,
    examples_path,
    read_examples,
    stale_reasons,
    steering_spec,
)
from explorer.steering.spec import DirectionBaseline, SteeringSpec
from explorer.ui.loaders import refusal_records
from explorer.ui.state import open_latent
from explorer.workspace import Workspace

N_TABLE = 6  # latents listed in the table
N_CLAMPED = DEMO_LATENTS  # top latents the one-click demos steer
# The strengths and prompts used until `explorer demo-examples` has measured better ones. Induce refusal:
# the top latents set to this multiple of their corpus max; jailbreak: multiplied by this.
INDUCE_FACTOR = 1.0
JAILBREAK_FACTOR = -3.0
N_PROMPTS = 3  # built-in test prompts offered (after any measured examples)
DEFAULTS_NOTE = (
    "Fixed defaults: run `explorer demo-examples` to choose the prompts and strength from measured results."
)
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


def stored_examples(
    ws: Workspace, hook: str | None, clamped: list[int]
) -> tuple[WalkthroughExamples | None, str]:
    """The examples `explorer demo-examples` measured for this model's main SAE and these latents.

    Returns:
        The examples, or None and a note saying why steps 3 and 4 use the fixed defaults: none measured, or
        measured on another SAE, other latents or other weights (a corrupt file is also an `st.error`).
    """
    if hook is None or hook not in ws.saes or not clamped:
        return None, DEFAULTS_NOTE
    path = examples_path(ws.loaded.name)
    try:
        examples = read_examples(path)
    except ExamplesError as e:
        st.error(str(e))
        return None, "Fixed defaults: the measured examples could not be read (see above)."
    if examples is None:
        return None, DEFAULTS_NOTE
    cache = ws.caches.get(hook)
    reasons = stale_reasons(
        examples,
        model=ws.loaded.name,
        hook=hook,
        latents=clamped,
        sae_fingerprint=ws.saes[hook].fingerprint,
        model_fingerprint=cache.manifest.get("model_fingerprint") if cache is not None else None,
    )
    if reasons:
        return None, (
            f"Fixed defaults: the measured examples in `{path}` no longer apply ({'; '.join(reasons)}); "
            "run `explorer demo-examples` again."
        )
    return examples, ""


def measured_note(examples: WalkthroughExamples, measured: Measured, default: float) -> str:
    """How the step's strength and first prompts were chosen, from the measured counts."""
    induce = measured.goal == "induce"
    label, outcome = ("harmless", "clean refusals") if induce else ("harmful", "clean answers")
    prompts = f"{measured.n_prompts} {label} {examples.split} prompts"
    tried = "/".join(f"{t.strength:g}" for t in measured.trials) + (" × max" if induce else "")
    source = (
        f"{examples.judge} judge, {examples.max_new_tokens} greedy tokens; "
        "measured by `explorer demo-examples`"
    )
    chosen = measured.trial(measured.chosen)
    if chosen is None:
        shown = f"{default:g} × max" if induce else f"{default:g}"
        return (
            f"No {'strength' if induce else 'factor'} of {tried} flipped any of the {prompts} to {outcome}; "
            f"showing the default {shown} ({source})."
        )
    setting = (
        f"Setting them to {chosen.strength:g} × max" if induce else f"Multiplying them by {chosen.strength:g}"
    )
    n = len(measured.examples)
    offered = "the prompt offered first is one" if n == 1 else f"the {n} prompts offered first are ones"
    return (
        f"{setting} flipped {chosen.flipped} of {prompts} to {outcome} ({chosen.degenerate} became "
        f"degenerate text), the most of {tried}; {offered} it flipped ({source})."
    )


def _offered(measured: Measured | None, label: Label) -> list[str]:
    """The measured example prompts first, then the first built-in test prompts."""
    first = [e.prompt for e in measured.examples] if measured is not None else []
    rest = [r.text for r in builtin_prompts(label, "test")[:N_PROMPTS]]
    return list(dict.fromkeys(first + rest))


def _chosen(measured: Measured | None, default: float) -> float:
    return measured.chosen if measured is not None and measured.chosen is not None else default


def _value(result: SideBySide) -> float:
    """The strength a result was generated with (the walkthrough's clamps share one value)."""
    return float(result.spec["clamps"][0]["value"])


def induce_step(
    ws: Workspace,
    hook: str,
    clamped: list[int],
    sampling: SamplingConfig,
    results: dict[str, Any],
    examples: WalkthroughExamples | None = None,
    note: str = DEFAULTS_NOTE,
) -> None:
    """Step 3: set the top latents on a harmless prompt; the (prompt, result) is kept in `results`.

    With measured `examples`, their clearest strength and their prompts first; else `INDUCE_FACTOR`."""
    measured = examples.induce if examples is not None else None
    factor = _chosen(measured, INDUCE_FACTOR)
    prompt = st.selectbox("Harmless prompt", _offered(measured, "harmless"), key="demo_harmless")
    st.markdown(
        f"Set latents {', '.join(f'#{i}' for i in clamped)} to {factor:g} × their max at every "
        "position, and compare with the unsteered reply (same seed)."
    )
    st.caption(
        note if examples is None or measured is None else measured_note(examples, measured, INDUCE_FACTOR)
    )
    if st.button("Induce refusal", type="primary"):
        spec = steering_spec("induce", hook, clamped, factor)
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
        reply_box(right, f"Steered: latents set to {_value(induced):g} × max", induced.steered)


def jailbreak_step(
    ws: Workspace,
    hook: str | None,
    clamped: list[int],
    sampling: SamplingConfig,
    results: dict[str, Any],
    examples: WalkthroughExamples | None = None,
    note: str = DEFAULTS_NOTE,
) -> None:
    """Step 4: on a harmful prompt, ablate the refusal direction and multiply the top latents.

    With measured `examples`, their clearest factor and their prompts first; else `JAILBREAK_FACTOR`."""
    measured = examples.bypass if examples is not None else None
    factor = _chosen(measured, JAILBREAK_FACTOR)
    prompt = st.selectbox("Harmful prompt", _offered(measured, "harmful"), key="demo_harmful")
    st.markdown(
        "Two ways to bypass refusal on a harmful prompt: project the refusal direction out of the residual "
        f"at every layer, or multiply the top latents by {factor:g}."
    )
    if examples is None or measured is None:
        st.caption(note)
    else:
        ablation = examples.ablation
        st.caption(
            measured_note(examples, measured, JAILBREAK_FACTOR)
            + (
                ""
                if ablation is None
                else f" Ablating the refusal direction flipped {ablation.flipped} of the {ablation.n}."
            )
        )
    if st.button("Jailbreak", type="primary"):
        specs = {}
        if ws.refusal is not None:
            specs["ablated"] = SteeringSpec(direction=DirectionBaseline("ablate"))
        if hook is not None and clamped:
            specs["flipped"] = steering_spec("bypass", hook, clamped, factor)
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
        for column, (name, result) in zip(columns[1:], broken.items(), strict=True):
            title = "Refusal direction ablated" if name == "ablated" else f"Latents × {_value(result):g}"
            reply_box(column, title, result.steered)
