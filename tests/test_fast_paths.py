"""``set_backend("fast")`` computes the same function as ``set_backend("reference")``.

On the CPU the fast path is time folded into the batch plus the reference neurons (no Triton);
three tests also run the Triton kernels inside a whole model (VGG, cnn7, AlexNet), through Triton's
interpreter in one child process. Every test first makes each layer of the random model fire (``wake_up``).
"""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from _interpreter import run_interpreted

import qsnn_zoo
from qsnn_zoo.layers import fused
from qsnn_zoo.models import alexnet
from qsnn_zoo.models.vgg import SpikingVGG
from qsnn_zoo.testing import compare_backends, sum_pool_in_kernel_order, wake_up

GRAD_RTOL = 1e-4


def compare_exactly(model, x) -> dict:
    wake_up(model, x)
    # oneDNN picks its convolution algorithm by batch size, so folding T into the batch changes the
    # rounding of the currents; PyTorch's native convolution computes each image alike at any batch
    # size, which makes the two backends comparable bit for bit.
    with torch.backends.mkldnn.flags(enabled=False):
        return compare_backends(model, x)


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
    check(compare_exactly(tiny_vgg(quant), torch.randn(2, 3, 32, 32)))


def test_vgg_with_initial_potential_and_channels_last():
    torch.manual_seed(1)
    model = tiny_vgg()
    for layer in model.features:
        layer.neuron.initial_potential = torch.rand(1) * 0.5
    model = model.to(memory_format=torch.channels_last)
    check(compare_exactly(model, torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)))


def test_vgg_with_pool_gate():
    torch.manual_seed(5)
    check(compare_exactly(tiny_vgg().set_pool_gate(True), torch.randn(2, 3, 32, 32)))


def _last_pool_input_grad(model, x):
    """The gradient reaching the last pooling layer's input spikes, and those spikes."""
    pool = [layer for layer in model.features if layer.is_pool][-1]
    seen = {}

    def keep(module, args):
        args[0].retain_grad()
        seen["input"] = args[0]

    handle = pool.conv.register_forward_pre_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        model.forward_steps(x).sum().backward()
    finally:
        handle.remove()
    return seen["input"].grad, seen["input"].detach()


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_pool_gate_zeroes_the_gradient_of_silent_windows_only(backend):
    """The original's ReLU after the pooling conv: the gradient reaching a pool's inputs is zero where
    the 2x2 window held no spike at that step, and the ungated gradient everywhere else."""
    torch.manual_seed(6)
    x = torch.randn(2, 3, 32, 32)
    model = wake_up(tiny_vgg(T=4), x).set_backend(backend).eval()
    ungated, spikes = _last_pool_input_grad(model.set_pool_gate(False), x)
    gated, same_spikes = _last_pool_input_grad(model.set_pool_gate(True), x)
    assert torch.equal(spikes, same_spikes), "the gate changed the forward pass"
    pooled = torch.nn.functional.avg_pool2d(spikes.flatten(0, 1), 2).unflatten(0, spikes.shape[:2])
    silent = (pooled == 0).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert 0 < silent.float().mean() < 1, "the test needs both silent and active windows"
    assert ungated[silent].abs().sum() > 0, "the ungated gradient must reach silent windows"
    assert torch.equal(gated[silent], torch.zeros_like(gated[silent]))
    assert torch.equal(gated[~silent], ungated[~silent])


def test_cnn7_family():
    torch.manual_seed(2)
    check(compare_exactly(qsnn_zoo.create_model("cnn7_cifar10_bin_stbp", T=2), torch.randn(1, 3, 32, 32)))


def test_alexnet_family():
    torch.manual_seed(3)
    check(compare_exactly(qsnn_zoo.create_model("alexnet_cifar10_ter_tsslbp", T=3), torch.randn(2, 3, 32, 32)))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        tiny_vgg().set_backend("cuda")


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(__file__)


