"""The Prompt inspector's table of one token's latents, with buttons to open each or steer it."""

from __future__ import annotations

import streamlit as st

from explorer.latents.inspector import TokenLatents, latent_summaries
from explorer.latents.reader import CacheError, LatentCache
from explorer.ui.state import add_to_steering, open_latent

WIDTHS = [1, 1.2, 1, 4, 1, 1]


def latent_rows(cache: LatentCache | None, hook: str, token: TokenLatents) -> None:
    """A row per latent firing on `token`: its activation, × its max and promoted tokens (from `cache`,
    when the SAE has one), and open and steer buttons. Steer picks the latent at 1 × its max, or at this
    activation in raw units when there is no cache to give a max."""
    try:
        summaries = latent_summaries(cache, token.latents) if cache is not None else None
    except CacheError as e:
        st.error(str(e))
        summaries = None
    for column, title in zip(
        st.columns(WIDTHS), ["latent", "activation", "× max", "promotes", "", ""], strict=True
    ):
        if title:
            column.markdown(f"**{title}**")
    for row, (latent, value, fraction) in enumerate(
        zip(token.latents, token.activations, token.fractions, strict=True)
    ):
        cells = st.columns(WIDTHS)
        cells[0].markdown(f"`#{latent}`")
        cells[1].markdown(f"{value:.3g}")
        cells[2].markdown("–" if fraction is None else f"{fraction:.2f}")
        cells[3].markdown(" ".join(f"`{t!r}`" for t in summaries[row].top_logits) if summaries else "–")
        if cells[4].button("open", key=f"inspector_open_{latent}"):
            open_latent(hook, latent)
            st.switch_page("pages/latent_detail.py")
        if cells[5].button("steer", key=f"inspector_steer_{latent}"):
            added = (
                add_to_steering(hook, latent)
                if cache is not None
                else add_to_steering(hook, latent, "set", round(value, 4), "raw")
            )
            if added:
                st.success(f"Latent {latent} added to the steering playground.")
            else:
                st.info(f"Latent {latent} is already in the steering playground.")
    st.caption(
        "**steer** adds the latent to the Steering playground "
        + (
            "set to 1 × its corpus max; tune it there."
            if cache is not None
            else "set to this activation (raw units)."
        )
    )
