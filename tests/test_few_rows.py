"""The few-row linear mode: same results as `linear`, the weight-on-the-left product only for a few rows,
and nothing outside the block or in other threads is affected."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn.functional import linear
from torch.utils.flop_counter import FlopCounterMode

from explorer.core.few_rows import MAX_ROWS, few_row_linear


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (2, 1, 48), (1, 1, 48), (3, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_few_rows_match_linear(shape: tuple[int, ...], with_bias: bool) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(*shape), torch.randn(96, 48)
    bias = torch.randn(96) if with_bias else None
    with few_row_linear("cpu"):
        got = linear(x, weight, bias)
    expected = linear(x, weight, bias)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_row_is_padded_and_many_rows_take_the_usual_kernel() -> None:
    weight = torch.randn(96, 48)
    one, many = torch.randn(1, 48), torch.randn(MAX_ROWS + 1, 48)
    plain_one = _flops(lambda: linear(one, weight))
    with few_row_linear("cpu"):
        assert _flops(lambda: linear(one, weight)) == 2 * plain_one  # computed on two columns
        got = linear(many, weight)
    assert torch.equal(got, linear(many, weight))  # untouched: the same kernel, bit for bit


def test_other_threads_and_later_calls_are_untouched() -> None:
    weight, one = torch.randn(96, 48), torch.randn(1, 48)
    plain = _flops(lambda: linear(one, weight))
    inside, seen = threading.Event(), []

    def other() -> None:
        inside.wait(5)
        seen.append(_flops(lambda: linear(one, weight)))

    thread = threading.Thread(target=other)
    thread.start()
    with few_row_linear("cpu"):
        inside.set()
        thread.join(5)
    assert seen == [plain]
    assert _flops(lambda: linear(one, weight)) == plain


@pytest.mark.parametrize("trained", ["input", "weight"])
def test_gradients_take_the_usual_path(trained: str) -> None:
    weight = torch.randn(96, 48, requires_grad=trained == "weight")
    x = torch.randn(1, 48, requires_grad=trained == "input")
    plain = _flops(lambda: linear(x, weight))
    with few_row_linear("cpu"):
        assert _flops(lambda: linear(x, weight)) == plain


def test_model_weights_under_no_grad_take_the_fast_path() -> None:
    weight = torch.nn.Parameter(torch.randn(96, 48))  # requires_grad, as every model weight
    one = torch.randn(1, 48)
    plain = _flops(lambda: linear(one, weight))
    with torch.no_grad(), few_row_linear("cpu"):
        assert _flops(lambda: linear(one, weight)) == 2 * plain
