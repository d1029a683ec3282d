"""CBP's penalty sum(lambda * C_g(W)) and its weight gradient in one Triton pass each way: the fast
path of :meth:`qsnn_zoo.cbp.CBP.penalty`, written operation for operation after
:func:`qsnn_zoo.cbp.constraint_value` and :func:`qsnn_zoo.cbp.constraint_grad` and tested equal to
them (``qsnn_zoo.testing.compare_penalty``). On the GPU it replaces ~25 elementwise passes over the
weights per layer and step.
"""
from __future__ import annotations

from typing import Optional

import torch

from .layers.fused import _LAUNCH, BLOCK, _grid, dense_layout, piece_enabled, triton

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
        # cbp.constraint_grad, operation for operation
        x = _interval_offset(w, s, TERNARY)
        grad = tl.where(x < u * half, 2.0, tl.where(x >= gap - u * half, -2.0, 0.0))
        grad = tl.where(w < -s, -2.0, grad)
        grad = tl.where(w >= s, 2.0, grad)
        tl.store(gw_ptr + offs, tl.load(gout_ptr) * lam * grad, mask=mask)


class _PenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, multiplier, scale, ternary, u):
        n = weight.numel()
        partial = torch.empty(triton.cdiv(n, BLOCK), dtype=torch.float32, device=weight.device)
        s = scale.detach().to(torch.float32).reshape(1)
        _penalty_forward_kernel[_grid(n)](weight, multiplier, s, partial, n, u, TERNARY=ternary, BLOCK=BLOCK,
                                          **_LAUNCH)
        ctx.save_for_backward(weight, multiplier, s)
        ctx.constants = (ternary, u)
        return partial.sum()

    @staticmethod
    def backward(ctx, grad_out):
        weight, multiplier, s = ctx.saved_tensors
        ternary, u = ctx.constants
        grad_w = torch.empty_strided(weight.shape, weight.stride(), dtype=weight.dtype, device=weight.device)
        _penalty_backward_kernel[_grid(weight.numel())](weight, multiplier, s, grad_out.detach().float().reshape(1),
                                                        grad_w, weight.numel(), u, TERNARY=ternary, BLOCK=BLOCK,
                                                        **_LAUNCH)
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
