"""The Overview page's parts that depend on what a workspace holds: the chosen direction, and the SAEs of
a workspace that brought its own (no training reports)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.workspace import Workspace


def _score(value: float | None, digits: int = 2) -> str:
    return "not scored" if value is None else f"{value:.{digits}f}"


def direction_summary(selection: dict[str, Any]) -> None:
    """Where the stored direction was read, its scores, and whether it passed the behavioural filters."""
    chosen = selection["selected"]
    where = f"**`{chosen['location']}`** at position {chosen['position']} (`{chosen['token']!r}`)"
    scores = (
        f"induce {_score(chosen['induce'])}, bypass {_score(chosen['bypass'])}, KL {_score(chosen['kl'], 3)}"
    )
    if selection.get("validated", True):
        st.markdown(
            f"Selected {where}: {scores} under a KL filter of {selection['kl_threshold_used']} "
            f"(Arditi et al. use {selection['config']['kl_threshold']})."
        )
        return
    fallback = selection.get("unvalidated", {})
    st.warning(
        f"**Unvalidated direction** {where}: {fallback.get('reason', 'no candidate passed the filters')}. "
        f"The build kept the {fallback.get('rule', 'best-separating candidate')} "
        f"(Cohen's d {fallback.get('separation', '?')} on val prompts); {scores}. It separates the two "
        "prompt sets but has not been shown to mediate refusal: the model may rarely refuse."
    )


def workspace_saes(workspace: Workspace) -> None:
    """The SAEs a workspace was built with, and the state of each one's cache."""
    if workspace.manifest is None or not workspace.manifest.saes:
        st.info(
            "No SAEs for this model yet: run `explorer build --model SPEC --sae SAE` (any SAELens SAE), "
            "or `explorer sae train` for the offline default."
        )
        return
    rows = [
        {
            "hook": entry.hook,
            "SAE": entry.name,
            "latents": entry.d_sae,
            "source": workspace.manifest.sae_spec(entry),
            "main": entry.hook == workspace.main,
            "cache": "ready" if entry.hook in workspace.caches else "missing or stale",
        }
        for entry in workspace.manifest.saes
    ]
    st.dataframe(rows, hide_index=True)
    st.caption(
        "SAEs the workspace was built with (their own training reports are not part of it). Activations are "
        "raw latent values."
    )
