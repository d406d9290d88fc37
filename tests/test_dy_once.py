"""The dy_once kernel (dy·B and dyᵀ·h in one pass over dy) under Triton's interpreter on the CPU: against float64
matmuls, and inside the fused and grouped frozen-A paths against PEFT's own LoRA."""

import copy
import importlib
from unittest import mock

import pytest
import torch
from test_fused import b_only_model, batch, forward_backward, relative_error

from asymtune.adapters import dy_once, fused, shared_input

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """dy_once with its kernel compiled for Triton's interpreter (which runs on CPU tensors)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    importlib.reload(dy_once)
    yield dy_once
    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(dy_once)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "d_out", "r", "splits"), [(100, 130, 4, None), (64, 64, 16, 1), (70, 200, 6, 3),
                                                         (5, 40, 32, 2), (300, 70, 16, None)])
def test_products_equal_the_two_matmuls(interpreted, dtype, n, d_out, r, splits):
    generator = torch.Generator().manual_seed(n + d_out + r)
    dy, b, h = (torch.randn(*shape, generator=generator).to(dtype) for shape in ((n, d_out), (d_out, r), (n, r)))
    assert interpreted.available(dy)
    g, db = interpreted.products(dy, b, h, splits)
    expected_g, expected_db = dy.double() @ b.double(), dy.double().T @ h.double()
    assert g.dtype == dtype and db.dtype == torch.float32 and g.shape == (n, r) and db.shape == (d_out, r)
    assert relative_error(g, expected_g) < (1e-6 if dtype == torch.float32 else 2**-8)  # g is rounded to dtype
    assert relative_error(db, expected_db) < 1e-6  # db accumulates and stays in float32


@pytest.mark.parametrize("grouped", [False, True])
def test_fused_paths_with_the_kernel_match_peft(interpreted, tiny_llama, grouped):
    reference = b_only_model(tiny_llama)
    candidate = copy.deepcopy(reference)
    fused.enable(candidate)
    if grouped:
        shared_input.enable(candidate)
    embeds, labels = batch()
    logits, dx, grads = forward_backward(reference, embeds, labels)
    original, calls = interpreted.products, []
    with mock.patch.object(fused, "DY_ONCE", True), mock.patch.object(
        interpreted, "products", side_effect=lambda *a: calls.append(1) or original(*a)
    ):
        fused_logits, fused_dx, fused_grads = forward_backward(candidate, embeds, labels)
    assert len(calls) == 14  # every adapted layer's backward, grouped or alone
    assert relative_error(fused_logits, logits) < 1e-5 and relative_error(fused_dx, dx) < 1e-5
    for name, grad in grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-5, name


def test_without_the_interpreter_or_cuda_the_matmuls_run():
    assert not dy_once.available(torch.zeros(2, 2))  # a CPU tensor, no interpreter: fused keeps its matmuls
    g, db = fused.dy_products(torch.ones(3, 4), torch.ones(4, 2), torch.ones(3, 2), True, False)
    assert torch.equal(g, torch.full((3, 2), 4.0)) and db is None
