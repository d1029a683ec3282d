"""Spike functions: a Heaviside step forward, a surrogate derivative backward.

Each surrogate is an ``autograd.Function`` over the *distance to threshold* ``x = u - V_th``,
so neurons differ only in which surrogate and which comparison (``>`` or ``>=``) they use.
"""
from __future__ import annotations

import math

import torch


class ATanSpike(torch.autograd.Function):
    """H(x) with ``>=``; backward (alpha/2) / (1 + (pi*alpha*x/2)^2) (docs/method.md §E.4, spikingjelly ATan)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = (alpha / 2) / (1 + (math.pi * alpha / 2 * x) ** 2)
        return grad_out * grad, None


class BoxcarSpike(torch.autograd.Function):
    """H(x) with strict ``>``; backward 1/(2*lens) inside |x| < lens, else 0 (docs/method.md §D.2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lens: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.lens = lens
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        lens = ctx.lens
        grad = (x.abs() < lens).to(grad_out.dtype) / (2 * lens)
        return grad_out * grad, None


def atan_spike(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return ATanSpike.apply(x, alpha)


def boxcar_spike(x: torch.Tensor, lens: float = 0.5) -> torch.Tensor:
    return BoxcarSpike.apply(x, lens)
