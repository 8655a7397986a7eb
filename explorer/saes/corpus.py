"""The token corpus behind SAE training and the latent cache: chat transcripts plus English of many genres.

Two kinds of sequence, both stored as fixed-length rows of token ids with a mask of the positions that
count (real tokens that are neither the first position of a sequence nor a special token):

- ``chat``: a built-in prompt, chat-templated, followed by the model's own greedy reply;
- ``text``: English of many genres (`explorer.saes.genres`) in windows of `seq_len` tokens, one source each.

Held out from training: test-split transcripts, a share of each source's documents, whole held-out genres.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from explorer.core.models import LoadedModel, special_token_ids
from explorer.core.paths import atomic_directory, cache_dir, write_json_atomic
from explorer.core.prompts import PromptRecord, builtin_prompts, chat_messages, format_chat, records_hash
from explorer.saes.genres import HELDOUT_SOURCES, TRAIN_SOURCES, check_sources, get_source
from explorer.saes.prose import dataset_documents, text_windows

log = logging.getLogger(__name__)

Kind = Literal["chat", "text"]
Part = Literal["train", "heldout"]
TOKENS_FILE = "tokens.safetensors"
INDEX_FILE = "sequences.json"
MANIFEST_FILE = "corpus.json"
SCHEMA_VERSION = 2  # 2: text rows name their source, a field schema-1 readers do not know
DATASET_SOURCE = "dataset"  # the source name of `text_dataset` rows


class CorpusError(ValueError):
    """A corpus that is missing, corrupt or built for another tokenizer; the message names the file."""


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is made.

    Attributes:
        seq_len: tokens per stored row (a reply is cut to fit; prompts this long are left out).
        response_tokens: new tokens generated for each transcript's reply.
        text_tokens: cap on general-text tokens from the training sources (their held-out documents
            included), shared equally; see `share_tokens`.
        heldout_fraction: share of each training source's documents kept out of SAE training.
        min_doc_chars: shorter docstrings and comment blocks are skipped as too terse to be prose.
        batch_size: prompts per generation batch.
        prompts_per_label: use only this many built-in prompts of each label (spread over all
            categories and splits); None uses them all.
        seed: fixes document order and the held-out choice.
        text_dataset: general text from this dataset (a hub name or a local file; see
            `dataset_documents`) instead of the training sources.
        train_sources: names of the text sources (`explorer.saes.genres.SOURCES`) that train the SAE.
        heldout_sources: sources held out whole: every row of theirs is in part "heldout".
        heldout_source_tokens: cap on each held-out source's tokens; at most text_tokens * heldout_fraction.
    """

    seq_len: int = 128
    response_tokens: int = 32
    text_tokens: int = 510_000
    heldout_fraction: float = 0.08
    min_doc_chars: int = 160
    batch_size: int = 64
    prompts_per_label: int | None = None
    seed: int = 0
    text_dataset: str | None = None
    train_sources: tuple[str, ...] = TRAIN_SOURCES
    heldout_sources: tuple[str, ...] = HELDOUT_SOURCES
    heldout_source_tokens: int = 12_000

    def __post_init__(self) -> None:
        if not 8 <= self.seq_len <= 4096:
            raise ValueError(f"seq_len must be in [8, 4096], got {self.seq_len}")
        if not 1 <= self.response_tokens <= 1024:
            raise ValueError(f"response_tokens must be in [1, 1024], got {self.response_tokens}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.heldout_source_tokens < 0:
            raise ValueError(f"heldout_source_tokens must be >= 0, got {self.heldout_source_tokens}")
        check_sources(
            self.train_sources, self.heldout_sources, self.text_dataset is None and self.text_tokens > 0
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in the corpus manifest; `text_dataset` only when set, so corpora built
        before it existed still match their config."""
        data = asdict(self)
        if data["text_dataset"] is None:
            del data["text_dataset"]
        data.update(train_sources=list(self.train_sources), heldout_sources=list(self.heldout_sources))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusConfig:
        kept: dict[str, Any] = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kept.update({k: tuple(kept[k]) for k in ("train_sources", "heldout_sources") if k in kept})
        return cls(**kept)


@dataclass(frozen=True)
class SequenceInfo:
    """What one stored row is.

    Attributes:
        doc: the prompt id (chat) or document id (text) it comes from.
        kind: "chat" or "text".
        part: "train" or "heldout".
        label: "harmful"/"harmless" for chat transcripts, None for text.
        n_prompt: tokens of the chat-templated prompt (0 for text); the reply starts here.
        length: real tokens in the row (the rest is padding).
        source: the text source of a text row (None for chat, and in corpora built before sources).
    """

    doc: str
    kind: Kind
    part: Part
    label: str | None
    n_prompt: int
    length: int
    source: str | None = None


@dataclass
class Corpus:
    """Token rows and their description.

    Attributes:
        input_ids: [n_seq, seq_len] token ids, right-padded.
        mask: [n_seq, seq_len] True where a position counts for statistics and training.
        sequences: one SequenceInfo per row.
        manifest: config, sources, hashes and counts.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    sequences: list[SequenceInfo]
    manifest: dict[str, Any]

    def rows(
        self, part: Part | None = None, kind: Kind | None = None, source: str | None = None
    ) -> list[int]:
        """Indices of the rows in `part`, of `kind` and from text `source` (None means any)."""
        return [
            i
            for i, s in enumerate(self.sequences)
            if (part is None or s.part == part)
            and (kind is None or s.kind == kind)
            and (source is None or s.source == source)
        ]

    def train_sources(self) -> list[str]:
        """What trained the SAE: its text sources, and "chat" for the transcripts (`source or kind`)."""
        return sorted({s.source or s.kind for s in self.sequences if s.part == "train"})

    def fingerprint(self) -> str:
        """A short hash of the token rows and their mask: what activations and caches were built from."""
        digest = hashlib.sha256(self.input_ids.numpy().tobytes())
        digest.update(self.mask.numpy().tobytes())
        return digest.hexdigest()[:16]

    def n_tokens(self, rows: Sequence[int] | None = None) -> int:
        """Counted positions in the given rows (all rows by default)."""
        mask = self.mask if rows is None else self.mask[list(rows)]
        return int(mask.sum())


def corpus_dir(model_name: str) -> Path:
    """Where the corpus for `model_name` lives."""
    return cache_dir() / "corpus" / model_name


# --- general text -------------------------------------------------------------------------------


def text_rows(
    tokenizer: PreTrainedTokenizerBase, config: CorpusConfig
) -> tuple[list[list[int]], list[SequenceInfo], dict[str, Any]]:
    """General-text rows, one source each (see `text_windows`), and the manifest's account of them."""
    if config.text_tokens == 0:
        return [], [], {"documents": 0, "sha256": None, "sources": {}}
    train = [DATASET_SOURCE] if config.text_dataset is not None else list(config.train_sources)
    try:
        docs = {
            name: dataset_documents(config.text_dataset, 8 * config.text_tokens, config.min_doc_chars)
            if name == DATASET_SOURCE and config.text_dataset is not None  # ~4 characters a token, x2
            else get_source(name).documents(config.min_doc_chars)
            for name in [*train, *config.heldout_sources]
        }
    except ValueError as e:  # a SourceError, or a dataset that cannot be read
        raise CorpusError(str(e)) from e
    windows, meta = text_windows(
        tokenizer,
        docs,
        config.heldout_sources,
        budget=config.text_tokens,
        heldout_cap=min(config.heldout_source_tokens, round(config.text_tokens * config.heldout_fraction)),
        heldout_fraction=config.heldout_fraction,
        seed=config.seed,
        seq_len=config.seq_len,
    )
    for name, entry in meta["sources"].items():
        entry |= {"dataset": config.text_dataset} if name == DATASET_SOURCE else get_source(name).manifest()
    infos = [
        SequenceInfo(f"text:{name}:{part}:{n}", "text", part, None, 0, len(row), name)  # pyright: ignore[reportArgumentType]
        for name, part, n, row in windows
    ]
    meta |= {"dataset": config.text_dataset} if config.text_dataset else {}
    return [row for *_, row in windows], infos, meta


# --- chat transcripts ---------------------------------------------------------------------------


def chat_rows(
    loaded: LoadedModel, prompts: Sequence[PromptRecord], config: CorpusConfig
) -> tuple[list[list[int]], list[SequenceInfo]]:
    """Each prompt chat-templated and followed by the model's own greedy reply (ending in EOS if it ended)."""
    from explorer.core.generation import SamplingConfig, generate

    tokenizer = loaded.tokenizer
    # Batches of one label and similar lengths: little padding, and a batch of refusals stops early.
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].label or "", len(prompts[i].text)))
    generated = generate(
        loaded,
        [prompts[i].text for i in order],
        SamplingConfig(max_new_tokens=config.response_tokens),
        batch_size=config.batch_size,
        progress=True,
    )
    by_prompt = dict(zip(order, generated, strict=True))
    completions = [by_prompt[i] for i in range(len(prompts))]
    eos = tokenizer.eos_token_id
    rows: list[list[int]] = []
    infos: list[SequenceInfo] = []
    skipped = 0
    for record, completion in zip(prompts, completions, strict=True):
        prompt_text = format_chat(tokenizer, chat_messages(record.text))
        prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])  # pyright: ignore[reportArgumentType]
        if len(prompt_ids) >= config.seq_len:
            # The post-instruction positions must be in the row, and such a row has no room for a reply.
            skipped += 1
            continue
        reply = completion.token_ids + ([eos] if completion.finished and isinstance(eos, int) else [])
        row = prompt_ids + reply[: config.seq_len - len(prompt_ids)]
        part: Part = "heldout" if record.split == "test" else "train"
        rows.append(row)
        infos.append(SequenceInfo(record.id, "chat", part, record.label, len(prompt_ids), len(row)))
    if skipped:
        log.warning("%d prompts of %d+ tokens were left out of the corpus", skipped, config.seq_len)
    return rows, infos


