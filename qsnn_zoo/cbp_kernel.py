"""CBP's penalty sum(lambda * C_g(W)) and its weight gradient in one Triton pass each way: the fast
path of :meth:`qsnn_zoo.cbp.CBP.penalty`, written operation for operation after
:func:`qsnn_zoo.cbp.constraint_value` and :func:`qsnn_zoo.cbp.constraint_grad` and tested equal to
them (``qsnn_zoo.testing.compare_penalty``). On the GPU it replaces ~25 elementwise passes over the
weights per layer and step.

And the whole update of a quantized weight under SGD with clipping by value, in one pass: the
penalty's gradient added to the network's, the clip, weight decay, momentum, the step and CBP's clamp
(:meth:`qsnn_zoo.cbp.CBP.weight_step`), where the eager step makes six passes (penalty backward,
gradient accumulation, clip, the fused SGD, clamp) over weights that, in cnn7, number 62 million.
Tested against those passes (``qsnn_zoo.testing.compare_weight_step``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch.autograd.graph import increment_version

from .layers.fused import BLOCK, EXACT_ARITHMETIC, dense_layout, grid_1d, piece_enabled, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _interval_offset(w, s, TERNARY: tl.constexpr):
        """w - q_p, as cbp._offset_in_interval."""
        if TERNARY:
            x = tl.where(w < 0, w + s, w)
        else:
            x = w + s
        return x

    @triton.jit
    def _penalty_operands(w_ptr, lam_ptr, scale_ptr, N, TERNARY: tl.constexpr, BLOCK: tl.constexpr):
        """This block's weights and multipliers, the scale s, the level gap and its half."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        lam = tl.load(lam_ptr + offs, mask=mask, other=0.0)
        s = tl.load(scale_ptr)
        if TERNARY:
            gap = s
        else:
            gap = 2 * s
        return offs, mask, w, lam, s, gap, gap / 2

    @triton.jit
    def _penalty_forward_kernel(w_ptr, lam_ptr, scale_ptr, partial_ptr, N, u, TERNARY: tl.constexpr,
                                BLOCK: tl.constexpr):
        offs, mask, w, lam, s, gap, half = _penalty_operands(w_ptr, lam_ptr, scale_ptr, N, TERNARY, BLOCK)
        # cbp.constraint_value, operation for operation
        outside = tl.maximum(tl.abs(w) - s, 0.0)
        x = _interval_offset(tl.minimum(tl.maximum(w, -s), s), s, TERNARY)
        d = tl.minimum(x, gap - x)
        inside = tl.where(d <= u * half, 2 * d, 0.0)
        c = tl.where(outside > 0, 2 * outside, inside)
        tl.store(partial_ptr + tl.program_id(0), tl.sum(lam * c, axis=0))

    @triton.jit
    def _penalty_backward_kernel(w_ptr, lam_ptr, scale_ptr, gout_ptr, gw_ptr, N, u, TERNARY: tl.constexpr,
                                 BLOCK: tl.constexpr):
        offs, mask, w, lam, s, gap, half = _penalty_operands(w_ptr, lam_ptr, scale_ptr, N, TERNARY, BLOCK)
        tl.store(gw_ptr + offs, tl.load(gout_ptr) * lam * _constraint_slope(w, s, gap, half, u, TERNARY), mask=mask)

    @triton.jit
    def _constraint_slope(w, s, gap, half, u, TERNARY: tl.constexpr):
        """cbp.constraint_grad, operation for operation."""
        x = _interval_offset(w, s, TERNARY)
        grad = tl.where(x < u * half, 2.0, tl.where(x >= gap - u * half, -2.0, 0.0))
        grad = tl.where(w < -s, -2.0, grad)
        return tl.where(w >= s, 2.0, grad)

    @triton.jit
    def _sgd_weight_step_kernel(w_ptr, lam_ptr, scale_ptr, grad_ptr, buf_ptr, N, u, lr, weight_decay, momentum,
                                clip, bound, TERNARY: tl.constexpr, HAS_GRAD: tl.constexpr, DECAY: tl.constexpr,
                                FIRST: tl.constexpr, BLOCK: tl.constexpr):
        offs, mask, w, lam, s, gap, half = _penalty_operands(w_ptr, lam_ptr, scale_ptr, N, TERNARY, BLOCK)
        # The eager step's passes in its order: autograd adds the penalty's gradient to the network's,
        # clip_grad_value_ clamps (NaN stays NaN, as in torch.clamp), SGD decays, accumulates the
        # momentum (dampening 0; the first step's buffer is the gradient) and steps, CBP clamps.
        g = lam * _constraint_slope(w, s, gap, half, u, TERNARY)
        if HAS_GRAD:
            g = tl.load(grad_ptr + offs, mask=mask, other=0.0) + g
        g = tl.clamp(g, -clip, clip, propagate_nan=tl.PropagateNan.ALL)
        if DECAY:
            g = g + weight_decay * w
        if FIRST:
            buf = g
        else:
            buf = momentum * tl.load(buf_ptr + offs, mask=mask, other=0.0) + g
        w = tl.clamp(w - lr * buf, -bound, bound, propagate_nan=tl.PropagateNan.ALL)
        tl.store(buf_ptr + offs, buf, mask=mask)
        tl.store(w_ptr + offs, w, mask=mask)


