"""Latents: every latent of one SAE in a sortable, filterable, searchable table, and a scatter to open one."""

import streamlit as st

from explorer.latents.table import COLUMN_TITLES, SortOrder, display_columns, filter_rows, sort_rows
from explorer.saes.quality import DENSE_THRESHOLD
from explorer.ui.charts_latents import latent_scatter
from explorer.ui.latent_data import (
    go_to_latent,
    latent_table,
    page_picker,
    picked_point,
    picked_row,
    sae_picker,
)
from explorer.ui.loaders import cache_or_stop, workspace_or_stop
from explorer.ui.notes_widgets import (
    lists_exchange,
    narrow_rows,
    notes_columns,
    notes_filter,
    send_list_button,
)
from explorer.ui.state import LATENTS_SAE_WIDGET

st.title("Latents")
workspace = workspace_or_stop("latents")
hook = sae_picker(list(workspace.saes), workspace.main, key=LATENTS_SAE_WIDGET)
hook, cache = cache_or_stop(workspace, hook)
table = latent_table(cache)
numeric = table.numeric_columns()
title = COLUMN_TITLES.__getitem__

search = st.text_input(
    "Search token text, labels and notes", placeholder="a token in the top logits or the top example, a word"
)
chosen = notes_filter(workspace, hook, search)
cols = st.columns([2, 2, 3])
sort_by = cols[0].selectbox(
    "Sort by",
    numeric,
    index=numeric.index("refusal_cos") if "refusal_cos" in numeric else 0,
    format_func=title,
)
orders: list[SortOrder] = ["descending", "ascending", "magnitude"]
order = cols[1].radio("Order", orders, horizontal=True) or "descending"
with cols[2]:
    hide_dead = st.checkbox("Hide dead latents (never active on the cached corpus)", value=True)
    hide_dense = st.checkbox(f"Hide dense latents (active on > {DENSE_THRESHOLD:.0%} of tokens)")
ranges: dict[str, tuple[float | None, float | None]] = {}
cols = st.columns(3)
range_on = cols[0].selectbox(
    "Range on", [None, *numeric], format_func=lambda c: "—" if c is None else title(c)
)
low = cols[1].number_input("from", value=None, format="%.6g", disabled=range_on is None)
high = cols[2].number_input("to", value=None, format="%.6g", disabled=range_on is None)
if range_on is not None:
    if low is not None and high is not None and low > high:
        st.error(f"The range on {title(range_on)} is empty: {low:g} is above {high:g}. Range not applied.")
    else:
        ranges[range_on] = (low, high)

rows = filter_rows(table, ranges=ranges, hide_dead=hide_dead, hide_dense=hide_dense)
rows = sort_rows(table, narrow_rows(table, rows, search, chosen), sort_by, order)
send_list_button(workspace, chosen)
lists_exchange(workspace)
st.caption(
    f"{len(rows)} of {len(table)} latents of `{hook}`. Activations are raw latent values; density is the "
    f"fraction of the cache's {cache.manifest.get('n_tokens', '?')} tokens on which a latent is active; "
    "harmful − harmless is the mean activation difference at post-instruction positions. Select a row, "
    "or click a point below, to open the latent; the table shows one page at a time."
    + (f" The list has {len(chosen.members)} latent(s) over all SAEs." if chosen.list_name else "")
)
if not len(rows):
    st.info(
        "No latent passes these filters: widen the range, clear the search, pick another list or show "
        "dead latents."
    )
    st.stop()

shown = rows[
    page_picker(
        len(rows),
        key="latents",
        reset_on=(search, sort_by, order, hide_dead, hide_dense, ranges, chosen.list_name, chosen.keep),
    )
]
picked = st.dataframe(
    {**display_columns(table, shown), **notes_columns(table, shown, chosen)},
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="latents_table",
    column_config={
        title("density"): st.column_config.NumberColumn(format="percent"),
        **{
            title(c): st.column_config.NumberColumn(format="%.3g")
            for c in numeric
            if c not in ("latent", "density")
        },
    },
)
row = picked_row(picked)
if row is not None and row < len(shown):
    go_to_latent(hook, int(table.latent[shown[row]]))

cols = st.columns(2)
x = cols[0].selectbox(
    "x",
    numeric,
    index=numeric.index("refusal_cos" if "refusal_cos" in numeric else "density"),
    format_func=title,
)
y = cols[1].selectbox("y", numeric, index=numeric.index("post_diff"), format_func=title)
clicked = st.plotly_chart(
    latent_scatter(table, rows, x, y), on_select="rerun", selection_mode="points", key="latents_scatter"
)
point = picked_point(clicked)
if point is not None:
    go_to_latent(hook, point)
