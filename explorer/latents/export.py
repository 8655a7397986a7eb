"""Exporting a latent cache: a CSV table, Neuronpedia batch JSON, and an `sae_dashboard` data file.

Every export reads only the cache (no model, SAE or tokenizer) and writes only what the cache holds:
fields a format defines but the cache cannot fill truthfully are left out, and each exporter's
docstring lists them. The cache keeps one activation per example (the example's own token), not the
activations of the tokens around it, and the top and bottom 10 logit effects, not the whole vocabulary's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError, safe_open

from explorer.core.paths import atomic_directory, write_json_atomic, write_text_atomic
from explorer.latents.reader import CacheError, Example, LatentCache, LatentRecord
from explorer.latents.schema import ARRAYS_FILE, TOKENS_FILE

Format = Literal["saedashboard", "neuronpedia", "csv"]
FORMATS: tuple[Format, ...] = ("saedashboard", "neuronpedia", "csv")
BATCH_FILE = re.compile(r"batch-\d+\.json")


def parse_latents(text: str) -> list[int]:
    """Parse a comma-separated latent list such as `"0,5,7"`.

    Raises:
        ValueError: an entry is not a non-negative integer.
    """
    out = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise ValueError(
                f"--latents {text!r}: {part.strip()!r} is not a latent index; expected e.g. 0,5,7"
            )
        out.append(int(part))
    return out


def select_latents(cache: LatentCache, latents: Sequence[int] | None) -> list[int]:
    """The latents to export: all of them by default, else `latents` in order without repeats.

    Raises:
        CacheError: a latent is out of range for this SAE.
        ValueError: `latents` is empty.
    """
    if latents is None:
        return list(range(cache.d_sae))
    if not latents:
        raise ValueError("no latents selected; pass at least one latent index or None for all")
    for latent in latents:
        if not 0 <= latent < cache.d_sae:
            raise CacheError(f"latent {latent} is out of range: this SAE has latents 0..{cache.d_sae - 1}")
    return list(dict.fromkeys(latents))


def _check_window(window: int) -> None:
    if window < 0:
        raise ValueError(f"window must be >= 0 context tokens, got {window}")


def _check_file_target(path: Path, suffix: str | None = None) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory; the export writes one file, give a file path")
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{path} must end in {suffix} (sae_dashboard's loader requires it)")


def snippet(example: Example) -> str:
    """An example's context as one string, its activating token marked `[[like this]]`."""
    return "".join(f"[[{t}]]" if i == example.focus else t for i, t in enumerate(example.context))


def export_csv(
    cache: LatentCache, path: Path, latents: Sequence[int] | None = None, *, window: int = 10
) -> Path:
    """Write the latent table as CSV, one row per latent.

    Columns: every column of `LatentCache.table()`, then `logits_top` and `logits_bottom` (JSON lists
    of the promoted / suppressed token strings, strongest first) and `top_example` (the top example's
    context, `window` tokens each side, with its token marked `[[...]]`; empty for a dead latent).

    Returns:
        `path`.
    """
    _check_file_target(path)
    _check_window(window)
    chosen = select_latents(cache, latents)
    table = cache.table()
    columns = [*table, "logits_top", "logits_bottom", "top_example"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for latent in chosen:
        record = cache.latent(latent, window=window)
        writer.writerow(
            [table[name][latent] for name in table]
            + [
                json.dumps([t for t, _ in record.logits_top], ensure_ascii=False),
                json.dumps([t for t, _ in record.logits_bottom], ensure_ascii=False),
                snippet(record.top_examples[0]) if record.top_examples else "",
            ]
        )
    write_text_atomic(path, buffer.getvalue())
    return path


def _histogram_bars(record: LatentRecord) -> tuple[list[float], list[int]]:
    """Bar positions (geometric centre of each log-spaced bin) and counts of the activation histogram."""
    edges, counts = record.histogram
    return [math.sqrt(lo * hi) for lo, hi in itertools.pairwise(edges)], counts


def _neuronpedia_activation(
    example: Example, bin_min: float, bin_max: float, unknown_value: float | None
) -> dict[str, Any]:
    values = [example.value if i == example.focus else unknown_value for i in range(len(example.context))]
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "tokens": example.context,
        "values": values,
        "qualifying_token_index": example.focus,
    }


