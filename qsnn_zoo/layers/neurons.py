"""Spiking neurons, multi-step: each takes input currents ``[T, B, ...]`` and returns ``[T, B, ...]``.

The code here is the readable reference: one Python loop over T with plain tensor ops, autograd
through every step. State lives only inside a call, so no state leaks between calls. Fast paths
(``qsnn_zoo.layers.fused``) compute the same functions and are tested equal to these.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .surrogate import atan_spike, boxcar_spike
from .time import repeat_over_time


def _kernel_or(reference: Callable, name: str) -> Callable:
    """``reference``'s fast backend: the fused kernel ``name`` where one runs for the inputs, else
    ``reference`` itself. The neurons choose; the kernels never import this module."""

    def fast(*args, **kwargs):
        # Imported on use: the fused module needs Triton only on the GPU, and models must not pay for it.
        from . import fused

        out = getattr(fused, name)(*args, **kwargs)
        return reference(*args, **kwargs) if out is None else out

    fast.__name__ = fast.__qualname__ = f"{reference.__name__}_fast"
    fast.__doc__ = f"The fused kernel of :func:`{reference.__name__}` where one runs, else the reference."
    return fast


def if_soft_reset(
    current: torch.Tensor,
    threshold: torch.Tensor,
    shift_per_step: float,
    initial_potential: Optional[torch.Tensor],
    alpha: float,
) -> torch.Tensor:
    """Reference IF dynamics of :class:`IFNeuron` over ``current[T, B, ...]``."""
    v_th = threshold.to(current.dtype)
    bias = v_th * shift_per_step
    u = torch.zeros_like(current[0])
    if initial_potential is not None:
        u = u + initial_potential
    out = []
    for i_t in current:
        u = u + i_t + bias
        s = v_th * atan_spike(u - v_th, alpha)
        u = u - s
        out.append(s)
    return torch.stack(out)


def lif_hard_reset(current: torch.Tensor, threshold: float, decay: float, lens: float,
                   steps: Optional[int] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference LIF dynamics of :class:`LIFNeuron` over ``current[T, B, ...]``; with ``steps``,
    ``current`` is ``[B, ...]``, the input at each of ``steps`` steps; with ``bias``, a per-channel
    bias is added to the current first."""
    if steps is not None:
        current = repeat_over_time(current, steps)
    current = add_channel_biases(current, bias)
    u = torch.zeros_like(current[0])
    o = torch.zeros_like(current[0])
    out = []
    for i_t in current:
        u = decay * u * (1 - o) + i_t
        o = boxcar_spike(u - threshold, lens)
        out.append(o)
    return torch.stack(out)


def if_layer(current: torch.Tensor, threshold: torch.Tensor, shift_per_step: float,
             initial_potential: Optional[torch.Tensor], alpha: float, bias: Optional[torch.Tensor] = None,
             calib_bias: Optional[torch.Tensor] = None, dropout: float = 0.0) -> torch.Tensor:
    """Reference of the VGG layer after its bias-free conv: ``current[T, B, C, ...]`` plus the
    per-channel ``bias`` then ``calib_bias``, :func:`if_soft_reset`, then dropout (0: none)."""
    spikes = if_soft_reset(add_channel_biases(current, bias, calib_bias), threshold, shift_per_step,
                           initial_potential, alpha)
    return torch.nn.functional.dropout(spikes, dropout) if dropout > 0 else spikes


def add_channel_biases(current: torch.Tensor, *biases: Optional[torch.Tensor]) -> torch.Tensor:
    """``current[T, B, C, ...]`` plus each per-channel bias in turn (None: none)."""
    for b in biases:
        if b is not None:
            current = current + b.view(-1, *[1] * (current.dim() - 3)).to(current.dtype)
    return current


if_soft_reset_fast = _kernel_or(if_soft_reset, "if_soft_reset")
lif_hard_reset_fast = _kernel_or(lif_hard_reset, "lif_hard_reset")
if_layer_fast = _kernel_or(if_layer, "if_soft_reset_layer")


