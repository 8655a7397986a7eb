"""The Steering playground and Evaluate pages on the tiny workspace: generation fills both columns, share
links restore the setup exactly, bad links and bad specs are errors (nothing runs), and sweeps plot."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.generation import SamplingConfig
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import builtin_prompts
from explorer.steering.decode import decode, generate_side_by_side
from explorer.steering.evaluation import EvalConfig
from explorer.steering.share import PlaygroundSetup, decode_setup, encode_setup, preset_json
from explorer.steering.spec import Clamp, SteeringSpec
from explorer.ui.state import (
    CHAT_HISTORY,
    EVAL_RESULT,
    LAST_RESULT,
    MODEL_ENV,
    Q_SPEC,
    STEER_CLAMPS,
    STEER_SAMPLING,
    STEERED_CHAT,
)
from explorer.workspace import Workspace, load_workspace

ROOT = Path(__file__).resolve().parents[1]
STEERING, EVALUATE = "pages/steering.py", "pages/evaluate.py"
DETAIL = "pages/latent_detail.py"
PROMPT = "Tell me about owls."
FOLLOW_UP = "And what do they eat?"
# Sampled (not greedy) so the tiny model's replies are visible words, not newlines.
SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3)

Open = Callable[..., AppTest]


@pytest.fixture(scope="module")
def workspace(app_cache: Path, tiny_dir: Path) -> Iterator[Workspace]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(app_cache))
        yield load_workspace(str(tiny_dir))


@pytest.fixture
def open_page(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, app_cache: Path) -> Open:
    """Open a page of the app on the tiny workspace (or on `cache`), with session state pre-set."""

    def run(
        page: str, cache: Path = app_cache, query: dict[str, str] | None = None, **state: object
    ) -> AppTest:
        monkeypatch.setenv(MODEL_ENV, str(tiny_dir))
        monkeypatch.setenv(CACHE_ENV, str(cache))
        monkeypatch.chdir(ROOT)
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        app.switch_page(page)
        for key, value in state.items():
            app.session_state[key] = value
        for key, value in (query or {}).items():
            app.query_params[key] = value
        return app.run()

    return run


def _clamp(workspace: Workspace, latent: int = 3, value: float = 100.0) -> dict[str, object]:
    assert workspace.main is not None
    return asdict(Clamp(workspace.main, latent, "set", value))


def _texts(app: AppTest) -> list[str]:
    return [m.value for m in app.markdown]


def _errors(app: AppTest) -> str:
    return " ".join(e.value for e in app.error)


@pytest.mark.parametrize("page", [STEERING, EVALUATE])
def test_pages_without_saes_or_direction_explain_what_to_build(
    open_page: Open, tmp_path: Path, page: str
) -> None:
    app = open_page(page, cache=tmp_path)
    assert not app.exception
    assert any("make build" in i.value for i in app.info)
    if page == STEERING:  # still usable: an unsteered side-by-side runs
        app.text_area[0].set_value(PROMPT)
        app.button(key="steer_generate").click().run()
        assert not app.exception and LAST_RESULT in app.session_state


def test_evaluate_defaults_are_the_command_lines(open_page: Open) -> None:
    """The README's table comes from `explorer eval` defaults: the page starts from the same ones, and its
    largest N takes each label's whole split."""
    app = open_page(EVALUATE)
    defaults = EvalConfig()
    assert app.number_input(key="eval_tokens").value == defaults.max_new_tokens
    assert app.number_input(key="eval_loss_rows").value == defaults.loss_rows
    whole = max(len(builtin_prompts(label, defaults.split)) for label in ("harmful", "harmless"))
    assert app.number_input(key="eval_n").max == whole


def test_evaluate_runs_with_nothing_run_yet(open_page: Open) -> None:
    app = open_page(EVALUATE)
    assert not app.exception and not app.error
    assert any("Run a sweep" in i.value for i in app.info)


