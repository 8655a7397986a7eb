"""The Latents and Latent detail pages on the tiny workspace: table, filters, search, opening, share links."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from explorer.latents.reader import LatentCache
from explorer.latents.table import COLUMN_TITLES
from explorer.ui.state import LATENT, MODEL_ENV, Q_LATENT, Q_SAE, SAE_HOOK, STEER_CLAMPS
from explorer.workspace import Workspace, load_workspace

ROOT = Path(__file__).resolve().parents[1]
LATENTS, DETAIL = "pages/latents.py", "pages/latent_detail.py"
COS, LATENT_COL = COLUMN_TITLES["refusal_cos"], COLUMN_TITLES["latent"]


@pytest.fixture(scope="module")
def workspace(app_cache: Path, tiny_dir: Path) -> Workspace:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE_DIR", str(app_cache))
        return load_workspace(str(tiny_dir))


@pytest.fixture
def main(workspace: Workspace) -> tuple[str, LatentCache]:
    assert workspace.main is not None
    return workspace.main, workspace.caches[workspace.main]


def open_page(
    monkeypatch: pytest.MonkeyPatch,
    app_cache: Path,
    tiny_dir: Path,
    page: str,
    query: dict[str, str] | None = None,
) -> AppTest:
    monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(app_cache))
    monkeypatch.chdir(ROOT)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    app.run()
    app.switch_page(page)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    return app.run()


def table_of(app: AppTest) -> pd.DataFrame:
    assert not app.exception, app.exception
    return app.dataframe[0].value


def shown_latent(app: AppTest) -> int:
    assert not app.exception, app.exception
    heading = next(s.value for s in app.subheader if s.value.startswith("Latent "))
    return int(heading.split()[1])


def test_latents_page_lists_live_latents_sorted_by_cosine(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    _, cache = main
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    density, cos = cache.column("density"), cache.column("refusal_cos")
    table = table_of(app)
    assert len(table) == int((density > 0).sum())
    assert table[COS].iloc[0] == pytest.approx(float(cos[density > 0].max()))
    assert list(table[COS]) == sorted(table[COS], reverse=True)
    assert len(app.get("plotly_chart")) == 1

    next(r for r in app.radio if r.label == "Order").set_value("ascending").run()
    table = table_of(app)
    assert table[COS].iloc[0] == pytest.approx(float(cos[density > 0].min()))

    next(s for s in app.selectbox if s.label == "Sort by").set_value("density").run()
    next(r for r in app.radio if r.label == "Order").set_value("descending").run()
    table = table_of(app)
    assert table[LATENT_COL].iloc[0] == int(density.argmax())


def test_dead_toggle_and_range_change_the_row_count(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, workspace: Workspace
) -> None:
    hook, cache = max(workspace.caches.items(), key=lambda kv: int((kv[1].column("density") == 0).sum()))
    density = cache.column("density")
    n_dead = int((density == 0).sum())
    assert n_dead > 0
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    next(s for s in app.selectbox if s.label == "SAE").set_value(hook).run()
    assert len(table_of(app)) == cache.d_sae - n_dead
    assert app.session_state[SAE_HOOK] == hook

    next(c for c in app.checkbox if c.label.startswith("Hide dead")).uncheck().run()
    assert len(table_of(app)) == cache.d_sae

    threshold = float(density.median())
    next(s for s in app.selectbox if s.label == "Range on").set_value("density").run()
    next(n for n in app.number_input if n.label == "from").set_value(threshold).run()
    assert len(table_of(app)) == int((density >= threshold).sum())

    next(c for c in app.checkbox if c.label.startswith("Hide dense")).check().run()
    assert len(table_of(app)) == int(((density >= threshold) & (density <= 0.1)).sum())


def test_an_empty_range_is_an_error_that_keeps_the_inputs(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    rows = len(table_of(app))
    next(s for s in app.selectbox if s.label == "Range on").set_value("max").run()
    next(n for n in app.number_input if n.label == "from").set_value(2.0).run()
    next(n for n in app.number_input if n.label == "to").set_value(1.0).run()
    assert any("is empty" in e.value for e in app.error)
    assert len(table_of(app)) == rows
    assert next(n for n in app.number_input if n.label == "from").value == 2.0


def test_search_finds_latents_by_token_text(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    _, cache = main
    record = cache.latent(5)
    word = next(t.strip() for t, _ in record.logits_top if t.strip().isalpha() and len(t.strip()) > 3)
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    everything = len(table_of(app))
    app.text_input[0].input(word.upper()).run()
    table = table_of(app)
    assert 5 in set(table[LATENT_COL])
    assert len(table) < everything
    texts = table[COLUMN_TITLES["top_logits"]] + table[COLUMN_TITLES["snippet"]].str.replace(
        "«", ""
    ).str.replace("»", "")
    assert texts.str.lower().str.contains(word.lower(), regex=False).all()

    app.text_input[0].input("zzqqxx-no-such-token").run()
    assert not app.dataframe
    assert any("No latent passes" in i.value for i in app.info)


def test_selecting_a_row_opens_the_latent(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    hook, _ = main
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    second = int(table_of(app)[LATENT_COL].iloc[1])
    app.session_state["latents_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    app.run()
    assert shown_latent(app) == second
    assert app.session_state[LATENT] == second
    assert app.query_params[Q_LATENT] == str(second)
    assert app.query_params[Q_SAE] == hook


def test_clicking_a_scatter_point_opens_the_latent(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    point = {
        "curve_number": 0,
        "point_number": 0,
        "point_index": 0,
        "x": 0.1,
        "y": 0.0,
        "customdata": [7, "x"],
    }
    app.session_state["latents_scatter"] = {
        "selection": {"points": [point], "point_indices": [0], "box": [], "lasso": []}
    }
    app.run()
    assert shown_latent(app) == 7


def test_detail_page_shows_the_latent_of_a_share_link(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, workspace: Workspace
) -> None:
    hook = next(h for h in workspace.caches if h != workspace.main)
    record = workspace.caches[hook].latent(3)
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: "3", Q_SAE: hook})
    assert shown_latent(app) == 3
    assert not app.error
    assert any(hook in s.value for s in app.subheader)
    assert app.number_input[0].value == 3
    assert len(app.get("plotly_chart")) >= 3
    body = page_html(app)
    if record.top_examples:
        assert f"{record.top_examples[0].value:.4g} raw" in body  # the hover title of the top token
    assert "<script" not in body


def page_html(app: AppTest) -> str:
    return "".join(h.value for h in app.html)


def test_detail_page_colours_every_token_and_groups_the_activations(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    _, cache = main
    latent = max(range(cache.d_sae), key=lambda i: len(cache.latent(i).groups))
    record = cache.latent(latent)
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: str(latent)})
    body = page_html(app)
    assert record.label in "".join(m.value for m in app.markdown)
    # Every counted token of every example carries its own activation on hover, relative to the max.
    for example in record.top_examples + [e for g in record.groups for e in g.examples]:
        for value in example.values:
            if value is not None:
                assert f"{value:.4g} raw · {value / record.max:.2f} × max" in body
    assert len(record.groups) >= 2
    for n, group in enumerate(record.groups, start=1):
        assert f"Group {n}: {group.low:.3g} – {group.high:.3g} raw" in body
        assert f"{group.share:.1%} of its activations" in body
    assert "inspector?sae=" in body  # every example opens in the inspector
    # Less context: the slider trims every window.
    app.slider(key="detail_context_before").set_value(0).run()
    trimmed_body = page_html(app)
    assert len(trimmed_body) < len(body)
    assert f"{record.top_examples[0].value:.4g} raw" in trimmed_body


def test_try_it_on_my_text_shows_the_latents_activation_on_each_token(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: "2"})

    def submit(text: str) -> None:
        # A form's widgets commit on submit: set the text and press the button in one run.
        app.text_area(key="try_text").input(text)
        app.button(key="FormSubmitter:try_text_form-Show activations").click().run()

    submit("")
    assert any("empty" in e.value for e in app.error)
    submit("How do I pick a lock?")
    assert not app.error and not app.exception, [e.value for e in app.error]
    assert any(c.value.startswith("Peak on this text:") for c in app.caption)
    assert "lock" in page_html(app)


def test_detail_page_escapes_token_text(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    _, cache = main
    marker = "<|im_start|>"
    latent = next(
        i for i in range(cache.d_sae) if any(marker in ex.context for ex in cache.latent(i).top_examples)
    )
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: str(latent)})
    body = page_html(app)
    assert "&lt;|im_start|&gt;" in body
    assert marker not in body


@pytest.mark.parametrize(
    ("value", "problem"), [("9999", "out of range"), ("abc", "not an integer"), ("-1", "out of range")]
)
def test_bad_latent_in_the_url_is_an_error_with_the_range(
    monkeypatch: pytest.MonkeyPatch,
    app_cache: Path,
    tiny_dir: Path,
    main: tuple[str, LatentCache],
    value: str,
    problem: str,
) -> None:
    _, cache = main
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: value})
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any(problem in e and f"0..{cache.d_sae - 1}" in e for e in errors), errors
    assert shown_latent(app) == 0
    app.number_input[0].set_value(4).run()  # the page stays usable
    assert shown_latent(app) == 4
    assert not app.error


def test_bad_sae_in_the_url_names_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    hook, _ = main
    app = open_page(
        monkeypatch, app_cache, tiny_dir, DETAIL, {Q_SAE: "blocks.99.hook_resid_pre", Q_LATENT: "2"}
    )
    assert any("blocks.99.hook_resid_pre" in e.value and hook in e.value for e in app.error)
    assert shown_latent(app) == 2


def test_add_to_steering_picks_the_latent(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    hook, _ = main
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: "6"})
    assert STEER_CLAMPS not in app.session_state or not app.session_state[STEER_CLAMPS]
    next(b for b in app.button if b.label == "Add to steering").click().run()
    assert not app.exception
    clamps = app.session_state[STEER_CLAMPS]
    assert [(c["hook"], c["latent"]) for c in clamps] == [(hook, 6)]
    assert any("added" in t.value for t in app.toast)
    assert any("steering" in link.label.lower() for link in app.page_link)
    next(b for b in app.button if b.label == "Add to steering").click().run()
    assert len(app.session_state[STEER_CLAMPS]) == 1
    assert any("already" in t.value for t in app.toast)


def test_nearest_latent_buttons_open_the_neighbour(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    hook, cache = main
    neighbour = cache.latent(3).nearest[1][0]
    app = open_page(monkeypatch, app_cache, tiny_dir, DETAIL, {Q_LATENT: "3"})
    assert shown_latent(app) == 3
    app.button(key="nearest_1").click().run()
    assert shown_latent(app) == neighbour
    assert app.number_input[0].value == neighbour
    assert app.query_params[Q_LATENT] == str(neighbour)
    assert app.session_state[SAE_HOOK] == hook


def test_the_table_sends_one_page_and_a_selection_opens_that_pages_latent(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, main: tuple[str, LatentCache]
) -> None:
    _, cache = main
    density, cos = cache.column("density"), cache.column("refusal_cos")
    alive = (density > 0).nonzero()[:, 0]
    ordered = alive[cos[alive].argsort(descending=True, stable=True)].tolist()
    assert len(ordered) > 50
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    next(s for s in app.selectbox if s.label == "Rows per page").set_value(25).run()
    assert table_of(app)[LATENT_COL].tolist() == ordered[:25]  # only the first page goes to the browser
    page = next(n for n in app.number_input if n.label == "Page")
    n_pages = -(-len(ordered) // 25)
    assert page.max == n_pages
    page.set_value(2).run()
    assert table_of(app)[LATENT_COL].tolist() == ordered[25:50]
    assert any(c.value.startswith(f"Page 2 of {n_pages}: rows 26–50") for c in app.caption), [
        c.value for c in app.caption
    ]

    app.session_state["latents_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    app.run()
    assert shown_latent(app) == ordered[26]


def test_a_new_search_or_order_goes_back_to_the_first_page(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = open_page(monkeypatch, app_cache, tiny_dir, LATENTS)
    next(s for s in app.selectbox if s.label == "Rows per page").set_value(25).run()
    next(n for n in app.number_input if n.label == "Page").set_value(3).run()
    assert len(table_of(app)) <= 25
    next(r for r in app.radio if r.label == "Order").set_value("ascending").run()
    assert next(n for n in app.number_input if n.label == "Page").value == 1
    assert len(table_of(app)) == 25
