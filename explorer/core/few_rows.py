"""Faster token-by-token decoding on CPU: linear layers applied to a few rows are computed as W @ Xᵀ.

A decoding step multiplies every weight by one row per sequence. For those shapes PyTorch's CPU
`linear` (x @ Wᵀ) takes matrix-vector kernels that stream the weight from memory at a fraction of the
bandwidth that a matrix product with the weight on the left gets, so a batch of two rows costs twice
one row instead of about the same (`bench/bench_steering.py` prints both). `few_row_linear` computes
such calls as (W @ Xᵀ)ᵀ, padding a single row to two, which keeps the fast kernel.

It is a thread-local torch function mode entered around one forward call: nothing is patched on the
(shared) model, and forward passes in other threads are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

MAX_ROWS = 4
"""Above this many rows the usual kernel is as fast (measured on 2 cores; see the module docstring)."""


class _FewRowLinear(TorchFunctionMode):
    def __init__(self, max_rows: int) -> None:
        super().__init__()
        self.max_rows = max_rows

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rows = x.numel() // max(x.shape[-1], 1)
            # Weights keep requires_grad under no_grad; only a pass that records gradients is left alone.
            tracked = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            if 0 < rows <= self.max_rows and weight.dim() == 2 and not tracked:
                flat = x.reshape(rows, x.shape[-1])  # [rows, d_in]
                if rows == 1:  # one column would fall back to the matrix-vector kernel
                    flat = torch.cat([flat, flat])
                out = (weight @ flat.T).T[:rows]  # [rows, d_out]
                if bias is not None:
                    out = out + bias
                return out.contiguous().reshape(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


@contextmanager
def few_row_linear(device: torch.device | str, max_rows: int = MAX_ROWS) -> Iterator[None]:
    """Inside the block, CPU linear layers on at most `max_rows` rows run as W @ Xᵀ (no-op elsewhere).

    Args:
        device: the model's device; only "cpu" changes anything.
        max_rows: largest number of rows (batch × positions) that takes the W @ Xᵀ path.
    """
    mode = _FewRowLinear(max_rows) if torch.device(device).type == "cpu" else nullcontext()
    with mode:
        yield