def neuronpedia_feature(record: LatentRecord, unknown_value: float | None = None) -> dict[str, Any]:
    """One latent as a Neuronpedia feature dict (the fields of `NeuronpediaDashboardFeature` we can fill)."""
    bar_values, bar_heights = _histogram_bars(record)
    activations = [_neuronpedia_activation(e, -1, record.max, unknown_value) for e in record.top_examples]
    for activation in activations:
        activation["bin_contains"] = -1  # sae_dashboard's marker for the top-activations group
    for low, high, examples in reversed(record.intervals):
        activations += [_neuronpedia_activation(e, low, high, unknown_value) for e in examples]
    return {
        "feature_index": record.latent,
        "pos_str": [t for t, _ in record.logits_top],
        "pos_values": [v for _, v in record.logits_top],
        "neg_str": [t for t, _ in record.logits_bottom],
        "neg_values": [v for _, v in record.logits_bottom],
        "frac_nonzero": record.density,
        "freq_hist_data_bar_values": bar_values,
        "freq_hist_data_bar_heights": bar_heights,
        "activations": activations,
    }


def _prepare_directory(directory: Path) -> None:
    """Refuse a target that is a file, or a directory holding anything but an earlier export's batches."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"{directory} exists and is not a directory; the Neuronpedia export writes a directory"
        )
    if directory.is_dir():
        foreign = sorted(p.name for p in directory.iterdir() if not BATCH_FILE.fullmatch(p.name))
        if foreign:
            raise ValueError(
                f"{directory} holds files that are not Neuronpedia batches ({', '.join(foreign[:3])}); "
                "the export replaces the whole directory, so give an empty or new one"
            )


def export_neuronpedia(
    cache: LatentCache,
    directory: Path,
    latents: Sequence[int] | None = None,
    *,
    batch_size: int = 128,
    window: int = 10,
    model_id: str | None = None,
    sae_set: str = "refusal-explorer",
    unknown_value: float | None = None,
) -> Path:
    """Write Neuronpedia feature JSON: `batch-<n>.json` files of `batch_size` latents each.

    Each file is `{"model_id", "layer", "sae_set", "features": [...]}` as `sae_dashboard`'s
    `NeuronpediaDashboardBatch.to_dict()` writes it (`layer` is left out if the hook names no block).
    Each feature has `feature_index`, `pos_str`/`pos_values` and `neg_str`/`neg_values` (the top and
    bottom logit effects), `frac_nonzero` (density), `freq_hist_data_bar_values`/`_bar_heights` (the
    activation histogram: log-spaced bins, values are bin centres) and `activations`. Activations are the
    top examples (`bin_min` -1, `bin_max` the latent's max, `bin_contains` -1, as sae_dashboard marks
    them) then the interval examples, highest interval first (`bin_min`/`bin_max` its bounds). `tokens`
    are the cache's readable token strings (newlines as ↵) and `qualifying_token_index` indexes the
    example's own token in them.

    Left out, because the cache does not hold them: `bin_contains` of intervals (the fraction of tokens
    in each), `logits_hist_data_*` (needs the whole vocabulary's logit effects), neuron alignment and
    correlated neuron/feature tables (activation correlations; the cache's nearest latents are by
    decoder cosine, a different quantity), `decoder_weights_dist`, `n_prompts_total`,
    `n_tokens_in_prompt`, `dataset`, DFA fields and `vector`. In `values`, only the example's own token
    carries its activation; the other context tokens get `unknown_value` (JSON null by default, since
    their activations are not stored; pass 0.0 for a consumer that needs numbers).

    Args:
        directory: created or replaced atomically; an existing one may hold only earlier batch files.
        model_id: Neuronpedia model id (default: the cache's model name).

    Returns:
        `directory`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _prepare_directory(directory)
    _check_window(window)
    chosen = select_latents(cache, latents)
    header: dict[str, Any] = {"model_id": model_id or cache.manifest["model"], "sae_set": sae_set}
    layer = re.match(r"blocks\.(\d+)\.", str(cache.manifest.get("hook", "")))
    if layer:
        header["layer"] = int(layer.group(1))
    with atomic_directory(directory) as tmp:
        for n, start in enumerate(range(0, len(chosen), batch_size)):
            features = [
                neuronpedia_feature(cache.latent(i, window=window), unknown_value)
                for i in chosen[start : start + batch_size]
            ]
            write_json_atomic(tmp / f"batch-{n}.json", {**header, "features": features})
    return directory


class _TokenIds:
    """Token ids behind the reader's strings (context windows, logit tokens), read from the cache files."""

    def __init__(self, cache: LatentCache):
        try:
            self.input_ids = safe_open(str(cache.directory / TOKENS_FILE), framework="pt").get_tensor(
                "input_ids"
            )
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


def _sequence(example: Example, ids: _TokenIds) -> dict[str, Any]:
    return {
        "original_index": example.row,
        "qualifying_token_index": example.pos,
        "token_ids": ids.context(example),
        "feat_acts": [example.value],
    }


def saedashboard_feature(record: LatentRecord, ids: _TokenIds) -> dict[str, Any]:
    """One latent as the dict form of `sae_dashboard.feature_data.FeatureData`."""
    bar_values, bar_heights = _histogram_bars(record)
    groups = [
        {
            "title": f"TOP ACTIVATIONS<br>MAX = {record.max:.3f}",
            "seq_data": [_sequence(e, ids) for e in record.top_examples],
        }
    ]
    groups += [
        {"title": f"INTERVAL {low:.3f} - {high:.3f}", "seq_data": [_sequence(e, ids) for e in examples]}
        for low, high, examples in reversed(record.intervals)
    ]
    return {
        "feature_tables_data": {
            "correlated_features_indices": [i for i, _ in record.nearest],
            "correlated_features_cossim": [c for _, c in record.nearest],
        },
        "acts_histogram_data": {
            "bar_heights": bar_heights,
            "bar_values": bar_values,
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
    cache: LatentCache, path: Path, latents: Sequence[int] | None = None, *, window: int = 10
) -> Path:
    """Write a JSON file that `sae_dashboard.sae_vis_data.SaeVisData.load_json` reads.

    It has the layout of `SaeVisData.save_json`: `{"feature_data_dict": {latent: FeatureData},
    "feature_stats": FeatureStatistics}`. Per latent: the activation histogram (`acts_histogram_data`;
    log-spaced bins, `bar_values` are bin centres, title `ACTIVATIONS<br>DENSITY = x%`), the logits table
    (top / bottom 10 token ids and logit effects), the feature table `correlated_features_indices` /
    `correlated_features_cossim` holding the nearest latents by decoder cosine (sae_dashboard fills
    `cossim` with activation cosine; `pearson` is left empty), and sequence groups: `TOP ACTIVATIONS`,
    then one `INTERVAL lo - hi` group per interval, highest first. Each sequence is one example in
    sae_dashboard's bold-token-only form (`SequencesConfig(compute_buffer=False)`): `token_ids` is its
    context (up to `window` tokens each side), `feat_acts` the single activation of its own token,
    `original_index` its corpus row and `qualifying_token_index` its position in that row (so the token
    is `token_ids[min(window, qualifying_token_index)]`). `feature_stats` holds `max` and `frac_nonzero`
    per exported latent, in export order.

    Left out: the logits histogram (needs the whole vocabulary), per-token `token_logits`,
    `loss_contribution` and hover logits, `CONTAINS x%` in interval titles, neuron tables, quantiles.
    sae_dashboard 0.8's renderer (`save_feature_centric_vis`) cannot draw this data: it indexes
    `token_logits` for every token, and in bold-token-only mode `loss_contribution[0]` and the hover
    logits, none of which the cache holds. To load it, pass the config, model and encoder that
    `load_json` requires; it only stores the model and encoder, so `None` will do:
    `SaeVisData.load_json(path, SaeVisConfig(hook_point=hook, features=latents), None, None)`.

    Returns:
        `path`.
    """
    _check_file_target(path, ".json")
    _check_window(window)
    chosen = select_latents(cache, latents)
    ids = _TokenIds(cache)
    features: dict[str, Any] = {}
    stats: dict[str, list[float]] = {"max": [], "frac_nonzero": [], "skew": [], "kurtosis": []}
    for latent in chosen:
        record = cache.latent(latent, window=window)
        features[str(latent)] = saedashboard_feature(record, ids)
        stats["max"].append(record.max)
        stats["frac_nonzero"].append(record.density)
    data = {"feature_data_dict": features, "feature_stats": {**stats, "quantile_data": [], "quantiles": []}}
    write_text_atomic(path, json.dumps(data, ensure_ascii=False))
    return path


def export(
    cache: LatentCache,
    fmt: str,
    out: Path,
    latents: Sequence[int] | None = None,
    *,
    window: int = 10,
) -> Path:
    """Export `cache` in format `fmt` (one of `FORMATS`) to `out`.

    Raises:
        ValueError: unknown format or unusable `out`; CacheError for a latent out of range.
    """
    if fmt == "csv":
        return export_csv(cache, out, latents, window=window)
    if fmt == "neuronpedia":
        return export_neuronpedia(cache, out, latents, window=window)
    if fmt == "saedashboard":
        return export_saedashboard(cache, out, latents, window=window)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
