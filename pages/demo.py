"""Walkthrough: a short curated tour of the refusal direction, its top SAE latents, and steering them."""

from typing import Any

import streamlit as st

from explorer.core.generation import SamplingConfig
from explorer.core.prompts import builtin_prompts
from explorer.latents.inspector import latent_summaries, top_refusal_latents
from explorer.latents.reader import CacheError
from explorer.steering.decode import Reply, SideBySide, generate_side_by_side
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec
from explorer.ui.loaders import refusal_records, workspace_or_stop
from explorer.ui.state import DEMO_RESULTS, DEMO_TOKENS_WIDGET, open_latent

N_TABLE = 6  # latents listed in the table
N_CLAMPED = 3  # top latents the one-click demos steer
# Induce refusal: the top latents set to this multiple of their corpus max (`explorer eval` on the
# default's test split: 1x makes 96% of harmless prompts refused at +1.1 nats CE; 3x breaks the model).
INDUCE_FACTOR = 1.0
JAILBREAK_FACTOR = -3.0  # jailbreak: the latents are multiplied by this
NEW_TOKENS = 48
N_PROMPTS = 3


def _rate(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def _score(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _reply(column: Any, title: str, reply: Reply) -> None:
    box = column.container(border=True)
    box.markdown(f"**{title}**")
    box.markdown(reply.text.strip() or "_(empty reply)_")
    verdict = reply.verdict
    box.caption(
        ("✋ refused" if verdict.get("refused") else "✅ answered")
        + (f" · {verdict['evidence']}" if verdict.get("evidence") else "")
    )


st.title("Walkthrough")
st.caption(
    "Five steps through refusal-explorer: the refusal direction, the SAE latents aligned with it, and what "
    "happens when those latents are steered. Each generation runs only when you click its button."
)
workspace = workspace_or_stop()
results: dict[str, Any] = st.session_state.setdefault(DEMO_RESULTS, {})

st.header("1 · The refusal direction")
metrics = workspace.loaded.provenance.get("metrics")
if metrics:
    st.markdown(
        f"`{workspace.loaded.name}` was safety-tuned from its base model. On held-out test prompts it now "
        "refuses harmful requests and still answers harmless ones:"
    )
    cols = st.columns(3)
    cols[0].metric("Harmful refused", _rate(metrics.get("harmful_refusal_rate")))
    cols[1].metric("Harmless refused", _rate(metrics.get("harmless_refusal_rate")))
    cols[2].metric("KL to base, harmless", f"{metrics.get('kl_answer', float('nan')):.2f} nats")
else:
    st.caption(f"`{workspace.loaded.name}` records no safety-tuning metrics in its provenance.")
refusal = workspace.refusal
if refusal is None:
    st.info("This model has no refusal direction yet: run `make build` (or `explorer refusal`).")
else:
    chosen = refusal.selection.get("selected", {})
    st.markdown(
        "Refusal is mediated by one direction in the residual stream: the difference between the mean "
        f"activations on harmful and harmless prompts, read at **`{refusal.location}`**, position "
        f"{refusal.position} (`{chosen.get('token', '?')!r}`), chosen as in Arditi et al. (2024)."
    )
    cols = st.columns(3)
    cols[0].metric("Induce (harmless, added)", _score(chosen.get("induce")))
    cols[1].metric("Bypass (harmful, ablated)", _score(chosen.get("bypass")))
    cols[2].metric("KL (harmless, ablated)", _score(chosen.get("kl")))
    try:
        report = refusal_records(workspace.loaded.name)[1]
    except ValueError as e:
        st.error(str(e))
        report = None
    if report is not None:
        ablated = _rate(report.get("harmful_ablated_refusal_rate"))
        added = _rate(report.get("harmless_added_refusal_rate"))
        st.caption(
            f"Test split: ablating it drops harmful refusals to {ablated}; "
            f"adding it makes {added} of harmless prompts refused."
        )

st.header("2 · The latents that write it")
hook, top = workspace.main, []
if hook is None:
    st.info("No SAEs for this model yet: run `make build` to train them and build their latent caches.")
elif hook not in workspace.caches:
    st.info(f"The main SAE (`{hook}`) has no latent cache: run `explorer build` (or `explorer cache build`).")
else:
    try:
        top = top_refusal_latents(workspace.caches[hook], N_TABLE)
        summaries = latent_summaries(workspace.caches[hook], top)
    except CacheError as e:
        st.info(f"{e}. Build the refusal direction, then the cache (`make build`).")
        top, summaries = [], []
    if top:
        st.markdown(
            f"The latents of the main SAE (`{hook}`) whose decoder rows point most along the refusal "
            "direction. *Promotes*: the tokens each one pushes up most through the unembedding."
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
clamped = top[:N_CLAMPED]
new_tokens = int(
    st.number_input(
        "Tokens to generate", 1, 256, NEW_TOKENS, key=DEMO_TOKENS_WIDGET, help="for steps 3 and 4"
    )
)
sampling = SamplingConfig(max_new_tokens=new_tokens)

st.header("3 · Induce refusal")
if hook is None or not clamped:
    st.info("Needs the main SAE's latent cache (step 2).")
else:
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
                results["induce"] = (
                    prompt,
                    generate_side_by_side(workspace.steerer(), prompt, spec, sampling),
                )
            except ValueError as e:
                st.error(f"Could not generate: {e}")
    if "induce" in results:
        asked, induced = results["induce"]
        st.caption(f"Prompt: {asked}")
        left, right = st.columns(2)
        _reply(left, "Default", induced.default)
        _reply(right, f"Steered: latents set to {INDUCE_FACTOR:g} × max", induced.steered)

st.header("4 · Jailbreak")
if refusal is None and not clamped:
    st.info("Needs the refusal direction (step 1) or the main SAE's latent cache (step 2).")
else:
    harmful = [r.text for r in builtin_prompts("harmful", "test")[:N_PROMPTS]]
    prompt = st.selectbox("Harmful prompt", harmful, key="demo_harmful")
    st.markdown(
        "Two ways to bypass refusal on a harmful prompt: project the refusal direction out of the residual "
        f"at every layer, or multiply the top latents by {JAILBREAK_FACTOR:g}."
    )
    if st.button("Jailbreak", type="primary"):
        specs = {}
        if refusal is not None:
            specs["ablated"] = SteeringSpec(direction=DirectionBaseline("ablate"))
        if hook is not None and clamped:
            clamps = tuple(Clamp(hook, i, "multiply", JAILBREAK_FACTOR) for i in clamped)
            specs["flipped"] = SteeringSpec(clamps=clamps)
        with st.spinner("Generating…"):
            try:
                steerer = workspace.steerer()
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
        _reply(columns[0], "Default", first.default)
        titles = {"ablated": "Refusal direction ablated", "flipped": f"Latents × {JAILBREAK_FACTOR:g}"}
        for column, (name, result) in zip(columns[1:], broken.items(), strict=True):
            _reply(column, titles[name], result.steered)

st.header("5 · Explore further")
st.page_link("pages/latents.py", label="Latents: browse, sort and filter every latent", icon="🔢")
st.page_link("pages/steering.py", label="Steering playground: clamp any latents, chat", icon="🎛️")
st.page_link("pages/evaluate.py", label="Evaluate: refusal and capability cost over a sweep", icon="📈")
