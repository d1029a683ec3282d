"""The fused kernels equal their references: identical spikes, gradients within rounding.

Neurons, the VGG layer pieces (IF with biases and in-kernel dropout, 2x2 pooling conv), AlexNet's
sum pooling on the pooling kernels, the CBP penalty and the quantizer.

Triton decides at import time whether kernels are compiled or interpreted, so the kernels run in a
child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter); this process only checks the
numbers the child reports. Sizes are tiny: the interpreter runs a kernel block by block in NumPy.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from _interpreter import run_interpreted

from qsnn_zoo.cbp import CBP
from qsnn_zoo.cbp_kernel import constraint_penalty
from qsnn_zoo.layers import fused, neurons
from qsnn_zoo.layers.neurons import LIFNeuron
from qsnn_zoo.layers.quant import QuantConv2d, QuantLinear, quantized_modules
from qsnn_zoo.layers.time import repeat_over_time
from qsnn_zoo.testing import compare_neuron, compare_neuron_launch, layer_check_ok, layer_checks, neuron_cases

GRAD_RTOL = {"fp32": 1e-5, "bf16": 1e-2}  # bf16: the gradient itself is stored in bf16


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(__file__)


@pytest.mark.parametrize("case", sorted(neuron_cases()))
def test_kernel_matches_reference(interpreted, case):
    result = interpreted["neurons"][case]
    assert result["used_kernel"], "the child process did not run the Triton kernel"
    assert 0.05 < result["active_fraction"] < 0.95, "inputs too weak or too strong to test spiking"
    assert result["outputs_equal"], "spikes differ from the reference"
    assert result["inference_equal"], "spikes differ from the reference without autograd"
    assert result["output_dtype_equal"]
    assert result["grad_finite"]
    assert result["grad_rel_error"] < GRAD_RTOL["bf16" if case.endswith("bf16") else "fp32"]
    assert result["grad_layout_kept"], "the input gradient comes back in another memory layout"


LAYER_CHECKS = ("if_layer", "if_layer_channels_last", "if_layer_constant_input", "if_layer_constant_input_channels_last",
                "if_layer_constant_input_dropout", "if_layer_constant_input_dropout_channels_last", "dropout",
                "dropout_uniform",
                "pool_channels_last", "pool_contiguous", "pool_gated", "pool_int64_index", "pool_channel_blocks",
                "pool_to_one_pixel", "sum_pool_channels_last",
                "sum_pool_contiguous", "sum_pool_bf16", "penalty", "penalty_channels_last", "quantize",
                "quantize_channels_last", "weight_step", "shared_dropout_conv", "shared_dropout_fc",
                "shared_dropout_bf16", "lif_bias", "lif_bias_constant_input", "lif_bias_bf16")


@pytest.mark.parametrize("name", LAYER_CHECKS)
def test_layer_kernel_matches_reference(interpreted, name):
    result = interpreted["layers"][name]
    assert result["used_kernel"], "the child process did not run the Triton kernel"
    assert layer_check_ok(name, result), json.dumps(result)


def test_layer_checks_pass_on_the_reference_fallback():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets kernels")
    results = layer_checks()
    assert set(results) == set(LAYER_CHECKS)
    for name, result in results.items():
        assert not result["used_kernel"]
        assert layer_check_ok(name, result), (name, result)


def test_sum_pool_declines_what_the_kernels_cannot_take(interpreted):
    """None, so that AlexNet takes its reference pooling, for an odd height or width, a tensor that is
    not ``[B, C, H, W]`` and the pool piece switched off; the kernel's output otherwise."""
    assert interpreted["sum_pool_takes"] == {"even": True, "odd_height": False, "odd_width": False,
                                             "three_dims": False, "piece_off": False}


