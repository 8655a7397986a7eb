"""`explorer label`: explanations and detection scores from an OpenAI-compatible endpoint, here a small
HTTP server on 127.0.0.1 that speaks the same protocol; labels land in the user database."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from explorer.cli.main import main
from explorer.cli.notes import model_name
from explorer.core.llm import ChatClient, EndpointConfig, LLMError
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.latents.autointerp import (
    AutoInterpConfig,
    LatentTask,
    auto_labels,
    balanced_accuracy,
    label_latents,
    prepare_tasks,
    sae_activations,
    select_latents,
    task_prompts,
)
from explorer.latents.autointerp_client import (
    DETECT_SYSTEM,
    EXPLAIN_SYSTEM,
    MAX_EXPLANATION_CHARS,
    PROMPT_VERSION,
    ReplyError,
    parse_detection,
    parse_explanation,
    render_window,
)
from explorer.latents.notes import UserNotes, user_db_path
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import TOKENS_FILE, CacheConfig
from explorer.saes.activations import load_activations
from explorer.saes.loading import LoadedSAE
from tests.fake_llm import Answer, FakeLLM, completion
from tests.helpers import build_tiny_latent_cache

HOOK = "blocks.2.hook_resid_pre"
CACHE_CONFIG = CacheConfig(
    k=4, samples_per_bin=6, n_groups=8, examples_per_group=5, context_before=3, context_after=2
)
CONFIG = AutoInterpConfig(n_top=2, n_groups=2, n_detect=4, before=3, after=2, candidate_rows=64)
PHRASE = "the word 'the' after a verb"


# --- a fake OpenAI-compatible endpoint ------------------------------------------------------------------


def numbered_windows(body: dict[str, Any]) -> dict[int, str]:
    """The windows of a detection request, by number, as the endpoint reads them."""
    user = body["messages"][-1]["content"]
    section = user.split("Windows:\n", 1)[1].split("\n\n", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^(\d+)\. (.*)$", section, re.MULTILINE)}


def labeller(detect: Callable[[dict[int, str]], str], explain: str = f"Explanation: {PHRASE}.") -> Answer:
    """Chat answers: `explain` to explanation requests, `detect(windows)` to detection requests."""

    def answer(request: dict[str, Any]) -> tuple[int, Any]:
        if request["path"].endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]}
        system = request["body"]["messages"][0]["content"]
        assert system in (EXPLAIN_SYSTEM, DETECT_SYSTEM)
        if system == EXPLAIN_SYSTEM:
            return 200, completion(explain)
        return 200, completion(detect(numbered_windows(request["body"])))

    return answer


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = FakeLLM(labeller(lambda windows: '{"activating": []}'))
    yield server
    server.close()


def client(url: str, **options: Any) -> ChatClient:
    return ChatClient(EndpointConfig(url, **{"model": "fake-llm", "backoff_s": 0.0, **options}))


# --- the tiny cache and its tasks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> tuple[Path, LoadedSAE, Path]:
    root = tmp_path_factory.mktemp("autointerp")
    _, acts, sae, directory = build_tiny_latent_cache(tiny, root, HOOK, CACHE_CONFIG)
    return acts, sae, directory


@pytest.fixture(scope="module")
def cache(built: tuple[Path, LoadedSAE, Path]) -> LatentCache:
    return LatentCache(built[2])


@pytest.fixture(scope="module")
def tasks(tiny: LoadedModel, built: tuple[Path, LoadedSAE, Path], cache: LatentCache) -> list[LatentTask]:
    return prepare_tasks(cache, range(cache.d_sae), CONFIG, sae_activations(tiny, built[1], batch_size=7))


@pytest.fixture(scope="module")
def truth(built: tuple[Path, LoadedSAE, Path], cache: LatentCache) -> torch.Tensor:
    """[rows, pos, d_sae] every latent's activation at every counted position, from the stored
    activations (an independent route: no forward pass of ours)."""
    acts_dir, sae, _ = built
    parts = [load_activations(acts_dir, HOOK, p) for p in ("train", "heldout")]  # pyright: ignore[reportArgumentType]
    acts, rows, pos = (torch.cat([getattr(p, f) for p in parts]) for f in ("acts", "row", "pos"))
    dense = torch.zeros(int(rows.max()) + 1, cache.seq_len, cache.d_sae)
    with torch.no_grad():
        dense[rows.long(), pos.long()] = sae.sae.encode(acts.float())
    return dense


def perfect(tasks: list[LatentTask]) -> Callable[[dict[int, str]], str]:
    """A detector that knows the truth: the n-th detection request is the n-th task's."""
    truths = iter([{render_window(w.tokens, w.values, None): w.activating for w in t.detect} for t in tasks])

    def detect(windows: dict[int, str]) -> str:
        truth = next(truths)
        return json.dumps({"activating": [n for n, text in windows.items() if truth[text]]})

    return detect


