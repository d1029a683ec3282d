"""Fused multi-step neurons: one kernel runs the whole forward over T, one the whole backward.

Each function here computes the same function as its namesake in :mod:`.neurons` (the readable
reference) and is tested equal to it. On CUDA tensors (or on the CPU under Triton's interpreter,
``TRITON_INTERPRET=1``, which the tests use) a Triton kernel pair runs; anywhere else the call
falls back to the reference.

Why it is faster: the reference launches a handful of elementwise kernels per step and autograd
saves several full-size fp32 tensors per step. The forward kernel reads each input current once,
writes each spike once and saves only the fp32 potential the backward needs (spikes are
recomputed from it); the backward kernel walks T in reverse, keeping the carried gradient in
registers. The potential is always integrated in fp32, with the reference's arithmetic order, so
fp32 inputs give bit-identical spikes; bf16 currents (under autocast) are widened on load.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from . import neurons

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: without it every call takes the reference path.
    triton = None

BLOCK = 1024
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Triton contracts a*b + c into one fused multiply-add by default, which rounds differently from
# PyTorch's separate operations and would flip spikes that sit exactly at threshold.
_LAUNCH = {"enable_fp_fusion": False}


def triton_enabled(t: torch.Tensor) -> bool:
    """Whether ``t`` is handled by the Triton kernels (else by the reference)."""
    return triton is not None and (t.is_cuda or _INTERPRET)


# ---------------------------------------------------------------------------------------------
# Memory layout. Kernels see each timestep as one flat run of N elements, so any layout whose
# per-step slab is dense works (contiguous, channels_last), and the time stride may be 0 when a
# constant input was expanded over T (the first layer): it is then read once per step, not copied.
# ---------------------------------------------------------------------------------------------


def _dense_slab(slab: torch.Tensor) -> bool:
    if slab.is_contiguous():
        return True
    return slab.dim() == 4 and slab.is_contiguous(memory_format=torch.channels_last)


def _prepare(current: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """``current`` in a kernel-readable layout, and its time stride (N or 0)."""
    slab = current[0]
    if _dense_slab(slab) and current.stride(0) in (0, slab.numel()):
        return current, current.stride(0)
    current = current.contiguous()
    return current, current.stride(0)


def _empty_steps(like_slab: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised ``[T, *slab.shape]`` tensor whose steps share the slab's layout."""
    n = like_slab.numel()
    strides = torch.empty_like(like_slab, dtype=dtype).stride()
    return torch.empty_strided((T, *like_slab.shape), (n, *strides), dtype=dtype, device=like_slab.device)


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``like``'s strides (incoming gradients may arrive in another layout)."""
    if t.stride() == like.stride():
        return t
    out = torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


