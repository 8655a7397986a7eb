"""How good an SAE is, measured on held-out tokens: reconstruction, sparsity, loss recovered, refusal fit."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from explorer.core.hooks import forward, parse_hook_name
from explorer.core.models import LoadedModel
from explorer.saes.activations import Activations
from explorer.saes.corpus import Corpus
from explorer.saes.loading import LoadedSAE

DENSE_THRESHOLD = 0.1
"""A latent active on more than this fraction of tokens is reported as dense."""

TARGETS = {"explained_variance_min": 0.85, "l0_max": 64, "dead_fraction_max": 0.20}


@torch.no_grad()
def reconstruction_metrics(
    sae: LoadedSAE,
    acts: torch.Tensor,
    *,
    groups: torch.Tensor | None = None,
    batch_size: int = 8192,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Explained variance, L0 and latent firing statistics of `sae` on `acts`, overall and per group.

    Explained variance is over the whole set, 1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2. A latent is
    dead when it is never active on these tokens, dense when active on more than `dense_threshold`.

    Args:
        acts: [n, d_in] activations (cast to the SAE's dtype batch by batch).
        groups: [n] group index of each token (e.g. its text source); when given, "groups" holds each
            group's tokens, explained variance (about the group's own mean), mean L0 and dead fraction,
            from the same single pass.
    """
    n, d = acts.shape
    if n == 0:
        raise ValueError("no activations to measure the SAE on")
    module = sae.sae
    dtype = module.dtype
    groups = torch.zeros(n, dtype=torch.long) if groups is None else groups.long()
    n_groups = int(groups.max()) + 1
    sse = torch.zeros(n_groups, dtype=torch.float64)
    sum_x = torch.zeros(n_groups, d, dtype=torch.float64)
    sum_sq = torch.zeros(n_groups, dtype=torch.float64)
    fires = torch.zeros(n_groups, sae.d_sae, dtype=torch.float64)
    l0s: list[torch.Tensor] = []
    for i in range(0, n, batch_size):
        x = acts[i : i + batch_size].to(module.device, dtype)
        g = groups[i : i + batch_size]
        f = module.encode(x)
        x_hat = module.decode(f)
        x64 = x.double().cpu()
        sse.index_add_(0, g, (x64 - x_hat.double().cpu()).pow(2).sum(-1))
        sum_x.index_add_(0, g, x64)
        sum_sq.index_add_(0, g, x64.pow(2).sum(-1))
        active = (f > 0).cpu()
        fires.index_add_(0, g, active.double())
        l0s.append(active.sum(-1))
    l0 = torch.cat(l0s)
    tokens = torch.bincount(groups, minlength=n_groups).double()

    def explained(sse: torch.Tensor, sum_x: torch.Tensor, sum_sq: torch.Tensor, n: torch.Tensor) -> float:
        return float(1 - sse / (sum_sq - sum_x.pow(2).sum() / n))

    counts = torch.bincount(l0, minlength=int(l0.max()) + 1)
    frequency = fires.sum(0) / n
    out: dict[str, Any] = {
        "tokens": n,
        "explained_variance": explained(sse.sum(), sum_x.sum(0), sum_sq.sum(), tokens.sum()),
        "mse_per_token": float(sse.sum() / n),
        "l0": {
            "mean": float(l0.double().mean()),
            "median": float(l0.double().median()),
            "max": int(l0.max()),
            "histogram": {"l0": list(range(len(counts))), "tokens": counts.tolist()},
        },
        "dead_fraction": float((frequency == 0).double().mean()),
        "dense_fraction": float((frequency > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold,
        "firing_frequency_quantiles": {str(q): float(frequency.quantile(q)) for q in (0.1, 0.5, 0.9, 0.99)},
    }
    if n_groups > 1:
        group_l0 = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, l0.double())
        out["groups"] = [
            {
                "tokens": int(tokens[k]),
                "explained_variance": explained(sse[k], sum_x[k], sum_sq[k], tokens[k]),
                "l0": float(group_l0[k] / tokens[k]),
                "dead_fraction": float((fires[k] == 0).double().mean()),
            }
            if tokens[k] > 1
            else None
            for k in range(n_groups)
        ]
    return out


def source_groups(heldout: Activations, corpus: Corpus) -> tuple[torch.Tensor, list[str]]:
    """Each held-out token's source as a group index ([n]), and the sources' names.

    A source is a general-text source (`SequenceInfo.source`) or "chat" for the transcripts.
    """
    of_row = [s.source or s.kind for s in corpus.sequences]
    names = sorted(set(of_row))
    index = torch.tensor([names.index(name) for name in of_row], dtype=torch.long)
    return index[heldout.row.long()], names


def by_source(
    reconstruction: dict[str, Any], names: list[str], trained_on: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The per-source part of `reconstruction_metrics(..., groups=source_groups(...))`, by source name.

    Sources in `trained_on` had other documents (or prompts) in training; the rest are whole genres the
    SAE never saw. Each source's explained variance is about its own mean, as if it were the only text.
    """
    return {
        name: {**group, "trained_on": name in trained_on}
        for name, group in zip(names, reconstruction.get("groups") or [], strict=False)
        if group is not None
    }


def unseen_genres_floor(sources: dict[str, dict[str, Any]]) -> bool:
    """True when every source the SAE never trained on meets the explained-variance target."""
    unseen = [s["explained_variance"] for s in sources.values() if not s["trained_on"]]
    return all(ev >= TARGETS["explained_variance_min"] for ev in unseen)


@torch.no_grad()
def loss_recovered(
    loaded: LoadedModel,
    saes: Sequence[LoadedSAE],
    corpus: Corpus,
    rows: Sequence[int],
    *,
    batch_size: int = 16,
) -> dict[str, dict[str, Any]]:
    """Next-token CE loss with each SAE's reconstruction spliced in, next to clean and zero-ablated runs.

    Splicing and zero-ablation act only at counted positions (not position 0, not special tokens), the
    same positions the SAEs were trained on. Loss is averaged over counted positions whose next token is
    real. Fraction recovered = (zero - spliced) / (zero - clean). The clean run is shared by all SAEs.

    Returns:
        SAE name -> CE losses and the fraction recovered.
    """
    for sae in saes:
        parse_hook_name(sae.hook, loaded.n_layers)
    runs: dict[str, float] = {"clean": 0.0}
    n_tokens = 0
    for b in range(0, len(rows), batch_size):
        chunk = list(rows[b : b + batch_size])
        lengths = torch.tensor([corpus.sequences[i].length for i in chunk])
        width = int(lengths.max())
        ids = corpus.input_ids[chunk, :width].long().to(loaded.device)
        attention = (torch.arange(width)[None, :] < lengths[:, None]).long().to(loaded.device)
        counted = corpus.mask[chunk, :width].to(loaded.device)
        scored = counted[:, :-1] & attention[:, 1:].bool()

        runs["clean"] += _summed_ce(loaded, ids, attention, scored, {})
        for sae in saes:
            for kind, edit in (("sae", _splice(sae, counted)), ("zero", _zero(counted))):
                key = f"{sae.name}/{kind}"
                runs[key] = runs.get(key, 0.0) + _summed_ce(loaded, ids, attention, scored, {sae.hook: edit})
        n_tokens += int(scored.sum())
    if n_tokens == 0:
        raise ValueError("no scored positions for the loss evaluation")
    clean = runs["clean"] / n_tokens
    out: dict[str, dict[str, Any]] = {}
    for sae in saes:
        spliced_ce, zero_ce = runs[f"{sae.name}/sae"] / n_tokens, runs[f"{sae.name}/zero"] / n_tokens
        gap = zero_ce - clean
        out[sae.name] = {
            "tokens": n_tokens,
            "ce_clean": clean,
            "ce_sae": spliced_ce,
            "ce_zero_ablation": zero_ce,
            "ce_increase_sae": spliced_ce - clean,
            "ce_increase_zero_ablation": gap,
            "fraction_recovered": (zero_ce - spliced_ce) / gap if gap > 0 else None,
        }
    return out


def _summed_ce(
    loaded: LoadedModel,
    ids: torch.Tensor,
    attention: torch.Tensor,
    scored: torch.Tensor,
    edits: dict[str, Any],
) -> float:
    """Sum of next-token CE over `scored` positions of one batch, with `edits` applied."""
    logits = forward(loaded.model, edits, input_ids=ids, attention_mask=attention, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
    )
    return float(loss[scored].sum())


def _splice(sae: LoadedSAE, counted: torch.Tensor) -> Any:
    """A hook replacing counted positions with the SAE's reconstruction."""
    module = sae.sae

    def edit(act: torch.Tensor, _name: str) -> torch.Tensor:
        new = module.decode(module.encode(act.to(module.dtype))).to(act.dtype)
        return torch.where(counted[..., None], new, act)

    return edit


def _zero(counted: torch.Tensor) -> Any:
    """A hook zeroing counted positions."""

    def edit(act: torch.Tensor, _name: str) -> torch.Tensor:
        return torch.where(counted[..., None], torch.zeros_like(act), act)

    return edit


def refusal_location_index(hook: str, n_layers: int) -> int:
    """Index of `hook` among the refusal locations (every resid_pre, then the last resid_post)."""
    point = parse_hook_name(hook, n_layers)
    return point.layer + (1 if point.site == "post" else 0)


def post_instruction(acts: Activations, corpus: Corpus, position: int) -> Activations:
    """The activations of chat transcripts at the post-instruction `position` (negative, from the end
    of the prompt), labelled harmful or harmless; everything else is dropped."""
    width = corpus.input_ids.shape[1]
    targets = torch.tensor(
        [
            i * width + s.n_prompt + position
            for i, s in enumerate(corpus.sequences)
            if s.kind == "chat" and s.label in ("harmful", "harmless") and s.n_prompt + position > 0
        ],
        dtype=torch.long,
    )
    hit = torch.isin(acts.row.long() * width + acts.pos.long(), targets).nonzero().squeeze(-1)
    return Activations(acts.acts[hit], acts.row[hit], acts.pos[hit])


@torch.no_grad()
def refusal_fit(
    sae: LoadedSAE,
    direction: torch.Tensor,
    acts: Activations,
    corpus: Corpus,
    position: int,
    *,
    top: int = 10,
) -> dict[str, Any]:
    """How well the SAE represents the refusal direction at its hook.

    Two measures. (1) Reconstruction: the difference in means between harmful and harmless transcripts at
    the post-instruction position, computed on raw activations and on their SAE reconstructions, each
    compared with `direction` by cosine. (2) Decoder alignment: the latents whose decoder rows have the
    highest (and lowest) cosine with `direction`.

    Args:
        direction: [d_in] the refusal direction at this hook's layer.
        acts: stored activations of this hook (chat rows included).
        position: the post-instruction position as a negative offset from the end of the prompt.
    """
    module = sae.sae
    acts = post_instruction(acts, corpus, position)
    labels = [corpus.sequences[int(r)].label for r in acts.row]
    harmful = torch.tensor([lab == "harmful" for lab in labels], dtype=torch.bool).nonzero().squeeze(-1)
    harmless = torch.tensor([lab == "harmless" for lab in labels], dtype=torch.bool).nonzero().squeeze(-1)
    direction = direction.float().cpu()
    unit = direction / direction.norm()
    out: dict[str, Any] = {"direction_norm": float(direction.norm())}
    if len(harmful) and len(harmless):
        x_h, x_s = acts.acts[harmful].to(module.dtype), acts.acts[harmless].to(module.dtype)
        raw = x_h.float().mean(0) - x_s.float().mean(0)
        rec = module.decode(module.encode(x_h)).float().mean(0) - module.decode(
            module.encode(x_s)
        ).float().mean(0)
        cos = torch.nn.functional.cosine_similarity
        out["reconstruction"] = {
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "cos_direction_raw_diff": float(cos(unit, raw.cpu(), dim=0)),
            "cos_direction_sae_diff": float(cos(unit, rec.cpu(), dim=0)),
            "cos_raw_sae_diff": float(cos(raw.cpu(), rec.cpu(), dim=0)),
        }
    w_dec = module.W_dec.detach().float().cpu()
    cosines = (w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ unit
    hi = cosines.topk(min(top, len(cosines)))
    lo = (-cosines).topk(min(top, len(cosines)))
    out["top_latents"] = [
        {"latent": int(i), "cosine": float(c)} for c, i in zip(hi.values, hi.indices, strict=True)
    ]
    out["bottom_latents"] = [
        {"latent": int(i), "cosine": -float(c)} for c, i in zip(lo.values, lo.indices, strict=True)
    ]
    # Best reconstruction of the direction from its `top` most aligned decoder rows (least squares).
    basis = w_dec[hi.indices].T.double()
    projection = basis @ (torch.linalg.pinv(basis) @ unit.double())
    out["cos_direction_top_latents_span"] = float(
        torch.nn.functional.cosine_similarity(unit.double(), projection, dim=0)
    )
    return out


def decoder_norm_stats(sae: LoadedSAE) -> dict[str, Any]:
    norms = sae.decoder_norms()
    return {
        "unit_norm": sae.decoder_unit_norm,
        "min": float(norms.min()),
        "mean": float(norms.mean()),
        "max": float(norms.max()),
        "std": float(norms.std()),
    }


def check_targets(report: dict[str, Any]) -> dict[str, bool]:
    """Which of the quality targets the report meets (main-layer targets from the SAE issue)."""
    rec = report["reconstruction"]
    return {
        "explained_variance": rec["explained_variance"] >= TARGETS["explained_variance_min"],
        "l0": rec["l0"]["mean"] <= TARGETS["l0_max"],
        "dead_fraction": rec["dead_fraction"] <= TARGETS["dead_fraction_max"],
        **({"unseen_genres": unseen_genres_floor(report["by_source"])} if report.get("by_source") else {}),
    }


def summary_row(report: dict[str, Any], *, is_main: bool = False) -> dict[str, Any]:
    """One table row of an SAE's quality report, for listing several SAEs side by side."""
    rec, loss, ref = report["reconstruction"], report.get("loss") or {}, report.get("refusal", {})
    top = ref.get("top_latents") or []
    recovered = loss.get("fraction_recovered")
    return {
        "hook": report["sae"]["hook"] + (" (refusal layer)" if is_main else ""),
        "architecture": f"{report['sae']['architecture']} × {report['sae']['d_sae']}",
        "explained variance": round(rec["explained_variance"], 3),
        "L0 (mean)": round(rec["l0"]["mean"], 1),
        "dead %": round(100 * rec["dead_fraction"], 1),
        "dense %": round(100 * rec["dense_fraction"], 1),
        "loss recovered": None if recovered is None else round(recovered, 3),
        "cos(refusal dir, SAE diff)": ref.get("reconstruction", {}).get("cos_direction_sae_diff"),
        "top latent (decoder cos)": f"{top[0]['latent']} ({top[0]['cosine']:+.2f})" if top else None,
    }