def test_configs_round_trip_and_refuse_bad_values() -> None:
    assert AutoInterpConfig.from_dict(CONFIG.to_dict()) == CONFIG
    endpoint = EndpointConfig("http://localhost:11434/v1", "llama3.2", "MY_KEY", 5.0, 2, 0.5, 4.0)
    assert EndpointConfig.from_dict(json.loads(json.dumps(endpoint.to_dict()))) == endpoint
    assert endpoint.provider == "localhost:11434"
    assert EndpointConfig("https://user:secret@api.example.com/v1").provider == "api.example.com"
    with pytest.raises(ValueError, match="n_detect"):
        AutoInterpConfig(n_detect=0)
    with pytest.raises(LLMError, match="not an http"):
        EndpointConfig("localhost:8000")


def test_explainer_sees_marked_windows_and_the_detector_a_balanced_unmarked_mix(
    tasks: list[LatentTask], cache: LatentCache
) -> None:
    usable = [t for t in tasks if t.problem is None]
    assert len(usable) >= 5 and all(t.negatives == "model" for t in tasks)
    density = cache.column("density")
    # The random tiny SAE has dead and always-on latents: those cannot be tested, and say why.
    for task in tasks:
        if density[task.latent] == 0:
            assert task.problem == "it never activates on the corpus"
        if density[task.latent] == 1:
            assert task.problem == f"no non-activating window found in {CONFIG.candidate_rows} corpus rows"
    for task in usable:
        positives = [w for w in task.detect if w.activating]
        assert len(positives) == len(task.detect) - len(positives) >= 1
        shown = {(w.row, w.start) for w in task.shown}
        assert not shown & {(w.row, w.start) for w in positives}, "a shown window is held out too"
        explain, detect = task_prompts(task, "EXPLANATION")
        assert explain[0]["content"] == EXPLAIN_SYSTEM and "<<" in explain[1]["content"]
        assert "<<" not in detect[1]["content"] and "Explanation: EXPLANATION" in detect[1]["content"]
        assert len(numbered_windows({"messages": detect})) == len(task.detect)
    peak = usable[0]
    top = max(peak.shown[0].values, key=lambda v: v or 0.0)
    assert f"|{round(10 * (top or 0) / peak.peak)}>>" in task_prompts(peak)[0][1]["content"]


def test_non_activating_windows_are_zero_and_activating_ones_are_not(
    tasks: list[LatentTask], truth: torch.Tensor
) -> None:
    for task in tasks:
        for w in task.detect:
            window = truth[w.row, w.start : w.start + len(w.tokens), task.latent]
            assert bool((window > 0).any()) == w.activating, (task.latent, w)


def test_the_model_pass_agrees_with_the_cache(
    tiny: LoadedModel, built: tuple[Path, LoadedSAE, Path], cache: LatentCache, tasks: list[LatentTask]
) -> None:
    latent = next(t.latent for t in tasks if t.problem is None)
    record = cache.latent(latent)
    rows = sorted({e.row for e in record.top_examples})
    tokens = load_file(str(cache.directory / TOKENS_FILE))
    ids, lengths = tokens["input_ids"][rows], tokens["lengths"][rows]
    acts = sae_activations(tiny, built[1], batch_size=2)(ids, lengths, [latent, 7])
    assert acts.shape == (len(rows), cache.seq_len, 2)
    for e in record.top_examples:
        assert float(acts[rows.index(e.row), e.pos, 0]) == pytest.approx(e.value, rel=1e-2)


