"""CBP: constrained backpropagation with pseudo-Lagrange multipliers (docs/method.md §B).

Works on any model whose quantized layers are :class:`~qsnn_zoo.layers.quant.QuantConv2d` or
:class:`~qsnn_zoo.layers.quant.QuantLinear`. The weight step adds ``penalty()`` = sum of lambda * C_g(W)
to the loss; once per epoch ``end_epoch(lagsum)`` runs Algorithm 1 (g schedule, multiplier ascent).
Everything is computed in closed form over whole tensors.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .cbp_kernel import constraint_penalty, sgd_weight_step, sgd_weight_step_usable
from .layers.quant import QUANT_MODES, quantized_modules

LAGSUM_START = 1e10  # the code's "lagsum_max": any first epoch counts as a decrease
G_LR_DROP = 20  # the learning rate drops once, when g reaches 20 (docs/method.md §B.5)
OFF_LEVEL_TOLERANCE = 0.01  # relative to the half-gap: latent weights never sit exactly on a level


def _geometry(mode: str, scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(level gap, half-gap h) of ``mode`` at ``scale`` (docs/method.md §B.1)."""
    if mode not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {mode!r}")
    gap = 2 * scale if mode == "bin" else scale
    return gap, gap / 2


def _offset_in_interval(w: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """w - q_p, the position of w above the lower level of its interval [q_p, q_p+1)."""
    if mode == "bin":
        return w + scale
    return torch.where(w < 0, w + scale, w)


def _inside_distance(w: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """Distance to the nearest level of w clamped into [q_0, q_K]: zero for out-of-range weights."""
    gap, _ = _geometry(mode, scale)
    x = _offset_in_interval(w.clamp(-scale, scale), scale, mode)
    return torch.minimum(x, gap - x)


def level_distance(w: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """d(w): distance from every weight to its nearest level, out-of-range weights included."""
    return _inside_distance(w, scale, mode) + (w.abs() - scale).clamp_min(0)


def constraint_value(w: torch.Tensor, scale: torch.Tensor, mode: str, u: float) -> torch.Tensor:
    """C_g(w) of docs/method.md §B.3 element-wise, for the window u = 1 - 1/g (u = 1: no window, the CFS form)."""
    _, half = _geometry(mode, scale)
    outside = (w.abs() - scale).clamp_min(0)
    d = _inside_distance(w, scale, mode)
    inside = torch.where(d <= u * half, 2 * d, torch.zeros_like(d))
    return torch.where(outside > 0, 2 * outside, inside)


def constraint_grad(w: torch.Tensor, scale: torch.Tensor, mode: str, u: float) -> torch.Tensor:
    """dC/dw exactly as the original code's backward returns it (docs/method.md §B.3), +2 at w >= q_K included."""
    gap, half = _geometry(mode, scale)
    x = _offset_in_interval(w, scale, mode)
    grad = torch.where(x < u * half, 2.0, torch.where(x >= gap - u * half, -2.0, 0.0)).to(w.dtype)
    grad = torch.where(w < -scale, -2.0, grad)
    return torch.where(w >= scale, 2.0, grad)


class _Constraint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, mode, u):
        ctx.save_for_backward(w, scale)
        ctx.mode, ctx.u = mode, u
        return constraint_value(w, scale, mode, u)

    @staticmethod
    def backward(ctx, grad_out):
        w, scale = ctx.saved_tensors
        return grad_out * constraint_grad(w, scale, ctx.mode, ctx.u), None, None, None


def window(g: int) -> float:
    """u = 1 - 1/g, the unconstrained window."""
    return 1.0 - 1.0 / g


def constraint(w: torch.Tensor, scale: torch.Tensor, mode: str, g: int) -> torch.Tensor:
    """C_g(w) element-wise, differentiable in ``w`` with the gradient of docs/method.md §B.3 (none to ``scale``)."""
    return _Constraint.apply(w, scale.detach(), mode, window(g))


def next_g(g: int) -> int:
    """1, 2, ..., 10, 20, 30, ... (docs/method.md §B.5)."""
    return g + 1 if g < 10 else g + 10


class CBP:
    """State and updates of CBP for one model.

    ``weight_optimizer`` is the optimizer of the network weights; its learning rates are multiplied by
    0.1 once, when g reaches 20, if ``drop_lr_at_g20`` (all pipelines but TSSL-BP, docs/method.md §B.7).
    ``lambda_optimizer`` is "adam" or "adamw" (TSSL-BP; PyTorch's default weight decay 0.01 then acts
    on the multipliers too, docs/method.md §C.5).
    """

    def __init__(
        self,
        model: nn.Module,
        weight_optimizer: Optional[torch.optim.Optimizer],
        lambda_lr: float,
        lambda_optimizer: str = "adam",
        period_max: int = 20,
        drop_lr_at_g20: bool = True,
        weight_clamp: float = 1.0,
    ) -> None:
        self.layers: List[Tuple[str, nn.Module]] = quantized_modules(model)
        if not self.layers:
            raise ValueError(
                f"{type(model).__name__} has no quantized layers; build it with quant='bin' or 'ter' "
                "(e.g. create_model('..._bin_...')) before running CBP."
            )
        self.weight_optimizer = weight_optimizer
        self.period_max = period_max
        self.drop_lr_at_g20 = drop_lr_at_g20
        self.weight_clamp = weight_clamp
        # One multiplier per quantized weight, outside the network's parameters (docs/method.md §B.4).
        self.multipliers: Dict[str, torch.Tensor] = {
            name: torch.zeros_like(m.weight, requires_grad=True) for name, m in self.layers
        }
        params = list(self.multipliers.values())
        if lambda_optimizer == "adam":
            self.lambda_optimizer = torch.optim.Adam(params, lr=lambda_lr, betas=(0.9, 0.999), eps=1e-8)
        elif lambda_optimizer == "adamw":
            self.lambda_optimizer = torch.optim.AdamW(params, lr=lambda_lr, betas=(0.9, 0.999), eps=1e-8)
        else:
            raise ValueError(f"lambda_optimizer must be 'adam' or 'adamw', got {lambda_optimizer!r}")
        self.g = 1
        self.period = 0
        self.lagsum_prev = LAGSUM_START
        self.lambda_updates = 0
        self.num_weights = sum(m.weight.numel() for _, m in self.layers)

    @property
    def u(self) -> float:
        return window(self.g)

    def penalty(self, differentiable: bool = True) -> torch.Tensor:
        """sum over quantized layers of lambda * C_g(W), lambda held constant (docs/method.md §B.4).

        With ``differentiable=False`` only its value, for a step whose :meth:`weight_step` adds its
        gradient itself."""
        total = None
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            for name, m in self.layers:
                lam = self.multipliers[name].detach()
                # On the GPU one fused kernel pass each way replaces ~25 elementwise passes over the weights.
                term = constraint_penalty(m.weight, lam, m.scale, m.quant, self.u)
                if term is None:
                    term = (lam * constraint(m.weight, m.scale, m.quant, self.g)).sum()
                total = term if total is None else total + term
        return total

    def weight_step_usable(self, optimizer: torch.optim.Optimizer, grad_clip: str) -> bool:
        """Whether :meth:`weight_step` can update the quantized weights (SGD with clipping by value,
        on the GPU); decide before the forward, since the penalty then needs no autograd."""
        weights = [m.weight for _, m in self.layers]
        return sgd_weight_step_usable(weights, [self.multipliers[n] for n, _ in self.layers], optimizer, grad_clip)

    def weight_step(self, optimizer: torch.optim.Optimizer, clip: float) -> None:
        """After the backward of a loss without the penalty's gradient: every quantized weight's whole
        update in one kernel pass (the penalty's gradient added, clipped by value to +-``clip``, the
        SGD step of ``optimizer``'s group, the clamp of :meth:`clamp_`); their gradients are then None,
        so the clip and ``optimizer.step()`` that follow update the other parameters only."""
        layers = [(m.weight, self.multipliers[n], m.scale, m.quant) for n, m in self.layers]
        sgd_weight_step(layers, optimizer, self.u, clip, self.weight_clamp)

    @torch.no_grad()
    def lambda_update(self) -> None:
        """One ascent step on the Lagrangian in lambda: d(-sum lambda C)/d lambda = -C(W) (docs/method.md §B.5)."""
        u = self.u
        for name, m in self.layers:
            self.multipliers[name].grad = -constraint_value(m.weight.detach(), m.scale, m.quant, u)
        self.lambda_optimizer.step()
        self.lambda_optimizer.zero_grad(set_to_none=True)
        self.lambda_updates += 1

    def start(self) -> None:
        """The update with u = 0 before epoch 0; it raises lambda only for out-of-range weights."""
        if self.lambda_updates == 0:
            self.lambda_update()

    def end_epoch(self, lagsum: float) -> bool:
        """Algorithm 1 after an epoch whose Lagrangian summed over minibatches is ``lagsum``.

        Returns whether g advanced (and lambda was updated).
        """
        self.period += 1
        if lagsum >= self.lagsum_prev or self.period == self.period_max:
            self.g = next_g(self.g)
            if self.g == G_LR_DROP and self.drop_lr_at_g20 and self.weight_optimizer is not None:
                for group in self.weight_optimizer.param_groups:
                    group["lr"] *= 0.1
            self.lambda_update()
            self.lagsum_prev = LAGSUM_START
            self.period = 0
            return True
        self.lagsum_prev = lagsum
        return False

    @torch.no_grad()
    def clamp_(self) -> None:
        """Latent quantized weights into [-1, 1], absolute, independent of the scale (docs/method.md §B.4)."""
        for _, m in self.layers:
            m.weight.clamp_(-self.weight_clamp, self.weight_clamp)

    @torch.no_grad()
    def stats(self) -> Dict[str, Any]:
        """CFS (docs/method.md §B.6), weights off their level, g, u, period and multiplier statistics.

        Called once per epoch: it reads values back to the host.
        """
        off_level = sum(int(off_level_count(m)) for _, m in self.layers)
        lam = [v.detach() for v in self.multipliers.values()]
        n = self.num_weights
        return {
            "cfs": cfs(self.layers),
            "off_level": off_level,
            "off_level_fraction": off_level / n,
            "g": self.g,
            "u": self.u,
            "period": self.period,
            "lambda_mean": float(sum(v.sum(dtype=torch.float64) for v in lam)) / n,
            "lambda_max": float(max(v.max() for v in lam)),
            "lambda_updates": self.lambda_updates,
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "multipliers": {k: v.detach().clone() for k, v in self.multipliers.items()},
            "lambda_optimizer": self.lambda_optimizer.state_dict(),
            "g": self.g,
            "period": self.period,
            "lagsum_prev": self.lagsum_prev,
            "lambda_updates": self.lambda_updates,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = set(self.multipliers) ^ set(state["multipliers"])
        if missing:
            raise ValueError(f"CBP state does not fit this model: multipliers differ at {sorted(missing)}")
        with torch.no_grad():
            for name, lam in self.multipliers.items():
                lam.copy_(state["multipliers"][name])
        self.lambda_optimizer.load_state_dict(state["lambda_optimizer"])
        self.g = int(state["g"])
        self.period = int(state["period"])
        self.lagsum_prev = float(state["lagsum_prev"])
        self.lambda_updates = int(state["lambda_updates"])


def off_level_count(layer: nn.Module) -> torch.Tensor:
    """How many latent weights of a quantized layer lie farther than 1 % of the half-gap from a level."""
    _, half = _geometry(layer.quant, layer.scale)
    return (level_distance(layer.weight.detach(), layer.scale, layer.quant) > OFF_LEVEL_TOLERANCE * half).sum()


def cfs(model_or_layers) -> float:
    """Constraint-fulfilment score: mean C_{u=1} over all quantized weights = 2 x mean distance to a level.

    Takes a model or its ``quantized_modules`` list.
    """
    layers = quantized_modules(model_or_layers) if isinstance(model_or_layers, nn.Module) else model_or_layers
    total = sum(float(2 * level_distance(m.weight.detach(), m.scale, m.quant).sum(dtype=torch.float64)) for _, m in layers)
    n = sum(m.weight.numel() for _, m in layers)
    return total / n if n else math.nan