def test_latents_are_added_by_hook_and_number_and_removed(open_page: Open, workspace: Workspace) -> None:
    app = open_page(STEERING)
    assert not app.exception and not app.error
    assert any("No latents picked" in c.value for c in app.caption)
    app.number_input(key=f"steer_add_latent_{workspace.main}").set_value(7)
    app.button(key="steer_add").click().run()
    assert not app.exception and not app.error
    assert app.session_state[STEER_CLAMPS] == [asdict(Clamp(str(workspace.main), 7, "set", 1.0, "max"))]
    assert [s.value for s in app.slider if "× the latent's max" in s.label] == [1.0]
    label = workspace.caches[str(workspace.main)].latent(7).label
    assert label in [c.value for c in app.caption]  # each picked latent shows its label
    app.button(key=f"steer_remove_0_{workspace.main}:7").click().run()
    assert not app.exception and app.session_state[STEER_CLAMPS] == []


def test_generate_fills_both_columns_and_the_default_is_the_unsteered_reply(
    open_page: Open, workspace: Workspace
) -> None:
    clamp = _clamp(workspace)
    app = open_page(
        STEERING, **{STEER_CLAMPS: [clamp], STEER_SAMPLING: SAMPLING.to_dict(), "steer_prompt": PROMPT}
    )
    assert LAST_RESULT not in app.session_state
    app.button(key="steer_generate").click().run()
    assert not app.exception and not app.error
    result = app.session_state[LAST_RESULT]
    (plain,) = decode(workspace.steerer(), [PROMPT], sampling=SAMPLING)
    assert result["default"]["token_ids"] == plain.token_ids
    assert result["default"]["text"] == plain.text
    assert result["steered"]["token_ids"] != plain.token_ids, "the clamp must change the steered column"
    shown = _texts(app)
    for column in ("default", "steered"):
        assert result[column]["text"].strip() in shown
    assert sum("**Verdict:**" in m for m in shown) == 2
    assert any("Evidence:" in c.value for c in app.caption)
    assert len(app.get("plotly_chart")) == 2  # one per-token strip per column
    assert result["latent_labels"] == [f"{clamp['hook']}:{clamp['latent']}"]


def test_a_share_link_restores_the_setup_and_reproduces_the_run(
    open_page: Open, workspace: Workspace
) -> None:
    assert workspace.main is not None
    other = next(h for h in sorted(workspace.saes) if h != workspace.main)
    spec = SteeringSpec(
        (Clamp(workspace.main, 5, "multiply", -3.0), Clamp(other, 7, "add", 2.5, "max")), scope="generated"
    )
    sampling = SamplingConfig(
        max_new_tokens=5, temperature=0.7, top_p=0.9, repetition_penalty=1.2, seed=11, frequency_penalty=0.3
    )
    chat = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."})
    setup = PlaygroundSetup(spec, sampling, "How do owls hunt?", chat)
    app = open_page(STEERING, query={Q_SPEC: encode_setup(setup)})
    assert not app.exception and not app.error
    assert any("Restored the shared" in i.value for i in app.info)
    assert app.session_state[STEER_CLAMPS] == [asdict(c) for c in spec.clamps]
    assert app.session_state[STEER_SAMPLING] == sampling.to_dict()
    assert app.text_area[0].value == "How do owls hunt?"
    assert {-3.0, 2.5} <= {s.value for s in app.slider}
    assert any(m == "Hello there." for m in _texts(app))  # the earlier turn is shown
    written = decode_setup(app.query_params[Q_SPEC])  # the page keeps the link in the URL
    assert written == setup
    app.button(key="steer_generate").click().run()
    assert not app.exception and not app.error
    expected = generate_side_by_side(
        workspace.steerer(), [*chat, {"role": "user", "content": setup.prompt}], spec, sampling
    )
    result = app.session_state[LAST_RESULT]
    assert result["steered"]["token_ids"] == expected.steered.token_ids
    assert result["default"]["token_ids"] == expected.default.token_ids


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("%%%-not-a-link", "not URL-safe base64"),
        ("e30", "has no 'version'"),  # "{}"
        (encode_setup(PlaygroundSetup()).replace("dmVyc2lvbiI6MX0", "dmVyc2lvbiI6OX0"), "newer"),
    ],
)
def test_a_corrupt_share_link_is_an_error_and_the_page_stays_usable(
    open_page: Open, workspace: Workspace, link: str, message: str
) -> None:
    app = open_page(STEERING, query={Q_SPEC: link}, **{STEER_CLAMPS: [_clamp(workspace)]})
    assert not app.exception
    assert "share link could not be read" in _errors(app) and message in _errors(app)
    assert app.session_state[STEER_CLAMPS] == [_clamp(workspace)]  # the user's setup is kept
    app.text_area[0].set_value(PROMPT)
    app.button(key="steer_generate").click().run()
    assert not app.exception and LAST_RESULT in app.session_state


