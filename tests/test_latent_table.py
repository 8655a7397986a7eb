"""The latent table equals the cache's arrays, and filters, searches and sorts as documented."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.latents.reader import LatentCache
from explorer.latents.table import (
    COLUMN_TITLES,
    FOCUS_CLOSE,
    FOCUS_OPEN,
    LatentTable,
    build_table,
    display_columns,
    filter_rows,
    sort_rows,
    token_text,
)


@pytest.fixture(scope="module")
def cache(app_cache: Path) -> LatentCache:
    """The tiny workspace's cache with the most dead latents (so the dead filter has work to do)."""
    caches = [LatentCache(d) for d in sorted((app_cache / "latents").glob("*/*")) if d.is_dir()]
    return max(caches, key=lambda c: int((c.column("density") == 0).sum()))


@pytest.fixture(scope="module")
def table(cache: LatentCache) -> LatentTable:
    return build_table(cache)


def small_table() -> LatentTable:
    """Five latents with hand-picked values: latent 1 is dead, latent 3 dense, latent 4 has a NaN cosine."""
    return LatentTable(
        latent=[0, 1, 2, 3, 4],
        refusal_cos=[0.1, -0.5, 0.3, -0.2, math.nan],
        attribution=[1.0, 0.0, -2.0, 3.0, 0.5],
        post_diff=[0.2, 0.0, -0.1, 0.4, 0.0],
        density=[0.01, 0.0, 0.05, 0.5, 0.02],
        max=[1.0, 0.0, 2.0, 3.0, 0.5],
        top_logits=["sorry · cannot", "", "Paris · France", "the · a", "SORRYish"],
        snippet=["I «can»not", "", "in «Par»is", "«the» cat", "bomb«ing»s"],
        label=[
            "fires on: can · promotes: sorry",
            "never fires on the corpus",
            "fires on: Paris, Lyon · promotes: France",
            "fires on: the",
            "fires on: explosive · promotes: SORRYish",
        ],
    )


def test_rows_equal_the_cache_arrays(cache: LatentCache, table: LatentTable) -> None:
    assert table.latent.tolist() == list(range(cache.d_sae))
    assert table.refusal_cos == pytest.approx(cache.column("refusal_cos").tolist())
    assert table.attribution == pytest.approx(cache.column("attribution")[:, 0].tolist())
    post = cache.column("post_mean")
    assert table.post_diff == pytest.approx((post[:, 0] - post[:, 1]).tolist())
    assert table.density == pytest.approx(cache.column("density").tolist())
    assert table.max == pytest.approx(cache.column("max").tolist())
    assert table.label.tolist() == [cache.latent(i).label for i in range(cache.d_sae)]
    assert table.label.tolist() == cache.labels()


def test_token_columns_match_each_latents_record(cache: LatentCache, table: LatentTable) -> None:
    dead = 0
    for latent in range(cache.d_sae):
        record = cache.latent(latent, window=4)
        assert table.top_logits[latent] == " · ".join(token_text(t) for t, _ in record.logits_top[:5])
        if not record.top_examples:
            dead += 1
            assert table.snippet[latent] == ""
            continue
        top = record.top_examples[0]
        expected = (
            "".join(top.context[: top.focus])
            + FOCUS_OPEN
            + top.context[top.focus]
            + FOCUS_CLOSE
            + "".join(top.context[top.focus + 1 :])
        )
        assert table.snippet[latent] == expected
    assert dead == sum(d == 0 for d in table.density)


def test_hide_dead_and_dense(table: LatentTable) -> None:
    assert filter_rows(small_table(), hide_dead=True).tolist() == [0, 2, 3, 4]
    assert filter_rows(small_table(), hide_dense=True).tolist() == [0, 1, 2, 4]
    assert filter_rows(small_table(), hide_dense=True, dense_threshold=0.03).tolist() == [0, 1, 4]
    alive = filter_rows(table, hide_dead=True)
    assert alive.tolist() == [i for i, d in enumerate(table.density) if d > 0]
    assert len(alive) < len(table)  # the tiny SAE has dead latents, so the filter is exercised


def test_ranges_are_inclusive_open_ended_and_drop_nan() -> None:
    t = small_table()
    assert filter_rows(t, ranges={"refusal_cos": (-0.2, 0.3)}).tolist() == [0, 2, 3]
    assert filter_rows(t, ranges={"refusal_cos": (None, 0.0)}).tolist() == [1, 3]
    assert filter_rows(t, ranges={"refusal_cos": (None, None)}).tolist() == [0, 1, 2, 3]
    assert filter_rows(t, ranges={"attribution": (0.5, None), "max": (None, 1.0)}).tolist() == [0, 4]
    assert filter_rows(t, ranges={"density": (0.02, 0.05)}, hide_dead=True).tolist() == [2, 4]


def test_range_on_a_missing_column_is_an_error() -> None:
    t = small_table()
    no_refusal = replace(t, refusal_cos=None)
    assert "refusal_cos" not in no_refusal.numeric_columns()
    with pytest.raises(ValueError, match="refusal_cos"):
        filter_rows(no_refusal, ranges={"refusal_cos": (0.0, None)})
    with pytest.raises(ValueError, match="snippet"):
        filter_rows(t, ranges={"snippet": (0.0, None)})