def test_vgg_with_triton_kernels_through_interpreter(interpreted):
    result = dict(interpreted["vgg"])
    assert result.pop("used_kernel"), "the child process did not run the Triton kernels"
    calls = result.pop("fused_calls")
    assert calls["if_soft_reset_layer"] > 0 and calls["avg_pool_conv"] > 0, "the VGG fused layer path was not taken"
    assert calls["constant_input"] > 0, "the first layer's current was not given to the kernel unexpanded"
    training = result.pop("training")
    assert training["grads_finite"] and training["same_keys"], training
    assert 0.5 < training["dropout_keep_ratio"] < 1.0, "dropout did not act in training mode"
    check(result)


def test_cnn7_with_triton_kernels_through_interpreter(interpreted):
    """The LIF kernels in the whole network, the first layer's constant input given once with its
    number of steps and each conv's bias added in the kernel; ``check`` compares the input's gradient
    too, which is the kernel's sum over T, and the biases' gradients."""
    result = dict(interpreted["cnn7"])
    assert result.pop("used_kernel"), "the child process did not run the Triton kernels"
    calls = result.pop("fused_calls")
    assert calls["lif_hard_reset"] == result.pop("neurons"), "a LIF layer took no kernel"
    assert calls["constant_input"] == 1, "the first layer's current was not given to the kernel unexpanded"
    assert result.pop("conv_bias_in_neuron"), "the convs' biases were not handed to the LIF kernel"
    assert not result.pop("conv_bias_in_neuron_under_a_hook"), "a hooked conv would be bypassed unseen"
    check(result)


def test_alexnet_with_triton_kernels_through_interpreter(interpreted):
    """The TSSL kernels and the fused 2x2 sum pool in the whole network. The kernel rounds the pooled
    PSP once where ``sum_pool`` rounds twice (the sum, then its product by 1.1), so a pooled current
    may differ from the reference's in its last bit and flip a spike that sits at the threshold:
    bit-exact spikes and outputs are compared against the reference whose pooling is the kernel's own
    arithmetic (``sum_pool_in_kernel_order``, which the layer checks hold bit-equal to the kernel).
    Against the true reference, outputs and gradients are compared within a tolerance (no spike flips
    for this input: the measured errors are 0 and under 1e-6)."""
    result = dict(interpreted["alexnet"])
    assert result.pop("used_kernel"), "the child process did not run the Triton kernels"
    calls = result.pop("fused_calls")
    assert calls["sum_pool_2x2"] == result.pop("pools"), "a pooling layer did not take the fused kernel"
    check(result["kernel_order"])
    reference = result["reference"]
    assert reference["min_rate"] > 0 and reference["grads_same_keys"]
    assert reference["spike_mismatch_fraction"] < 1e-3
    assert reference["output_rel_error"] < 1e-3 and reference["max_grad_rel_error"] < 1e-3


def test_alexnet_dropout_products_take_the_kernel_and_change_nothing(interpreted):
    """In training, each of AlexNet's seven dropouts multiplies on the shared-mask kernel, and the
    network's outputs and gradients equal those of PyTorch's product on the same masks."""
    result = interpreted["alexnet_dropout"]
    assert result["kernel_calls"] == result["dropouts"] == 7
    assert result["active"] and result["outputs_equal"] and result["grads_equal"]


def count_calls(module, names):
    """Wraps ``module.<name>`` for each name with a counter of the calls that took a kernel (a fused
    function returns None where none runs); returns the counts, and under ``"constant_input"`` those
    of such calls given a constant input with ``steps``."""
    calls = dict.fromkeys((*names, "constant_input"), 0)

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            if out is not None:
                calls[name] += 1
                calls["constant_input"] += kwargs.get("steps") is not None
            return out

        return wrapper

    for name in names:
        setattr(module, name, counted(name, getattr(module, name)))
    return calls


