"""General text for the corpus's text rows: English that ships with every Python install (the `pydoc`
topic pages and the standard library's docstrings and comment blocks) or, with the hub, a named dataset;
taking documents up to a token budget, and packing them into windows."""

from __future__ import annotations

import ast
import hashlib
import io
import random
import sysconfig
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.core.prompts import stable_fraction

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Document = tuple[str, str]  # (doc_id, text)
Taken = tuple[str, str, list[int]]  # (doc_id, text, token ids)


def _comment_blocks(source: str) -> Iterator[tuple[int, str]]:
    """Runs of consecutive full-line comments, joined into paragraphs, with their first line number."""
    block: list[str] = []
    start = last = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.start[0]
            text = tok.string.lstrip("#").strip()
            if block and line == last + 1 and text:
                block.append(text)
            else:
                if block:
                    yield start, " ".join(block)
                block, start = ([text], line) if text else ([], line)
            last = line
    except (tokenize.TokenError, SyntaxError):
        pass
    if block:
        yield start, " ".join(block)


def python_documents(min_chars: int = 160) -> list[Document]:
    """English prose that ships with Python: (id, text) pairs in a fixed order.

    Sources: the `pydoc_data` topic pages (the language reference as `help()` shows it), and the
    docstrings and comment blocks of the standard library's modules (tests and IDLE excluded).
    """
    from pydoc_data.topics import topics

    docs = [(f"pydoc:{name}", text.strip()) for name, text in sorted(topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip.intersection(rel.parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node)
                if text and len(text) >= min_chars:
                    docs.append((f"doc:{rel}:{getattr(node, 'lineno', 0)}", text))
        docs.extend(
            (f"comment:{rel}:{line}", text)
            for line, text in _comment_blocks(source)
            if len(text) >= min_chars
        )
    return docs


def dataset_documents(spec: str, max_chars: int, min_chars: int = 160) -> list[Document]:
    """Documents of a text dataset: a hub name (`name`, `name:config` or `name:config:split`, streamed, so
    only what is used is downloaded) or a local file or directory `datasets` can read (JSON, CSV, text,
    Parquet), up to `max_chars` characters; each row's `text` column, or its first string column.

    Raises:
        ValueError: the dataset cannot be read (offline, no such dataset, no text column).
    """
    import datasets

    local = Path(spec).expanduser()
    try:
        if local.exists():
            files = [str(f) for f in sorted(local.rglob("*") if local.is_dir() else [local]) if f.is_file()]
            kind = {".jsonl": "json", ".txt": "text"}.get(Path(files[0]).suffix, Path(files[0]).suffix[1:])
            rows = datasets.load_dataset(kind, data_files=files, split="train", streaming=True)
        else:
            name, config, split = [*spec.split(":"), None, None][:3]
            rows = datasets.load_dataset(name, config, split=split or "train", streaming=True)
        docs: list[Document] = []
        total = 0
        for n, row in enumerate(rows):
            text = row.get("text") or next((v for v in row.values() if isinstance(v, str)), None)
            if text is None:
                raise ValueError(f"row {n} has no string column")
            if len(text) >= min_chars:
                docs.append((f"dataset:{n}", text))
                total += len(text)
            if total >= max_chars:
                break
    except (OSError, ValueError, IndexError, ConnectionError) as e:
        raise ValueError(f"could not read the text dataset {spec!r}: {e} (offline? use a local file)") from e
    if not docs:
        raise ValueError(f"the text dataset {spec!r} has no document of at least {min_chars} characters")
    return docs


def pack_documents(docs: list[list[int]], seq_len: int, separator: list[int]) -> list[list[int]]:
    """Concatenate tokenized documents with a separator and cut the stream into seq_len windows."""
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        stream.extend(separator)
    return [
        stream[i : i + seq_len] for i in range(0, len(stream), seq_len) if len(stream[i : i + seq_len]) > 1
    ]


def heldout_key(seed: int, doc_id: str) -> float:
    """A fixed number in [0, 1) per document and seed; documents below the held-out fraction are held out."""
    return stable_fraction(f"{seed}:{doc_id}")


def take_documents(
    tokenizer: PreTrainedTokenizerBase, docs: list[Document], budget: int, batch: int = 64
) -> list[Taken]:
    """Documents in order, tokenized, until `budget` tokens are reached (the last may overshoot).

    Tokenizes a batch at a time, so a large source costs only what is taken from it."""
    taken: list[Taken] = []
    total = 0
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        encoded = tokenizer([t for _, t in chunk], add_special_tokens=False)["input_ids"]
        for (doc_id, text), ids in zip(chunk, encoded, strict=True):
            if total >= budget:
                return taken
            taken.append((doc_id, text, list(ids)))  # pyright: ignore[reportArgumentType]
            total += len(ids)
    return taken


def share_tokens(
    tokenizer: PreTrainedTokenizerBase, docs: dict[str, list[Document]], budget: int
) -> dict[str, list[Taken]]:
    """Each source's documents, in order, up to an equal share of `budget` tokens. The smallest source
    goes first, so what a source cannot fill passes to the larger ones."""
    taken: dict[str, list[Taken]] = {}
    by_size = sorted(docs, key=lambda name: sum(len(t) for _, t in docs[name]))
    for i, name in enumerate(by_size):
        taken[name] = take_documents(tokenizer, docs[name], budget // (len(by_size) - i))
        budget = max(0, budget - sum(len(ids) for _, _, ids in taken[name]))
    return {name: taken[name] for name in docs}


def text_windows(
    tokenizer: PreTrainedTokenizerBase,
    docs: dict[str, list[Document]],
    heldout_sources: Sequence[str],
    *,
    budget: int,
    heldout_cap: int,
    heldout_fraction: float,
    seed: int,
    seq_len: int,
) -> tuple[list[tuple[str, str, int, list[int]]], dict[str, Any]]:
    """Windows of general text, each (source, part, number within both, token ids), and what was taken
    from each source.

    Each source's documents are taken in an order fixed by `seed` and its name. The sources not in
    `heldout_sources` share `budget` tokens (`share_tokens`) and hold out
    `heldout_fraction` of their documents (`heldout_key`); each held-out source gives documents up to
    `heldout_cap` tokens, all held out. A source's documents of one part are packed together, so no
    window mixes two sources, or a held-out document with a training one.
    """
    docs = {name: random.Random(f"{seed}:{name}").sample(d, len(d)) for name, d in docs.items()}
    taken = share_tokens(tokenizer, {n: d for n, d in docs.items() if n not in heldout_sources}, budget)
    taken |= {name: take_documents(tokenizer, docs[name], heldout_cap) for name in heldout_sources}

    def held(name: str, doc_id: str) -> bool:
        return name in heldout_sources or heldout_key(seed, doc_id) < heldout_fraction

    separator = list(tokenizer("\n\n", add_special_tokens=False)["input_ids"])  # pyright: ignore[reportArgumentType]
    windows: list[tuple[str, str, int, list[int]]] = []
    digest = hashlib.sha256()
    sources: dict[str, dict[str, Any]] = {}
    for name, chosen in taken.items():
        for part in ("train", "heldout"):
            ids = [ids for doc_id, _, ids in chosen if held(name, doc_id) == (part == "heldout")]
            windows.extend(
                (name, part, n, row) for n, row in enumerate(pack_documents(ids, seq_len, separator))
            )
        for doc_id, text, _ in chosen:
            digest.update(f"{doc_id}\n{text}\n".encode())
        sources[name] = {
            "role": "heldout" if name in heldout_sources else "train",
            "documents": len(chosen),
            "heldout_documents": sum(held(name, doc_id) for doc_id, _, _ in chosen),
            "tokens": sum(len(ids) for _, _, ids in chosen),
        }
    meta = {
        "documents": sum(s["documents"] for s in sources.values()),
        "heldout_documents": sum(s["heldout_documents"] for s in sources.values()),
        "tokens": sum(s["tokens"] for s in sources.values()),
        "sha256": digest.hexdigest()[:16],
        "sources": sources,
    }
    return windows, meta
