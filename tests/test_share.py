"""Share links and presets: the playground's setup survives a round trip exactly; bad input fails clearly."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace

import pytest

from explorer.core.generation import SamplingConfig
from explorer.steering.share import (
    MAX_LINK_CHARS,
    SHARE_VERSION,
    PlaygroundSetup,
    ShareError,
    decode_setup,
    encode_setup,
    preset_json,
    provenance_mismatches,
    read_preset,
)
from explorer.steering.spec import Clamp, DirectionBaseline, SteeringSpec, Trigger

HOOK = "blocks.1.hook_resid_pre"
SPEC = SteeringSpec(
    (Clamp(HOOK, 5, "multiply", -3.0), Clamp(HOOK, 7, "add", 0.1 + 0.2, "max")),
    scope="generated",
    trigger=Trigger("blocks.0.hook_resid_pre", 2, 0.25),
    direction=DirectionBaseline("add", 1.5),
    provenance={"model": "tiny", "saes": {HOOK: "abc123"}},
)
SAMPLING = SamplingConfig(
    max_new_tokens=5, temperature=0.7, top_p=0.9, repetition_penalty=1.2, seed=11, frequency_penalty=0.3
)
SETUP = PlaygroundSetup(
    SPEC,
    SAMPLING,
    "Et maintenant ? 🦉 \n« Comment chassent les hiboux » & 100% = ok",
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}),
)


def _link(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _clamp_link(hook: object, latent: int, mode: str, value: object) -> str:
    clamp = {"hook": hook, "latent": latent, "mode": mode, "value": value}
    return _link({"version": 1, "spec": {"clamps": [clamp]}})


def test_a_setup_survives_a_share_link_exactly() -> None:
    link = encode_setup(SETUP)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", link), "a share link must need no URL escaping"
    back = decode_setup(link)
    assert back == SETUP
    assert back.spec.provenance == SPEC.provenance  # not part of equality, but shared too
    assert back.spec.clamps[1].value == 0.1 + 0.2  # floats are not rounded on the way
    assert json.loads(base64.urlsafe_b64decode(link + "==="))["version"] == SHARE_VERSION


@pytest.mark.parametrize(
    "direction",
    [DirectionBaseline("cap", -12.5), DirectionBaseline("floor", 250.0), DirectionBaseline("scale", 0.0)],
    ids=lambda d: d.kind,
)
def test_residual_direction_modes_survive_a_share_link_and_a_preset(direction: DirectionBaseline) -> None:
    spec = SteeringSpec(
        (Clamp(HOOK, 5, "cap", 3.5), Clamp(HOOK, 7, "floor", 1.0, "max"), Clamp(HOOK, 9, "scale", 0.25)),
        trigger=Trigger("blocks.0.hook_resid_pre", 2, 0.25),
        direction=direction,
    )
    setup = replace(SETUP, spec=spec)
    back = decode_setup(encode_setup(setup))
    assert back == setup
    assert [(c.mode, c.value, c.units) for c in back.spec.clamps] == [
        ("cap", 3.5, "raw"),
        ("floor", 1.0, "max"),
        ("scale", 0.25, "raw"),
    ]
    assert back.spec.direction == direction
    assert read_preset(preset_json(spec, SAMPLING)) == (spec, SAMPLING)


def test_a_link_from_a_newer_explorer_is_refused() -> None:
    data = {**SETUP.to_dict(), "version": SHARE_VERSION + 1}
    with pytest.raises(ShareError, match="newer than this explorer reads"):
        decode_setup(_link(data))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("%%%not base64%%%", "not URL-safe base64"),
        ("A" * (MAX_LINK_CHARS + 1), "at most"),
        (base64.urlsafe_b64encode(b"\xff\xfe").decode(), "not UTF-8 text"),
        (_link("just text")[:-3] + "@@@", "not URL-safe base64"),
        (base64.urlsafe_b64encode(b"{not json").decode(), "not JSON"),
        (_link([1, 2]), "expected a JSON object"),
        (_link({"spec": {}}), "has no 'version'"),
        (_link({"version": "one"}), "not a positive integer"),
        (_clamp_link(HOOK, 1, "zap", 1), "zap"),
        (_clamp_link(HOOK, -1, "set", 1), "non-negative"),
        (_clamp_link(3, 1, "set", 1), "hook 3"),
        (_clamp_link(HOOK, 1, "set", "lots"), "finite number"),
        (_clamp_link(HOOK, 1, "scale", 500.0), "must be <= 100"),
        (_link({"version": 1, "spec": {"direction": {"kind": "cap", "alpha": 2e4}}}), "must be <= 10000"),
        (_link({"version": 1, "spec": {"clamps": ["x"]}}), "malformed"),
        (_link({"version": 1, "sampling": {"temperature": 9.0}}), "temperature must be in"),
        (_link({"version": 1, "sampling": {"seed": 1.5}}), "whole number"),
        (_link({"version": 1, "sampling": {"seed": -1}}), "seed -1 is out of range"),
        (_link({"version": 1, "sampling": {"top_k": 5}}), "unknown sampling setting"),
        (_link({"version": 1, "sampling": {"top_p": "all"}}), "must be a number"),
        (_link({"version": 1, "prompt": 5}), "'prompt' must be text"),
        (_link({"version": 1, "chat": [{"role": "robot", "content": "x"}]}), "chat message 0"),
    ],
)
def test_corrupt_links_fail_with_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ShareError, match=re.escape(message)):
        decode_setup(value)


def test_nan_in_a_link_is_rejected() -> None:
    text = json.dumps(SETUP.to_dict()).replace('"value": -3.0', '"value": NaN')
    assert "NaN" in text
    link = base64.urlsafe_b64encode(text.encode()).decode()
    with pytest.raises(ShareError, match="finite number"):
        decode_setup(link)


def test_presets_round_trip_and_are_spec_files_for_the_cli() -> None:
    text = preset_json(SPEC, SAMPLING)
    spec, sampling = read_preset(text)
    assert (spec, sampling) == (SPEC, SAMPLING)
    assert SteeringSpec.from_json(text) == SPEC  # `explorer generate --spec` reads it as a spec
    bare, none = read_preset(SPEC.to_json())
    assert bare == SPEC and none is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        (json.dumps({"version": 1, "scope": "all"}), "neither 'clamps' nor 'direction'"),
        (json.dumps({"version": 1, "clamps": [], "sampling": {"max_new_tokens": 0}}), "max_new_tokens"),
        (json.dumps({"version": 99, "clamps": []}), "newer"),
    ],
)
def test_bad_presets_fail_with_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ShareError, match=re.escape(message)):
        read_preset(text)


def test_provenance_mismatches_are_named() -> None:
    assert provenance_mismatches(SPEC, "tiny", {HOOK: "abc123"}) == []
    found = provenance_mismatches(SPEC, "other", {HOOK: "def456"})
    assert len(found) == 2
    assert "made for model 'tiny'" in found[0] and "other weights" in found[1]


def test_each_columns_history_round_trips_and_old_links_read_as_one_history() -> None:
    steered = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "I can't help with that."})
    two = replace(SETUP, steered_chat=steered)
    again = decode_setup(encode_setup(two))
    assert again == two and again.chat == SETUP.chat and again.steered_history == steered
    assert decode_setup(encode_setup(SETUP)).steered_history == SETUP.chat  # one history: both columns
    assert "steered_chat" not in SETUP.to_dict()  # links without a second history read as before
    with pytest.raises(ShareError, match="steered_chat message 0"):
        decode_setup(_link({"version": 1, "steered_chat": [{"role": "robot", "content": "x"}]}))