def train_mode_run(model, x) -> dict:
    """One fast forward/backward with dropout active: gradients exist where the reference has them,
    and the dropout removes spikes (first layer's output spikes vs its neuron's monitored spikes)."""
    keys = {}
    for backend in ("reference", "fast"):
        model.set_backend(backend).train().zero_grad(set_to_none=True)
        model.forward_steps(x).sum().backward()
        keys[backend] = {k for k, p in model.named_parameters() if p.grad is not None}
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    first = model.features[0]
    with torch.no_grad():
        model.set_backend("fast").train()
        dropped = first.spiking(x, True, T=model.T)
        first.eval()
        kept = first.spiking(x, True, T=model.T)
    ratio = float((dropped != 0).sum() / (kept != 0).sum().clamp_min(1))
    return {"grads_finite": bool(finite), "same_keys": keys["reference"] == keys["fast"], "dropout_keep_ratio": ratio}


def dropout_paths(model, x) -> dict:
    """The fast backend in training, the dropout's product on the kernel and with its piece off, on
    the same masks: outputs and gradients bit for bit."""
    runs = []
    for off in ((), ("shared_mask",)):
        model.set_backend("fast").train().zero_grad(set_to_none=True)
        with fused.pieces_disabled(*off):
            torch.manual_seed(9)
            out = model.forward_steps(x)
            out.sum().backward()
        runs.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (out, grads), (ref, ref_grads) = runs
    return {"outputs_equal": torch.equal(out, ref), "active": bool(ref.abs().sum() > 0),
            "grads_equal": grads.keys() == ref_grads.keys() and all(torch.equal(grads[k], ref_grads[k]) for k in grads)}


if __name__ == "__main__":
    torch.manual_seed(4)
    vgg = tiny_vgg(T=3).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    fused_calls = count_calls(fused, ("if_soft_reset_layer", "avg_pool_conv"))
    result = compare_exactly(vgg, images)
    vgg_result = {**result, "used_kernel": fused.triton_enabled(images), "fused_calls": fused_calls,
                  "training": train_mode_run(vgg, images)}
    cnn7 = qsnn_zoo.create_model("cnn7_cifar10_fp32_stbp", T=2).to(memory_format=torch.channels_last)
    lif_calls = count_calls(fused, ("lif_hard_reset",))
    result = compare_exactly(cnn7, images[:1])
    cnn7_result = {**result, "used_kernel": fused.triton_enabled(images), "fused_calls": lif_calls,
                   "neurons": len(cnn7.spiking_neurons()), "conv_bias_in_neuron": cnn7._conv_bias_in_neuron(images)}
    watching = cnn7.pool2.register_forward_hook(lambda *args: None)
    cnn7_result["conv_bias_in_neuron_under_a_hook"] = cnn7._conv_bias_in_neuron(images)
    watching.remove()
    # fp32: a quantized AlexNet's fc1 (16.8 M weights) would spend most of the run quantizing in the interpreter
    tssl = qsnn_zoo.create_model("alexnet_cifar10_fp32_tsslbp", T=2).to(memory_format=torch.channels_last)
    pool_calls = count_calls(fused, ("sum_pool_2x2",))
    with mock.patch.object(alexnet, "sum_pool", lambda x: sum_pool_in_kernel_order(x, alexnet.POOL_WEIGHT)):
        kernel_order = compare_exactly(tssl, images[:1])
    alexnet_result = {"kernel_order": kernel_order, "reference": compare_exactly(tssl, images[:1]),
                      "used_kernel": fused.triton_enabled(images), "fused_calls": dict(pool_calls),
                      "pools": 2 * len(tssl.pool_after)}  # each pool once per fast forward, one in each comparison
    mask_calls = count_calls(fused, ("shared_mask_multiply",))
    dropout_result = {**dropout_paths(tssl, images[:1]), "kernel_calls": mask_calls["shared_mask_multiply"],
                      "dropouts": len(tssl.layer_names) - 1}
    print(json.dumps({"vgg": vgg_result, "cnn7": cnn7_result, "alexnet": alexnet_result,
                      "alexnet_dropout": dropout_result}))
