"""Reading a latent cache: one latent's record in milliseconds, the latent table for browsing.

Arrays are opened lazily with safetensors (memory-mapped); reading one latent slices one row of each
array. A cache whose schema is newer than this code, or whose fingerprints do not match the model or
SAE the caller has loaded, is refused with a message naming the file and the mismatch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from explorer.latents.context import duplicate_of, window_bounds
from explorer.latents.labels import N_PROMOTES, heuristic_label
from explorer.latents.schema import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    QUANTILES,
    SCHEMA_VERSION,
    TOKENS_FILE,
    VOCAB_FILE,
    CacheConfig,
)
from explorer.latents.stats import Grid

TABLE_COLUMNS = (
    "density",
    "max",
    "mean_active",
    "refusal_cos",
    "post_mean",
    "prompt_mean",
    "attribution",
)


class CacheError(ValueError):
    """A latent cache that is missing, corrupt, too new, or built for another model or SAE."""


@dataclass(frozen=True)
class Example:
    """One activating token with its context.

    Attributes:
        row: corpus row (sequence id); pos: position in it; value: the latent's activation there.
        context: rendered tokens of the window; focus: index of the activating token in `context`.
        values: the latent's activation at each token of `context`; None where the position is not
            counted (the first position, special tokens), whose activations the cache does not hold.
        count: how many identical or near-identical windows this one stands for (itself included).
        request: the text to try in the prompt inspector: a chat example's user request, else the
            window's text.
    """

    row: int
    pos: int
    value: float
    context: list[str]
    focus: int
    values: list[float | None] = field(default_factory=list)
    count: int = 1
    request: str = ""


@dataclass(frozen=True)
class ExampleGroup:
    """A quantile group of a latent's non-zero activations and a uniform sample of its examples.

    Attributes:
        low, high: the group's activation range (raw units).
        share: the fraction of the latent's non-zero activations that fall in the group.
    """

    low: float
    high: float
    share: float
    examples: list[Example]


@dataclass(frozen=True)
class LatentRecord:
    """Everything the app shows about one latent (plain lists and floats; rendering takes this).

    Values are raw latent activations; `max` converts them to fractions of the latent's corpus max.
    `quantiles` (p50, p90, p99 of non-zero activations) are read off the histogram, within half a bin.
    `attribution` is (harmful, harmless) mean activation x gradient on the refusal score. `groups` are
    the quantile groups from the top down (empty ones left out); examples in a list are distinct
    (near-duplicates are merged into one with a count).
    """

    latent: int
    density: float
    max: float
    mean_active: float
    std_active: float
    top_examples: list[Example]
    groups: list[ExampleGroup]
    histogram: tuple[list[float], list[int]]
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
    nearest: list[tuple[int, float]]
    refusal_cos: float | None
    refusal_cos_layers: list[float] | None
    harmful_vs_harmless: dict[str, tuple[float, float]]
    quantiles: dict[str, float]
    attribution: tuple[float, float] | None
    label: str


def merge_duplicates(examples: list[Example]) -> list[Example]:
    """The examples with identical or near-identical windows merged into the first (highest) of each
    kind, which counts them."""
    first = duplicate_of([(e.context, e.focus) for e in examples])
    counts = Counter(first)
    return [replace(e, count=counts[i]) for i, e in enumerate(examples) if first[i] == i]


def trimmed(example: Example, before: int, after: int) -> Example:
    """The example with at most `before` tokens before its activating token and `after` after it."""
    lo, hi = max(example.focus - before, 0), example.focus + after + 1
    return replace(
        example, context=example.context[lo:hi], values=example.values[lo:hi], focus=example.focus - lo
    )


class LatentCache:
    """A built latent cache for one SAE.

    Args:
        directory: the cache directory (`cache/latents/<model>/<hook>/`).
        sae_fingerprint: if given, the cache must have been built from an SAE with these weights.
        model_fingerprint: if given, from a model with these weights (`explorer.models.model_fingerprint`).
        corpus_fingerprint: if given, from this corpus.

    Attributes:
        input_ids, counted, lengths: the corpus rows the examples point into ([n_rows, seq_len] token ids
            and counted positions, [n_rows] real lengths), read once when the cache is opened.
        vocab: every token id rendered readably (newlines as ↵).
    """

    def __init__(
        self,
        directory: Path,
        *,
        sae_fingerprint: str | None = None,
        model_fingerprint: str | None = None,
        corpus_fingerprint: str | None = None,
    ):
        self.directory = directory
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise CacheError(
                f"no latent cache at {directory} ({MANIFEST_FILE} is missing); run `explorer build`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{manifest_path} is corrupt ({e}); rebuild the cache") from e
        schema = self.manifest.get("schema_version", 0)
        if schema > SCHEMA_VERSION:
            raise CacheError(
                f"{manifest_path} has schema {schema}, newer than this explorer reads "
                f"({SCHEMA_VERSION}); upgrade refusal-explorer"
            )
        if schema < SCHEMA_VERSION:
            raise CacheError(
                f"{manifest_path} has schema {schema}, older than this explorer's ({SCHEMA_VERSION}); "
                "rebuild it with `explorer build` or `explorer cache build`"
            )
        wanted = (
            ("sae_fingerprint", sae_fingerprint),
            ("model_fingerprint", model_fingerprint),
            ("corpus", corpus_fingerprint),
        )
        for name, want in wanted:
            have = self.manifest.get(name)
            if want is not None and have != want:
                raise CacheError(
                    f"{manifest_path} was built from {name} {have}, not the loaded {want}; rebuild it"
                )
        try:
            self._arrays = safe_open(str(directory / ARRAYS_FILE), framework="pt")
            tokens = safe_open(str(directory / TOKENS_FILE), framework="pt")
            self.input_ids = tokens.get_tensor("input_ids")
            self.counted = tokens.get_tensor("mask")
            self.lengths = tokens.get_tensor("lengths")
            self._request_start = tokens.get_tensor("request_start")
            self.vocab: list[str] = json.loads((directory / VOCAB_FILE).read_text())
            self.config = CacheConfig.from_dict(self.manifest["config"])
            self.d_sae = int(self.manifest["sae"]["d_sae"])
            self.seq_len = int(self.manifest["seq_len"])
            self.grid = Grid(**self.manifest["grid"])
        except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CacheError(f"latent cache at {directory} is corrupt or truncated ({e}); rebuild it") from e
        self._keys = set(self._arrays.keys())

    def _row(self, name: str, latent: int | slice) -> torch.Tensor:
        return self._arrays.get_slice(name)[latent]

    def _examples(self, latent: int, tokens: list[int], values: list[float]) -> list[Example | None]:
        """Every example slot of a latent (global token and value per slot) with its window's
        activations; None for an empty slot."""
        have = [slot for slot, t in enumerate(tokens) if t >= 0]
        out: list[Example | None] = [None] * len(tokens)
        if not have:
            return out
        lows, highs = self.windows(torch.tensor([tokens[slot] for slot in have]))
        start, end = (int(x) for x in self._row("context_offsets", slice(latent, latent + 2)))
        index = self._arrays.get_slice("context_index")[start:end].tolist()
        stored = dict(
            zip(index, self._arrays.get_slice("context_values")[start:end].float().tolist(), strict=True)
        )
        for slot, lo, hi in zip(have, lows.tolist(), highs.tolist(), strict=True):
            row, pos = divmod(tokens[slot], self.seq_len)
            ids = self.input_ids[row, lo:hi].tolist()
            counted = self.counted[row, lo:hi].tolist()
            base = slot * self.seq_len
            out[slot] = Example(
                row=row,
                pos=pos,
                value=values[slot],
                context=[self.vocab[i] for i in ids],
                focus=pos - lo,
                values=[
                    stored.get(base + p, 0.0) if c else None
                    for p, c in zip(range(lo, hi), counted, strict=True)
                ],
                request=self._request_text(row, lo, hi),
            )
        return out

    def windows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n] the stored window [lo, hi) in its row of each example, given its global token ids."""
        return window_bounds(
            tokens // self.seq_len, tokens % self.seq_len, self.lengths, self._request_start, self.config
        )

    def _request_text(self, row: int, lo: int, hi: int) -> str:
        """A chat row's user request (up to the next special token), else the window's text."""
        start = int(self._request_start[row])
        if start >= 0:
            counted = self.counted[row, start : int(self.lengths[row])].tolist()
            end = start + (counted.index(False) if False in counted else len(counted))
            lo, hi = start, end
        return (
            "".join(self.vocab[i] for i in self.input_ids[row, lo:hi].tolist())
            .replace("↵", "\n")
            .replace("⇥", "\t")
        )

    def latent(self, latent: int, window: int | None = None) -> LatentRecord:
        """The record of one latent; `window` trims every example to that many tokens either side of
        its activating token (None: the whole stored window).

        Raises:
            CacheError: `latent` is out of range (the message gives the range).
        """
        if not 0 <= latent < self.d_sae:
            raise CacheError(f"latent {latent} is out of range: this SAE has latents 0..{self.d_sae - 1}")
        k, n_groups, per = self.config.k, self.config.n_groups, self.config.examples_per_group
        slots = self._examples(
            latent,
            self._row("top_tokens", latent).tolist() + self._row("group_tokens", latent).flatten().tolist(),
            self._row("top_values", latent).tolist() + self._row("group_values", latent).flatten().tolist(),
        )

        def present(part: list[Example | None]) -> list[Example]:
            return merge_duplicates([e for e in part if e is not None])

        top = present(slots[:k])
        peak = float(self._row("max", latent))
        lows, highs = self._row("group_low", latent).tolist(), self._row("group_high", latent).tolist()
        shares = self._row("group_share", latent).tolist()
        groups = [
            ExampleGroup(lows[g], highs[g], shares[g], present(slots[k + g * per : k + (g + 1) * per]))
            for g in range(n_groups)
            if shares[g] > 0
        ]
        if window is not None:
            top = [trimmed(e, window, window) for e in top]
            groups = [replace(g, examples=[trimmed(e, window, window) for e in g.examples]) for g in groups]
        edges = self.grid.edges().tolist()
        counts = self._row("hist", latent).tolist()
        used = [i for i, c in enumerate(counts) if c]
        span = range(used[0], used[-1] + 1) if used else range(0)
        refusal = "refusal_cos" in self._keys
        post, prompt = self._row("post_mean", latent).tolist(), self._row("prompt_mean", latent).tolist()
        return LatentRecord(
            latent=latent,
            density=float(self._row("density", latent)),
            max=peak,
            mean_active=float(self._row("mean_active", latent)),
            std_active=float(self._row("std_active", latent)),
            top_examples=top,
            groups=groups,
            histogram=(
                [edges[i] for i in span] + ([edges[span[-1] + 1]] if used else []),
                [counts[i] for i in span],
            ),
            logits_top=self._logits("logit_top", latent),
            logits_bottom=self._logits("logit_bottom", latent),
            nearest=list(
                zip(
                    self._row("nearest_ids", latent).tolist(),
                    self._row("nearest_cos", latent).tolist(),
                    strict=True,
                )
            ),
            refusal_cos=float(self._row("refusal_cos", latent)) if refusal else None,
            refusal_cos_layers=self._row("refusal_cos_layers", latent).tolist() if refusal else None,
            harmful_vs_harmless={"post_instruction": (post[0], post[1]), "prompt": (prompt[0], prompt[1])},
            quantiles={
                f"p{q * 100:g}": v
                for q, v in zip(QUANTILES, self._row("quantiles", latent).tolist(), strict=True)
            },
            attribution=self._pair("attribution", latent) if "attribution" in self._keys else None,
            label=self.labels(slice(latent, latent + 1))[0],
        )

    def labels(self, latents: slice | None = None) -> list[str]:
        """The build's heuristic label of each latent (all of them by default), e.g.
        `fires on: make, build, bomb · promotes: I, Sorry`."""
        part = latents or slice(0, self.d_sae)
        fires = self._arrays.get_slice("label_fires_ids")[part].tolist()
        promotes = self._arrays.get_slice("logit_top_ids")[part][:, :N_PROMOTES].tolist()
        active = (self._arrays.get_slice("max")[part] > 0).tolist()
        return [
            heuristic_label([self.vocab[i] for i in f if i >= 0], [self.vocab[i] for i in p], a)
            for f, p, a in zip(fires, promotes, active, strict=True)
        ]

    def _pair(self, name: str, latent: int) -> tuple[float, float]:
        harmful, harmless = self._row(name, latent).tolist()
        return harmful, harmless

    def _logits(self, name: str, latent: int) -> list[tuple[str, float]]:
        ids, values = self._row(f"{name}_ids", latent).tolist(), self._row(name, latent).tolist()
        return [(self.vocab[i], v) for i, v in zip(ids, values, strict=True)]

    def column_names(self) -> list[str]:
        """The per-latent arrays this cache holds (refusal and attribution arrays only when built)."""
        return sorted(self._keys)

    def column(self, name: str) -> torch.Tensor:
        """One per-latent array, whole (e.g. "max": [d_sae]).

        Raises:
            CacheError: the cache has no such array.
        """
        if name not in self._keys:
            raise CacheError(f"latent cache at {self.directory} has no {name!r}; it has {sorted(self._keys)}")
        return self._arrays.get_tensor(name)

    def top_latents(self, column: str = "refusal_cos", n: int = 10, *, active: bool = False) -> list[int]:
        """The `n` latents with the highest values of a per-latent column, highest first (by default the
        latents whose decoder rows are most aligned with the refusal direction); with `active`, only
        latents that fired on the cached corpus (a dead latent's max is 0, so "× max" steers nothing).

        Raises:
            CacheError: the cache has no such column (e.g. built without a refusal direction).
        """
        order = self.column(column).argsort(descending=True, stable=True)
        if active:
            order = order[self.column("count")[order] > 0]
        return [int(i) for i in order[:n]]

    def table(self) -> dict[str, list[float]]:
        """Per-latent columns for sorting and filtering the whole SAE (density, max, refusal cosine, ...).

        `post_diff` / `prompt_diff` are harmful minus harmless mean activation.
        """
        out: dict[str, list[float]] = {"latent": list(range(self.d_sae))}
        for name in TABLE_COLUMNS:
            if name not in self._keys:
                continue
            tensor = self._arrays.get_tensor(name)
            if tensor.dim() == 2:
                out[f"{name}_harmful"], out[f"{name}_harmless"] = tensor[:, 0].tolist(), tensor[:, 1].tolist()
                out[f"{name.removesuffix('_mean')}_diff"] = (tensor[:, 0] - tensor[:, 1]).tolist()
            else:
                out[name] = tensor.double().tolist()
        return out
