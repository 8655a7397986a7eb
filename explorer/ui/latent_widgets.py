"""The Latent detail page's sections: examples with their context, the quantile groups, the logit tables
and the "try it on my text" box."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from explorer.latents.probe import ProbeError, probe_text
from explorer.latents.reader import LatentCache, LatentRecord, trimmed
from explorer.ui.examples_html import examples_html, groups_html, inspector_link, legend_html
from explorer.workspace import Workspace

INSPECTOR_PAGE = "inspector"
"""The inspector page's URL path (its file is pages/inspector.py)."""


def context_controls(cache: LatentCache, key: str) -> tuple[int, int]:
    """Sliders for how much context each example shows (up to what the build stored)."""
    config = cache.config
    most_before = max(config.context_before, config.request_reach)
    cols = st.columns(2)
    before = cols[0].slider(
        "Tokens before the activating token",
        0,
        most_before,
        most_before,
        key=f"{key}_before",
        help=f"The build stored {config.context_before} tokens before each example's activating token, "
        f"reaching back to the start of a chat request up to {config.request_reach} tokens away.",
    )
    after = cols[1].slider("Tokens after", 0, config.context_after, config.context_after, key=f"{key}_after")
    return before, after


def examples_section(record: LatentRecord, hook: str, before: int, after: int) -> None:
    """The top activations, then each quantile group, every token coloured by its activation."""
    link = inspector_link(INSPECTOR_PAGE, hook)
    peak = record.max
    st.html(legend_html(peak))
    top = [trimmed(e, before, after) for e in record.top_examples]
    merged = sum(e.count for e in record.top_examples)
    st.markdown(
        f"**Top activations** ({len(top)} distinct windows of {merged}; one example per sequence; "
        "hover a token for its activation)"
    )
    st.html(examples_html(top, peak, link))
    st.markdown(
        "**Quantile groups** (the latent's non-zero activations from the top down, each group holding about "
        "an equal share; a uniform sample of each)"
    )
    groups = [replace(g, examples=[trimmed(e, before, after) for e in g.examples]) for g in record.groups]
    if groups:
        st.html(groups_html(groups, peak, link))
    else:
        st.caption("No activations: no groups.")


def logit_tables(record: LatentRecord) -> None:
    """The promoted and suppressed tokens with their logit effects, as two tables."""
    cols = st.columns(2)
    for col, title, pairs in (
        (cols[0], "promoted", record.logits_top),
        (cols[1], "suppressed", record.logits_bottom),
    ):
        col.dataframe(
            [{"token": repr(token), "logit effect": value} for token, value in pairs],
            hide_index=True,
            column_config={"logit effect": st.column_config.NumberColumn(format="%+.4f")},
            key=f"logits_{title}",
        )


def try_text(workspace: Workspace, hook: str, record: LatentRecord) -> None:
    """A box where the user types any text and sees this latent's activation on every token."""
    sae = workspace.saes.get(hook)
    if sae is None:
        st.info(f"The SAE at `{hook}` is not loaded, so text cannot be tried here.")
        return
    with st.form(key="try_text_form"):
        text = st.text_area(
            "Try it on my text", placeholder="How do I make a bomb?", key="try_text", height=80
        )
        chat = st.checkbox("As a chat request (apply the chat template)", value=True, key="try_text_chat")
        submitted = st.form_submit_button("Show activations", icon=":material/play_arrow:")
    if not submitted:
        return
    try:
        with st.spinner("Running the model to the SAE's layer…"):
            example = probe_text(workspace.loaded, sae, record.latent, text, chat=chat)
    except ProbeError as e:
        st.error(str(e))
        return
    peak = record.max if record.max > 0 else max((v or 0.0 for v in example.values), default=0.0)
    st.caption(
        f"Peak on this text: {example.value:.4g} raw"
        + (f" ({example.value / record.max:.2f} × the corpus max)" if record.max > 0 else "")
    )
    st.html(examples_html([example], peak))
