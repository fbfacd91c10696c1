"""Simulated FP8 (mutransfer.fp8): the cast quantizes as documented, the mode casts exactly the
matmul operands forward and the gradients backward, and switched off it changes nothing."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn import functional as F

from mutransfer.fp8 import E4M3, E5M2, SimulatedFP8Mode, cast, simulated_fp8
from mutransfer.models import GPT


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_cast_rounds_to_nearest_even_and_flushes_below_the_smallest_subnormal():
    # 3 mantissa bits: 1 + 2**-4 is the tie between 1 and 1.125 (goes to even, 1); 1.125 is exact
    assert cast(t(1 + 2**-4, 1.125, 1 + 3 * 2**-4), E4M3).tolist() == [1.0, 1.125, 1.25]
    assert cast(t(2**-9, 2**-10, -(2**-11)), E4M3).tolist() == [2**-9, 0.0, 0.0]
    assert cast(t(2**-16, 2**-17), E5M2).tolist() == [2**-16, 0.0]
    assert cast(t(1e4), E5M2).item() == pytest.approx(1e4, rel=1 / 8)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):  # the input's dtype comes back
        assert cast(t(1 + 2**-4).to(dtype), E4M3).dtype == dtype


@pytest.mark.parametrize("saturate", [False, True])
def test_out_of_range_values_as_documented(saturate: bool):
    big = t(449.0, 1e5, -1e6, float("inf"))
    # torch 2.13 itself saturates E4M3 (no NaN), with or without the clamp
    assert cast(big, E4M3, saturate=saturate).tolist() == [448.0, 448.0, -448.0, 448.0]
    top = 57344.0 if saturate else float("inf")  # E5M2 overflows to inf unless saturated
    assert cast(big, E5M2, saturate=saturate).tolist() == [448.0, top, -top, top]
    assert cast(t(60000.0), E5M2, saturate=saturate).item() == 57344.0
    assert cast(t(float("nan")), E4M3, saturate=saturate).isnan().all()
    assert cast(t(float("nan")), E5M2, saturate=saturate).isnan().all()
    assert cast(big, E5M2).tolist() == [448.0, 57344.0, -57344.0, 57344.0]  # the default saturates


def test_linear_casts_input_and_weight_not_bias_and_is_exact_when_off():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 4), torch.randn(3, 8)
    with torch.no_grad():
        layer.bias.fill_(1 + 2**-4)  # not an E4M3 value: a cast bias would show
    plain = layer(x)
    with simulated_fp8() as mode:
        fp8 = layer(x)
    manual = F.linear(cast(x, E4M3), cast(layer.weight, E4M3), layer.bias)
    assert torch.equal(fp8, manual) and not torch.equal(fp8, plain)
    assert mode.counts == {"linear": 1}
    off = simulated_fp8(False)
    assert isinstance(off, contextlib.nullcontext)
    with off:
        assert torch.equal(layer(x), plain)
    assert torch.equal(layer(x), plain)  # after the mode exits
    with torch.no_grad(), simulated_fp8():  # evaluation is cast too
        assert torch.equal(layer(x), manual)


def _cases() -> dict:
    r = torch.randn
    return {  # name: (call, operands, which operands get cast, counter name)
        "linear": (F.linear, (r(3, 4), r(5, 4), r(5)), (0, 1), "linear"),
        "matmul": (torch.matmul, (r(2, 3, 4), r(4, 5)), (0, 1), "matmul"),
        "@": (lambda a, b: a @ b, (r(3, 4), r(4, 5)), (0, 1), "matmul"),
        "rmatmul": (lambda a, b: b.__rmatmul__(a), (r(3, 4), r(4, 5)), (0, 1), "matmul"),
        "mm": (torch.mm, (r(3, 4), r(4, 5)), (0, 1), "mm"),
        "bmm": (torch.bmm, (r(2, 3, 4), r(2, 4, 5)), (0, 1), "bmm"),
        "addmm": (torch.addmm, (r(3, 5), r(3, 4), r(4, 5)), (1, 2), "addmm"),
        "baddbmm": (torch.baddbmm, (r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)), (1, 2), "baddbmm"),
        "conv1d": (F.conv1d, (r(2, 3, 8), r(4, 3, 3), r(4)), (0, 1), "conv1d"),
        "conv2d": (F.conv2d, (r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)), (0, 1), "conv2d"),
        "sdpa": (
            F.scaled_dot_product_attention,
            (r(1, 2, 4, 8), r(1, 2, 4, 8), r(1, 2, 4, 8)),
            (0, 1, 2),
            "sdpa",
        ),
        "einsum": (lambda a, b: torch.einsum("ij,jk->ik", [a, b]), (r(3, 4), r(4, 5)), (0, 1), "einsum"),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_each_op_computes_on_cast_operands_only(name: str):
    torch.manual_seed(0)
    call, operands, cast_at, counter = _cases()[name]
    expected = call(*(cast(a, E4M3) if i in cast_at else a for i, a in enumerate(operands)))
    with simulated_fp8() as mode:
        out = call(*operands)
    assert torch.equal(out, expected) and not torch.equal(out, call(*operands))
    assert mode.counts == {counter: 1}  # once: the calls inside (einsum's bmm...) are not seen


def test_gradient_at_a_matmul_output_is_cast_to_e5m2():
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, requires_grad=True), torch.eye(4, requires_grad=True)
    g = torch.randn(2, 4)
    with simulated_fp8():
        (x @ w).mul_(1).backward(g)  # in-place ops on the output stay legal
    assert torch.equal(x.grad, cast(g, E5M2)) and not torch.equal(x.grad, g)
    assert ((x.grad - g).abs() < g.abs() / 8).all()  # unit scale survives
    assert torch.equal(w.grad, cast(x.detach(), E4M3).T @ cast(g, E5M2))  # straight through
    x.grad = None
    with simulated_fp8():
        (x @ w).backward(torch.full((2, 4), 2.0**-18))  # below E5M2's smallest subnormal
    assert torch.equal(x.grad, torch.zeros(2, 4))
    grads = []  # an overflowing gradient: 57344 by default, else inf (NaN after inf * 0 in the GEMM)
    for mode in (simulated_fp8(), SimulatedFP8Mode(), simulated_fp8(saturate=False)):
        x.grad = None
        with mode:
            (x @ w).backward(torch.full((2, 4), 1e5))
        grads.append(x.grad)
    assert all(torch.equal(g, torch.full((2, 4), 57344.0)) for g in grads[:2])
    assert not grads[2].isfinite().any()


def test_gpt_trains_in_the_mode():
    torch.manual_seed(0)
    model = GPT(width=32, depth=1, n_head=2, vocab_size=16, block_size=8)
    idx = torch.randint(0, 16, (2, 8))
    ref = model(idx).logsumexp(-1).mean()
    with simulated_fp8() as mode:
        loss = model(idx).logsumexp(-1).mean()
        loss.backward()
    assert torch.isfinite(loss) and loss.item() != ref.item()
    assert mode.counts["linear"] == 5 and mode.counts["sdpa"] == 1
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_nested_modes_neither_recurse_nor_change_the_result():
    torch.manual_seed(0)
    a, b, n = torch.randn(3, 4), torch.randn(4, 5), torch.ones(2, 2, dtype=torch.long)
    with simulated_fp8() as outer:
        once = a @ b
        with simulated_fp8() as inner:
            twice = torch.einsum("ij,jk->ik", a, b)
            assert torch.equal(n @ n, 2 * n)  # integers pass through, uncounted
    assert isinstance(inner, SimulatedFP8Mode) and torch.equal(once, twice)
    assert outer.counts == {"matmul": 1, "einsum": 1} and inner.counts == {"einsum": 1}