def test_without_a_model_the_cache_alone_chooses_them(cache: LatentCache, truth: torch.Tensor) -> None:
    tasks = prepare_tasks(cache, range(cache.d_sae), CONFIG)
    assert {t.negatives for t in tasks} <= {"cache", "unverified"}
    for task in (t for t in tasks if t.negatives == "cache" and t.problem is None):
        for w in (w for w in task.detect if not w.activating):  # exact: the latent is zero there
            assert not (truth[w.row, w.start : w.start + len(w.tokens), task.latent] > 0).any()


def test_balanced_accuracy() -> None:
    truth = [True, False, True, False, False]
    assert balanced_accuracy(truth, [1, 3]) == (1.0, 1.0, 1.0)
    assert balanced_accuracy(truth, [1, 2, 3, 4, 5]) == (0.5, 1.0, 0.0)
    assert balanced_accuracy(truth, [1, 2])[0] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="needs"):
        balanced_accuracy([True, True], [1])


@pytest.mark.parametrize(
    ("reply", "picked"),
    [
        ('{"activating": [1, 4, 7]}', [1, 4, 7]),
        ('Sure!\n```json\n{"activating": [3, 1, 3]}\n```\nHope this helps.', [1, 3]),
        ('<think>maybe {"activating": [2]}?</think>The answer: {"activating": ["5", 6]}.', [5, 6]),
        ('{"activating": []}', []),
        ("[2, 8]", [2, 8]),
    ],
)
def test_detection_replies_are_read_robustly(reply: str, picked: list[int]) -> None:
    assert parse_detection(reply, 8) == picked


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("I think windows 2 and 5 activate.", "holds no"),
        ('{"activating": [0, 9]}', "outside 1..8"),
        ('{"activating": ["two"]}', "non-numbers"),
        ('{"active": [1]}', "holds no"),
        ("", "holds no"),
    ],
)
def test_malformed_detection_replies_are_reply_errors(reply: str, message: str) -> None:
    with pytest.raises(ReplyError, match=message):
        parse_detection(reply, 8)


def test_explanation_replies_are_cleaned() -> None:
    assert parse_explanation('<think>hmm</think>\n\n"Explanation: refusal openers like I cannot."\n') == (
        "refusal openers like I cannot"
    )
    assert parse_explanation("```\nweapons\n```") == "weapons"
    assert len(parse_explanation("x" * 1000)) == MAX_EXPLANATION_CHARS
    with pytest.raises(ReplyError, match="empty"):
        parse_explanation("<think>only thoughts</think>  ")


def test_a_perfect_labeller_scores_one_a_yes_sayer_half_and_garbage_fails(
    fake: FakeLLM, tasks: list[LatentTask]
) -> None:
    usable = [t for t in tasks if t.problem is None][:4]
    fake.answer = labeller(perfect(usable))
    results = list(label_latents(usable, client(fake.url), CONFIG, progress=False))
    assert [r.score for r in results] == [1.0] * len(usable)
    assert all(r.explanation == PHRASE and r.error is None for r in results)
    assert len(fake.chats()) == 2 * len(usable)
    body = fake.chats()[0]["body"]
    assert body["model"] == "fake-llm" and body["temperature"] == 0
    assert body["max_tokens"] == CONFIG.explain_tokens

    fake.answer = labeller(lambda ws: f"All of them: {json.dumps({'activating': list(ws)})}")
    results = list(label_latents(usable, client(fake.url), CONFIG, progress=False))
    assert [(r.score, r.tpr, r.tnr) for r in results] == [(0.5, 1.0, 0.0)] * len(usable)

    fake.answer = labeller(lambda ws: "windows 1 and 2, I reckon")
    problem = next(t for t in tasks if t.problem is not None)
    results = list(label_latents([*usable[:2], problem], client(fake.url), CONFIG, progress=False))
    assert [r.score for r in results] == [None, None, None]
    assert "holds no" in (results[0].error or "") and results[0].explanation == PHRASE
    assert results[2].error == problem.problem
    assert auto_labels(results, HOOK, "here", "m") == []