@pytest.mark.parametrize("case", ["latent out of range", "NaN value"])
def test_a_spec_that_fails_validation_is_an_error_and_nothing_runs(
    open_page: Open, workspace: Workspace, case: str
) -> None:
    if case == "latent out of range":
        spec = SteeringSpec((Clamp(str(workspace.main), 999, "set", 1.0),))
        app = open_page(STEERING, query={Q_SPEC: encode_setup(PlaygroundSetup(spec, SAMPLING, PROMPT))})
        expected = "has latents 0..63"
    else:
        app = open_page(STEERING, **{STEER_CLAMPS: [{**_clamp(workspace), "value": math.nan}]})
        expected = "must be a finite number"
    assert not app.exception
    assert "cannot run" in _errors(app) and expected in _errors(app)
    app.text_area[0].set_value(PROMPT)
    app.button(key="steer_generate").click().run()
    assert not app.exception
    assert "Nothing was generated" in _errors(app)
    assert LAST_RESULT not in app.session_state


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _two_turns(open_page: Open, workspace: Workspace) -> tuple[AppTest, list[dict[str, Any]]]:
    """A playground with a clamp on, after Generate on PROMPT and then on FOLLOW_UP; each turn's result."""
    app = open_page(
        STEERING,
        **{STEER_CLAMPS: [_clamp(workspace)], STEER_SAMPLING: SAMPLING.to_dict(), "steer_prompt": PROMPT},
    )
    app.button(key="steer_generate").click().run()
    assert not app.exception and not app.error
    first = app.session_state[LAST_RESULT]
    app.text_area[0].set_value(FOLLOW_UP)
    app.button(key="steer_generate").click().run()
    assert not app.exception and not app.error
    return app, [first, app.session_state[LAST_RESULT]]


def test_each_column_continues_its_own_conversation(open_page: Open, workspace: Workspace) -> None:
    app, (first, second) = _two_turns(open_page, workspace)
    assert first["default"]["text"] != first["steered"]["text"], "the clamp must change the first reply"
    default_chat = [_user(PROMPT), _assistant(first["default"]["text"]), _user(FOLLOW_UP)]
    steered_chat = [_user(PROMPT), _assistant(first["steered"]["text"]), _user(FOLLOW_UP)]
    (plain,) = decode(workspace.steerer(), [default_chat], sampling=SAMPLING)
    assert second["default"]["token_ids"] == plain.token_ids  # an unsteered conversation throughout
    assert second["default"]["text"] == plain.text
    spec = SteeringSpec.from_dict({"clamps": [_clamp(workspace)]})
    expected = generate_side_by_side(
        workspace.steerer(), default_chat, spec, SAMPLING, steered_conversation=steered_chat
    )
    assert second["steered"]["token_ids"] == expected.steered.token_ids
    shown = _texts(app)
    for turn in (first, second):  # both columns' histories are on the page
        for column in ("default", "steered"):
            assert turn[column]["text"].strip() in shown


def test_every_generate_adds_its_turn_and_the_share_link_keeps_both_histories(
    open_page: Open, workspace: Workspace
) -> None:
    app, (first, second) = _two_turns(open_page, workspace)
    turns = [(PROMPT, first), (FOLLOW_UP, second)]
    for key, column in ((CHAT_HISTORY, "default"), (STEERED_CHAT, "steered")):
        expected = [m for text, r in turns for m in (_user(text), _assistant(r[column]["text"]))]
        assert app.session_state[key] == expected
    setup = decode_setup(app.query_params[Q_SPEC])
    assert setup.chat, "the share link must hold the chat"
    assert [m["content"] for m in setup.chat if m["role"] == "user"] == [PROMPT, FOLLOW_UP]
    assert list(setup.chat) == app.session_state[CHAT_HISTORY]
    assert list(setup.steered_history) == app.session_state[STEERED_CHAT]
    assert app.text_area[0].value == "" and app.text_area[0].label == "Next message"
    restored = open_page(STEERING, query={Q_SPEC: app.query_params[Q_SPEC]})
    assert not restored.exception and not restored.error
    assert restored.session_state[CHAT_HISTORY] == app.session_state[CHAT_HISTORY]
    assert restored.session_state[STEERED_CHAT] == app.session_state[STEERED_CHAT]
    assert decode_setup(restored.query_params[Q_SPEC]) == setup


