"""The latent table: one row per latent of an SAE, read from its cache, with filtering, search and sorting.

Columns are numpy arrays and every operation is vectorised (whole-array reads, masks, one stable argsort,
one regular-expression scan of a prebuilt search text), so a 131,072-latent SAE filters, searches and
sorts in tens of milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cached_property, reduce
from operator import add
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from explorer.latents.labels import N_PROMOTES
from explorer.latents.labels import token_text as label_word
from explorer.latents.reader import LatentCache
from explorer.saes.quality import DENSE_THRESHOLD

SortOrder = Literal["descending", "ascending", "magnitude"]
Rows = npt.NDArray[np.int64]
"""Row positions in a table (row i is latent `table.latent[i]`)."""

NUMERIC_COLUMNS = ("latent", "refusal_cos", "attribution", "post_diff", "density", "max")
"""Columns that can be sorted and filtered by range (refusal_cos and attribution only when built)."""

COLUMN_TITLES = {
    "latent": "latent",
    "label": "label",
    "refusal_cos": "cos refusal",
    "attribution": "attribution (harmful)",
    "post_diff": "harmful − harmless",
    "density": "density",
    "max": "max",
    "top_logits": "top logit tokens",
    "snippet": "top example",
}
"""Display titles of the table's columns."""

FOCUS_OPEN, FOCUS_CLOSE = "«", "»"
"""Marks around the activating token in a snippet (left out when searching)."""
_FIELD_SEP, _ROW_SEP = "\x00", "\x01"
"""Separators of the search text (a search for either finds nothing)."""


@dataclass(frozen=True, eq=False)
class LatentTable:
    """Every latent of one SAE, column by column (row i is latent `latent[i]`); lists given are stored as
    numpy arrays (numbers as int64/float64, text as object arrays of str).

    Attributes:
        latent: latent indices, 0..d_sae-1.
        refusal_cos: cosine of each decoder row with the refusal direction at the SAE's layer (None when
            the cache was built without a refusal direction).
        attribution: mean activation x gradient on the refusal score over harmful prompts (None when
            the cache was built without attribution).
        post_diff: harmful minus harmless mean activation at post-instruction positions (raw units).
        density: fraction of cached tokens on which the latent is active.
        max: the latent's largest activation on the cache's corpus (raw units).
        top_logits: the tokens the latent promotes most, as text (" · " between tokens).
        snippet: the top-activating example's context, the activating token marked «like this»
            ("" for a latent that never fired).
        label: the build's heuristic label (`explorer.latents.labels`).
    """

    latent: Any
    refusal_cos: Any
    attribution: Any
    post_diff: Any
    density: Any
    max: Any
    top_logits: Any
    snippet: Any
    label: Any

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            dtype = np.int64 if f.name == "latent" else np.float64 if f.name in NUMERIC_COLUMNS else object
            object.__setattr__(self, f.name, np.asarray(value, dtype=dtype))

    def __len__(self) -> int:
        return len(self.latent)

    def numeric_columns(self) -> list[str]:
        """The numeric columns this table has (refusal_cos and attribution may be missing)."""
        return [name for name in NUMERIC_COLUMNS if getattr(self, name) is not None]

    def values(self, column: str) -> npt.NDArray[np.float64]:
        """One numeric column as float64.

        Raises:
            ValueError: the table has no such numeric column.
        """
        if column not in self.numeric_columns():
            raise ValueError(f"no numeric column {column!r}; this table has {self.numeric_columns()}")
        return np.asarray(getattr(self, column), dtype=np.float64)

    @cached_property
    def search_text(self) -> tuple[str, npt.NDArray[np.int64]]:
        """(text, starts): every row's label, top logits and unmarked snippet, lower-cased, in one string,
        and where each row starts in it (built on the first search, then kept)."""
        snippets = [s.replace(FOCUS_OPEN, "").replace(FOCUS_CLOSE, "") for s in self.snippet.tolist()]
        parts = [
            _FIELD_SEP.join(row).lower()
            for row in zip(self.label.tolist(), self.top_logits.tolist(), snippets, strict=True)
        ]
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
        return _ROW_SEP.join(parts), np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def token_text(token: str) -> str:
    """A token as the table shows it: surrounding spaces dropped unless it is only whitespace."""
    return token.strip() or token


