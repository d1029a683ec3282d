"""Quantized conv and linear layers with latent fp32 weights (docs/method.md §B.1, §B.2).

The forward pass uses Q(W) = scale * code, code in {-1, +1} (binary) or {-1, 0, +1} (ternary);
the backward pass is the straight-through identity dL/dW := dL/dQ(W). The scale is a buffer:
stored with the model, never trained.

Q(W) is made in the dtype the conv or linear will compute in (bf16 under autocast), by one fused
kernel on the GPU (:func:`.fused.quantize_weight`) and by :func:`quantize` elsewhere. Without
autograd (inference) a layer keeps its Q(W) until its weights or scale change in place or are
replaced, so evaluation does not rebuild it on every batch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

QUANT_MODES = ("bin", "ter")


def _check_mode(mode: str) -> None:
    if mode not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES} or None, got {mode!r}")


def weight_codes(weight: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """The integer level of every weight, as int8 in {-1, +1} or {-1, 0, +1}.

    Ties are resolved deterministically, where the original code's sign(0) = 0 would give
    off-level values (docs/method.md §F.2): a binary zero goes to +1, a ternary weight at exactly +-s/2 to 0.
    """
    _check_mode(mode)
    if mode == "bin":
        return (weight >= 0).to(torch.int8) * 2 - 1
    half = scale / 2
    return (weight > half).to(torch.int8) - (weight < -half).to(torch.int8)


def quantize(weight: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """Q(W) = scale * code, in the weight's dtype."""
    return weight_codes(weight, scale, mode).to(weight.dtype) * scale.to(weight.dtype)


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a conv or linear on ``weight``'s device computes in: autocast's, else the weight's."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def quantize_as(weight: torch.Tensor, scale: torch.Tensor, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """:func:`quantize` written in ``dtype``: one kernel pass on the GPU, the reference elsewhere."""
    from . import fused  # imported on use: only the GPU path needs Triton

    q = fused.quantize_weight(weight, scale, mode, dtype)
    return quantize(weight, scale, mode).to(dtype) if q is None else q


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, scale, mode, dtype):
        ctx.weight_dtype = weight.dtype
        return quantize_as(weight.detach(), scale, mode, dtype)

    @staticmethod
    def backward(ctx, grad_q):
        return grad_q.to(ctx.weight_dtype), None, None, None


def quantize_ste(weight: torch.Tensor, scale: torch.Tensor, mode: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Q(W) in ``dtype`` (default: the weight's) forward, identity backward (docs/method.md §B.2)."""
    _check_mode(mode)
    return _QuantizeSTE.apply(weight, scale, mode, weight.dtype if dtype is None else dtype)


class _QuantMixin:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`."""

    quant: str
    weight: nn.Parameter
    scale: torch.Tensor

    def __init__(self, *args, quant: str = "bin", **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the torch layer's own arguments
        _check_mode(quant)
        self.quant = quant
        self.register_buffer("scale", torch.ones(()))
        self._inference_cache: Optional[Tuple[tuple, torch.Tensor]] = None
        self.init_scale_()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", quant={self.quant}"

    @torch.no_grad()
    def init_scale_(self) -> None:
        """s = mean|W| of the current (pretrained fp32) weights, once at the start of CBP (docs/method.md §B.1)."""
        self.scale.copy_(self.weight.detach().abs().mean())

    def quantized_weight(self) -> torch.Tensor:
        """Q(W) in the compute dtype: differentiable (STE) under autograd, cached without it."""
        dtype = compute_dtype(self.weight)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return quantize_ste(self.weight, self.scale, self.quant, dtype)
        # In-place updates (optimizer steps, clamps, load_state_dict) bump a tensor's version, and a
        # replaced tensor has another address, so the key changes whenever Q(W) would.
        w, s = self.weight, self.scale
        key = (w.device, w.data_ptr(), w._version, s.data_ptr(), s._version, dtype, tuple(w.shape))
        cache = self._inference_cache
        if cache is None or cache[0] != key:
            cache = self._inference_cache = (key, quantize_as(w.detach(), s, self.quant, dtype))
        return cache[1]

    def codes(self) -> torch.Tensor:
        return weight_codes(self.weight.detach(), self.scale, self.quant)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def make_conv2d(in_channels: int, out_channels: int, quant: Optional[str], **kwargs) -> nn.Conv2d:
    if quant is None:
        return nn.Conv2d(in_channels, out_channels, **kwargs)
    return QuantConv2d(in_channels, out_channels, quant=quant, **kwargs)


def make_linear(in_features: int, out_features: int, quant: Optional[str], **kwargs) -> nn.Linear:
    if quant is None:
        return nn.Linear(in_features, out_features, **kwargs)
    return QuantLinear(in_features, out_features, quant=quant, **kwargs)


def quantized_modules(model: nn.Module):
    """``(name, module)`` for every quantized layer of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantMixin)]


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, _QuantMixin)
