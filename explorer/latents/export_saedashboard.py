"""Exporting a latent cache as SAEDashboard's JSON, which its own loader reads and its HTML renderer draws."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from explorer.core.paths import write_text_atomic
from explorer.latents.export import (
    check_file_target,
    check_window,
    histogram_bars,
    numeric_values,
    select_latents,
)
from explorer.latents.reader import CacheError, Example, LatentCache, LatentRecord, trimmed
from explorer.latents.schema import ARRAYS_FILE


def saedashboard_window(cache: LatentCache, window: int | None) -> tuple[int, int]:
    """(before, after): the tokens every exported sequence has before and after its activating token.

    SAEDashboard draws every sequence with the same number of tokens before the activating token, so the
    window is capped at what the build stores around every example (`context_before`/`context_after`);
    None gives exactly that.
    """
    config = cache.config
    if window is None:
        return config.context_before, config.context_after
    return min(window, config.context_before), min(window, config.context_after)


class _TokenIds:
    """Token ids behind the reader's strings (context windows, logit tokens), read from the cache files."""

    def __init__(self, cache: LatentCache):
        self.input_ids = cache.input_ids
        # One past the vocabulary: SAEDashboard shows it as UNK, its Neuronpedia converter as
        # <|outofrange|>.
        self.padding = len(cache.vocab)
        try:
            self._arrays = safe_open(str(cache.directory / ARRAYS_FILE), framework="pt")
        except (OSError, SafetensorError) as e:
            raise CacheError(
                f"latent cache at {cache.directory} is corrupt or truncated ({e}); rebuild it"
            ) from e

    def context(self, example: Example) -> list[int]:
        start = example.pos - example.focus
        return self.input_ids[example.row, start : start + len(example.context)].tolist()

    def logits(self, name: str, latent: int) -> list[int]:
        return self._arrays.get_slice(f"{name}_ids")[latent].tolist()


def _sequence(example: Example, ids: _TokenIds, before: int) -> dict[str, Any]:
    """One example as a `SequenceData` dict, left-padded so its activating token is at index `before`."""
    pad = before - example.focus
    token_ids = [ids.padding] * pad + ids.context(example)
    return {
        "original_index": example.row,
        "qualifying_token_index": example.pos,
        "token_ids": token_ids,
        "feat_acts": [0.0] * pad + numeric_values(example),
        "token_logits": [0.0] * len(token_ids),
    }


def saedashboard_feature(record: LatentRecord, ids: _TokenIds, before: int, after: int) -> dict[str, Any]:
    """One latent as the dict form of `sae_dashboard.feature_data.FeatureData`."""

    def sequences(examples: list[Example]) -> list[dict[str, Any]]:
        return [_sequence(trimmed(e, before, after), ids, before) for e in examples]

    bar_values, bar_heights = histogram_bars(record)
    groups = [
        {
            "title": f"TOP ACTIVATIONS<br>MAX = {record.max:.3f}",
            "seq_data": sequences(record.top_examples),
        }
    ]
    groups += [
        {
            "title": f"INTERVAL {g.low:.3f} - {g.high:.3f}<br>CONTAINS {g.share:.3%}",
            "seq_data": sequences(g.examples),
        }
        for g in record.groups
    ]
    return {
        "feature_tables_data": {
            "correlated_features_indices": [i for i, _ in record.nearest],
            "correlated_features_cossim": [c for _, c in record.nearest],
        },
        "acts_histogram_data": {
            # A dead latent gets one empty bar: the renderer scales bar colours by the largest bar value.
            "bar_heights": bar_heights or [0],
            "bar_values": bar_values or [0.0],
            "tick_vals": [],
            "title": f"ACTIVATIONS<br>DENSITY = {record.density:.3%}",
        },
        "logits_table_data": {
            "top_token_ids": ids.logits("logit_top", record.latent),
            "top_logits": [v for _, v in record.logits_top],
            "bottom_token_ids": ids.logits("logit_bottom", record.latent),
            "bottom_logits": [v for _, v in record.logits_bottom],
        },
        "sequence_data": {"seq_group_data": groups},
    }