def test_generate_adds_the_turn_and_clear_chat_starts_over(open_page: Open, workspace: Workspace) -> None:
    app = open_page(
        STEERING,
        **{STEER_CLAMPS: [_clamp(workspace)], STEER_SAMPLING: SAMPLING.to_dict(), "steer_prompt": PROMPT},
    )
    app.button(key="steer_generate").click().run()
    assert not app.exception
    result = app.session_state[LAST_RESULT]
    assert app.session_state[STEERED_CHAT] == [_user(PROMPT), _assistant(result["steered"]["text"])]
    assert app.session_state[CHAT_HISTORY] == [_user(PROMPT), _assistant(result["default"]["text"])]
    assert app.text_area[0].value == "" and app.text_area[0].label == "Next message"
    assert not any("Continue" in b.label for b in app.button)  # every Generate continues the chat
    app.button(key="steer_clear_chat").click().run()
    assert not app.exception and app.session_state[CHAT_HISTORY] == []
    assert app.session_state[STEERED_CHAT] == [] and LAST_RESULT not in app.session_state
    assert app.text_area[0].label == "Prompt"


@pytest.mark.parametrize("latent", [999999, -1])
def test_an_out_of_range_latent_is_refused_and_nothing_is_added(
    open_page: Open, workspace: Workspace, latent: int
) -> None:
    assert workspace.main is not None
    d_sae = workspace.saes[workspace.main].d_sae
    app = open_page(STEERING)
    app.number_input(key=f"steer_add_latent_{workspace.main}").set_value(latent)
    app.button(key="steer_add").click().run()
    assert not app.exception
    assert str(latent) in _errors(app) and f"0..{d_sae - 1}" in _errors(app)
    assert app.session_state[STEER_CLAMPS] == []
    assert app.number_input(key=f"steer_add_latent_{workspace.main}").value == latent  # the input is kept


def test_the_playground_hint_names_a_button_the_detail_page_has(open_page: Open) -> None:
    labels = {b.label for b in open_page(DETAIL).button}
    app = open_page(STEERING)
    hint = next(c.value for c in app.caption if "No latents picked" in c.value)
    quoted = re.findall(r"“([^”]+)”", hint)
    assert quoted and set(quoted) <= labels, (quoted, labels)


def test_a_stale_copy_of_the_sessions_own_link_does_not_reset_the_setup(
    open_page: Open, workspace: Workspace
) -> None:
    # A click sent before the browser received the newest link carries an older one this session wrote.
    app = open_page(STEERING, **{STEER_CLAMPS: [_clamp(workspace)], STEER_SAMPLING: SAMPLING.to_dict()})
    stale = app.query_params[Q_SPEC]
    app.text_area[0].set_value(PROMPT).run()
    assert app.query_params[Q_SPEC] != stale
    app.query_params[Q_SPEC] = stale
    app.button(key="steer_generate").click().run()
    assert not app.exception and not app.error
    assert not any("Restored the shared" in i.value for i in app.info)
    assert app.session_state[CHAT_HISTORY][0] == _user(PROMPT)


