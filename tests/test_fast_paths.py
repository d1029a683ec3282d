"""``set_backend("fast")`` computes the same function as ``set_backend("reference")``.

On the CPU the fast path is time folded into the batch plus the reference neurons (no Triton);
one test also runs the Triton kernels inside a whole model, through Triton's interpreter in a
child process. A freshly initialised deep SNN is silent after a few layers, so every test first
sets each neuron's threshold from its own input current, making every layer fire.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qsnn_zoo
from qsnn_zoo.layers import fused
from qsnn_zoo.layers.neurons import IFNeuron
from qsnn_zoo.models import SpikingModel
from qsnn_zoo.models.vgg import SpikingVGG

ROOT = Path(__file__).resolve().parents[1]
GRAD_RTOL = 1e-4


def wake_up(model: SpikingModel, x: torch.Tensor, quantile: float = 0.8) -> SpikingModel:
    """Thresholds at a quantile of each neuron's |input current|, set layer by layer in one pass."""

    def set_threshold(neuron, args):
        current = args[0].detach().float().abs().flatten()
        value = max(float(torch.quantile(current[:: max(1, current.numel() // 50000)], quantile)), 1e-3)
        if isinstance(neuron, IFNeuron):
            neuron.threshold.fill_(value)
        else:
            neuron.threshold = value

    hooks = [n.register_forward_pre_hook(set_threshold) for _, n in model.spiking_neurons()]
    with torch.no_grad():
        model.set_backend("reference").forward_steps(x)
    for h in hooks:
        h.remove()
    return model


def run_backend(model: SpikingModel, backend: str, x: torch.Tensor, out_weights: torch.Tensor):
    """Output steps, every neuron's spikes and every parameter's gradient of a fixed linear loss."""
    model.set_backend(backend)
    model.zero_grad(set_to_none=True)
    for _, n in model.spiking_neurons():
        n.monitor = True
    out = model.forward_steps(x)
    (out.float() * out_weights).sum().backward()
    spikes = [n.last_spikes for _, n in model.spiking_neurons()]
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.detach(), spikes, grads


def compare_backends(model: SpikingModel, x: torch.Tensor) -> dict:
    model.eval()  # dropout draws different masks per call; the function compared is the eval one
    wake_up(model, x)
    out_weights = torch.randn(model.T, x.shape[0], model.num_classes)
    # oneDNN picks its convolution algorithm by batch size, so folding T into the batch changes the
    # rounding of the currents; PyTorch's native convolution computes each image alike at any batch
    # size, which makes the two backends comparable bit for bit.
    with torch.backends.mkldnn.flags(enabled=False):
        ref = run_backend(model, "reference", x, out_weights)
        fast = run_backend(model, "fast", x, out_weights)
    rates = [float(s.float().mean()) for s in ref[1]]
    grad_errors = {
        k: float((ref[2][k] - fast[2][k]).norm() / ref[2][k].norm().clamp_min(1e-30)) for k in ref[2]
    }
    return {
        "outputs_equal": torch.equal(ref[0], fast[0]),
        "spikes_equal": all(torch.equal(a, b) for a, b in zip(ref[1], fast[1])),
        "min_rate": min(rates),
        "max_grad_rel_error": max(grad_errors.values()),
        "grads_same_keys": set(ref[2]) == set(fast[2]),
    }


def check(result: dict) -> None:
    assert result["min_rate"] > 0, "a layer is silent: the comparison would not test it"
    assert result["spikes_equal"], "spikes differ between backends"
    assert result["outputs_equal"], "outputs differ between backends"
    assert result["grads_same_keys"]
    assert result["max_grad_rel_error"] < GRAD_RTOL


def tiny_vgg(quant="bin", T=3) -> SpikingVGG:
    return SpikingVGG(num_classes=10, T=T, quant=quant, cfg=(8, "M", 16, "M"))


@pytest.mark.parametrize("quant", [None, "bin", "ter"])
def test_vgg_family(quant):
    torch.manual_seed(0)
    check(compare_backends(tiny_vgg(quant), torch.randn(2, 3, 32, 32)))


def test_vgg_with_initial_potential_and_channels_last():
    torch.manual_seed(1)
    model = tiny_vgg()
    for layer in model.features:
        layer.neuron.initial_potential = torch.rand(1) * 0.5
    model = model.to(memory_format=torch.channels_last)
    check(compare_backends(model, torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)))


def test_cnn7_family():
    torch.manual_seed(2)
    model = qsnn_zoo.create_model("cnn7_cifar10_bin_stbp", T=2)
    check(compare_backends(model, torch.randn(1, 3, 32, 32)))


def test_alexnet_family():
    torch.manual_seed(3)
    model = qsnn_zoo.create_model("alexnet_cifar10_ter_tsslbp", T=3)
    check(compare_backends(model, torch.randn(2, 3, 32, 32)))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        tiny_vgg().set_backend("cuda")


def _interpreted_vgg() -> dict:
    torch.manual_seed(4)
    model = tiny_vgg(T=3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    return {**compare_backends(model, x), "used_kernel": fused.triton_enabled(x)}


def test_vgg_with_triton_kernels_through_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("used_kernel"), "the child process did not run the Triton kernels"
    check(result)


if __name__ == "__main__":
    print(json.dumps(_interpreted_vgg()))