# --- assembly and storage -----------------------------------------------------------------------


def count_mask(input_ids: torch.Tensor, lengths: torch.Tensor, special: set[int]) -> torch.Tensor:
    """[n_seq, seq_len] True at real tokens that are not position 0 and not special tokens.

    The first position's residual norm is ~100x the rest (an attention sink), and special tokens are
    chat markup, so neither is a meaningful example of any latent.
    """
    positions = torch.arange(input_ids.shape[1])
    mask = (positions[None, :] < lengths[:, None]) & (positions[None, :] > 0)
    if special:
        mask &= ~torch.isin(input_ids, torch.tensor(sorted(special), dtype=input_ids.dtype))
    return mask


def assemble(
    rows: list[list[int]], infos: list[SequenceInfo], seq_len: int, pad_id: int, special: set[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows into an [n_seq, seq_len] int32 tensor and compute its count mask."""
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    lengths = torch.tensor([s.length for s in infos])
    return input_ids, count_mask(input_ids, lengths, special)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary, so a corpus is never read with another tokenizer."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def _spread(records: list[PromptRecord], n: int | None) -> list[PromptRecord]:
    """`n` records taken at an even stride (so every category and split is represented), or all."""
    if n is None or n >= len(records):
        return records
    return [records[i * len(records) // n] for i in range(n)]


def build_corpus(
    loaded: LoadedModel,
    config: CorpusConfig | None = None,
    prompts: Sequence[PromptRecord] | None = None,
    directory: Path | None = None,
) -> Corpus:
    """Generate transcripts, gather general text, tokenize, and write the corpus atomically.

    Args:
        loaded: the model whose replies fill the transcripts (and whose tokenizer is used).
        config: corpus settings.
        prompts: chat prompts; the built-in harmful and harmless sets by default.
        directory: where to write; `corpus_dir(loaded.name)` by default.
    """
    config = config or CorpusConfig()
    if prompts is None:
        prompts = [
            p
            for label in ("harmful", "harmless")
            for p in _spread(builtin_prompts(label), config.prompts_per_label)
        ]
    tokenizer = loaded.tokenizer
    rows, infos = chat_rows(loaded, prompts, config) if prompts else ([], [])
    text, text_infos, text_meta = text_rows(tokenizer, config)
    rows += text
    infos += text_infos
    if not rows:
        raise CorpusError("the corpus would be empty: no prompts and text_tokens=0")
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    input_ids, mask = assemble(rows, infos, config.seq_len, pad, special_token_ids(tokenizer))
    counts = {
        f"{kind}_{part}_tokens": int(
            mask[[i for i, s in enumerate(infos) if s.kind == kind and s.part == part]].sum()
        )
        for kind in ("chat", "text")
        for part in ("train", "heldout")
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "config": config.to_dict(),
        "prompts": {"n": len(prompts), "sha256": records_hash(prompts)},
        "text": text_meta,
        "rows": len(rows),
        "counted_tokens": int(mask.sum()),
        **counts,
    }
    target = directory or corpus_dir(loaded.name)
    with atomic_directory(target) as tmp:
        save_file({"input_ids": input_ids, "mask": mask}, str(tmp / TOKENS_FILE))
        write_json_atomic(tmp / INDEX_FILE, [asdict(s) for s in infos])
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    log.info("corpus: %d rows, %d counted tokens -> %s", len(rows), manifest["counted_tokens"], target)
    return Corpus(input_ids, mask, infos, manifest)


def load_corpus(directory: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Corpus:
    """Read a stored corpus, checking its files agree with each other (and with `tokenizer` if given).

    Raises:
        CorpusError: a missing, corrupt or mismatched file, named in the message.
    """
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CorpusError(f"no corpus at {directory} (missing {MANIFEST_FILE}); run `explorer sae train`")
    try:
        manifest = json.loads(manifest_path.read_text())
        sequences = [SequenceInfo(**row) for row in json.loads((directory / INDEX_FILE).read_text())]
        tensors = load_file(str(directory / TOKENS_FILE))
    except (OSError, json.JSONDecodeError, TypeError, SafetensorError) as e:
        raise CorpusError(f"corpus at {directory} is unreadable ({e}); delete it and rebuild") from e
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise CorpusError(
            f"{manifest_path} has schema {manifest['schema_version']}, newer than this explorer's "
            f"{SCHEMA_VERSION}; upgrade refusal-explorer"
        )
    input_ids, mask = tensors.get("input_ids"), tensors.get("mask")
    if (
        input_ids is None
        or mask is None
        or input_ids.shape != mask.shape
        or len(sequences) != input_ids.shape[0]
    ):
        raise CorpusError(
            f"{directory / TOKENS_FILE} does not match {INDEX_FILE}; delete the corpus and rebuild"
        )
    if tokenizer is not None and manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise CorpusError(
            f"corpus at {directory} was tokenized with another tokenizer; rebuild it for this model"
        )
    return Corpus(input_ids, mask, sequences, manifest)
