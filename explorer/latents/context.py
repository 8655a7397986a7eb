"""Activations across each example's context: which window an example shows, and the pass that fills it.

The statistics pass writes the SAE's non-zero activations to disk as it goes (`CodeSpill`); once the
top-k and the quantile groups are known, every example's window is looked up in them, so neither the
model nor the SAE runs again. (A merge of shards, which kept none, re-encodes its stored or recomputed
activations: `encode_codes`.) Only a latent's own activation at each window token is kept, and only
where it is non-zero: per latent, `(slot * seq_len + position, value)` pairs in CSR form
(`context_offsets` [d_sae + 1], `context_index` int32, `context_values` float16), read one latent at a
time.

Windows never hold padding: they end with the row, and a window cut short by the row's end reaches
further back instead. A chat example's window starts at the user's request when that fits within
`request_reach` tokens: the whole request, without the system prompt before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from explorer.latents.schema import CacheConfig
from explorer.saes.loading import LoadedSAE

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(acts [n, d_model], row [n], pos [n]) at counted positions of the corpus."""
Codes = tuple[torch.Tensor, torch.Tensor]
"""Non-zero SAE activations of some tokens: keys (global token id * d_sae + latent, ascending) and
values. Every non-zero activation of the corpus is in exactly one batch."""

FLOAT16_MAX = 65504.0


def request_starts(input_ids: torch.Tensor, is_chat: torch.Tensor) -> torch.Tensor:
    """[n_rows] where each chat row's user request starts (-1 for other rows).

    The chat rows share the template's opening (system turn, user header) and nothing after it, so the
    request starts where their common prefix ends. Fewer than two chat rows give -1 everywhere.
    """
    out = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
    chat = input_ids[is_chat]
    if len(chat) < 2:
        return out
    same = (chat == chat[:1]).all(0)
    prefix = int(same.long().cumprod(0).sum())
    out[is_chat] = prefix
    return out


