"""Prompt sets (built-in, user files, hub datasets) as one record type, and chat templating."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

Label = Literal["harmful", "harmless"]
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)


class DataError(ValueError):
    """A prompt file or dataset that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class PromptRecord:
    """One instruction.

    Attributes:
        id: unique within its source.
        text: the user's request.
        category: harm category (harmful) or task type (harmless); "" when unknown.
        split: fixed train/val/test assignment.
        label: "harmful", "harmless", or None when the source does not say.
        source: "builtin", a file path, or "hf:<dataset>".
    """

    id: str
    text: str
    category: str
    split: Split
    label: Label | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stable_fraction(key: str) -> float:
    """A fixed number in [0, 1) from a hash of `key`: the same key always gets the same number."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def stable_split(key: str, fractions: tuple[float, float] = (0.6, 0.2)) -> Split:
    """A fixed split from a hash of `key`: the same key always lands in the same split."""
    u = stable_fraction(key)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def records_hash(records: Iterable[PromptRecord]) -> str:
    """A short fingerprint of a prompt set (ids, texts and splits), recorded in provenance."""
    lines = "\n".join(f"{r.id}\t{r.split}\t{r.text}" for r in records)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def builtin_prompts(label: Label, split: Split | Sequence[Split] | None = None) -> list[PromptRecord]:
    """The project's own harmful or harmless instruction set, optionally restricted to split(s)."""
    if label not in get_args(Label):
        raise DataError(f"label {label!r} is not one of {get_args(Label)}")
    text = resources.files("explorer").joinpath("prompts", f"{label}.jsonl").read_text(encoding="utf-8")
    records = _parse_jsonl(text.splitlines(), f"builtin:{label}.jsonl", label, "builtin")
    return filter_split(records, split)


def elsewhere_prompts(label: Label) -> list[PromptRecord]:
    """The separately written prompt set (other styles and topics than the built-in sets, all "test"):
    for checking that settings chosen on the built-in prompts carry over. Never used for selection."""
    if label not in get_args(Label):
        raise DataError(f"label {label!r} is not one of {get_args(Label)}")
    name = f"elsewhere_{label}.jsonl"
    text = resources.files("explorer").joinpath("prompts", name).read_text(encoding="utf-8")
    return _parse_jsonl(text.splitlines(), f"builtin:{name}", label, "elsewhere")


def stratified_sample(records: Sequence[PromptRecord], n: int | None, seed: int = 0) -> list[PromptRecord]:
    """`n` records spread evenly over their categories, the same ones for the same seed.

    The prompt files list each split category by category, so the first `n` records would cover only the
    first few categories. Here the categories are visited in a seeded order, taking each one's records in
    a seeded order, one per category per round, until `n` are taken.

    Args:
        records: the pool (e.g. one label's test split).
        n: how many to take; None (or more than there are) takes every record, in file order.
        seed: fixes which records are taken.
    """
    if n is None or n >= len(records):
        return list(records)
    rng = random.Random(seed)
    groups: dict[str, list[PromptRecord]] = {}
    for record in records:
        groups.setdefault(record.category, []).append(record)
    queues = [rng.sample(group, len(group)) for _, group in sorted(groups.items())]
    rng.shuffle(queues)
    taken: list[PromptRecord] = []
    while len(taken) < n:
        for queue in queues:
            if queue and len(taken) < n:
                taken.append(queue.pop())
    return taken


def filter_split(
    records: Iterable[PromptRecord], split: Split | Sequence[Split] | None
) -> list[PromptRecord]:
    """Records whose split is `split` (or one of several); all of them for None."""
    if split is None:
        return list(records)
    wanted = {split} if isinstance(split, str) else set(split)
    unknown = wanted - set(SPLITS)
    if unknown:
        raise DataError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    return [r for r in records if r.split in wanted]


def _record(row: dict[str, Any], where: str, n: int, label: Label | None, source: str) -> PromptRecord:
    text = row.get("text", row.get("prompt", row.get("instruction")))
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}:{n}: no non-empty 'text' (or 'prompt'/'instruction') field")
    rid = str(row.get("id") or f"{Path(where).stem}-{n}")
    split = row.get("split") or stable_split(rid)
    if split not in SPLITS:
        raise DataError(f"{where}:{n}: split {split!r} is not one of {SPLITS}")
    row_label = row.get("label") or label
    if row_label not in (*get_args(Label), None):
        raise DataError(f"{where}:{n}: label {row_label!r} is not 'harmful' or 'harmless'")
    return PromptRecord(rid, text.strip(), str(row.get("category") or ""), split, row_label, source)


def _check(records: list[PromptRecord], where: str) -> list[PromptRecord]:
    if not records:
        raise DataError(f"{where}: no prompts in file")
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{where}: duplicate id {r.id!r}")
        seen.add(r.id)
    return records


