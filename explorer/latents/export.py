"""Exporting a latent cache: the latent table as CSV, Neuronpedia batch JSON, and what every export shares.

Every export reads only the cache (no model, SAE or tokenizer) and writes only what the cache holds:
fields a format requires but the cache cannot fill are written empty, and each exporter's docstring
lists them. The cache holds each example's window with the latent's activation at every counted token
of it, and the top and bottom 10 logit effects, not the whole vocabulary's. An example stands for every
identical or near-identical window merged into it (`Example.count`); no format has a field for that
count, so the CSV gives the top example's in a column and the other formats write each example once.
SAEDashboard's format is in `export_saedashboard`.
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
from typing import Any

from explorer.core.paths import atomic_directory, write_json_atomic, write_text_atomic
from explorer.latents.reader import CacheError, Example, LatentCache, LatentRecord

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


def check_window(window: int | None) -> None:
    """Refuse a negative context window (None, the whole stored window, is fine)."""
    if window is not None and window < 0:
        raise ValueError(f"window must be >= 0 context tokens (or None for the whole window), got {window}")


def check_file_target(path: Path, suffix: str | None = None) -> None:
    """Refuse a target that is a directory, or that does not end in `suffix`."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; the export writes one file, give a file path")
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{path} must end in {suffix} (sae_dashboard's loader requires it)")


def snippet(example: Example) -> str:
    """An example's context as one string, its activating token marked `[[like this]]`."""
    return "".join(f"[[{t}]]" if i == example.focus else t for i, t in enumerate(example.context))


def numeric_values(example: Example) -> list[float]:
    """The latent's activation at each token of the example's window, 0.0 where the cache holds none
    (the first position and special tokens, which the build does not count)."""
    return [0.0 if v is None else v for v in example.values]


def histogram_bars(record: LatentRecord) -> tuple[list[float], list[int]]:
    """Bar positions (geometric centre of each log-spaced bin) and counts of the activation histogram."""
    edges, counts = record.histogram
    return [math.sqrt(lo * hi) for lo, hi in itertools.pairwise(edges)], counts


def export_csv(
    cache: LatentCache, path: Path, latents: Sequence[int] | None = None, *, window: int | None = None
) -> Path:
    """Write the latent table as CSV, one row per latent.

    Columns: every column of `LatentCache.table()`, then `label` (the build's heuristic label),
    `logits_top` and `logits_bottom` (JSON lists of the promoted / suppressed token strings, strongest
    first), `top_example` (the top example's context, `window` tokens each side or the whole stored
    window, its token marked `[[...]]`; empty for a dead latent) and `top_example_count` (how many
    identical or near-identical windows it stands for; empty for a dead latent).

    Returns:
        `path`.
    """
    check_file_target(path)
    check_window(window)
    chosen = select_latents(cache, latents)
    table = cache.table()
    columns = [*table, "label", "logits_top", "logits_bottom", "top_example", "top_example_count"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for latent in chosen:
        record = cache.latent(latent, window=window)
        top = record.top_examples[0] if record.top_examples else None
        writer.writerow(
            [table[name][latent] for name in table]
            + [
                record.label,
                json.dumps([t for t, _ in record.logits_top], ensure_ascii=False),
                json.dumps([t for t, _ in record.logits_bottom], ensure_ascii=False),
                snippet(top) if top else "",
                top.count if top else "",
            ]
        )
    write_text_atomic(path, buffer.getvalue())
    return path


def _neuronpedia_activation(
    example: Example, bin_min: float, bin_max: float, contains: float
) -> dict[str, Any]:
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": contains,
        "tokens": example.context,
        "values": numeric_values(example),
        "qualifying_token_index": example.focus,
    }


# Fields Neuronpedia's importer reads from every feature that the cache cannot fill: neuron alignment and
# activation correlations (the cache's nearest latents are by decoder cosine, a different quantity), the
# logits histogram (needs the whole vocabulary's logit effects) and the decoder's attention-head split.
_NEURONPEDIA_EMPTY = (
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "decoder_weights_dist",
)


def neuronpedia_feature(record: LatentRecord) -> dict[str, Any]:
    """One latent as a Neuronpedia feature dict (the keyword arguments of sae_dashboard's
    `NeuronpediaDashboardFeature`)."""
    bar_values, bar_heights = histogram_bars(record)
    # -1 for bin_min and bin_contains is sae_dashboard's marker for the top-activations group.
    activations = [_neuronpedia_activation(e, -1, record.max, -1) for e in record.top_examples]
    for group in record.groups:
        activations += [
            _neuronpedia_activation(e, group.low, group.high, group.share) for e in group.examples
        ]
    return {
        "feature_index": record.latent,
        **{name: [] for name in _NEURONPEDIA_EMPTY},
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
    window: int | None = None,
    model_id: str | None = None,
    sae_set: str = "refusal-explorer",
) -> Path:
    """Write Neuronpedia feature JSON: `batch-<n>.json` files of `batch_size` latents each.

    Each file is `{"model_id", "layer", "sae_set", "sae_id_suffix": null, "features": [...]}` as
    sae_dashboard's `NeuronpediaDashboardBatch.to_dict()` writes it and Neuronpedia's
    `convert-saedashboard-to-neuronpedia-export` reads it (`layer` is the hook's block). Each feature has
    `feature_index`, `pos_str`/`pos_values` and `neg_str`/`neg_values` (the top and bottom logit
    effects), `frac_nonzero` (density), `freq_hist_data_bar_values`/`_bar_heights` (the activation
    histogram: log-spaced bins, values are bin centres) and `activations`: the top examples (`bin_min`
    -1, `bin_max` the latent's max, `bin_contains` -1, as sae_dashboard marks them), then each quantile
    group's examples from the top down (`bin_min`/`bin_max` the group's range, `bin_contains` its share
    of the latent's non-zero activations; sae_dashboard's is a share of all tokens). `tokens` are the
    cache's readable token strings (newlines as ↵), `qualifying_token_index` indexes the example's own
    token in them, and `values` holds the latent's real activation at every token of the window
    (`window` tokens each side, or the whole stored window). Positions the build does not count (the
    first position, special tokens) have no stored activation and get 0.0, because Neuronpedia needs a
    number at every token. The format has no `maxValue`/`maxValueTokenIndex`: Neuronpedia's importer
    derives them (with `minValue`) from `values`.

    Written empty, because the cache does not hold them (Neuronpedia's importer requires the keys):
    neuron alignment, correlated neuron and feature tables (activation correlations; the cache's
    nearest latents are by decoder cosine, a different quantity), the logits histogram (needs the whole
    vocabulary's logit effects) and `decoder_weights_dist`. Left out: `n_prompts_total`,
    `n_tokens_in_prompt`, `dataset`, DFA fields and `vector`. Also not carried: the heuristic label
    (the batch format has no explanation field; Neuronpedia imports explanations separately) and each
    example's count of merged near-duplicates (each example is written once).

    Args:
        directory: created or replaced atomically; an existing one may hold only earlier batch files.
        model_id: Neuronpedia model id (default: the cache's model name).

    Returns:
        `directory`.

    Raises:
        ValueError: bad `batch_size` or `window`, an unusable directory, or a hook that names no block.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _prepare_directory(directory)
    check_window(window)
    chosen = select_latents(cache, latents)
    hook = str(cache.manifest.get("hook", ""))
    layer = re.match(r"blocks\.(\d+)\.", hook)
    if layer is None:
        raise ValueError(f"hook {hook!r} names no block (blocks.<n>.…); Neuronpedia batches need a layer")
    header: dict[str, Any] = {
        "model_id": model_id or cache.manifest["model"],
        "layer": int(layer.group(1)),
        "sae_set": sae_set,
        "sae_id_suffix": None,
    }
    with atomic_directory(directory) as tmp:
        for n, start in enumerate(range(0, len(chosen), batch_size)):
            features = [
                neuronpedia_feature(cache.latent(i, window=window))
                for i in chosen[start : start + batch_size]
            ]
            write_json_atomic(tmp / f"batch-{n}.json", {**header, "features": features})
    return directory