if triton is not None:

    # ------------------------------------------------------------------------ IF, soft reset

    @triton.jit
    def _if_forward_kernel(cur_ptr, spk_ptr, pot_ptr, init_ptr, vth_ptr, bias_ptr, vout_ptr, N, T,
                           stride_t, HAS_INIT: tl.constexpr, SAVE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        vth = tl.load(vth_ptr)
        bias = tl.load(bias_ptr)
        v_out = tl.load(vout_ptr)  # the spike value already in the output dtype, as the reference casts it
        if HAS_INIT:
            u = tl.load(init_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            u = tl.zeros([BLOCK], dtype=tl.float32)
        cur = cur_ptr + offs
        spk = spk_ptr + offs
        pot = pot_ptr + offs
        for _ in range(T):
            i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
            u = u + i + bias
            fire = u - vth >= 0
            if SAVE:
                tl.store(pot, u, mask=mask)
            tl.store(spk, tl.where(fire, v_out, 0.0), mask=mask)
            u = u - tl.where(fire, vth, 0.0)
            cur += stride_t
            spk += N
            pot += N

    @triton.jit
    def _if_backward_kernel(gspk_ptr, pot_ptr, gcur_ptr, vth_ptr, N, T, last, alpha,
                            BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        vth = tl.load(vth_ptr)
        half_pi_alpha = 1.5707963267948966 * alpha
        gspk = gspk_ptr + last + offs
        pot = pot_ptr + last + offs
        gcur = gcur_ptr + last + offs
        g_next = tl.zeros([BLOCK], dtype=tl.float32)  # dL/du after the reset of the next step
        for _ in range(T):
            u = tl.load(pot, mask=mask, other=0.0)
            gs = tl.load(gspk, mask=mask, other=0.0).to(tl.float32)
            x = u - vth
            ds = vth * (alpha / 2) / (1 + (half_pi_alpha * x) * (half_pi_alpha * x))
            # u' = u - s(u): dL/du = dL/du' (1 - ds) + dL/ds * ds
            g = g_next + (gs - g_next) * ds
            tl.store(gcur, g.to(gcur_ptr.dtype.element_ty), mask=mask)
            g_next = g
            gspk -= N
            pot -= N
            gcur -= N

    # ------------------------------------------------------------------------ LIF, hard reset

    @triton.jit
    def _lif_forward_kernel(cur_ptr, spk_ptr, pot_ptr, N, T, stride_t, threshold, decay,
                            SAVE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        u = tl.zeros([BLOCK], dtype=tl.float32)
        o = tl.zeros([BLOCK], dtype=tl.float32)
        cur = cur_ptr + offs
        spk = spk_ptr + offs
        pot = pot_ptr + offs
        for _ in range(T):
            i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
            u = decay * u * (1 - o) + i
            o = tl.where(u - threshold > 0, 1.0, 0.0)
            if SAVE:
                tl.store(pot, u, mask=mask)
            tl.store(spk, o.to(spk_ptr.dtype.element_ty), mask=mask)
            cur += stride_t
            spk += N
            pot += N

    @triton.jit
    def _lif_backward_kernel(gspk_ptr, pot_ptr, gcur_ptr, N, T, last, threshold, decay, lens,
                             BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        gspk = gspk_ptr + last + offs
        pot = pot_ptr + last + offs
        gcur = gcur_ptr + last + offs
        g_next = tl.zeros([BLOCK], dtype=tl.float32)  # dL/du of the next step
        for _ in range(T):
            u = tl.load(pot, mask=mask, other=0.0)
            x = u - threshold
            o = tl.where(x > 0, 1.0, 0.0)
            ds = tl.where(tl.abs(x) < lens, 1.0, 0.0) / (2 * lens)
            # u_next = decay * u * (1 - o) + i_next: o reaches the loss directly and through u_next
            go = tl.load(gspk, mask=mask, other=0.0).to(tl.float32) - g_next * decay * u
            g = g_next * decay * (1 - o) + go * ds
            tl.store(gcur, g.to(gcur_ptr.dtype.element_ty), mask=mask)
            g_next = g
            gspk -= N
            pot -= N
            gcur -= N

    # ------------------------------------------------------------------------ TSSL-BP

    @triton.jit
    def _tssl_forward_kernel(cur_ptr, psp_ptr, spk_ptr, du_ptr, pre_ptr, N, T, stride_t, keep_m, inv_tau_m,
                             keep_s, inv_tau_s, threshold, SAVE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        u = tl.zeros([BLOCK], dtype=tl.float32)
        a = tl.zeros([BLOCK], dtype=tl.float32)
        cur = cur_ptr + offs
        psp = psp_ptr + offs
        spk = spk_ptr + offs
        du = du_ptr + offs
        pre = pre_ptr + offs
        for _ in range(T):
            i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
            if SAVE:
                tl.store(du, -u * inv_tau_m + i, mask=mask)
            u_tilde = keep_m * u + i
            o = tl.where(u_tilde > threshold, 1.0, 0.0)
            u = u_tilde * (1 - o)
            a = keep_s * a + o * inv_tau_s
            if SAVE:
                tl.store(pre, u_tilde, mask=mask)
            tl.store(psp, a.to(psp_ptr.dtype.element_ty), mask=mask)
            tl.store(spk, o.to(spk_ptr.dtype.element_ty), mask=mask)
            cur += stride_t
            psp += N
            spk += N
            du += N
            pre += N

    @triton.jit
    def _tssl_backward_kernel(delta_ptr, du_ptr, pre_ptr, gcur_ptr, N, T, last, theta_m, keep_s,
                              inv_tau_s, psp_floor, threshold, alpha, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        delta = delta_ptr + last + offs
        du = du_ptr + last + offs
        pre = pre_ptr + last + offs
        gcur = gcur_ptr + last + offs
        future = tl.zeros([BLOCK], dtype=tl.float32)  # G_t, the PSP-weighted future error
        carried = tl.zeros([BLOCK], dtype=tl.float32)  # Theta of SPEC C.4
        for step in range(T):
            # The fallback test needs the PSP a_t, which runs forward in time; recomputing it from
            # the saved potentials (O(T^2) loads, T = 5 here) keeps it exact and saves no tensor.
            a = tl.zeros([BLOCK], dtype=tl.float32)
            early = pre_ptr + offs
            for _ in range(T - step):
                a = keep_s * a + tl.where(tl.load(early, mask=mask, other=0.0) > threshold, 1.0, 0.0) * inv_tau_s
                early += N
            future = tl.load(delta, mask=mask, other=0.0).to(tl.float32) * inv_tau_s + keep_s * future
            u_tilde = tl.load(pre, mask=mask, other=0.0)
            d = tl.load(du, mask=mask, other=1.0)
            o = tl.where(u_tilde > threshold, 1.0, 0.0)
            rho = tl.minimum(tl.maximum(-1 / d, -8.0), 0.0)
            g = -rho * o * future
            if step > 0:
                g = g + carried * u_tilde * (-theta_m) * rho * o + carried * (1 - theta_m) * (1 - o)
            carried = g * o + carried * (1 - o) * (1 - theta_m)
            z = tl.minimum(tl.maximum((threshold - u_tilde) / alpha, -8.0), 8.0)
            ez = tl.exp(z)
            fallback = ez / (alpha * (1 + ez) * (1 + ez))
            g = tl.where(a < psp_floor, future * fallback, g)
            tl.store(gcur, g.to(gcur_ptr.dtype.element_ty), mask=mask)
            delta -= N
            du -= N
            pre -= N
            gcur -= N


# ---------------------------------------------------------------------------------------------
# Autograd wrappers
# ---------------------------------------------------------------------------------------------


class _IFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, threshold, shift_per_step, initial_potential, alpha):
        current, stride_t = _prepare(current)
        T, slab = current.shape[0], current[0]
        n = slab.numel()
        v_th = threshold.detach().to(device=current.device, dtype=torch.float32).reshape(1)
        bias = v_th * shift_per_step  # the reference's threshold * shift / T, in its fp32
        save = ctx.needs_input_grad[0]
        spikes = _empty_steps(slab, T, current.dtype)
        potential = _empty_steps(slab, T if save else 1, torch.float32)  # inference saves nothing
        if initial_potential is None:
            init = v_th  # never read
        else:
            init = initial_potential.detach().to(torch.float32).expand(slab.shape)
            init = _same_layout(init, potential[0])
        _if_forward_kernel[_grid(n)](current, spikes, potential, init, v_th, bias, v_th.to(current.dtype), n, T,
                                     stride_t, HAS_INIT=initial_potential is not None, SAVE=save, BLOCK=BLOCK,
                                     **_LAUNCH)
        ctx.save_for_backward(potential, v_th)
        ctx.alpha = alpha
        ctx.current_dtype = current.dtype
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        potential, v_th = ctx.saved_tensors
        T, n = potential.shape[0], potential[0].numel()
        grad_spikes = _same_layout(grad_spikes, potential)
        grad_current = torch.empty_like(potential, dtype=ctx.current_dtype)
        _if_backward_kernel[_grid(n)](grad_spikes, potential, grad_current, v_th, n, T, (T - 1) * n,
                                      float(ctx.alpha), BLOCK=BLOCK, **_LAUNCH)
        return grad_current, None, None, None, None


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, threshold, decay, lens):
        current, stride_t = _prepare(current)
        T, slab = current.shape[0], current[0]
        n = slab.numel()
        save = ctx.needs_input_grad[0]
        spikes = _empty_steps(slab, T, current.dtype)
        potential = _empty_steps(slab, T if save else 1, torch.float32)
        _lif_forward_kernel[_grid(n)](current, spikes, potential, n, T, stride_t, float(threshold),
                                      float(decay), SAVE=save, BLOCK=BLOCK, **_LAUNCH)
        ctx.save_for_backward(potential)
        ctx.constants = (float(threshold), float(decay), float(lens))
        ctx.current_dtype = current.dtype
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (potential,) = ctx.saved_tensors
        threshold, decay, lens = ctx.constants
        T, n = potential.shape[0], potential[0].numel()
        grad_spikes = _same_layout(grad_spikes, potential)
        grad_current = torch.empty_like(potential, dtype=ctx.current_dtype)
        _lif_backward_kernel[_grid(n)](grad_spikes, potential, grad_current, n, T, (T - 1) * n,
                                       threshold, decay, lens, BLOCK=BLOCK, **_LAUNCH)
        return grad_current, None, None, None


class _TSSLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, tau_m, tau_s, threshold, alpha):
        current, stride_t = _prepare(current)
        T, slab = current.shape[0], current[0]
        n = slab.numel()
        save = ctx.needs_input_grad[0]
        psp = _empty_steps(slab, T, current.dtype)
        spikes = _empty_steps(slab, T, current.dtype)
        du = _empty_steps(slab, T if save else 1, torch.float32)
        u_pre = _empty_steps(slab, T if save else 1, torch.float32)
        # The reference multiplies by (1 - 1/tau) and divides by tau; dividing an fp32 by a Python
        # scalar on CUDA is done by PyTorch as a multiply by its fp32 reciprocal, as here.
        _tssl_forward_kernel[_grid(n)](current, psp, spikes, du, u_pre, n, T, stride_t, 1 - 1 / tau_m, 1 / tau_m,
                                       1 - 1 / tau_s, 1 / tau_s, float(threshold), SAVE=save, BLOCK=BLOCK,
                                       **_LAUNCH)
        ctx.save_for_backward(du, u_pre)
        ctx.constants = (tau_m, tau_s, float(threshold), float(alpha))
        ctx.current_dtype = current.dtype
        ctx.mark_non_differentiable(spikes)
        return psp, spikes

    @staticmethod
    def backward(ctx, grad_psp, grad_spikes):
        du, u_pre = ctx.saved_tensors
        tau_m, tau_s, threshold, alpha = ctx.constants
        T, n = du.shape[0], du[0].numel()
        grad_psp = _same_layout(grad_psp, du)
        grad_current = torch.empty_like(du, dtype=ctx.current_dtype)
        _tssl_backward_kernel[_grid(n)](grad_psp, du, u_pre, grad_current, n, T, (T - 1) * n, 1 / tau_m,
                                        1 - 1 / tau_s, 1 / tau_s, 1 / (4 * tau_s), threshold, alpha,
                                        BLOCK=BLOCK, **_LAUNCH)
        return grad_current, None, None, None, None


# ---------------------------------------------------------------------------------------------
# The functions the neurons call with backend "fast" (same signatures as in .neurons)
# ---------------------------------------------------------------------------------------------


def if_soft_reset(
    current: torch.Tensor,
    threshold: torch.Tensor,
    shift_per_step: float,
    initial_potential: Optional[torch.Tensor],
    alpha: float,
) -> torch.Tensor:
    """Fused :func:`.neurons.if_soft_reset`: spikes ``[T, B, ...]`` of value ``threshold``."""
    trained_state = threshold.requires_grad or (initial_potential is not None and initial_potential.requires_grad)
    if not triton_enabled(current) or trained_state:
        # The kernels give gradients for the current only; a trained threshold or start potential
        # (never the case in the zoo's recipes) keeps the reference's full autograd.
        return neurons.if_soft_reset(current, threshold, shift_per_step, initial_potential, alpha)
    return _IFFunction.apply(current, threshold, shift_per_step, initial_potential, alpha)


def lif_hard_reset(current: torch.Tensor, threshold: float, decay: float, lens: float) -> torch.Tensor:
    """Fused :func:`.neurons.lif_hard_reset`: spikes ``[T, B, ...]`` in {0, 1}."""
    if not triton_enabled(current):
        return neurons.lif_hard_reset(current, threshold, decay, lens)
    return _LIFFunction.apply(current, threshold, decay, lens)


def tssl_neuron(current: torch.Tensor, tau_m: float, tau_s: float, threshold: float, alpha: float):
    """Fused :func:`.neurons.tssl_neuron`: ``(psp, spikes)``, both ``[T, B, ...]``."""
    if not triton_enabled(current):
        return neurons.tssl_neuron(current, tau_m, tau_s, threshold, alpha)
    return _TSSLFunction.apply(current, tau_m, tau_s, threshold, alpha)
