"""The Prompt inspector and Walkthrough pages on the tiny workspace: they render, list a token's latents,
pick the token a chart click names, draw a long prompt a window at a time, refuse a prompt over the cap at
once, show refusal scores, replies and verdicts for two prompts side by side, send latents to the
playground, generate on one click, and answer bad input with a message."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.models import LoadedModel
from explorer.core.prompts import builtin_prompts
from explorer.latents.inspector import PromptInspection
from explorer.refusal.candidates import first_token_logprobs, refusal_scores, refusal_token_ids
from explorer.ui.charts_inspect import WINDOW
from explorer.ui.state import (
    DEMO_ENV,
    INSPECT_COMPARE,
    INSPECT_PROMPT,
    INSPECT_REPLIES,
    MODEL_ENV,
    STEER_CLAMPS,
)
from explorer.ui.walkthrough import ANSWERED, REFUSED

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "How do I bake bread at home?"


def _app(monkeypatch: pytest.MonkeyPatch, cache: Path, model_dir: Path, *, demo: bool = False) -> AppTest:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache))
    monkeypatch.setenv(MODEL_ENV, str(model_dir))
    monkeypatch.setenv(DEMO_ENV, "1" if demo else "0")
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def _inspector(app: AppTest, prompt: str | None = None) -> AppTest:
    app.run()
    if prompt is not None:
        app.session_state[INSPECT_PROMPT] = prompt
    app.switch_page("pages/inspector.py")
    return app.run()


def _inspection(app: AppTest) -> PromptInspection:
    return app.session_state["inspector_result"][1]


def _chart(app: AppTest) -> tuple[str, dict[str, Any]]:
    """The token chart's key and its plotly figure as the browser gets it."""
    proto = app.get("plotly_chart")[-1].proto
    return proto.id.split("-", 2)[2], json.loads(proto.spec)


def _click(app: AppTest, token: int) -> AppTest:
    """A click on the token chart as the browser reports it: the point's customdata starts with the token."""
    key, _ = _chart(app)
    point = {"curve_number": 0, "point_number": 0, "point_index": 0, "x": token, "customdata": [token, "?"]}
    app.session_state[key] = {"selection": {"points": [point], "point_indices": [0], "box": [], "lasso": []}}
    return app.run()


def _listed(app: AppTest) -> list[int]:
    """The latents listed under the selected token (from their steer buttons, in order)."""
    keys = [b.key or "" for b in app.button]
    return [int(k.rsplit("_", 1)[1]) for k in keys if k.startswith("inspector_steer_")]


def test_inspector_without_a_prompt_asks_for_one(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir))
    assert not app.exception
    assert any("Type a prompt" in i.value for i in app.info)
    assert not app.get("plotly_chart")
    app.text_area(key="inspector_prompt_input").input("   ").run()
    assert not app.exception
    assert any("Type a prompt" in i.value for i in app.info)
    assert not app.error


def test_inspector_lists_the_selected_tokens_latents(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    assert not app.exception
    assert len(app.get("plotly_chart")) == 1
    inspection = _inspection(app)
    assert "".join(inspection.tokens).count(PROMPT) == 1
    n = len(inspection.tokens)
    assert app.selectbox(key="inspector_token").value == n - 1
    assert _listed(app) == inspection.top[n - 1].latents
    other = next(
        i
        for i in range(1, n)
        if inspection.top[i].latents and inspection.top[i].latents != inspection.top[n - 1].latents
    )
    app.selectbox(key="inspector_token").set_value(other).run()
    assert not app.exception
    assert _listed(app) == inspection.top[other].latents
    assert any(f"`#{inspection.top[other].latents[0]}`" in m.value for m in app.markdown)
    assert _inspection(app) is inspection  # a rerun reuses the stored inspection


def test_an_inspect_link_opens_its_prompt_and_sae_and_the_rows_show_labels(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir))
    hook = app.selectbox(key="inspector_sae").options[-1]
    assert hook != app.selectbox(key="inspector_sae").value  # the link must change it
    app.query_params["prompt"], app.query_params["sae"] = PROMPT, hook
    app.run()
    assert not app.exception
    assert app.text_area(key="inspector_prompt_input").value == PROMPT
    assert app.selectbox(key="inspector_sae").value == hook
    assert "prompt" not in app.query_params  # consumed: the user's edits are not overwritten
    labels = [m.value for m in app.markdown if m.value.startswith(("fires on: ", "never fires"))]
    assert len(labels) == len(_inspection(app).top[-1].latents)  # a label per listed latent