class _PenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, multiplier, scale, ternary, u):
        n = weight.numel()
        partial = torch.empty(triton.cdiv(n, BLOCK), dtype=torch.float32, device=weight.device)
        s = scale.detach().to(torch.float32).reshape(1)
        _penalty_forward_kernel[grid_1d(n)](weight, multiplier, s, partial, n, u, TERNARY=ternary, BLOCK=BLOCK,
                                          **EXACT_ARITHMETIC)
        ctx.save_for_backward(weight, multiplier, s)
        ctx.constants = (ternary, u)
        return partial.sum()

    @staticmethod
    def backward(ctx, grad_out):
        weight, multiplier, s = ctx.saved_tensors
        ternary, u = ctx.constants
        grad_w = torch.empty_like(weight)  # a dense weight's strides, kept
        _penalty_backward_kernel[grid_1d(weight.numel())](weight, multiplier, s, grad_out.detach().float().reshape(1),
                                                        grad_w, weight.numel(), u, TERNARY=ternary, BLOCK=BLOCK,
                                                        **EXACT_ARITHMETIC)
        return grad_w, None, None, None, None


def constraint_penalty(weight: torch.Tensor, multiplier: torch.Tensor, scale: torch.Tensor, mode: str,
                       u: float) -> Optional[torch.Tensor]:
    """``(multiplier * cbp.constraint_value(weight, scale, mode, u)).sum()`` with the gradient in
    ``weight`` of :class:`qsnn_zoo.cbp._Constraint`, in one pass forward and one backward; None
    where no kernel runs (the caller then takes the reference). Block-wise sums: the value equals
    the reference's within rounding, the gradient exactly."""
    usable = (
        piece_enabled("penalty", weight)
        and weight.dtype == torch.float32
        and multiplier.dtype == torch.float32
        and dense_layout(weight)
        and multiplier.stride() == weight.stride()  # walked as one flat run each, element for element
        and not multiplier.requires_grad
    )
    if not usable:
        return None
    return _PenaltyFunction.apply(weight, multiplier, scale, mode == "ter", float(u))


def _walks_with(t: Optional[torch.Tensor], weight: torch.Tensor) -> bool:
    """Whether the kernel can walk ``t`` as one flat fp32 run beside ``weight`` (None: nothing to walk)."""
    return t is None or (t.dtype == torch.float32 and t.stride() == weight.stride() and t.device == weight.device)


def _sgd_group(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> Optional[dict]:
    """The SGD parameter group that updates ``weight``, where its rule is the kernel's: momentum,
    no dampening, Nesterov or maximisation."""
    if not isinstance(optimizer, torch.optim.SGD):
        return None
    for group in optimizer.param_groups:
        if any(p is weight for p in group["params"]):
            plain = group["momentum"] > 0 and group["dampening"] == 0 and not group["nesterov"]
            return group if plain and not group.get("maximize", False) else None
    return None


def sgd_weight_step_usable(weights: List[torch.Tensor], multipliers: List[torch.Tensor],
                           optimizer: torch.optim.Optimizer, grad_clip: str) -> bool:
    """Whether :func:`sgd_weight_step` can update all of ``weights``: decided before the backward,
    since their penalty then needs no autograd (AccumulateGrad gives a dense parameter's gradient
    its strides)."""
    if grad_clip != "value":
        return False
    for weight, lam in zip(weights, multipliers):
        buf = optimizer.state.get(weight, {}).get("momentum_buffer")
        if not (piece_enabled("weight_step", weight) and weight.dtype == torch.float32 and dense_layout(weight)
                and _walks_with(lam, weight) and _walks_with(buf, weight) and _sgd_group(optimizer, weight)):
            return False
    return True


def sgd_weight_step(layers: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]],
                    optimizer: torch.optim.Optimizer, u: float, clip: float, bound: float) -> None:
    """Updates each ``(weight, multiplier, scale, mode)`` of ``layers`` in place as the eager step
    would after the backward (penalty gradient, clip by value, SGD, clamp to +-``bound``), keeping its
    momentum in ``optimizer.state``; then sets the weight's gradient to None, so that the clip and
    ``optimizer.step()`` that follow for the other parameters skip it."""
    for weight, lam, scale, mode in layers:
        group = _sgd_group(optimizer, weight)
        state: Dict = optimizer.state[weight]
        first = state.get("momentum_buffer") is None
        if first:
            state["momentum_buffer"] = torch.empty_like(weight)
        grad = weight.grad
        if grad is not None and grad.stride() != weight.stride():  # the kernel walks both as one flat run
            grad = torch.empty_like(weight).copy_(grad)
        s = scale.detach().to(torch.float32).reshape(1)
        with torch.no_grad():
            _sgd_weight_step_kernel[grid_1d(weight.numel())](
                weight, lam.detach(), s, weight if grad is None else grad, state["momentum_buffer"], weight.numel(),
                float(u), float(group["lr"]), float(group["weight_decay"]), float(group["momentum"]), float(clip),
                float(bound), TERNARY=mode == "ter", HAS_GRAD=grad is not None, DECAY=group["weight_decay"] != 0,
                FIRST=first, BLOCK=BLOCK, **EXACT_ARITHMETIC)
        increment_version(weight)  # an in-place update, as the optimizer's: Q(W) caches key on versions
        weight.grad = None