def test_labels_keep_their_provenance_and_a_user_label_still_wins(
    fake: FakeLLM, tasks: list[LatentTask], tmp_path: Path
) -> None:
    usable = [t for t in tasks if t.problem is None][:3]
    fake.answer = labeller(lambda ws: '{"activating": [1]}')
    results = list(label_latents(usable, client(fake.url), CONFIG, progress=False))
    notes = UserNotes(tmp_path / "notes.sqlite")
    notes.set_label(HOOK, usable[0].latent, "my own words")
    assert notes.add_labels(auto_labels(results, HOOK, "127.0.0.1:1", "fake-llm")) == 3
    shown = notes.label_for(HOOK, usable[0].latent)
    assert shown is not None and (shown.source, shown.text) == ("user", "my own words")
    auto = notes.label_for(HOOK, usable[1].latent)
    assert auto is not None and auto.source == "auto" and auto.text == PHRASE
    assert (auto.provider, auto.model, auto.prompt_version) == ("127.0.0.1:1", "fake-llm", PROMPT_VERSION)
    assert auto.score == results[1].score and re.match(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", auto.created_at
    )
    history = notes.label_history(HOOK, usable[0].latent)
    assert [b.source for b in history] == ["user", "auto"]


def test_the_api_key_is_sent_only_when_its_variable_is_set(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.answer = lambda request: (200, completion("hello"))
    assert client(fake.url).complete([{"role": "user", "content": "hi"}], 5) == "hello"
    monkeypatch.setenv("MY_LLM_KEY", "sk-test-123")
    client(fake.url, api_key_env="MY_LLM_KEY").complete([{"role": "user", "content": "hi"}], 5)
    without, with_key = (r["headers"] for r in fake.requests)
    assert "Authorization" not in without
    assert with_key["Authorization"] == "Bearer sk-test-123"


def test_a_server_error_is_retried_with_backoff_and_then_given_up(fake: FakeLLM) -> None:
    statuses = iter([500, 429, 200])
    fake.answer = lambda request: (code := next(statuses), completion("ok") if code == 200 else "busy")
    waits: list[float] = []
    chat = ChatClient(EndpointConfig(fake.url, "m", backoff_s=0.25), sleep=waits.append)
    assert chat.complete([{"role": "user", "content": "hi"}], 5) == "ok"
    assert waits == [0.25, 0.5] and len(fake.requests) == 3
    fake.answer = lambda request: (503, "overloaded")
    with pytest.raises(LLMError, match="503"):
        ChatClient(EndpointConfig(fake.url, "m", max_retries=2), sleep=waits.append).complete([], 5)
    assert len(fake.requests) == 3 + 3


def test_endpoint_failures_are_clear_errors(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = rf"cannot reach http://127.0.0.1:{port}/v1/chat/completions: connection refused"
    with pytest.raises(LLMError, match=refused):
        client(f"http://127.0.0.1:{port}/v1").complete([], 5)
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret")
    fake.answer = lambda request: (401, {"error": "invalid key"})
    with pytest.raises(LLMError, match=r"refused the request \(401\).*MY_LLM_KEY") as e:
        client(fake.url, api_key_env="MY_LLM_KEY").complete([], 5)
    assert "sk-secret" not in str(e.value)
    fake.answer = lambda request: (200, "<html>not an API</html>")
    with pytest.raises(LLMError, match=f"{fake.url}/chat/completions did not answer JSON"):
        client(fake.url).complete([], 5)
    fake.answer = lambda request: (200, {"error": "no choices"})
    with pytest.raises(LLMError, match="without choices"):
        client(fake.url).complete([], 5)


def test_the_model_defaults_to_the_endpoints_first(fake: FakeLLM) -> None:
    fake.answer = labeller(lambda ws: "[]")
    chat = client(fake.url, model="")
    assert chat.resolve_model() == "served-model"
    chat.complete([{"role": "system", "content": EXPLAIN_SYSTEM}], 5)
    assert fake.requests[-1]["body"]["model"] == "served-model"


def test_latent_selection(cache: LatentCache) -> None:
    assert select_latents(cache, "top:3") == cache.top_latents("refusal_cos", 3)
    assert select_latents(cache, "top:2", by="density") == cache.top_latents("density", 2)
    by_cosine = cache.top_latents("refusal_cos", cache.d_sae)
    firing = [i for i in by_cosine if cache.column("count")[i] > 0]
    assert cache.top_latents("refusal_cos", 3, active=True) == firing[:3]
    assert select_latents(cache, " 7, 3,7 ") == [7, 3]
    with pytest.raises(CacheError, match=r"out of range: this SAE has latents 0..31"):
        select_latents(cache, "3,32")
    for bad in ("top:x", "top:0", "three", ""):
        with pytest.raises(CacheError):
            select_latents(cache, bad)
    with pytest.raises(CacheError, match="no 'nope'"):
        select_latents(cache, "top:2", by="nope")


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: tuple[Path, LoadedSAE, Path]
) -> dict[str, str]:
    monkeypatch.setenv(USER_ENV, str(tmp_path / "user"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sae_dir = tmp_path / "sae"
    built[1].sae.save_model(str(sae_dir))
    return {"cache": str(built[2]), "sae": str(sae_dir)}


def test_cli_labels_latents_saves_them_and_writes_a_report(
    fake: FakeLLM,
    tiny_dir: Path,
    workspace: dict[str, str],
    tmp_path: Path,
    tasks: list[LatentTask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.answer = labeller(lambda ws: '{"activating": [1, 2]}')
    latents = ",".join(str(t.latent) for t in tasks if t.problem is None)
    out = tmp_path / "labels.jsonl"
    common = ["label", "--model", str(tiny_dir), "--cache", workspace["cache"], "--sae", workspace["sae"]]
    args = [*common, "--latents", latents, "--endpoint", fake.url, "--out", str(out), "--quiet"]
    code = main([*args, "--negatives", "model", "--held-out", "3", "--before", "3", "--after", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["latent"] for r in results] == [int(i) for i in latents.split(",")]
    assert all(r["model"] == "served-model" for r in results)
    assert {r["negatives"] for r in results} == {"model"} and results[0]["prompt_version"] == PROMPT_VERSION
    notes = UserNotes(user_db_path(model_name(str(tiny_dir))))
    stored = notes.labels(HOOK)
    scored = [r for r in results if r["score"] is not None]
    assert sorted(stored) == sorted(r["latent"] for r in scored) and scored
    assert stored[scored[0]["latent"]].provider == f"127.0.0.1:{fake.server.server_port}"
    assert f"{scored[0]['score']:5.2f}  " in captured.out and PHRASE in captured.out

    requests = len(fake.requests)
    assert main([*common, "--latents", "3", "--dry-run", "--negatives", "cache"]) == 0
    printed = capsys.readouterr().out
    assert "===== latent 3" in printed and "--- detection prompt" in printed and "<<" in printed
    assert len(fake.requests) == requests  # a dry run never calls the endpoint

    assert main([*common, "--latents", "3,99", "--endpoint", fake.url]) == 2
    assert "latent(s) [99] out of range: this SAE has latents 0..31" in capsys.readouterr().err
    unreachable = ["--endpoint", "http://127.0.0.1:9/v1", "--llm", "m", "--negatives", "cache"]
    assert main([*common, "--latents", "3", *unreachable]) == 2
    assert "cannot reach http://127.0.0.1:9/v1/chat/completions" in capsys.readouterr().err


def test_cli_keeps_finished_latents_when_the_endpoint_dies_and_falls_back_without_a_model(
    fake: FakeLLM,
    tiny_dir: Path,
    workspace: dict[str, str],
    tmp_path: Path,
    tasks: list[LatentTask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    healthy = labeller(lambda ws: "[1]")
    fake.answer = lambda request: healthy(request) if len(fake.chats()) <= 2 else (401, {"error": "revoked"})
    latents = ",".join(str(t.latent) for t in tasks if t.problem is None)
    out = tmp_path / "partial.jsonl"
    args = ["label", "--model", str(tiny_dir), "--cache", workspace["cache"], "--latents", latents]
    args += [
        "--endpoint",
        fake.url,
        "--llm",
        "m",
        "--out",
        str(out),
        "--quiet",
        "--sae",
        str(tmp_path / "no-sae"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot check non-activating windows with the model" in err  # auto: falls back to the cache
    assert "refused the request (401)" in err
    [done] = [json.loads(line) for line in out.read_text().splitlines()]
    assert done["negatives"] in ("cache", "unverified") and done["score"] is not None
    assert list(UserNotes(user_db_path(model_name(str(tiny_dir)))).labels(HOOK)) == [done["latent"]]
    assert main([*args, "--negatives", "model"]) == 2  # asked for a proof it cannot give
    assert "no-sae" in capsys.readouterr().err
