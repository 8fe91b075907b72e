"""The Triton edge kernels (``e2former_calc.conv.triton_edge``) against the sparse-product
implementation, on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``, which Triton
reads when a kernel is defined: the checks run in a subprocess, ``triton_checks.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2former_calc.conv import triton_edge

needs_triton = pytest.mark.skipif(not triton_edge.available(), reason="Triton is not installed (pip install triton)")
HERE = Path(__file__).resolve().parent


def interpreted(which: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "E2FORMER_EDGE_KERNEL": "triton", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(HERE / "triton_checks.py"), which], capture_output=True, text=True,
                            env=env, cwd=HERE, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_triton
def test_kernels_match_the_sparse_products_in_float64_to_every_order():
    result = interpreted("faces64")
    assert result.pop("deterministic") is True  # fixed summation order: bit-identical calls
    for name, difference in result.items():
        assert difference < 1e-12, (name, difference)


@needs_triton
def test_kernels_in_float32():
    result = interpreted("faces32")
    assert result.pop("deterministic") is True
    for name, difference in result.items():  # float32 rounding over ~7 edges per target, 9 components
        assert difference < 1e-5, (name, difference)


@needs_triton
def test_an_empty_graph():
    assert interpreted("empty") == {"empty_is_zero": True}


@needs_triton
def test_the_model_on_the_kernels_gives_the_same_energy_forces_virial_and_training_gradient():
    for name, difference in interpreted("model").items():
        assert difference < 1e-12, (name, difference)


def test_kernel_choice(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("E2FORMER_EDGE_KERNEL", raising=False)
    assert not triton_edge.use_triton(cpu)  # CPU tensors: the sparse products by default
    monkeypatch.setenv("E2FORMER_EDGE_KERNEL", "torch")
    assert not triton_edge.use_triton(cpu)
    monkeypatch.setenv("E2FORMER_EDGE_KERNEL", "fast")
    with pytest.raises(ValueError, match="E2FORMER_EDGE_KERNEL must be auto, torch or triton, got 'fast'"):
        triton_edge.use_triton(cpu)
    monkeypatch.setenv("E2FORMER_EDGE_KERNEL", "triton")
    if triton_edge.available():
        assert triton_edge.use_triton(cpu)
    else:
        with pytest.raises(RuntimeError, match="pip install triton"):
            triton_edge.use_triton(cpu)


@pytest.mark.skipif(not (torch.cuda.is_available() and triton_edge.available()), reason="needs a CUDA GPU and Triton")
def test_kernels_on_a_gpu_match_the_cpu():
    from e2former_calc.conv.aggregation import EdgeAggregation

    torch.manual_seed(0)
    E, U, T, C, K = 5000, 900, 800, 32, 16
    sources, targets = torch.randint(0, U, (E,)), torch.randint(0, T, (E,))
    v, w = torch.randn(U, C, K, dtype=torch.float64), torch.randn(E, C, dtype=torch.float64)
    expected = EdgeAggregation(sources, targets, U, T, C)(v, w)
    got = EdgeAggregation(sources.cuda(), targets.cuda(), U, T, C)(v.cuda(), w.cuda()).cpu()
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-12
