"""Checks that a fast path computes the reference's function, shared by the tests and the benchmark.

``neuron_cases`` pairs each fused neuron with its reference on random currents (several layouts
and dtypes, and a constant input given once with its number of steps); ``compare_neuron`` runs one
pair. ``wake_up`` makes a randomly initialised SNN fire in every layer (fresh deep SNNs fall silent
after a few layers, which would make a comparison vacuous);
``compare_backends`` runs a model with both backends. ``layer_checks`` runs the fused pieces of the
VGG fast path (IF layer with biases and dropout, 2x2 pooling conv), AlexNet's sum pooling on the same
pooling kernels, the fused CBP penalty and the one-pass quantizer against their references.
``compare_neuron_launch`` runs every neuron kernel under another launch against the default one.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Callable, Dict, Optional, Tuple, Union

import torch.nn.functional as F

import torch

from . import cbp, cbp_kernel
from .layers import fused, neurons, quant
from .layers.neurons import IFNeuron
from .layers.time import repeat_over_time
from .models._base import SpikingModel

Maker = Callable[[], torch.Tensor]
Case = Union[Tuple[Callable, Callable, Maker], Tuple[Callable, Callable, Maker, int]]  # the int: steps


def neuron_cases(device="cpu", T: int = 4, step_shape=(3, 5, 7, 11)) -> Dict[str, Case]:
    """name -> (reference, fused, current maker[, steps]). The default step size leaves a partial block.
    With steps, the maker gives one step, the input at each of that many steps (:func:`compare_neuron`)."""
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
                lambda c: neurons.if_soft_reset_fast(c, th, shift, initial, 2.0))

    lif = (lambda c: neurons.lif_hard_reset(c, 0.5, 0.25, 0.5),
           lambda c, steps=None: neurons.lif_hard_reset_fast(c, 0.5, 0.25, 0.5, steps=steps))
    tssl = (lambda c: neurons.tssl_neuron(c, 5.0, 3.0, 1.0, 0.2), lambda c: neurons.tssl_neuron_fast(c, 5.0, 3.0, 1.0, 0.2))
    return {
        "if": (*if_pair(), current),
        "if_initial_potential": (*if_pair(init), current),
        "if_channels_last": (*if_pair(), channels_last),
        "if_constant_input": (*if_pair(), constant_over_time),
        # bf16 currents are integrated in fp32: the reference is the fp32 run on the same values
        "if_bf16": (lambda c: if_pair()[0](c.float()).to(c.dtype), if_pair()[1], lambda: current(dtype=torch.bfloat16)),
        "lif_decay_0.25": (*lif, current),
        "lif_decay_0.8": (lambda c: neurons.lif_hard_reset(c, 0.5, 0.8, 0.5),
                          lambda c: neurons.lif_hard_reset_fast(c, 0.5, 0.8, 0.5), current),
        "lif_constant_input": (*lif, constant_over_time),
        "lif_bf16": (lambda c: lif[0](c.float()).to(c.dtype), lif[1], lambda: current(dtype=torch.bfloat16)),
        # cnn7's first layer: one step given once with steps=T, its gradient the kernel's sum over T
        "lif_constant_steps": (*lif, lambda: current(step_shape), T),
        "lif_constant_steps_channels_last": (*lif, lambda: current(step_shape).to(memory_format=torch.channels_last), T),
        "lif_constant_steps_bf16": (lambda c: lif[0](c.float()).to(c.dtype), lif[1],
                                    lambda: current(step_shape, dtype=torch.bfloat16), T),
        "tssl": (*tssl, lambda: current(scale=2.0)),
        "tssl_t5": (*tssl, lambda: current((5, 2, 9, 13), 2.0)),
    }


def _outputs_equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
    return torch.equal(a, b)


def compare_neuron(reference: Callable, fast: Callable, make_current: Maker, steps: Optional[int] = None) -> dict:
    """Outputs and input gradients of both on one fresh random current (a fixed random linear loss),
    and whether ``fast`` returns the gradient in the current's layout. With ``steps``, the current is
    one step ``[B, ...]``: ``fast`` gets it with ``steps=steps``, ``reference`` expanded over T."""
    base = make_current()
    if steps is not None:
        leaf_ref, leaf_fast = (base.detach().clone().requires_grad_() for _ in range(2))
        c_ref, c_fast = repeat_over_time(leaf_ref, steps), leaf_fast
        fast = functools.partial(fast, steps=steps)
    elif base.stride(0) == 0:  # a constant input expanded over T: the gradient is the leaf's
        leaf_ref, leaf_fast = (base[0].detach().clone().requires_grad_() for _ in range(2))
        c_ref, c_fast = (leaf.unsqueeze(0).expand(base.shape) for leaf in (leaf_ref, leaf_fast))
    else:
        leaf_ref, leaf_fast = (base.detach().clone().requires_grad_() for _ in range(2))
        c_ref, c_fast = leaf_ref, leaf_fast
    with torch.no_grad():  # inference takes a kernel variant that saves no state
        inference_equal = _outputs_equal(reference(c_ref), fast(c_fast))
    seen = []
    leaf_fast.register_hook(seen.append)  # the gradient as ``fast`` returns it, before accumulation
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
        "grad_layout_kept": seen[0].stride() == leaf_fast.stride(),
        "used_kernel": fused.triton_enabled(c_fast),
    }


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare_if_layer(device="cpu", T: int = 4, step_shape=(3, 6, 7, 9), channels_last: bool = False,
                     constant_input: bool = False, dropout: float = 0.0) -> dict:
    """``neurons.if_layer_fast`` (the fused layer kernel where it runs) against the reference layer
    (current + conv bias + calibration bias, then the IF neuron): spikes, the gradients of the current
    and both biases, and whether the current's gradient keeps its layout (promised by the kernel only).

    With ``constant_input`` the current is one step's ``[B, C, ...]`` given to the kernel with
    ``steps=T`` (the first VGG layer) and to the reference expanded over T. With ``dropout`` the
    reference drops by the kernel's mask, read from a run with the same seed in which every neuron fires.
    """
    gen = torch.Generator().manual_seed(2)
    base = torch.randn((1 if constant_input else T) * step_shape[0], *step_shape[1:], generator=gen).to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    if not constant_input:
        base = base.unflatten(0, (T, step_shape[0]))
    channels = step_shape[1]
    bias, calib = (torch.randn(channels, generator=gen).to(device) * 0.3 for _ in range(2))
    th = torch.tensor(0.8, device=device)
    fast_leaves, ref_leaves = ([t.detach().clone().requires_grad_() for t in (base, bias, calib)] for _ in range(2))

    def layer(current, bias=None, calib=None):
        torch.manual_seed(11)  # the same dropout mask at every call
        if constant_input:
            out = fused.if_soft_reset_layer(current, th, 0.5 / T, None, 2.0, bias, calib, dropout, steps=T)
            if out is not None:
                return out
            current = repeat_over_time(current, T)
        return neurons.if_layer_fast(current, th, 0.5 / T, None, 2.0, bias, calib, dropout)

    with torch.no_grad():
        inference = layer(*fast_leaves)
    seen = []
    fast_leaves[0].register_hook(seen.append)  # the gradient as the layer returns it, before accumulation
    out = layer(*fast_leaves)
    ref_current = repeat_over_time(ref_leaves[0], T) if constant_input else ref_leaves[0]
    ref = neurons.if_layer(ref_current, th, 0.5 / T, None, 2.0, *ref_leaves[1:])
    if dropout:
        ref = ref * (layer(torch.full_like(base, 2.0)) != 0) * (1 / (1 - dropout))
    weights = torch.randn(ref.shape, generator=gen).to(device)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    return {
        "outputs_equal": torch.equal(out, ref),
        "inference_equal": torch.equal(inference, ref),
        "active_fraction": float((ref != 0).float().mean()),
        "grad_rel_error": max(relative_error(a.grad, b.grad) for a, b in zip(fast_leaves, ref_leaves)),
        "grad_layout_kept": seen[0].stride() == base.stride(),
        "used_kernel": fused.triton_enabled(base),
    }


def _fast_run(fast: Callable, base: torch.Tensor, steps: Optional[int], seed: int) -> Tuple[torch.Tensor, ...]:
    """``fast``'s outputs and input gradient on ``base`` under a fixed linear loss, its random draws
    (dropout's seed) from torch's generator seeded with ``seed``."""
    expanded = steps is None and base.stride(0) == 0  # a constant input expanded over T: its leaf is one step
    leaf = (base[0] if expanded else base).detach().clone().requires_grad_()
    current = leaf.unsqueeze(0).expand(base.shape) if expanded else leaf
    torch.manual_seed(seed)
    out = fast(current) if steps is None else fast(current, steps=steps)
    outs = out if isinstance(out, tuple) else (out,)
    weights = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(seed)).to(outs[0].device)
    (outs[0].float() * weights).sum().backward()
    return (*outs, leaf.grad)


LaunchCase = Tuple[Callable, Maker, Optional[int]]  # the fast function, its current's maker, steps


def launch_cases(device="cpu", T: int = 4, step_shape=(3, 5, 7, 11)) -> Dict[str, LaunchCase]:
    """name -> (fast neuron or layer, current maker, steps): every neuron kernel, and the VGG layer
    with both biases and dropout, whose draws are counted per element."""
    cases = {name: (case[1], case[2], case[3] if len(case) > 3 else None)
             for name, case in neuron_cases(device, T, step_shape).items()}
    channels = step_shape[1]
    bias, calib = (torch.linspace(-0.3, 0.3, channels, device=device) * k for k in (1, -0.5))
    th = torch.tensor(0.8, device=device)
    cases["if_layer_dropout"] = (lambda c: neurons.if_layer_fast(c, th, 0.5 / T, None, 2.0, bias, calib, 0.25),
                                 cases["if"][1], None)
    return cases


def compare_neuron_launch(launch: fused.NeuronLaunch, device="cpu", T: int = 4, step_shape=(3, 5, 7, 11)) -> dict:
    """Every neuron kernel under ``launch`` against the default launch: outputs and input gradients
    bit for bit (each element's arithmetic and dropout draws do not depend on the launch)."""
    before = fused.neuron_launch()
    results = {}
    try:
        for name, (fast, make_current, steps) in launch_cases(device, T, step_shape).items():
            base, runs = make_current(), []
            for block, warps in (fused.DEFAULT_NEURON_LAUNCH, launch):
                fused.set_neuron_launch(block, warps)
                runs.append(_fast_run(fast, base, steps, seed=5))
            results[name] = all(torch.equal(a, b) for a, b in zip(*runs))
    finally:
        fused.set_neuron_launch(*before)
    return results


def dropout_statistics(device="cpu", p: float = 0.25, T: int = 20, step_shape=(8, 16, 9, 9)) -> dict:
    """The fused layer's dropout: keep rate and scale, independence across steps and calls, and the
    backward using the forward's mask (recovered from a run that fires everywhere with the same seed).
    The kernels draw 16 steps' masks at a time where 256 p is whole (p = 0.25), else four: T = 20
    with p = 0.25, or T = 6 with another p, gives a full group and a partial one."""
    gen = torch.Generator().manual_seed(3)
    th = torch.tensor(0.8, device=device)
    always = torch.full((T, *step_shape), 2.0, device=device)  # u >= threshold at every step: all fire

    def layer(current, seed, prob=p):
        torch.manual_seed(seed)
        return neurons.if_layer_fast(current, th, 0.5 / T, None, 2.0, None, None, prob)

    keep = layer(always, 7) != 0
    rate = keep.float().mean(dim=tuple(range(1, keep.dim())))
    both = (keep[1:] & keep[:-1]).float().mean()
    values = layer(always, 7).unique()
    current = (torch.randn(T, *step_shape, generator=gen).to(device) + 0.5).requires_grad_()
    reference_current = current.detach().clone().requires_grad_()
    out = layer(current, 7)
    ref = neurons.if_soft_reset(reference_current, th, 0.5 / T, None, 2.0) * keep * (1 / (1 - p))
    weights = torch.randn(ref.shape, generator=gen).to(device)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    return {
        "keep_rate_per_step": rate.tolist(),
        "joint_keep_rate_consecutive_steps": float(both),
        "expected_keep": 1 - p,
        "values": values.tolist(),
        "expected_value": float(th / (1 - p)),
        "fresh_mask_per_call": not torch.equal(keep, layer(always, 8) != 0),
        "outputs_equal_given_mask": torch.equal(out, ref),
        "grad_rel_error_given_mask": relative_error(current.grad, reference_current.grad),
        "p0_equals_no_dropout": torch.equal(layer(current.detach(), 9, 0.0), neurons.if_soft_reset(current.detach(), th, 0.5 / T, None, 2.0)),
        "used_kernel": fused.triton_enabled(always),
    }


def compare_pool_int64_index(device="cpu") -> dict:
    """:func:`compare_pool` through the kernels' int64 indexing, which inputs of 2**31 elements or
    more take (too large to test directly)."""
    limit = fused.INT32_ELEMENTS
    fused.INT32_ELEMENTS = 0
    try:
        return compare_pool(device, gate=True)
    finally:
        fused.INT32_ELEMENTS = limit


def compare_pool(device="cpu", shape=(6, 8, 6, 10), channels_last: bool = True, gate: bool = False) -> dict:
    """``fused.avg_pool_conv`` against the depthwise conv (followed by ReLU with ``gate``) on spikes of
    one value: exact with the converted models' equal weights, within rounding with arbitrary
    per-tap weights. With ``gate``, also whether the gradient is zero at the inputs of every
    silent window (pooled current 0) and equal to the ungated one at all other inputs."""
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(*shape, generator=gen) < 0.5).float().to(device) * 0.7
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    channels = shape[1]
    equal = torch.full((channels, 1, 2, 2), 0.25, device=device)
    arbitrary = torch.rand(channels, 1, 2, 2, generator=gen).to(device)
    leaves = [x.clone().requires_grad_() for _ in range(3)]
    out = fused.avg_pool_conv(leaves[0], equal, gate=gate)
    ungated = F.conv2d(leaves[2], equal, stride=2, groups=channels)
    ref = F.relu(F.conv2d(leaves[1], equal, stride=2, groups=channels)) if gate else F.conv2d(leaves[1], equal, stride=2, groups=channels)
    weights = torch.randn(ref.shape, generator=gen).to(device)
    for y in (out, ref, ungated):
        (y * weights).sum().backward()
    silent = (ungated == 0).repeat_interleave(2, 2).repeat_interleave(2, 3)
    result = {
        "outputs_equal": torch.equal(out, ref),
        "layout_kept": out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format),
        "grad_rel_error": relative_error(leaves[0].grad, leaves[1].grad),
        "arbitrary_weights_rel_error": relative_error(fused.avg_pool_conv(x, arbitrary, gate=gate),
                                                      F.relu(F.conv2d(x, arbitrary, stride=2, groups=channels)) if gate
                                                      else F.conv2d(x, arbitrary, stride=2, groups=channels)),
        "used_kernel": fused.triton_enabled(x),
    }
    if gate:
        result["silent_windows"] = int(silent.sum()) // 4
        result["silent_windows_zero"] = bool((leaves[0].grad[silent] == 0).all())
        result["active_windows_equal_ungated"] = torch.equal(leaves[0].grad[~silent], leaves[2].grad[~silent])
    return result