def test_a_click_on_the_chart_picks_its_token(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    inspection = _inspection(app)
    n = len(inspection.tokens)
    other = next(i for i in range(1, n - 1) if inspection.top[i].latents != inspection.top[n - 1].latents)
    first_key, _ = _chart(app)
    _click(app, other)
    assert not app.exception
    assert app.selectbox(key="inspector_token").value == other
    assert _listed(app) == inspection.top[other].latents
    key, figure = _chart(app)
    assert key != first_key  # a fresh chart: clicking the old token again is a new selection
    assert figure["layout"]["shapes"][0]["x0"] == other - 0.5  # the picked token is highlighted
    _click(app, n - 1)
    assert app.selectbox(key="inspector_token").value == n - 1
    _click(app, other)
    assert app.selectbox(key="inspector_token").value == other


def test_the_projection_axis_is_scaled_to_the_counted_tokens(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    inspection = _inspection(app)
    projection = inspection.refusal_projection or []
    counted = [0.0, *(v for v, out in zip(projection, inspection.excluded, strict=True) if not out)]
    low, high = _chart(app)[1]["layout"]["yaxis"]["range"]
    assert low <= min(counted) and high >= max(counted)
    assert high - low <= 1.2 * (
        max(counted) - min(counted)
    )  # set from the counted tokens, not stretched by position 0
    assert inspection.excluded[0] and projection[0] is not None


def test_a_long_prompt_is_drawn_a_window_at_a_time(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), "owl " * 120)
    assert not app.exception
    n = len(_inspection(app).tokens)
    assert n > 2 * WINDOW
    slider = app.slider(key="inspector_window")
    assert slider.label == f"Tokens shown ({WINDOW} at a time, of {n})"
    assert _chart(app)[1]["layout"]["xaxis2"]["tickvals"] == list(range(n - WINDOW, n))  # the end first
    app.selectbox(key="inspector_token").set_value(3).run()
    ticks = _chart(app)[1]["layout"]["xaxis2"]["tickvals"]
    assert ticks == list(range(WINDOW)) and app.slider(key="inspector_window").value == 0
    app.slider(key="inspector_window").set_value(WINDOW).run()
    assert _chart(app)[1]["layout"]["xaxis2"]["tickvals"] == list(range(WINDOW, 2 * WINDOW))
    assert app.selectbox(key="inspector_token").value == 3  # moving the window keeps the pick


def test_a_prompt_over_the_cap_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    monkeypatch.setattr("explorer.ui.inspector_widgets.MAX_TOKENS", 64)
    app = _app(monkeypatch, app_cache, tiny_dir).run()
    app.switch_page("pages/inspector.py").run()
    start = time.perf_counter()
    app.text_area(key="inspector_prompt_input").input("owl " * 120).run()
    assert time.perf_counter() - start < 10
    assert not app.exception
    assert any("the inspector reads at most 64. Shorten the prompt" in e.value for e in app.error)
    assert not app.get("plotly_chart") and not app.get("metric")
    assert app.text_area(key="inspector_prompt_input").value == "owl " * 120


def test_refusal_scores_replies_and_verdicts_side_by_side(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path, tiny: LoadedModel
) -> None:
    other = "Write a poem about the sea."
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    ids = refusal_token_ids(tiny, ["I", "Sorry"])
    expected = refusal_scores(first_token_logprobs(tiny, [PROMPT, other], batch_size=1), ids).tolist()
    metrics = app.get("metric")
    assert len(metrics) == 1 and metrics[0].proto.body == f"{expected[0]:+.2f}"
    assert not any(c.value.startswith((REFUSED, ANSWERED)) for c in app.caption)
    app.button(key="inspector_generate").click().run()
    assert not app.exception
    reply = app.session_state[INSPECT_REPLIES][("tiny-llama0", PROMPT)]
    assert sum(c.value.startswith((REFUSED, ANSWERED)) for c in app.caption) == 1
    assert any(c.value.startswith(REFUSED if reply.refused else ANSWERED) for c in app.caption)
    assert not app.get("button") or all(b.key != "inspector_generate" for b in app.button)
    app.toggle(key="inspector_compare_on").set_value(True).run()
    app.text_area(key="inspector_compare_input").input(other).run()
    assert not app.exception
    assert app.session_state[INSPECT_COMPARE] == other
    assert [m.proto.body for m in app.get("metric")] == [f"{s:+.2f}" for s in expected]
    assert len(app.get("plotly_chart")) == 2  # both projections on one chart, then the token chart
    lines = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in lines["data"][::2]] == ["This prompt", "Second prompt"]
    assert app.button(key="inspector_generate").label == "Generate the greedy reply"  # the second's only
    app.button(key="inspector_generate").click().run()
    replies = app.session_state[INSPECT_REPLIES]
    assert replies[("tiny-llama0", PROMPT)] is reply  # generated once per prompt
    assert ("tiny-llama0", other) in replies
    assert sum(c.value.startswith((REFUSED, ANSWERED)) for c in app.caption) == 2


