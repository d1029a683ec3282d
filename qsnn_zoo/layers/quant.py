"""Quantized conv and linear layers with latent fp32 weights (SPEC B.1, B.2).

The forward pass uses Q(W) = scale * code, code in {-1, +1} (binary) or {-1, 0, +1} (ternary);
the backward pass is the straight-through identity dL/dW := dL/dQ(W). The scale is a buffer:
stored with the model, never trained.
"""
from __future__ import annotations

from typing import Optional

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
    off-level values (SPEC G.11): a binary zero goes to +1, a ternary weight at exactly +-s/2 to 0.
    """
    _check_mode(mode)
    if mode == "bin":
        return (weight >= 0).to(torch.int8) * 2 - 1
    half = scale / 2
    return (weight > half).to(torch.int8) - (weight < -half).to(torch.int8)


def quantize(weight: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """Q(W) = scale * code, in the weight's dtype."""
    return weight_codes(weight, scale, mode).to(weight.dtype) * scale.to(weight.dtype)


def quantize_ste(weight: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """Q(W) forward, identity backward."""
    return weight + (quantize(weight, scale, mode) - weight).detach()


class _QuantMixin:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`."""

    quant: str
    weight: nn.Parameter
    scale: torch.Tensor

    def _init_quant(self, quant: str) -> None:
        _check_mode(quant)
        self.quant = quant
        self.register_buffer("scale", torch.ones(()))
        self.init_scale_()

    @torch.no_grad()
    def init_scale_(self) -> None:
        """s = mean|W| of the current (pretrained fp32) weights, once at the start of CBP (SPEC B.1)."""
        self.scale.copy_(self.weight.detach().abs().mean())

    def quantized_weight(self) -> torch.Tensor:
        return quantize_ste(self.weight, self.scale, self.quant)

    def codes(self) -> torch.Tensor:
        return weight_codes(self.weight.detach(), self.scale, self.quant)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def __init__(self, *args, quant: str = "bin", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(quant)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", quant={self.quant}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    def __init__(self, *args, quant: str = "bin", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(quant)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", quant={self.quant}"

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