def window_bounds(
    rows: torch.Tensor,
    pos: torch.Tensor,
    lengths: torch.Tensor,
    request_start: torch.Tensor,
    config: CacheConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n] each example's window [lo, hi) in its row, given the activating token `pos`.

    `context_before` tokens before and `context_after` after the token, never past the row's real
    length (a window the row's end cuts short starts earlier to keep its width). A chat example whose
    request starts at most `request_reach` tokens before the token starts exactly at the request: the
    whole request, none of the system prompt.
    """
    hi = torch.minimum(pos + config.context_after + 1, lengths[rows])
    lo = torch.minimum(pos - config.context_before, hi - (config.context_before + config.context_after + 1))
    start = request_start[rows]
    whole = (start >= 0) & (start <= pos) & (pos - start <= config.request_reach)
    return torch.where(whole, start, lo).clamp_min(0), hi


def _expand(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For windows [lo, hi): (window index, position) of every token in them, window by window."""
    sizes = (hi - lo).clamp_min(0)
    which = torch.repeat_interleave(torch.arange(len(lo)), sizes)
    first = torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
    return which, lo[which] + torch.arange(len(which)) - first


def gather_context(
    codes: Iterable[Codes],
    example_tokens: torch.Tensor,
    lengths: torch.Tensor,
    request_start: torch.Tensor,
    seq_len: int,
    config: CacheConfig,
) -> dict[str, torch.Tensor]:
    """Each example's latent activation at every token of its window, non-zero entries only.

    Args:
        codes: the SAE's non-zero activations over the corpus, in batches (see `Codes`).
        example_tokens: [d_sae, n_slots] global token ids (row * seq_len + pos) of each latent's examples,
            -1 for an empty slot.
        lengths: [n_rows] real tokens per row; request_start: [n_rows] (see `request_starts`).

    Returns:
        context_offsets [d_sae + 1] (int64), context_index (int32, slot * seq_len + position) and
        context_values (float16), sorted by latent, slot and position.
    """
    d_sae, n_slots = example_tokens.shape
    latent, slot = (example_tokens >= 0).nonzero(as_tuple=True)
    token = example_tokens[latent, slot]
    row = token // seq_len
    lo, hi = window_bounds(row, token % seq_len, lengths, request_start, config)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for keys, values in codes:
        if not len(keys):
            continue
        here = torch.isin(row, torch.unique(keys // d_sae // seq_len))
        which, wpos = _expand(lo[here], hi[here])
        lat = latent[here][which]
        want = (row[here][which] * seq_len + wpos) * d_sae + lat
        at = torch.searchsorted(keys, want).clamp(max=len(keys) - 1)
        hit = keys[at] == want
        found.append((lat[hit], (slot[here][which] * seq_len + wpos)[hit], values[at[hit]]))
    if found:
        lat, index, value = (torch.cat(parts) for parts in zip(*found, strict=True))
    else:
        lat, index, value = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    order = torch.argsort(lat * (n_slots * seq_len) + index)
    counts = torch.bincount(lat, minlength=d_sae)
    return {
        "context_offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        "context_index": index[order].int(),
        "context_values": value[order].clamp(max=FLOAT16_MAX).half(),
    }


class CodeSpill:
    """The statistics pass's non-zero activations, written batch by batch to a directory (12 bytes per
    non-zero entry, a few percent of the residual activations they came from), so the context pass
    reads them back instead of running the model or the SAE again."""

    def __init__(self, directory: Path, d_sae: int):
        self.directory, self.d_sae, self._n = directory, d_sae, 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, tokens: torch.Tensor, latents: torch.Tensor, values: torch.Tensor) -> None:
        """Add one batch: parallel lists of global token ids, latents and (non-zero) values."""
        keys = tokens.long() * self.d_sae + latents.long()
        order = torch.argsort(keys)
        save_file(
            {"keys": keys[order].contiguous(), "values": values[order].float().contiguous()},
            str(self.directory / f"{self._n:06d}.safetensors"),
        )
        self._n += 1

    def read(self) -> Iterator[Codes]:
        """The batches written, in order."""
        for path in sorted(self.directory.glob("*.safetensors")):
            data = load_file(str(path))
            yield data["keys"], data["values"]


@torch.no_grad()
def encode_codes(
    sae: LoadedSAE, batches: Iterable[Batch], seq_len: int, batch_tokens: int
) -> Iterator[Codes]:
    """Non-zero activations of the SAE on stored or recomputed activations, as `Codes` batches (for a
    merge of shards, whose statistics passes kept none)."""
    module = sae.sae
    for acts, rows, pos in batches:
        tokens = rows.long() * seq_len + pos.long()
        for i in range(0, len(acts), batch_tokens):
            f = module.encode(acts[i : i + batch_tokens].to(module.device, module.dtype)).float().cpu()
            where = (f > 0).nonzero()
            keys = tokens[i : i + batch_tokens][where[:, 0]] * sae.d_sae + where[:, 1]
            order = torch.argsort(keys)
            yield keys[order], f[where[:, 0], where[:, 1]][order]


NEAR_DUPLICATE = 0.9
"""Two windows are near-identical when, aligned at their activating tokens, this share of the longer
one's tokens are equal."""


def duplicate_of(
    windows: Sequence[tuple[Sequence[str], int]], threshold: float = NEAR_DUPLICATE
) -> list[int]:
    """For each window (tokens, focus), the index of the first earlier window it is identical or
    near-identical to, or its own index when it is the first of its kind."""
    out: list[int] = []
    for i, (tokens, focus) in enumerate(windows):
        out.append(i)
        for j in range(i):
            other, other_focus = windows[j]
            longest = max(len(tokens), len(other))
            if out[j] != j or min(len(tokens), len(other)) < threshold * longest:
                continue
            # Align at the activating tokens: tokens[n] faces other[n + shift].
            shift = other_focus - focus
            lo, hi = max(0, -shift), min(len(tokens), len(other) - shift)
            same = sum(a == b for a, b in zip(tokens[lo:hi], other[lo + shift : hi + shift], strict=True))
            if same >= threshold * longest:
                out[i] = j
                break
    return out