class SpikingNeuron(nn.Module):
    """Common switches: ``backend`` ("reference" | "fast") and spike monitoring for statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.backend = "reference"
        self.monitor = False
        self.last_spikes: Optional[torch.Tensor] = None

    def _record(self, spikes: torch.Tensor) -> None:
        if self.monitor:
            self.last_spikes = spikes.detach() != 0


class IFNeuron(SpikingNeuron):
    """Integrate-and-fire with soft reset, as converted by SNN-Calibration (docs/method.md §E.3 step 4, §E.4).

    Per step: u += I_t + threshold * shift / T;  s = threshold * H(u - threshold) with ``>=``;
    u -= s. ``u`` starts at the per-neuron ``initial_potential`` (zero unless calibrated).
    Backward: arctan surrogate with ``alpha`` (docs/method.md §E.4), the reset is not detached.
    """

    def __init__(
        self,
        T: int,
        threshold: float = 1.0,
        shift: float = 0.5,
        alpha: float = 2.0,
        potential_shape: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.T = T
        self.shift = shift
        self.alpha = alpha
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        # A stored per-neuron potential costs 4 bytes a neuron in every checkpoint, so it exists only
        # when a model asks for one (potential calibration); otherwise the start is zero.
        if potential_shape is None:
            self.initial_potential = None
        else:
            self.register_buffer("initial_potential", torch.zeros(*potential_shape))

    def extra_repr(self) -> str:
        return f"T={self.T}, threshold={float(self.threshold):.4g}, shift={self.shift}/T, reset=soft, alpha={self.alpha}"

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        impl = if_soft_reset_fast if self.backend == "fast" else if_soft_reset
        spikes = impl(current, self.threshold, self.shift / self.T, self.initial_potential, self.alpha)
        self._record(spikes)
        return spikes


class LIFNeuron(SpikingNeuron):
    """Leaky integrate-and-fire with hard reset, as in STBP (docs/method.md §D.2).

    u_t = decay * u_{t-1} * (1 - o_{t-1}) + I_t;  o_t = H(u_t - threshold) with strict ``>``.
    Backward: boxcar surrogate of half-width ``lens``; gradients flow through u and the reset.
    """

    def __init__(self, threshold: float = 0.5, decay: float = 0.25, lens: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.decay = decay
        self.lens = lens

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, decay={self.decay}, reset=hard, lens={self.lens}"

    def forward(self, current: torch.Tensor, steps: Optional[int] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Spikes ``[T, B, ...]`` for ``current[T, B, ...]``, or for ``current[B, ...]`` as the input at
        each of ``steps`` steps (a constant input, whose gradient the fast kernel sums over T itself);
        ``bias``, per channel, is added to the current (a conv's bias, which the fast kernel adds)."""
        impl = lif_hard_reset_fast if self.backend == "fast" else lif_hard_reset
        spikes = impl(current, self.threshold, self.decay, self.lens, steps=steps, bias=bias)
        self._record(spikes)
        return spikes


