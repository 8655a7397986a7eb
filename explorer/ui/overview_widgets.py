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


def genre_quality(reports: dict[str, dict[str, Any]], main: str | None) -> None:
    """Each SAE's reconstruction on every source of its held-out tokens, the genres it never trained on
    first: what to expect on text typed into the inspector or the playground."""
    main_sources = (reports.get(main or "") or {}).get("by_source") or {}
    if not main_sources:
        return
    from explorer.saes.quality import TARGETS
    from explorer.ui.charts import source_quality

    target = TARGETS["explained_variance_min"]
    st.markdown("**By text source** (held-out tokens; whole genres the SAEs never trained on come first)")
    st.plotly_chart(source_quality(reports, target), width="stretch")
    rows = [
        {
            "source": name,
            "trained on": "yes" if m["trained_on"] else "never",
            "tokens": m["tokens"],
            "explained variance": round(m["explained_variance"], 3),
            "L0": round(m["l0"], 1),
            "dead %": round(100 * m["dead_fraction"], 1),
        }
        for name, m in sorted(main_sources.items(), key=lambda kv: (kv[1]["trained_on"], kv[0]))
    ]
    st.dataframe(rows, hide_index=True)
    unseen = [m["explained_variance"] for m in main_sources.values() if not m["trained_on"]]
    verdict = "meets" if all(ev >= target for ev in unseen) else "misses"
    st.caption(
        f"Main SAE ({main}) on each source; its lowest explained variance on a genre it never trained on "
        f"is {min(unseen, default=float('nan')):.3f}, which {verdict} the target of {target}. Each "
        "source's explained variance is about its own mean; dead: never active on that source's tokens "
        "(a small source leaves more latents unused)."
    )