def sum_pool_in_kernel_order(x: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`fused.sum_pool_2x2`'s arithmetic in PyTorch: each of the four taps (top-left, top-right,
    bottom-left, bottom-right) widened to fp32 and multiplied by ``scale`` in fp32, summed in that
    order, rounded once to ``x``'s dtype. The kernel computes exactly this (to bf16 it rounds to
    nearest on the GPU; Triton's interpreter truncates)."""
    w = torch.tensor(scale, dtype=torch.float32, device=x.device)
    total = x[..., 0::2, 0::2].float() * w
    for tap in (x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]):
        total = total + tap.float() * w
    return total.to(x.dtype)


def compare_sum_pool(device="cpu", shape=(4, 6, 8, 10), channels_last: bool = True,
                     dtype: torch.dtype = torch.float32) -> dict:
    """AlexNet's pooling on the fast backend (``alexnet.fast_sum_pool``: the pooling kernels with taps
    1.1 where they run) against ``alexnet.sum_pool`` on PSPs: random spike trains through the synaptic
    filter, T = 5 steps folded into the batch as the fast backend does. Outputs: the largest
    elementwise error relative to the reference, in units of the dtype's machine epsilon, and whether
    they equal :func:`sum_pool_in_kernel_order` bit for bit; input gradients; layouts."""
    from .models.alexnet import POOL_WEIGHT, fast_sum_pool, sum_pool

    gen = torch.Generator().manual_seed(7)
    spikes = (torch.rand(5, *shape, generator=gen) < 0.3).float()
    x = neurons.psp_filter(spikes, 3.0).flatten(0, 1).to(device=device, dtype=dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    seen = []
    leaves[0].register_hook(seen.append)  # the gradient as the pool returns it, before accumulation
    out, ref = fast_sum_pool(leaves[0]), sum_pool(leaves[1])
    weights = torch.randn(ref.shape, generator=gen).to(device)
    for y in (out, ref):
        (y.float() * weights).sum().backward()
    out, ref = out.detach(), ref.detach()
    error = (out.double() - ref.double()).abs() / (torch.finfo(dtype).eps * ref.double().abs())
    return {
        "output_max_eps_error": float(torch.nan_to_num(error, nan=0.0).max()),  # 0/0 where both are 0
        "kernel_order_equal": torch.equal(out, sum_pool_in_kernel_order(x, POOL_WEIGHT)),
        "output_dtype_equal": out.dtype == ref.dtype,
        "silent_fraction": float((ref == 0).float().mean()),
        "grad_rel_error": relative_error(leaves[0].grad, leaves[1].grad),
        "grads_equal": torch.equal(leaves[0].grad, leaves[1].grad),
        "layout_kept": out.is_contiguous(memory_format=memory_format),
        "grad_layout_kept": seen[0].stride() == x.stride(),
        "dtype": str(dtype).removeprefix("torch."),
        "used_kernel": fused.triton_enabled(x),
    }


def compare_shared_dropout(device="cpu", shape=(4, 80, 6, 8), dtype: torch.dtype = torch.float32) -> dict:
    """AlexNet's dropout (``alexnet.SharedDropout``, p = 0.2) with ``fused`` (the mask multiplied on
    :func:`fused.shared_mask_multiply` where it runs) against without, on the same mask: PSPs of
    random spike trains, T = 5 steps, ``shape`` a conv layer's ``[B, C, H, W]`` (channels_last, folded
    over time as the fast backend holds it; 80 channels make two column blocks, the second partial)
    or an FC layer's ``[B, F]``. Outputs and input gradients bit for bit (in bf16 within one
    rounding: Triton's interpreter truncates to bf16 where the GPU rounds to nearest), and layouts."""
    from .models.alexnet import SharedDropout

    gen = torch.Generator().manual_seed(11)
    spikes = (torch.rand(5, *shape, generator=gen) < 0.3).float()
    x = neurons.psp_filter(spikes, 3.0).to(device=device, dtype=dtype)
    if len(shape) == 4:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (5, shape[0]))
    dropout = SharedDropout(0.2).train()
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    seen = []
    leaves[0].register_hook(seen.append)
    outs = []
    for leaf, fused_path in zip(leaves, (True, False)):
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(5)
            outs.append(dropout(leaf, fused=fused_path))
    weights = torch.empty_like(x, dtype=torch.float32).copy_(torch.randn(x.shape, generator=gen))  # x's layout
    for y in outs:
        (y.float() * weights).sum().backward()
    out_fn = outs[0].grad_fn
    out, ref = (y.detach() for y in outs)
    live = x != 0
    return {
        "outputs_equal": torch.equal(out, ref),
        "output_rel_error": relative_error(out.float(), ref.float()),
        "grads_equal": torch.equal(leaves[0].grad, leaves[1].grad),
        "grad_rel_error": relative_error(leaves[0].grad.float(), leaves[1].grad.float()),
        "dropped_fraction": float((ref[live] == 0).float().mean()),
        "layout_kept": out.stride() == x.stride(),
        "grad_layout_kept": seen[0].stride() == x.stride(),
        "dtype": str(dtype).removeprefix("torch."),
        # the kernel ran if autograd recorded its function, not PyTorch's multiply
        "used_kernel": type(out_fn).__name__.startswith("_SharedMaskFunction"),
    }