def json_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file.

    Raises:
        DataError: a line that is not JSON, or not a JSON object (file and line named).
    """
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{n}: malformed JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def _parse_jsonl(lines: Iterable[str], where: str, label: Label | None, source: str) -> list[PromptRecord]:
    return _check([_record(row, where, n, label, source) for n, row in json_rows(lines, where)], where)


def load_prompt_file(path: str | Path, label: Label | None = None) -> list[PromptRecord]:
    """Read a user's prompts from JSONL (one object per line) or CSV (with a header row).

    Each row needs a `text` (or `prompt` / `instruction`) field; `id`, `category`, `split` and `label`
    are optional. Rows without a split get a fixed one from a hash of their id.

    Raises:
        DataError: missing or empty file, a malformed line (file and line number named), duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        # Line numbers count the header as line 1.
        records = [_record(dict(row), str(path), n, label, str(path)) for n, row in enumerate(rows, start=2)]
        return _check(records, str(path))
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise DataError(f"{path}: expected a .jsonl or .csv file")
    with path.open(encoding="utf-8") as f:
        return _parse_jsonl(f, str(path), label, str(path))


@dataclass(frozen=True)
class HubDataset:
    """Where a known prompt set lives on the Hugging Face hub and which columns to read."""

    repo: str
    text: str
    label: Label | None
    config: str | None = None
    split: str = "train"
    category: str | None = None
    label_column: str | None = None


HUB_DATASETS: dict[str, HubDataset] = {
    "advbench": HubDataset("walledai/AdvBench", "prompt", "harmful"),
    "harmbench": HubDataset(
        "walledai/HarmBench", "prompt", "harmful", config="standard", category="category"
    ),
    "jailbreakbench": HubDataset(
        "JailbreakBench/JBB-Behaviors",
        "Goal",
        "harmful",
        config="behaviors",
        split="harmful",
        category="Category",
    ),
    "alpaca": HubDataset("tatsu-lab/alpaca", "instruction", "harmless"),
    "xstest": HubDataset(
        "walledai/XSTest", "prompt", None, split="test", category="type", label_column="label"
    ),
}


def load_hub_dataset(name: str, limit: int | None = None) -> list[PromptRecord]:
    """Load a known prompt set from the Hugging Face hub (needs network access).

    Args:
        name: one of HUB_DATASETS (advbench, harmbench, jailbreakbench, alpaca, xstest).
        limit: keep at most this many rows.
    """
    spec = HUB_DATASETS.get(name.lower())
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(HUB_DATASETS)}")
    import datasets  # imported here: slow, and only needed online

    try:
        table = datasets.load_dataset(spec.repo, spec.config, split=spec.split)
    except OSError as e:  # hub and connection errors, a missing or gated dataset: all OSError subclasses
        raise DataError(f"could not load {spec.repo} from the hub ({e}); is this machine offline?") from e
    except ValueError as e:  # datasets: an unknown config or split of a dataset that exists
        raise DataError(f"{spec.repo}: {e}") from e
    records = []
    for i, row in enumerate(table):
        assert isinstance(row, dict)
        if spec.text == "instruction" and row.get("input"):
            continue  # Alpaca rows with a separate input are not standalone instructions
        label = spec.label
        if spec.label_column is not None:
            label = (
                "harmful" if str(row[spec.label_column]).lower() in ("unsafe", "harmful", "1") else "harmless"
            )
        rid = f"{name}-{i:05d}"
        category = str(row.get(spec.category, "")) if spec.category else ""
        records.append(
            PromptRecord(rid, str(row[spec.text]).strip(), category, stable_split(rid), label, f"hf:{name}")
        )
        if limit is not None and len(records) >= limit:
            break
    return _check(records, f"hf:{name}")


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-turn conversation, with an optional system message first."""
    if not prompt.strip():
        raise DataError("prompt is empty")
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def format_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render messages with the tokenizer's chat template; the text carries its own special tokens.

    Templates that reject a system role (Gemma) get the system text prepended to the first user turn.
    Tokenize the result with ``add_special_tokens=False`` so BOS is not doubled.
    """
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except ValueError as e:  # transformers: the tokenizer has no chat template at all
        raise DataError(f"chat template failed: {e}") from e
    except TemplateError as e:  # the template's raise_exception, e.g. "System role not supported"
        if not messages or messages[0]["role"] != "system" or len(messages) < 2:
            raise DataError(f"chat template failed: {e}") from e
        system, first, *rest = messages
        merged = {"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}
        try:
            text = tokenizer.apply_chat_template(
                [merged, *rest], tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as again:
            raise DataError(f"chat template failed, also with the system prompt merged: {again}") from again
    assert isinstance(text, str)
    return text
