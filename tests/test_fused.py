"""The fused neuron kernels equal the reference neurons: identical spikes, gradients within rounding.

Triton decides at import time whether kernels are compiled or interpreted, so the kernels run in a
child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter); this process only checks the
numbers the child reports. Sizes are tiny: the interpreter runs a kernel block by block in NumPy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsnn_zoo.layers import fused, neurons

ROOT = Path(__file__).resolve().parents[1]
GRAD_RTOL = 1e-5


def _cases():
    """name -> (reference fn, inputs builder). Shapes leave a partial last block (N % 1024 != 0)."""
    def current(shape=(4, 3, 5, 7, 11), scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape) * scale).to(dtype)

    def channels_last():
        x = torch.randn(4 * 3, 5, 7, 11).to(memory_format=torch.channels_last)
        return x.unflatten(0, (4, 3))

    def expanded():
        return torch.randn(3, 5, 7, 11).unsqueeze(0).expand(4, 3, 5, 7, 11)

    th = torch.tensor(0.8)
    init = torch.randn(5, 7, 11, generator=torch.Generator().manual_seed(1)) * 0.3
    return {
        "if": (lambda c: neurons.if_soft_reset(c, th, 0.5 / 4, None, 2.0),
               lambda c: fused.if_soft_reset(c, th, 0.5 / 4, None, 2.0), current),
        "if_initial_potential": (lambda c: neurons.if_soft_reset(c, th, 0.5 / 4, init, 2.0),
                                 lambda c: fused.if_soft_reset(c, th, 0.5 / 4, init, 2.0), current),
        "if_channels_last": (lambda c: neurons.if_soft_reset(c, th, 0.5 / 4, None, 2.0),
                             lambda c: fused.if_soft_reset(c, th, 0.5 / 4, None, 2.0), channels_last),
        "if_constant_input": (lambda c: neurons.if_soft_reset(c, th, 0.5 / 4, None, 2.0),
                              lambda c: fused.if_soft_reset(c, th, 0.5 / 4, None, 2.0), expanded),
        "if_bf16": (lambda c: neurons.if_soft_reset(c.float(), th, 0.5 / 4, None, 2.0).to(c.dtype),
                    lambda c: fused.if_soft_reset(c, th, 0.5 / 4, None, 2.0),
                    lambda: current(dtype=torch.bfloat16)),
        "lif_decay_0.25": (lambda c: neurons.lif_hard_reset(c, 0.5, 0.25, 0.5),
                           lambda c: fused.lif_hard_reset(c, 0.5, 0.25, 0.5), current),
        "lif_decay_0.8": (lambda c: neurons.lif_hard_reset(c, 0.5, 0.8, 0.5),
                          lambda c: fused.lif_hard_reset(c, 0.5, 0.8, 0.5), current),
        "lif_constant_input": (lambda c: neurons.lif_hard_reset(c, 0.5, 0.25, 0.5),
                               lambda c: fused.lif_hard_reset(c, 0.5, 0.25, 0.5), expanded),
        "tssl": (lambda c: neurons.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2),
                 lambda c: fused.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2), lambda: current(scale=2.0)),
        "tssl_t5": (lambda c: neurons.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2),
                    lambda c: fused.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2), lambda: current((5, 2, 9, 13), 2.0)),
    }


def _compare(reference, fast, make_current) -> dict:
    """Forward outputs and input gradients of both, on one fresh random input."""
    base = make_current()
    c_ref = base.detach().clone().requires_grad_()
    c_fast = base.detach().clone().requires_grad_()  # clone keeps channels_last; expanded turns dense
    if base.stride(0) == 0:
        c_fast = base.detach()[0].clone().requires_grad_()
        c_ref = base.detach()[0].clone().requires_grad_()
        out_ref = reference(c_ref.unsqueeze(0).expand(base.shape))
        out_fast = fast(c_fast.unsqueeze(0).expand(base.shape))
    else:
        out_ref, out_fast = reference(c_ref), fast(c_fast)
    if isinstance(out_ref, tuple):  # TSSL: (psp, spikes)
        spikes_equal = torch.equal(out_ref[1], out_fast[1])
        out_ref, out_fast = out_ref[0], out_fast[0]
    else:
        spikes_equal = True
    weights = torch.randn(out_ref.shape)
    (out_ref.float() * weights).sum().backward()
    (out_fast.float() * weights).sum().backward()
    g_ref, g_fast = c_ref.grad.double(), c_fast.grad.double()
    return {
        "outputs_equal": torch.equal(out_ref, out_fast) and spikes_equal,
        "output_dtype_equal": out_ref.dtype == out_fast.dtype,
        "active_fraction": float((out_ref != 0).float().mean()),
        "grad_rel_error": float((g_ref - g_fast).norm() / g_ref.norm().clamp_min(1e-30)),
        "grad_finite": bool(torch.isfinite(g_fast).all()),
        "used_kernel": fused.triton_enabled(c_fast),
    }


def _run_cases() -> dict:
    torch.manual_seed(0)
    return {name: _compare(*case) for name, case in _cases().items()}


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(_cases()))
def test_kernel_matches_reference(interpreted, case):
    result = interpreted[case]
    assert result["used_kernel"], "the child process did not run the Triton kernel"
    assert 0.05 < result["active_fraction"] < 0.95, "inputs too weak or too strong to test spiking"
    assert result["outputs_equal"], "spikes differ from the reference"
    assert result["output_dtype_equal"]
    assert result["grad_finite"]
    tolerance = 1e-2 if case.endswith("bf16") else GRAD_RTOL
    assert result["grad_rel_error"] < tolerance


def test_cpu_without_interpreter_falls_back_to_reference():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets kernels")
    x = torch.randn(3, 2, 5)
    assert not fused.triton_enabled(x)
    assert torch.equal(fused.lif_hard_reset(x, 0.5, 0.25, 0.5), neurons.lif_hard_reset(x, 0.5, 0.25, 0.5))


def test_trained_threshold_keeps_reference_autograd():
    threshold = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 2, 5)
    fused.if_soft_reset(x, threshold, 0.1, None, 2.0).sum().backward()
    assert threshold.grad is not None


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