def compare_lif_bias(device="cpu", constant_input: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    """cnn7's conv bias added in the LIF kernel (``fused.lif_hard_reset`` with ``bias``) against the
    kernel on the current plus the bias added by PyTorch in the current's dtype (what the fast path
    ran before): T = 6 steps of ``[B, C, H, W]`` in channels_last, or one step given with ``steps``
    (the first layer). Spikes and the current's gradient bit for bit; the bias gradient, a sum in
    another order, within rounding. In bf16 the values are sixteenths, whose sums bf16 holds exactly:
    Triton's interpreter truncates to bf16 where PyTorch and the GPU round to nearest."""
    gen = torch.Generator().manual_seed(13)
    shape = (3, 20, 5, 6) if constant_input else (6, 3, 20, 5, 6)

    def draw(size, scale):
        values = torch.randn(size, generator=gen) * scale
        return (values * 16).round() / 16 if dtype == torch.bfloat16 else values

    current = draw(shape, 0.6).to(device=device, dtype=dtype)
    if constant_input:
        current = current.contiguous(memory_format=torch.channels_last)
    else:
        current = current.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    bias = draw(20, 0.3).to(device)
    steps = 6 if constant_input else None
    (c0, b0), (c1, b1) = [(current.clone().requires_grad_(), bias.clone().requires_grad_()) for _ in range(2)]
    out = fused.lif_hard_reset(c0, 0.5, 0.25, 0.5, steps=steps, bias=b0)
    used = out is not None
    if not used:
        out = neurons.lif_hard_reset(c0, 0.5, 0.25, 0.5, steps=steps, bias=b0)
    biased = c1 + b1.view(-1, 1, 1).to(dtype)
    ref = neurons.lif_hard_reset_fast(biased, 0.5, 0.25, 0.5, steps=steps)
    weights = torch.randn(ref.shape, generator=gen).to(device)
    for y in (out, ref):
        (y.float() * weights).sum().backward()
    return {
        "spikes_equal": torch.equal(out, ref),
        "active_fraction": float(ref.detach().float().mean()),
        "current_grads_equal": torch.equal(c0.grad, c1.grad),
        "bias_grad_rel_error": relative_error(b0.grad, b1.grad),
        "layout_kept": out[0].stride() == (current if constant_input else current[0]).stride(),
        "dtype": str(dtype).removeprefix("torch."),
        "used_kernel": used,
    }


CONV_WEIGHT_SHAPE = (40, 16, 3, 3)  # 5,760 weights: several kernel blocks and a partial last one
WEIGHT_CHECK_SIZE = math.prod(CONV_WEIGHT_SHAPE)


def _weight_like(values: torch.Tensor, channels_last: bool, device) -> torch.Tensor:
    """``values`` as a flat weight, or as a conv weight in channels_last, the layout of every conv
    weight on the fast backend."""
    if not channels_last:
        return values.to(device)
    return values.reshape(CONV_WEIGHT_SHAPE).to(device, memory_format=torch.channels_last)


def compare_penalty(device="cpu", channels_last: bool = False) -> dict:
    """``cbp_kernel.constraint_penalty`` against ``sum(lambda * cbp.constraint(...))`` for both modes and
    several windows: value within rounding, gradient exact and in the weight's layout."""
    gen = torch.Generator().manual_seed(5)
    worst_value, grads_equal, layout_kept = 0.0, True, True
    for mode in ("bin", "ter"):
        for g in (1, 2, 3, 10, 20):
            w = _weight_like(torch.randn(WEIGHT_CHECK_SIZE, generator=gen) * 0.6, channels_last, device).requires_grad_()
            lam = _weight_like(torch.rand(WEIGHT_CHECK_SIZE, generator=gen), channels_last, device)
            scale = torch.tensor(0.37, device=device)
            fast = cbp_kernel.constraint_penalty(w, lam, scale, mode, cbp.window(g))
            if fast is None:
                return {"used_kernel": False}
            g_fast, = torch.autograd.grad(fast * 1.5, w)
            ref = (lam * cbp.constraint(w, scale, mode, g)).sum()
            g_ref, = torch.autograd.grad(ref * 1.5, w)
            worst_value = max(worst_value, abs(fast.item() - ref.item()) / max(abs(ref.item()), 1e-30))
            grads_equal = grads_equal and torch.equal(g_fast, g_ref)
            layout_kept = layout_kept and g_fast.stride() == w.stride()
    return {"value_rel_error": worst_value, "grads_equal": grads_equal, "layout_kept": layout_kept, "used_kernel": True}


def compare_quantizer(device="cpu", channels_last: bool = False) -> dict:
    """``fused.quantize_weight`` against ``quant.quantize`` cast to the output dtype, for both modes
    and fp32/bf16 outputs, with weights exactly on the tie points (0, +-s/2) mixed in: equal bits, in
    the weight's layout."""
    gen = torch.Generator().manual_seed(6)
    equal, layout_kept = True, True
    for mode in ("bin", "ter"):
        scale = torch.tensor(0.37, device=device)
        values = torch.randn(WEIGHT_CHECK_SIZE, generator=gen) * 0.5
        values[:4] = torch.tensor([0.0, -0.0, 0.185, -0.185])  # 0.185 = s/2 in fp32, exactly
        w = _weight_like(values, channels_last, device)
        for dtype in (torch.float32, torch.bfloat16):
            fast = fused.quantize_weight(w, scale, mode, dtype)
            if fast is None:
                return {"used_kernel": False}
            equal = equal and fast.dtype == dtype and torch.equal(fast, quant.quantize(w, scale, mode).to(dtype))
            layout_kept = layout_kept and fast.stride() == w.stride()
    return {"outputs_equal": equal, "layout_kept": layout_kept, "used_kernel": True}


def _weight_step_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """``steps`` CBP training steps of ``model`` (SGD with weight decay and momentum, clipping by value
    tight enough to bite, nonzero multipliers, g = 3): its weights, momentum buffers and objectives."""
    from .train.loop import StepRule, train_step  # the training package is not needed elsewhere here

    groups = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": 1e-3},
              {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.9)
    method = cbp.CBP(model, optimizer, lambda_lr=1e-3)
    method.g = 3
    gen = torch.Generator().manual_seed(8)
    for (name, layer), lam in zip(method.layers, method.multipliers.values()):
        lam.data.copy_(torch.rand(lam.shape, generator=gen) * 0.05)
        lam.data[layer.weight.abs() > 0.99] = 0  # the loss alone moves these, some of them past the clamp
    # A CBP step clamps the latent quantized weights only: the fp32 stages' clamp of every weight
    # (here tight enough to bind on the full-precision layer) must be ignored on both paths.
    rule = StepRule(loss="ce", grad_clip="value", grad_clip_max=0.02, weight_clamp=0.05)
    objectives = [float(train_step(model, model, x, y, optimizer, rule, method)[0]) for _ in range(steps)]
    return {
        "used_kernel": method.weight_step_usable(optimizer, rule.grad_clip),
        "weights": [p.detach().clone() for p in model.parameters()],
        "buffers": [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()],
        "objectives": objectives,
    }


def compare_weight_step(device="cpu", steps: int = 3) -> dict:
    """:meth:`cbp.CBP.weight_step` (one kernel pass per quantized weight) against the eager passes it
    replaces, over ``steps`` training steps of a small model with a channels_last binary conv, a
    ternary linear layer and a full-precision one, some latent weights at the clamp: the weights,
    momentum buffers and objectives of both, within rounding."""
    gen = torch.Generator().manual_seed(7)
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation, reproducibly
        torch.manual_seed(7)
        model = torch.nn.Sequential(quant.QuantConv2d(4, 8, 3, padding=1, quant="bin"), torch.nn.Flatten(),
                                    quant.QuantLinear(8 * 6 * 6, 16, quant="ter"), torch.nn.Linear(16, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.3)
            layer.weight.view(-1)[:12] = torch.tensor([0.999, -0.999]).repeat(6)  # steps push some past +-1
            layer.init_scale_()
    model = model.to(device, memory_format=torch.channels_last)
    x = torch.randn(6, 4, 6, 6, generator=gen).to(device, memory_format=torch.channels_last)
    y = torch.randint(10, (6,), generator=gen).to(device)
    reference_model = copy.deepcopy(model)
    fast = _weight_step_run(model, x, y, steps)
    if not fast["used_kernel"]:
        return {"used_kernel": False}
    with fused.pieces_disabled("weight_step"):
        reference = _weight_step_run(reference_model, x, y, steps)
    return {
        "weights_rel_error": max(relative_error(a, b) for a, b in zip(fast["weights"], reference["weights"])),
        "buffers_rel_error": max(relative_error(a, b) for a, b in zip(fast["buffers"], reference["buffers"])),
        "objectives_rel_error": max(abs(a - b) / abs(b) for a, b in zip(fast["objectives"], reference["objectives"])),
        "clamped_weights": int(sum((w.abs() == 1).sum() for w in reference["weights"][:3:2])),
        "reference_used_kernel": reference["used_kernel"],
        "used_kernel": True,
    }


# The fused sum pool's largest error against AlexNet's sum_pool, in units of the dtype's eps. The
# kernel rounds four products and three sums in fp32, the reference three sums and a product; on
# non-negative PSPs (no cancellation) each rounding adds at most half an eps: 3.5 eps in fp32. In bf16
# the reference rounds to bf16 twice (the sum, then its product by 1.1), the kernel once (a whole eps
# under Triton's interpreter, which truncates), beside which the fp32 roundings are negligible: 2 eps.
SUM_POOL_EPS_BOUND = {"float32": 4.0, "bfloat16": 2.0}

# check name -> (the fused piece it checks, the check)
LAYER_CHECKS: Dict[str, Tuple[str, Callable[..., dict]]] = {
    "if_layer": ("if_layer", compare_if_layer),
    "if_layer_channels_last": ("if_layer", lambda device: compare_if_layer(device, channels_last=True)),
    "if_layer_constant_input": ("if_layer", lambda device: compare_if_layer(device, constant_input=True)),
    "if_layer_constant_input_channels_last": (
        "if_layer", lambda device: compare_if_layer(device, channels_last=True, constant_input=True)),
    "if_layer_constant_input_dropout": (
        "if_layer", lambda device: compare_if_layer(device, T=20, constant_input=True, dropout=0.25)),
    "if_layer_constant_input_dropout_channels_last": (
        "if_layer",
        lambda device: compare_if_layer(device, T=6, channels_last=True, constant_input=True, dropout=0.25)),
    "dropout": ("if_layer", dropout_statistics),
    "dropout_uniform": ("if_layer", lambda device: dropout_statistics(device, p=0.3, T=6)),
    "pool_channels_last": ("pool", compare_pool),
    "pool_contiguous": ("pool", lambda device: compare_pool(device, channels_last=False)),
    "pool_gated": ("pool", lambda device: compare_pool(device, gate=True)),
    "pool_int64_index": ("pool", compare_pool_int64_index),
    # channels_last blocks of 64 channels: two of them, the second partial, and partial pixel blocks
    "pool_channel_blocks": ("pool", lambda device: compare_pool(device, shape=(3, 80, 6, 4))),
    # VGG16's last pool: a 1x1 output is contiguous in both layouts, its channels_last input is not
    "pool_to_one_pixel": ("pool", lambda device: compare_pool(device, shape=(4, 16, 2, 2))),
    "sum_pool_channels_last": ("pool", compare_sum_pool),
    "sum_pool_contiguous": ("pool", lambda device: compare_sum_pool(device, channels_last=False)),
    "sum_pool_bf16": ("pool", lambda device: compare_sum_pool(device, dtype=torch.bfloat16)),
    "penalty": ("penalty", compare_penalty),
    "penalty_channels_last": ("penalty", lambda device: compare_penalty(device, channels_last=True)),
    "quantize": ("quantize", compare_quantizer),
    "quantize_channels_last": ("quantize", lambda device: compare_quantizer(device, channels_last=True)),
    "weight_step": ("weight_step", compare_weight_step),
    "lif_bias": ("lif_bias", compare_lif_bias),
    "lif_bias_constant_input": ("lif_bias", lambda device: compare_lif_bias(device, constant_input=True)),
    "lif_bias_bf16": ("lif_bias", lambda device: compare_lif_bias(device, dtype=torch.bfloat16)),
    "shared_dropout_conv": ("shared_mask", compare_shared_dropout),
    "shared_dropout_fc": ("shared_mask", lambda device: compare_shared_dropout(device, shape=(6, 40))),
    "shared_dropout_bf16": ("shared_mask", lambda device: compare_shared_dropout(device, dtype=torch.bfloat16)),
}


def layer_checks(device="cpu") -> Dict[str, dict]:
    """Every fused piece beyond the neurons, each on fresh random inputs."""
    return {name: check(device) for name, (_, check) in LAYER_CHECKS.items()}


def layer_check_ok(name: str, r: dict) -> bool:
    """Whether one result of :func:`layer_checks` passes (the tests and the GPU benchmark use this)."""
    if name.startswith("if_layer"):
        return (r["outputs_equal"] and r["inference_equal"] and 0.05 < r["active_fraction"] < 0.95
                and r["grad_rel_error"] < 1e-5 and (r["grad_layout_kept"] or not r["used_kernel"]))
    if name.startswith("dropout"):
        q = r["expected_keep"]
        return (all(abs(k - q) < 0.02 for k in r["keep_rate_per_step"])
                and abs(r["joint_keep_rate_consecutive_steps"] - q * q) < 0.02
                and len(r["values"]) == 2 and abs(r["values"][1] - r["expected_value"]) < 1e-6 * r["expected_value"]
                and r["fresh_mask_per_call"] and r["outputs_equal_given_mask"]
                and r["grad_rel_error_given_mask"] < 1e-5 and r["p0_equals_no_dropout"])
    if name.startswith("pool"):
        gated = "silent_windows" not in r or (
            r["silent_windows"] > 0 and r["silent_windows_zero"] and r["active_windows_equal_ungated"])
        return (r["outputs_equal"] and r["layout_kept"] and r["grad_rel_error"] < 1e-6
                and r["arbitrary_weights_rel_error"] < 1e-6 and gated)
    if name.startswith("sum_pool"):
        # Each input's gradient is the output's times 1.1, one rounding in both: equal. In bf16 the
        # kernel's bit-exactness is not required: Triton's interpreter casts fp32 to bf16 by truncation
        # where the GPU rounds to nearest, which holds the gradient to one bf16 eps only.
        fp32 = r["dtype"] == "float32"
        kernel_exact = r["kernel_order_equal"] or not (fp32 and r["used_kernel"])
        grads = r["grads_equal"] if fp32 else r["grad_rel_error"] < 2**-7
        return (kernel_exact and grads
                and r["output_max_eps_error"] <= SUM_POOL_EPS_BOUND[r["dtype"]] and r["output_dtype_equal"]
                and r["layout_kept"] and r["grad_layout_kept"] and 0 < r["silent_fraction"] < 0.5)
    if name.startswith("penalty"):
        return not r["used_kernel"] or (r["grads_equal"] and r["value_rel_error"] < 1e-5 and r["layout_kept"])
    if name.startswith("quantize"):
        return not r["used_kernel"] or (r["outputs_equal"] and r["layout_kept"])
    if name == "weight_step":
        return not r["used_kernel"] or (r["weights_rel_error"] < 1e-5 and r["buffers_rel_error"] < 1e-5
                                        and r["objectives_rel_error"] < 1e-5 and r["clamped_weights"] > 0
                                        and not r["reference_used_kernel"])
    if name.startswith("lif_bias"):
        return (r["spikes_equal"] and r["current_grads_equal"] and r["layout_kept"] and 0.05 < r["active_fraction"] < 0.95
                and r["bias_grad_rel_error"] < (1e-5 if r["dtype"] == "float32" else 2**-7))
    if name.startswith("shared_dropout"):
        same = (r["outputs_equal"] and r["grads_equal"]) if r["dtype"] == "float32" else (
            r["output_rel_error"] < 2**-7 and r["grad_rel_error"] < 2**-7)
        return same and r["layout_kept"] and r["grad_layout_kept"] and 0.1 < r["dropped_fraction"] < 0.3
    raise KeyError(f"unknown layer check {name!r}")


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
    """Output steps, every neuron's spikes and the gradients of a fixed linear loss: every
    parameter's, and the input's under the key ``"(input)"``."""
    x = x.detach().requires_grad_()
    model.set_backend(backend)
    model.zero_grad(set_to_none=True)
    for _, n in model.spiking_neurons():
        n.monitor = True
    out = model.forward_steps(x)
    (out.float() * out_weights).sum().backward()
    spikes = [n.last_spikes for _, n in model.spiking_neurons()]
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    grads["(input)"] = x.grad
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