def test_presets_load_from_pasted_json_and_bad_ones_are_errors(open_page: Open, workspace: Workspace) -> None:
    spec = SteeringSpec((Clamp(str(workspace.main), 9, "add", -2.0, "max"),))
    app = open_page(STEERING)
    app.text_area(key="steer_preset_text").set_value("{broken").run()
    app.button(key="steer_preset_load").click().run()
    assert not app.exception and "Could not load the preset" in _errors(app)
    app.text_area(key="steer_preset_text").set_value(preset_json(spec, SAMPLING)).run()
    app.button(key="steer_preset_load").click().run()
    assert not app.exception and not app.error
    assert app.session_state[STEER_CLAMPS] == [asdict(c) for c in spec.clamps]
    assert app.session_state[STEER_SAMPLING] == SAMPLING.to_dict()
    assert [d.label for d in app.download_button] == ["Save preset (JSON)"]


def _sweep_app(open_page: Open, strengths: str) -> AppTest:
    app = open_page(EVALUATE)
    app.text_input(key="eval_strengths_set").set_value(strengths)
    app.number_input(key="eval_n").set_value(2)
    app.number_input(key="eval_tokens").set_value(3)
    app.number_input(key="eval_loss_rows").set_value(2)
    return app.button(key="eval_run").click().run()


def test_evaluate_runs_a_sweep_and_keeps_the_result(open_page: Open) -> None:
    app = _sweep_app(open_page, "1, 4")
    assert not app.exception and not app.error
    result = app.session_state[EVAL_RESULT]
    assert [p.label for p in result["points"]] == ["unsteered", "set 1×max", "set 4×max"]
    assert all(p.n_harmful == 2 and p.n_harmless == 2 for p in result["points"])
    assert len(result["latents"]) == 3  # top 3 by refusal cosine
    assert len(app.get("plotly_chart")) == 1
    assert list(app.dataframe[0].value["setting"]) == ["unsteered", "set 1×max", "set 4×max"]
    assert {"CE increase (nats)", "95% CI harmful", "degenerate harmless"} <= set(
        app.dataframe[0].value.columns
    )
    # Every reply of the chosen setting is browsable with its verdict (harmful prompts of "unsteered" first).
    replies = app.dataframe[1].value
    assert len(replies) == 2 and set(replies["verdict"]) <= {"refusal", "compliance", "degenerate"}
    assert list(replies["prompt"]) == [r["prompt"] for r in result["points"][0].replies[:2]]
    app.multiselect(key="eval_replies_verdicts").set_value([]).run()
    assert len(app.dataframe[1].value) == 0
    labels = [d.label for d in app.download_button]
    assert labels == ["Download every reply (CSV)", "Download CSV", "Download JSON"]
    app.run()  # a rerun shows the kept result without recomputing it
    assert app.session_state[EVAL_RESULT] is result
    assert len(app.get("plotly_chart")) == 1


def test_evaluate_rejects_bad_strengths_and_runs_nothing(open_page: Open) -> None:
    app = _sweep_app(open_page, "1, lots")
    assert not app.exception
    assert "'lots' is not a number" in _errors(app)
    assert EVAL_RESULT not in app.session_state


def test_evaluate_judge_picker_and_prompt_sources(open_page: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    app = open_page(EVALUATE)
    app.selectbox(key="eval_judge").set_value("llm").run()
    assert not app.exception and app.button(key="eval_run").disabled  # no endpoint named yet
    app.text_input(key="eval_judge_endpoint").set_value("http://127.0.0.1:9/v1").run()
    assert "This judge cannot be used" in _errors(app) and "cannot reach" in _errors(app)
    assert app.button(key="eval_run").disabled
    app.selectbox(key="eval_judge").set_value("substring-v1").run()
    assert not app.error and not app.button(key="eval_run").disabled
    # The separately written set: a sweep's replies come from it, judged by the chosen judge.
    app.radio(key="eval_prompt_source").set_value("elsewhere").run()
    app.number_input(key="eval_n").set_value(1)
    app.number_input(key="eval_tokens").set_value(2)
    app.number_input(key="eval_loss_rows").set_value(0)
    app.text_input(key="eval_strengths_set").set_value("1")
    app.button(key="eval_run").click().run()
    assert not app.exception
    result = app.session_state[EVAL_RESULT]
    assert result["judge"] == "substring-v1" and result["prompts"]["harmful"] == "the elsewhere set"
    assert all(r["id"].startswith("elsewhere-") for r in result["points"][0].replies)
    assert any("These rates mean little" in w.value for w in app.warning)  # 1 prompt, 2 tokens
