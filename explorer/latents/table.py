"""The latent table: one row per latent of an SAE, read from its cache, with filtering, search and sorting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from explorer.latents.reader import LatentCache
from explorer.saes.quality import DENSE_THRESHOLD

SortOrder = Literal["descending", "ascending", "magnitude"]

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


@dataclass(frozen=True)
class LatentTable:
    """Every latent of one SAE, column by column (row i is latent `latent[i]`).

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

    latent: list[int]
    refusal_cos: list[float] | None
    attribution: list[float] | None
    post_diff: list[float]
    density: list[float]
    max: list[float]
    top_logits: list[str]
    snippet: list[str]
    label: list[str]

    def __len__(self) -> int:
        return len(self.latent)

    def numeric_columns(self) -> list[str]:
        """The numeric columns this table has (refusal_cos and attribution may be missing)."""
        return [name for name in NUMERIC_COLUMNS if getattr(self, name) is not None]

    def values(self, column: str) -> Sequence[float]:
        """One numeric column.

        Raises:
            ValueError: the table has no such numeric column.
        """
        if column not in self.numeric_columns():
            raise ValueError(f"no numeric column {column!r}; this table has {self.numeric_columns()}")
        values = getattr(self, column)
        assert values is not None
        return values


def token_text(token: str) -> str:
    """A token as the table shows it: surrounding spaces dropped unless it is only whitespace."""
    return token.strip() or token


def build_table(cache: LatentCache, n_logits: int = 5, window: int = 4) -> LatentTable:
    """Read the whole table of a latent cache (a few whole-array reads; no per-latent reads).

    Args:
        cache: the latent cache of one SAE.
        n_logits: promoted tokens listed per latent.
        window: context tokens either side of the activating token in the snippet.

    """
    columns = cache.table()
    input_ids, vocab = cache.input_ids, cache.vocab
    shown = [
        [token_text(vocab[i]) for i in ids] for ids in cache.column("logit_top_ids")[:, :n_logits].tolist()
    ]
    top = cache.column("top_tokens")[:, 0]  # flat corpus token of each latent's top example
    lows, highs = cache.windows(top.clamp_min(0))
    seq_len = cache.seq_len
    snippets = []
    for token, stored_lo, stored_hi in zip(top.tolist(), lows.tolist(), highs.tolist(), strict=True):
        if token < 0:
            snippets.append("")
            continue
        row, pos = divmod(token, seq_len)
        # The record's window (never padding, a chat window from the request on), trimmed to ±window.
        lo, hi = max(pos - window, stored_lo), min(pos + window + 1, stored_hi)
        ids = input_ids[row, lo:hi].tolist()
        focus = pos - lo
        snippets.append(
            "".join(vocab[i] for i in ids[:focus])
            + FOCUS_OPEN
            + vocab[ids[focus]]
            + FOCUS_CLOSE
            + "".join(vocab[i] for i in ids[focus + 1 :])
        )
    return LatentTable(
        latent=[int(i) for i in columns["latent"]],
        refusal_cos=columns.get("refusal_cos"),
        attribution=columns.get("attribution_harmful"),
        post_diff=columns["post_diff"],
        density=columns["density"],
        max=columns["max"],
        top_logits=[" · ".join(tokens) for tokens in shown],
        snippet=snippets,
        label=cache.labels(),
    )


def filter_rows(
    table: LatentTable,
    *,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
    hide_dead: bool = False,
    hide_dense: bool = False,
    dense_threshold: float = DENSE_THRESHOLD,
    search: str = "",
) -> list[int]:
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
    rows = range(len(table))
    keep = [True] * len(table)
    for column, (low, high) in (ranges or {}).items():
        values = table.values(column)
        for i in rows:
            v = values[i]
            if math.isnan(v) or (low is not None and v < low) or (high is not None and v > high):
                keep[i] = False
    if hide_dead or hide_dense:
        for i, d in enumerate(table.density):
            if (hide_dead and d <= 0) or (hide_dense and d > dense_threshold):
                keep[i] = False
    needle = search.strip().lower()
    if needle:
        for i in rows:
            if keep[i] and not _matches(table, i, needle):
                keep[i] = False
    return [i for i in rows if keep[i]]


def _matches(table: LatentTable, row: int, needle: str) -> bool:
    snippet = table.snippet[row].replace(FOCUS_OPEN, "").replace(FOCUS_CLOSE, "")
    return any(needle in text.lower() for text in (table.label[row], table.top_logits[row], snippet))


def sort_rows(table: LatentTable, rows: list[int], column: str, order: SortOrder = "descending") -> list[int]:
    """`rows` ordered by `column`; "magnitude" orders by absolute value, largest first. NaN goes last.

    Raises:
        ValueError: the table has no such numeric column, or the order is unknown.
    """
    if order not in ("descending", "ascending", "magnitude"):
        raise ValueError(f"unknown sort order {order!r}; expected descending, ascending or magnitude")
    values = table.values(column)

    def key(i: int) -> tuple[bool, float]:
        v = values[i]
        if math.isnan(v):
            return True, 0.0
        if order == "magnitude":
            return False, -abs(v)
        return False, -v if order == "descending" else v

    return sorted(rows, key=key)


def display_columns(table: LatentTable, rows: list[int]) -> dict[str, list[float] | list[int] | list[str]]:
    """The chosen rows as display columns (titles from `COLUMN_TITLES`), for a dataframe."""
    out: dict[str, list[float] | list[int] | list[str]] = {}
    for name, title in COLUMN_TITLES.items():
        values = getattr(table, name)
        if values is not None:
            out[title] = [values[i] for i in rows]
    return out
