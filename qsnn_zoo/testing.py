"""Checks that a fast path computes the reference's function, shared by the tests and the benchmark.

``neuron_cases`` pairs each fused neuron with its reference on random currents (several layouts
and dtypes); ``compare_neuron`` runs one pair. ``wake_up`` makes a randomly initialised SNN fire in
every layer (fresh deep SNNs fall silent after a few layers, which would make a comparison vacuous);
``compare_backends`` runs a model with both backends.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from .layers import fused, neurons
from .layers.neurons import IFNeuron
from .models._base import SpikingModel

Case = Tuple[Callable, Callable, Callable[[], torch.Tensor]]


def neuron_cases(device="cpu", T: int = 4, step_shape=(3, 5, 7, 11)) -> Dict[str, Case]:
    """name -> (reference, fused, current maker). The default step size leaves a partial block."""
    gen = torch.Generator().manual_seed(1)

    def current(shape=(T, *step_shape), scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    def channels_last():
        x = torch.randn(T * step_shape[0], *step_shape[1:], generator=gen).to(device)
        return x.to(memory_format=torch.channels_last).unflatten(0, (T, step_shape[0]))

    def constant_over_time():  # the first layer's expanded input: time stride 0
        return torch.randn(*step_shape, generator=gen).to(device).unsqueeze(0).expand(T, *step_shape)

    th = torch.tensor(0.8, device=device)
    init = torch.randn(*step_shape[1:], generator=gen).to(device) * 0.3
    shift = 0.5 / T

    def if_pair(initial=None):
        return (lambda c: neurons.if_soft_reset(c, th, shift, initial, 2.0),
                lambda c: fused.if_soft_reset(c, th, shift, initial, 2.0))

    lif = (lambda c: neurons.lif_hard_reset(c, 0.5, 0.25, 0.5), lambda c: fused.lif_hard_reset(c, 0.5, 0.25, 0.5))
    tssl = (lambda c: neurons.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2), lambda c: fused.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2))
    return {
        "if": (*if_pair(), current),
        "if_initial_potential": (*if_pair(init), current),
        "if_channels_last": (*if_pair(), channels_last),
        "if_constant_input": (*if_pair(), constant_over_time),
        # bf16 currents are integrated in fp32: the reference is the fp32 run on the same values
        "if_bf16": (lambda c: if_pair()[0](c.float()).to(c.dtype), if_pair()[1], lambda: current(dtype=torch.bfloat16)),
        "lif_decay_0.25": (*lif, current),
        "lif_decay_0.8": (lambda c: neurons.lif_hard_reset(c, 0.5, 0.8, 0.5),
                          lambda c: fused.lif_hard_reset(c, 0.5, 0.8, 0.5), current),
        "lif_constant_input": (*lif, constant_over_time),
        "lif_bf16": (lambda c: lif[0](c.float()).to(c.dtype), lif[1], lambda: current(dtype=torch.bfloat16)),
        "tssl": (*tssl, lambda: current(scale=2.0)),
        "tssl_t5": (*tssl, lambda: current((5, 2, 9, 13), 2.0)),
    }


def _outputs_equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
    return torch.equal(a, b)


def compare_neuron(reference: Callable, fast: Callable, make_current: Callable[[], torch.Tensor]) -> dict:
    """Outputs and input gradients of both on one fresh random current (a fixed random linear loss)."""
    base = make_current()
    if base.stride(0) == 0:  # a constant input expanded over T: the gradient is the leaf's
        leaf_ref, leaf_fast = (base[0].detach().clone().requires_grad_() for _ in range(2))
        c_ref, c_fast = (leaf.unsqueeze(0).expand(base.shape) for leaf in (leaf_ref, leaf_fast))
    else:
        leaf_ref, leaf_fast = (base.detach().clone().requires_grad_() for _ in range(2))
        c_ref, c_fast = leaf_ref, leaf_fast
    with torch.no_grad():  # inference takes a kernel variant that saves no state
        inference_equal = _outputs_equal(reference(c_ref), fast(c_fast))
    out_ref, out_fast = reference(c_ref), fast(c_fast)
    outputs_equal = _outputs_equal(out_ref, out_fast)
    if isinstance(out_ref, tuple):  # TSSL: (psp, spikes); the gradient flows through the psp
        out_ref, out_fast = out_ref[0], out_fast[0]
    weights = torch.randn(out_ref.shape, device=out_ref.device)
    (out_ref.float() * weights).sum().backward()
    (out_fast.float() * weights).sum().backward()
    g_ref, g_fast = leaf_ref.grad.double(), leaf_fast.grad.double()
    return {
        "outputs_equal": outputs_equal,
        "inference_equal": inference_equal,
        "output_dtype_equal": out_ref.dtype == out_fast.dtype,
        "active_fraction": float((out_ref != 0).float().mean()),
        "grad_rel_error": float((g_ref - g_fast).norm() / g_ref.norm().clamp_min(1e-30)),
        "grad_finite": bool(torch.isfinite(g_fast).all()),
        "used_kernel": fused.triton_enabled(c_fast),
    }


def wake_up(model: SpikingModel, x: torch.Tensor, quantile: float = 0.8) -> SpikingModel:
    """Sets each neuron's threshold to a quantile of its own |input current|, layer by layer in one
    reference pass, so that every layer of a random model fires."""

    def set_threshold(neuron, args):
        current = args[0].detach().float().abs().flatten()
        value = max(float(torch.quantile(current[:: max(1, current.numel() // 50000)], quantile)), 1e-3)
        if isinstance(neuron, IFNeuron):
            neuron.threshold.fill_(value)
        else:
            neuron.threshold = value

    hooks = [n.register_forward_pre_hook(set_threshold) for _, n in model.spiking_neurons()]
    backend = model.backend
    try:
        with torch.no_grad():
            model.set_backend("reference").forward_steps(x)
    finally:
        for h in hooks:
            h.remove()
        model.set_backend(backend)
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
    for _, n in model.spiking_neurons():
        n.monitor, n.last_spikes = False, None
    return out.detach(), spikes, grads


def compare_backends(model: SpikingModel, x: torch.Tensor) -> dict:
    """Reference vs fast backend in eval mode (dropout masks are random) on input ``x``."""
    model.eval()
    out_weights = torch.randn(model.T, x.shape[0], model.num_classes, device=x.device)
    ref = run_backend(model, "reference", x, out_weights)
    fast = run_backend(model, "fast", x, out_weights)
    rates = [float(s.float().mean()) for s in ref[1]]
    grad_errors = {k: float((ref[2][k] - fast[2][k]).norm() / ref[2][k].norm().clamp_min(1e-30)) for k in ref[2]}
    spike_mismatch = sum(int((a != b).sum()) for a, b in zip(ref[1], fast[1]))
    return {
        "outputs_equal": torch.equal(ref[0], fast[0]),
        "spikes_equal": spike_mismatch == 0,
        "spike_mismatch_fraction": spike_mismatch / sum(s.numel() for s in ref[1]),
        "output_rel_error": float((ref[0] - fast[0]).norm() / ref[0].norm().clamp_min(1e-30)),
        "predictions_agree": float((model.decode(ref[0]).argmax(-1) == model.decode(fast[0]).argmax(-1)).float().mean()),
        "min_rate": min(rates),
        "max_grad_rel_error": max(grad_errors.values()) if grad_errors else 0.0,
        "grads_same_keys": set(ref[2]) == set(fast[2]),
    }