def psp_filter(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """Synaptic (PSP) filter over time: a_t = (1 - 1/tau_s) a_{t-1} + x_t / tau_s (docs/method.md §C.2)."""
    a = torch.zeros_like(x[0])
    out = []
    for x_t in x:
        a = (1 - 1 / tau_s) * a + x_t / tau_s
        out.append(a)
    return torch.stack(out)


class _TSSLFunction(torch.autograd.Function):
    """TSSL-BP neuron: forward of docs/method.md §C.2, backward of docs/method.md §C.4 (inter + intra terms, fallback)."""

    @staticmethod
    def forward(ctx, current, tau_m, tau_s, threshold, alpha):
        keep_m = 1 - 1 / tau_m
        keep_s = 1 - 1 / tau_s
        u = torch.zeros_like(current[0])
        a = torch.zeros_like(current[0])
        du, spikes, u_pre, psp = [], [], [], []
        for i_t in current:
            du.append(-u / tau_m + i_t)
            u_tilde = keep_m * u + i_t
            o = (u_tilde > threshold).to(current.dtype)
            u = u_tilde * (1 - o)
            a = keep_s * a + o / tau_s
            spikes.append(o)
            u_pre.append(u_tilde)
            psp.append(a)
        spikes, psp = torch.stack(spikes), torch.stack(psp)
        ctx.mark_non_differentiable(spikes)
        ctx.save_for_backward(torch.stack(du), spikes, torch.stack(u_pre), psp)
        ctx.constants = (tau_m, tau_s, threshold, alpha)
        return psp, spikes

    @staticmethod
    def backward(ctx, grad_psp, grad_spikes):
        du, spikes, u_pre, psp = ctx.saved_tensors
        tau_m, tau_s, threshold, alpha = ctx.constants
        return tssl_backward(grad_psp, du, spikes, u_pre, psp, tau_m, tau_s, threshold, alpha), None, None, None, None


def tssl_neuron(current: torch.Tensor, tau_m: float, tau_s: float, threshold: float, alpha: float):
    """Reference TSSL-BP neuron: returns ``(psp, spikes)``, both ``[T, B, ...]``."""
    return _TSSLFunction.apply(current, tau_m, tau_s, threshold, alpha)


def tssl_backward(delta, du, spikes, u_pre, psp, tau_m, tau_s, threshold, alpha):
    """dL/dI from dL/da (``delta``) and the saved forward, written as docs/method.md §C.4 states it."""
    T = delta.shape[0]
    theta_m = 1 / tau_m
    kappa = [(1 - 1 / tau_s) ** k / tau_s for k in range(T)]
    future = [sum(kappa[k] * delta[t + k] for k in range(T - t)) for t in range(T)]
    rho = torch.clamp(-1 / du, -8, 0)
    carried = torch.zeros_like(delta[0])
    grads = [None] * T
    for t in reversed(range(T)):
        o = spikes[t]
        g = -rho[t] * o * future[t]
        if t < T - 1:
            g = g + carried * u_pre[t] * (-theta_m) * rho[t] * o + carried * (1 - theta_m) * (1 - o)
        carried = g * o + carried * (1 - o) * (1 - theta_m)
        z = torch.clamp((threshold - u_pre[t]) / alpha, -8, 8)
        fallback = torch.exp(z) / (alpha * (1 + torch.exp(z)) ** 2)
        g = torch.where(psp[t] < 1 / (4 * tau_s), future[t] * fallback, g)
        grads[t] = g
    return torch.stack(grads)


tssl_neuron_fast = _kernel_or(tssl_neuron, "tssl_neuron")


class TSSLNeuron(SpikingNeuron):
    """The TSSL-BP spiking neuron with its PSP output (docs/method.md §C.2, §C.4): returns a_t, not spikes.

    u~_t = (1 - 1/tau_m) u_{t-1} + I_t;  o_t = H(u~_t - threshold) (``>``);  u_t = u~_t (1 - o_t);
    a_t = (1 - 1/tau_s) a_{t-1} + o_t / tau_s.  Backward is TSSL-BP's, not a surrogate chain rule.
    """

    def __init__(self, tau_m: float = 5.0, tau_s: float = 3.0, threshold: float = 1.0, alpha: float = 0.2) -> None:
        super().__init__()
        self.tau_m = tau_m
        self.tau_s = tau_s
        self.threshold = threshold
        self.alpha = alpha

    def extra_repr(self) -> str:
        return f"tau_m={self.tau_m}, tau_s={self.tau_s}, threshold={self.threshold}, reset=zero, alpha={self.alpha}"

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        impl = tssl_neuron_fast if self.backend == "fast" else tssl_neuron
        psp, spikes = impl(current, self.tau_m, self.tau_s, self.threshold, self.alpha)
        self._record(spikes)
        return psp