def test_cpu_without_interpreter_falls_back_to_reference():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets kernels")
    x = torch.randn(3, 2, 5)
    assert not fused.triton_enabled(x)
    assert fused.lif_hard_reset(x, 0.5, 0.25, 0.5) is None  # no kernel: the caller chooses the reference
    assert fused.sum_pool_2x2(torch.randn(2, 3, 4, 4), 1.1) is None
    assert torch.equal(neurons.lif_hard_reset_fast(x, 0.5, 0.25, 0.5), neurons.lif_hard_reset(x, 0.5, 0.25, 0.5))


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_lif_neuron_takes_a_constant_input_with_its_steps(backend):
    """``steps=T`` with one step ``[B, ...]`` is the call on it expanded over T: spikes, the spikes a
    monitor records (``[T, B, ...]``) and the input gradient."""
    neuron = LIFNeuron(threshold=0.5, decay=0.25, lens=0.5)
    neuron.backend, neuron.monitor = backend, True
    step = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
    leaves = [step.clone().requires_grad_() for _ in range(2)]
    out = neuron(leaves[0], steps=4)
    recorded = neuron.last_spikes
    expected = neuron(repeat_over_time(leaves[1], 4))
    assert out.shape == (4, *step.shape) and torch.equal(out, expected)
    assert torch.equal(recorded, neuron.last_spikes) and 0 < recorded.float().mean() < 1
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(leaves[0].grad, leaves[1].grad)  # the kernel's sum over T rounds in another order
    assert leaves[0].grad.abs().sum() > 0


def test_pieces_switch_off_and_on_and_unknown_piece_refused():
    x = torch.randn(2, 4, 4, 4)
    with fused.pieces_disabled("pool"):
        assert not fused.piece_enabled("pool", x) and fused.disabled_pieces() == {"pool"}
    assert fused.disabled_pieces() == frozenset()
    fused.set_piece_enabled("penalty", False)
    try:
        assert "penalty" in fused.disabled_pieces()
    finally:
        fused.set_piece_enabled("penalty", True)
    assert fused.disabled_pieces() == frozenset()
    with pytest.raises(ValueError, match="unknown fused piece"):
        fused.piece_enabled("conv", x)
    with pytest.raises(ValueError, match="unknown fused piece"):
        fused.set_piece_enabled("conv", False)


def test_trained_threshold_keeps_reference_autograd():
    threshold = torch.tensor(0.7, requires_grad=True)
    assert fused.if_soft_reset(torch.randn(3, 2, 5), threshold, 0.1, None, 2.0) is None
    neurons.if_soft_reset_fast(torch.randn(3, 2, 5), threshold, 0.1, None, 2.0).sum().backward()
    assert threshold.grad is not None


def test_cbp_weight_pieces_take_the_fast_backends_layout(interpreted):
    """CBP's penalty and the quantizer run their kernels on every quantized layer of a model in the
    fast backend's layout (conv weights channels_last), the multipliers in the weights' layout."""
    assert interpreted["weight_pieces_take"] == {"conv": {"penalty": True, "quantize": True},
                                                 "linear": {"penalty": True, "quantize": True}}


def weight_pieces_take() -> dict:
    """Per quantized layer of a channels_last model under CBP: whether each weight piece ran its kernel."""
    model = torch.nn.Sequential(QuantConv2d(16, 40, 3, quant="bin"), torch.nn.Flatten(),
                                QuantLinear(40, 10, quant="ter")).to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    method = CBP(model, None, lambda_lr=1e-3)
    return {
        kind: {"penalty": constraint_penalty(layer.weight, method.multipliers[name].detach(), layer.scale, layer.quant,
                                             method.u) is not None,
               "quantize": fused.quantize_weight(layer.weight, layer.scale, layer.quant, torch.bfloat16) is not None}
        for kind, (name, layer) in zip(("conv", "linear"), quantized_modules(model))
    }


def shared_mask_takes() -> dict:
    x = torch.rand(5, 4, 6, 3, 2)
    keep = torch.ones(1, 4, 6, 3, 1)
    cases = {"dense": (x, keep), "strided": (x[..., :1], keep), "other_dtype": (x, keep.double()),
             "other_rank": (x, keep[0]), "trained_mask": (x, keep.clone().requires_grad_())}
    takes = {name: fused.shared_mask_multiply(*args) is not None for name, args in cases.items()}
    with fused.pieces_disabled("shared_mask"):
        takes["piece_off"] = fused.shared_mask_multiply(x, keep) is not None
    return takes