def test_search_is_case_insensitive_over_logits_and_snippets() -> None:
    t = small_table()
    assert filter_rows(t, search="sorry").tolist() == [0, 4]
    assert filter_rows(t, search="  PARIS ").tolist() == [2]
    assert filter_rows(t, search="paris").tolist() == [2]  # "Par»is" in the snippet: the marks are ignored
    assert filter_rows(t, search="bombings").tolist() == [4]
    assert filter_rows(t, search="cat", hide_dense=True).tolist() == []
    assert filter_rows(t, search="lyon").tolist() == [2]  # in the label only
    assert filter_rows(t, search="EXPLOSIVE").tolist() == [4]
    assert filter_rows(t, search="").tolist() == [0, 1, 2, 3, 4]


def test_search_finds_real_tokens(table: LatentTable) -> None:
    word = next(tok for tok in table.top_logits[0].split(" · ") if tok.strip().isalpha())
    found = filter_rows(table, search=word)
    assert 0 in found
    assert all(word.lower() in (table.top_logits[i] + table.snippet[i]).lower() for i in found)


def test_sort_orders() -> None:
    t = small_table()
    rows = [0, 1, 2, 3, 4]
    assert sort_rows(t, rows, "refusal_cos").tolist() == [2, 0, 3, 1, 4]
    assert sort_rows(t, rows, "refusal_cos", "ascending").tolist() == [1, 3, 0, 2, 4]
    assert sort_rows(t, rows, "refusal_cos", "magnitude").tolist() == [1, 2, 3, 0, 4]
    assert sort_rows(t, [4, 2, 0], "attribution").tolist() == [0, 4, 2]
    with pytest.raises(ValueError, match="sideways"):
        sort_rows(t, rows, "refusal_cos", "sideways")  # pyright: ignore[reportArgumentType]


def test_sort_real_table_by_cosine(table: LatentTable) -> None:
    assert table.refusal_cos is not None
    ordered = sort_rows(table, list(range(len(table))), "refusal_cos")
    values = [table.refusal_cos[i] for i in ordered]
    assert values == sorted(values, reverse=True)
    assert values[0] == max(table.refusal_cos)
    assert torch.tensor(values).isfinite().all()


def test_display_columns_follow_rows_and_skip_missing() -> None:
    t = small_table()
    shown = display_columns(t, [3, 0])
    assert list(shown) == list(COLUMN_TITLES.values())
    assert shown["latent"] == [3, 0]
    assert shown[COLUMN_TITLES["snippet"]] == ["«the» cat", "I «can»not"]
    no_attribution = replace(t, attribution=None)
    assert COLUMN_TITLES["attribution"] not in display_columns(no_attribution, [0])


def reference_rows(table: LatentTable, search: str, column: str, order: str) -> list[int]:
    """Row-by-row filtering and sorting as documented: the vectorised functions must agree with it."""
    needle = search.strip().lower()

    def matches(i: int) -> bool:
        snippet = table.snippet[i].replace(FOCUS_OPEN, "").replace(FOCUS_CLOSE, "")
        return any(needle in text.lower() for text in (table.label[i], table.top_logits[i], snippet))

    values = table.values(column)
    rows = [i for i in range(len(table)) if table.density[i] > 0 and (not needle or matches(i))]

    def key(i: int) -> tuple[bool, float]:
        v = float(values[i])
        if math.isnan(v):
            return True, 0.0
        return False, -abs(v) if order == "magnitude" else -v if order == "descending" else v

    return sorted(rows, key=key)


@pytest.mark.parametrize("order", ["descending", "ascending", "magnitude"])
def test_vectorised_filter_search_and_sort_equal_row_by_row(table: LatentTable, order: str) -> None:
    words = [w for w in " ".join(table.top_logits[:50].tolist()).lower().split() if w.isalpha()][:5]
    for search in ["", *words, "the", "«", "no-such-token-zz"]:
        for column in table.numeric_columns():
            rows = sort_rows(table, filter_rows(table, hide_dead=True, search=search), column, order)  # pyright: ignore[reportArgumentType]
            assert rows.tolist() == reference_rows(table, search, column, order), (search, column)


def test_search_never_matches_across_fields_or_rows() -> None:
    t = small_table()
    assert filter_rows(t, search="cannot i").tolist() == []  # end of a logit list + start of a snippet
    assert filter_rows(t, search="the · a" + "\x00").tolist() == []
    assert filter_rows(t, search="cat fires").tolist() == []  # end of row 3 + start of row 4
    assert filter_rows(t, search="the · a").tolist() == [3]


def test_labels_and_snippets_are_built_without_row_loops(cache: LatentCache, table: LatentTable) -> None:
    """Built column-wise, the text columns equal the reader's own per-latent rendering."""
    assert table.label.tolist() == cache.labels()
    assert isinstance(table.snippet, np.ndarray) and table.snippet.dtype == object
    assert len(display_columns(table, np.arange(3))["latent"]) == 3
