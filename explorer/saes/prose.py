"""General text for the corpus's text rows: English that ships with every Python install (the `pydoc`
topic pages and the standard library's docstrings and comment blocks) or, with the hub, a named dataset;
and packing documents into windows."""

from __future__ import annotations

import ast
import io
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path


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


def python_documents(min_chars: int = 160) -> list[tuple[str, str]]:
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


def dataset_documents(spec: str, max_chars: int, min_chars: int = 160) -> list[tuple[str, str]]:
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
        docs: list[tuple[str, str]] = []
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