def test_shared_mask_declines_what_its_kernel_cannot_take(interpreted):
    """None, so that the dropout multiplies in PyTorch, for a tensor that does not fill its storage, a
    mask of another dtype or rank or with a gradient, and the piece switched off."""
    assert interpreted["shared_mask_takes"] == {"dense": True, "strided": False, "other_dtype": False,
                                                "other_rank": False, "trained_mask": False, "piece_off": False}


def lif_bias_takes() -> dict:
    current, bias = torch.rand(2, 3, 4, 5, 5), torch.zeros(4)
    cases = {"steps": (current, bias), "constant_input": (current[0], bias, 2), "wrong_size": (current, bias[:3]),
             "two_dims": (current, bias.view(2, 2)), "fc": (current.flatten(2), bias)}
    takes = {name: fused.lif_hard_reset(args[0], 0.5, 0.25, 0.5, *args[2:], bias=args[1]) is not None
             for name, args in cases.items()}
    with fused.pieces_disabled("lif_bias"):
        takes["piece_off"] = fused.lif_hard_reset(current, 0.5, 0.25, 0.5, bias=bias) is not None
        takes["piece_off_no_bias"] = fused.lif_hard_reset(current, 0.5, 0.25, 0.5) is not None
    return takes


def test_lif_bias_declines_what_its_kernel_cannot_take(interpreted):
    """None, so that the neuron adds the bias in PyTorch, for a bias that is not one value per channel
    of a step's dim 1 and with the piece switched off; the LIF kernel without a bias still runs."""
    assert interpreted["lif_bias_takes"] == {"steps": True, "constant_input": True, "wrong_size": False,
                                             "two_dims": False, "fc": False, "piece_off": False,
                                             "piece_off_no_bias": True}


LAUNCHES = {"one_warp": (128, 1), "large_blocks": (2048, 8)}


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_neuron_launch_changes_no_bit(interpreted, launch):
    """Each neuron kernel, and the VGG layer with dropout, gives the default launch's outputs and
    gradients under another block size (a partial block, several programs): the launch is speed only."""
    results = interpreted["launch"][launch]
    assert set(results) == set(neuron_cases()) | {"if_layer_dropout"}
    assert all(results.values()), results


def test_neuron_launch_refuses_what_triton_cannot_launch():
    for bad in ((1000, 4), (64, 4), (1024, 3), (32768, 16)):
        with pytest.raises(ValueError, match="power of two"):
            fused.set_neuron_launch(*bad)
    assert fused.neuron_launch() == fused.DEFAULT_NEURON_LAUNCH


def test_kernels_never_import_the_neurons():
    """The neurons own the choice of backend; the kernels module stands alone (no import circle)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(fused))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {"neurons", "layers.neurons", "qsnn_zoo.layers.neurons"} & imported


if __name__ == "__main__":
    torch.manual_seed(0)
    neuron_results = {name: compare_neuron(*case) for name, case in neuron_cases().items()}
    inputs = {"even": torch.rand(2, 3, 4, 6), "odd_height": torch.rand(2, 3, 5, 6), "odd_width": torch.rand(2, 3, 4, 5),
              "three_dims": torch.rand(3, 4, 6)}
    takes = {name: fused.sum_pool_2x2(x, 1.1) is not None for name, x in inputs.items()}
    with fused.pieces_disabled("pool"):
        takes["piece_off"] = fused.sum_pool_2x2(inputs["even"], 1.1) is not None
    print(json.dumps({"neurons": neuron_results, "layers": layer_checks(), "sum_pool_takes": takes,
                      "weight_pieces_take": weight_pieces_take(), "shared_mask_takes": shared_mask_takes(),
                      "lif_bias_takes": lif_bias_takes(),
                      "launch": {name: compare_neuron_launch(launch) for name, launch in LAUNCHES.items()}}))