def export_saedashboard(
    cache: LatentCache, path: Path, latents: Sequence[int] | None = None, *, window: int | None = None
) -> Path:
    """Write a JSON file that `sae_dashboard.sae_vis_data.SaeVisData.load_json` reads and SAEDashboard's
    renderer (`sae_dashboard.data_writing_fns.save_feature_centric_vis`) draws.

    It has the layout of `SaeVisData.save_json`: `{"feature_data_dict": {latent: FeatureData},
    "feature_stats": FeatureStatistics}`. Per latent: the activation histogram (`acts_histogram_data`;
    log-spaced bins, `bar_values` are bin centres, title `ACTIVATIONS<br>DENSITY = x%`), the logits table
    (top / bottom 10 token ids and logit effects), the feature table `correlated_features_indices` /
    `correlated_features_cossim` holding the nearest latents by decoder cosine (sae_dashboard fills
    `cossim` with activation cosine), and sequence groups: `TOP ACTIVATIONS<br>MAX = m`, then one
    `INTERVAL lo - hi<br>CONTAINS x%` group per quantile group from the top down (x is the group's share
    of the latent's non-zero activations; sae_dashboard's is a share of all tokens). Each sequence is one
    example with `before, after = saedashboard_window(cache, window)` tokens around its activating
    token: `token_ids` the window, `feat_acts` the latent's real activation at every token of it (0.0
    where the build does not count the position: the first one, special tokens), `original_index` its
    corpus row and `qualifying_token_index` its position in that row. The activating token is always at
    index `before`, where the renderer bolds it: an example fewer than `before` tokens into its row is
    left-padded with token id `len(vocab)` (one past the vocabulary, activation 0; shown as `UNK`).
    `feature_stats` holds `max` and `frac_nonzero` per exported latent, in export order.

    Filled so the renderer can draw, though the cache does not hold them: `token_logits` (each token's
    logit effect, only drawn as a hover line on the logits histogram) is all zeros, and a dead latent's
    histogram is one empty bar at 0. Left empty: the logits histogram (needs the whole vocabulary),
    `loss_contribution` and hover logits, `correlated_features_pearson` (so SAEDashboard's feature table,
    which pairs it with the indices, draws no rows), neuron tables, `skew`, `kurtosis` and quantiles.
    Not carried: the heuristic label (no field for it) and each example's count of merged near-duplicates
    (each example is written once).

    To draw it, load it with a feature-centric layout whose `SequencesConfig` has
    `buffer=saedashboard_window(cache, window)`, `compute_buffer=True`, `n_quantiles=config.n_groups`,
    `top_acts_group_size=config.k` and `quantile_group_size=config.examples_per_group` (`config` is the
    cache's build config), and a `model` whose `tokenizer` is the model's (the renderer decodes token ids
    with it; `load_json` only stores the model and encoder, so the encoder may be None). The page inlines
    the data, SAEDashboard's scripts and its CSS; it loads d3 and plotly from their CDNs when opened
    (sae_dashboard 0.8 has no option to inline them), so viewing it offline needs local copies of those
    two libraries in its two `<script src>` tags.

    Returns:
        `path`.
    """
    check_file_target(path, ".json")
    check_window(window)
    chosen = select_latents(cache, latents)
    before, after = saedashboard_window(cache, window)
    ids = _TokenIds(cache)
    features: dict[str, Any] = {}
    stats: dict[str, list[float]] = {"max": [], "frac_nonzero": [], "skew": [], "kurtosis": []}
    for latent in chosen:
        record = cache.latent(latent)
        features[str(latent)] = saedashboard_feature(record, ids, before, after)
        stats["max"].append(record.max)
        stats["frac_nonzero"].append(record.density)
    data = {"feature_data_dict": features, "feature_stats": {**stats, "quantile_data": [], "quantiles": []}}
    write_text_atomic(path, json.dumps(data, ensure_ascii=False))
    return path