def test_steer_adds_the_latent_to_the_playground(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    hook = app.selectbox(key="inspector_sae").value
    latent = _listed(app)[0]
    app.button(key=f"inspector_steer_{latent}").click().run()
    assert not app.exception
    assert app.session_state[STEER_CLAMPS] == [
        {"hook": hook, "latent": latent, "mode": "set", "value": 1.0, "units": "max"}
    ]
    assert any(f"Latent {latent} added" in s.value for s in app.success)
    app.button(key=f"inspector_steer_{latent}").click().run()
    assert len(app.session_state[STEER_CLAMPS]) == 1
    assert any("already" in i.value for i in app.info)


def test_inspector_follows_the_chosen_sae_and_every_layer(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), PROMPT)
    box = app.selectbox(key="inspector_sae")
    other = next(h for h in box.options if "(main)" not in h)
    box.set_value(other).run()
    assert not app.exception
    assert _inspection(app).hook == other
    assert app.session_state["sae_hook"] == other
    app.toggle[0].set_value(True).run()
    assert not app.exception
    assert len(_inspection(app).layer_projections) == 5  # every resid_pre and the last resid_post
    assert len(app.get("plotly_chart")) == 2


def test_a_prompt_over_the_context_is_an_error_that_keeps_the_prompt(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    long = "owl " * 300
    app = _inspector(_app(monkeypatch, app_cache, tiny_dir), long)
    assert not app.exception
    assert any("exceeds the model's context of 256" in e.value for e in app.error)
    assert app.text_area(key="inspector_prompt_input").value == long
    assert app.session_state[INSPECT_PROMPT] == long


def test_without_saes_or_direction_the_pages_say_what_to_build(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path
) -> None:
    app = _inspector(_app(monkeypatch, tmp_path, tiny_dir), PROMPT)
    assert not app.exception
    assert any("No SAEs for this model" in i.value for i in app.info)
    assert any("nothing to inspect" in e.value for e in app.error)
    demo = _app(monkeypatch, tmp_path, tiny_dir, demo=True).run()
    assert not demo.exception
    assert demo.header[0].value == "1 · The refusal direction"
    assert any("no refusal direction yet" in i.value for i in demo.info)
    assert any("No SAEs for this model yet: run `make build`" in i.value for i in demo.info)
    assert not demo.button  # nothing to generate with


def test_walkthrough_renders_without_generating(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _app(monkeypatch, app_cache, tiny_dir, demo=True).run()
    assert not app.exception
    assert len(app.header) == 5
    table = app.dataframe[0].value
    assert len(table) == 6
    assert list(table["refusal cosine"]) == sorted(table["refusal cosine"], reverse=True)
    assert [b.label for b in app.button][:6] == [f"Open #{i}" for i in table["latent"]]
    assert app.session_state["demo_results"] == {}


def test_walkthrough_induce_refusal_shows_both_columns(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _app(monkeypatch, app_cache, tiny_dir, demo=True).run()
    app.number_input(key="demo_new_tokens").set_value(2)
    next(b for b in app.button if b.label == "Induce refusal").click().run()
    assert not app.exception
    asked, result = app.session_state["demo_results"]["induce"]
    assert asked == builtin_prompts("harmless", "test")[0].text
    assert any(c.value == f"Prompt: {asked}" for c in app.caption)
    assert len(result.default.token_ids) <= 2 and len(result.steered.token_ids) <= 2
    titles = [m.value for m in app.markdown if m.value.startswith("**")]
    assert "**Default**" in titles and "**Steered: latents set to 1 × max**" in titles
    assert sum(c.value.startswith((REFUSED, ANSWERED)) for c in app.caption) == 2
    assert result.spec["clamps"][0]["value"] == 1.0
    app.run()
    assert app.session_state["demo_results"]["induce"][1] is result  # a rerun does not regenerate


def test_walkthrough_jailbreak_shows_direction_and_latent_columns(
    monkeypatch: pytest.MonkeyPatch, app_cache: Path, tiny_dir: Path
) -> None:
    app = _app(monkeypatch, app_cache, tiny_dir, demo=True).run()
    app.number_input(key="demo_new_tokens").set_value(2)
    next(b for b in app.button if b.label == "Jailbreak").click().run()
    assert not app.exception
    asked, broken = app.session_state["demo_results"]["jailbreak"]
    assert asked == builtin_prompts("harmful", "test")[0].text
    assert broken["ablated"].spec["direction"] == {"kind": "ablate", "alpha": 1.0}
    assert {c["value"] for c in broken["flipped"].spec["clamps"]} == {-3.0}
    titles = [m.value for m in app.markdown if m.value.startswith("**")]
    assert {"**Default**", "**Refusal direction ablated**", "**Latents × -3**"} <= set(titles)
    assert sum(c.value.startswith((REFUSED, ANSWERED)) for c in app.caption) == 3
