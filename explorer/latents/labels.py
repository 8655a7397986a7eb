"""Heuristic labels, built offline for every latent: the tokens it fires on most characteristically and
the tokens it promotes, e.g. `fires on: make, build, bomb · promotes: I, Sorry`.

"Characteristic" weighs a token's activation mass against its frequency (TF-IDF): the latent's total
activation on a token, estimated from the quantile sampler (each sampled activation stands for its sample
bin's count over the bin's samples), times log(corpus tokens / the token's count). A latent that fires on
every "." is labelled "."; one that fires hard on a rare word is labelled with that word.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explorer.latents.groups import sample_bin_counts
from explorer.latents.stats import LatentAccumulator, rank_within_groups

N_FIRES = 3
N_PROMOTES = 3
MIN_SCORE = 0.2
"""A token is named only if its score is at least this fraction of the latent's best token's."""


def token_frequencies(input_ids: torch.Tensor, counted: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab_size] how often each token id occurs at counted positions ([n_rows, seq_len] mask)."""
    return torch.bincount(input_ids[counted].long(), minlength=vocab_size)


def characteristic_tokens(
    acc: LatentAccumulator, input_ids: torch.Tensor, frequencies: torch.Tensor, n: int = N_FIRES
) -> torch.Tensor:
    """[d_sae, n] the token ids each latent fires on most characteristically, best first (-1 pads).

    Args:
        input_ids: [n_rows, seq_len] the corpus rows the accumulator's global token ids point into.
        frequencies: [vocab_size] each token's count over the corpus (`token_frequencies`).

    Runs on the accumulator's device (`input_ids` and `frequencies` are moved there).
    """
    d_sae, n_bins, m = acc.d_sae, acc.grid.n_sample_bins, acc.m
    device = acc.sample_tokens.device
    input_ids, frequencies = input_ids.to(device), frequencies.to(device)
    vocab = len(frequencies)
    tokens = acc.sample_tokens.view(d_sae, n_bins, m)
    have = tokens >= 0
    weight = sample_bin_counts(acc) / have.sum(-1).clamp_min(1)  # activations each sample stands for
    lat, b, j = have.nonzero(as_tuple=True)
    token_id = input_ids.reshape(-1)[tokens[lat, b, j]].long()
    mass = acc.sample_values.view(d_sae, n_bins, m)[lat, b, j].double() * weight[lat, b]
    keys, inverse = torch.unique(lat * vocab + token_id, return_inverse=True)
    total = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, mass)
    key_lat, key_tok = keys // vocab, keys % vocab
    idf = torch.log(frequencies.sum().clamp_min(1).double() / frequencies.clamp_min(1).double())
    score = total * idf[key_tok]
    order = torch.argsort(-score, stable=True)
    order = order[torch.argsort(key_lat[order], stable=True)]
    key_lat, key_tok, score = key_lat[order], key_tok[order], score[order]
    rank = rank_within_groups(key_lat)
    best = torch.zeros(d_sae, dtype=torch.float64, device=device)
    best[key_lat[rank == 0]] = score[rank == 0]  # sorted by latent, then score: rank 0 is the best
    keep = (rank < n) & (score >= MIN_SCORE * best[key_lat]) & (score > 0)
    out = torch.full((d_sae, n), -1, dtype=torch.long, device=device)
    out[key_lat[keep], rank[keep]] = key_tok[keep]
    return out


def token_text(piece: str) -> str:
    """A vocabulary piece as a label word: surrounding spaces dropped, a whitespace-only piece as ␣."""
    text = piece.strip(" ")
    return text if text else "␣" * max(len(piece), 1)


def heuristic_label(fires: Sequence[str], promotes: Sequence[str], active: bool) -> str:
    """The label text from the characteristic tokens and the promoted tokens (rendered pieces)."""
    words = list(dict.fromkeys(token_text(p) for p in fires))
    promoted = list(dict.fromkeys(token_text(p) for p in promotes))
    parts = [f"fires on: {', '.join(words)}" if active and words else "never fires on the corpus"]
    if promoted:
        parts.append(f"promotes: {', '.join(promoted)}")
    return " · ".join(parts)