def _joined(words: npt.NDArray[Any], keep: npt.NDArray[np.bool_], sep: str) -> npt.NDArray[Any]:
    """Row by row, the kept words of [n, m] `words` joined by `sep` (object arrays of str)."""
    out = np.full(len(words), "", dtype=object)
    for j in range(words.shape[1]):
        lead = np.where(out != "", sep, "")
        out = np.where(keep[:, j], out + lead + words[:, j], out)
    return out


def _first_of_kind(words: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """[n, m] True where a valid word differs from every valid word before it in its row."""
    keep = valid.copy()
    for j in range(1, words.shape[1]):
        for i in range(j):
            keep[:, j] &= ~(valid[:, i] & (words[:, i] == words[:, j]))
    return keep


def table_labels(cache: LatentCache) -> npt.NDArray[Any]:
    """Every latent's heuristic label, exactly as `LatentCache.labels` gives them, built column-wise."""
    pieces = np.asarray([label_word(p) for p in cache.vocab] + [""], dtype=object)  # id -1 -> ""
    _, kind = np.unique(pieces.astype(str), return_inverse=True)
    fires = cache.column("label_fires_ids").numpy()
    promotes = cache.column("logit_top_ids")[:, :N_PROMOTES].numpy()
    fire_ok, promote_ok = fires >= 0, promotes >= 0
    fire_words = _joined(pieces[fires], _first_of_kind(kind[fires], fire_ok), ", ")
    promoted = _joined(pieces[promotes], _first_of_kind(kind[promotes], promote_ok), ", ")
    active = cache.column("max").numpy() > 0
    head = np.where(active & fire_ok.any(1), "fires on: " + fire_words, "never fires on the corpus")
    return np.where(promote_ok.any(1), head + " · promotes: " + promoted, head)


def snippets(cache: LatentCache, window: int = 4) -> npt.NDArray[Any]:
    """Each latent's top example as text, ±`window` tokens within its stored window, the activating
    token marked «like this» ("" for a latent that never fired)."""
    top = cache.column("top_tokens")[:, 0].numpy()  # flat corpus token of each latent's top example
    lows, highs = (t.numpy() for t in cache.windows(cache.column("top_tokens")[:, 0].clamp_min(0)))
    row, pos = np.divmod(np.maximum(top, 0), cache.seq_len)
    lo, hi = np.maximum(pos - window, lows), np.minimum(pos + window + 1, highs)
    vocab = np.asarray([*cache.vocab, ""], dtype=object)  # id -1 -> ""
    input_ids = cache.input_ids.numpy()
    columns = []
    for offset in range(-window, window + 1):
        at = pos + offset
        inside = (at >= lo) & (at < hi) & (top >= 0)
        ids = np.where(inside, input_ids[row, np.clip(at, 0, input_ids.shape[1] - 1)], -1)
        piece = vocab[ids]
        columns.append(FOCUS_OPEN + piece + FOCUS_CLOSE if offset == 0 else piece)
    text = reduce(add, columns)
    return np.where(top >= 0, text, "")


def build_table(cache: LatentCache, n_logits: int = 5, window: int = 4) -> LatentTable:
    """Read the whole table of a latent cache (a few whole-array reads; no per-latent reads or loops).

    Args:
        cache: the latent cache of one SAE.
        n_logits: promoted tokens listed per latent.
        window: context tokens either side of the activating token in the snippet.
    """
    shown = np.asarray([token_text(p) for p in cache.vocab], dtype=object)
    ids = cache.column("logit_top_ids")[:, :n_logits].numpy()
    top_logits = reduce(lambda a, b: a + " · " + b, (shown[ids[:, j]] for j in range(ids.shape[1])))
    post = cache.column("post_mean").double().numpy()
    keys = set(cache.column_names())
    table = LatentTable(
        latent=np.arange(cache.d_sae, dtype=np.int64),
        refusal_cos=cache.column("refusal_cos").double().numpy() if "refusal_cos" in keys else None,
        attribution=cache.column("attribution")[:, 0].double().numpy() if "attribution" in keys else None,
        post_diff=post[:, 0] - post[:, 1],
        density=cache.column("density").double().numpy(),
        max=cache.column("max").double().numpy(),
        top_logits=top_logits,
        snippet=snippets(cache, window),
        label=table_labels(cache),
    )
    _ = table.search_text  # built now, with the table, rather than on the first search
    return table


def search_mask(table: LatentTable, search: str) -> npt.NDArray[np.bool_]:
    """[n] True for rows whose label, top logit tokens or top example (without the focus marks) contain
    `search`, case-insensitively (every row for an empty search)."""
    needle = search.strip().lower()
    found = np.zeros(len(table), dtype=bool)
    if not needle:
        return ~found
    if _FIELD_SEP in needle or _ROW_SEP in needle:
        return found
    text, starts = table.search_text
    # Each match swallows the rest of its row, so there is one match per matching row at most.
    hits = [m.start() for m in re.finditer(re.escape(needle) + f"[^{_ROW_SEP}]*", text)]
    found[np.searchsorted(starts, np.asarray(hits, dtype=np.int64), side="right") - 1] = True
    return found


def filter_rows(
    table: LatentTable,
    *,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
    hide_dead: bool = False,
    hide_dense: bool = False,
    dense_threshold: float = DENSE_THRESHOLD,
    search: str = "",
) -> Rows:
    """Rows (positions in the table) passing every filter, in table order.

    Args:
        ranges: column -> (low, high), inclusive; None leaves that side open. NaN values never pass.
        hide_dead: drop latents that never fired on the cached corpus (density 0).
        hide_dense: drop latents active on more than `dense_threshold` of the cached tokens.
        search: case-insensitive text that must occur in the label, the top logit tokens or the top
            example.

    Raises:
        ValueError: a range names a column the table does not have.
    """
    keep = np.ones(len(table), dtype=bool)
    for column, (low, high) in (ranges or {}).items():
        values = table.values(column)
        keep &= ~np.isnan(values)
        if low is not None:
            keep &= values >= low
        if high is not None:
            keep &= values <= high
    if hide_dead:
        keep &= table.density > 0
    if hide_dense:
        keep &= table.density <= dense_threshold
    if search.strip():
        keep &= search_mask(table, search)
    return np.flatnonzero(keep).astype(np.int64)


def sort_rows(
    table: LatentTable, rows: Rows | list[int], column: str, order: SortOrder = "descending"
) -> Rows:
    """`rows` ordered by `column`; "magnitude" orders by absolute value, largest first. NaN goes last;
    ties keep the order of `rows`.

    Raises:
        ValueError: the table has no such numeric column, or the order is unknown.
    """
    if order not in ("descending", "ascending", "magnitude"):
        raise ValueError(f"unknown sort order {order!r}; expected descending, ascending or magnitude")
    index = np.asarray(rows, dtype=np.int64)
    values = table.values(column)[index]
    key = -np.abs(values) if order == "magnitude" else -values if order == "descending" else values
    return index[np.argsort(key, kind="stable")]  # numpy sorts NaN last


def display_columns(table: LatentTable, rows: Rows | list[int]) -> dict[str, list[Any]]:
    """The chosen rows as display columns (titles from `COLUMN_TITLES`), for a dataframe: pass one page
    of rows, not the whole table."""
    index = np.asarray(rows, dtype=np.int64)
    return {
        title: getattr(table, name)[index].tolist()
        for name, title in COLUMN_TITLES.items()
        if getattr(table, name) is not None
    }
