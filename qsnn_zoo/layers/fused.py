"""Fused kernels of the fast paths: multi-step neurons (one kernel runs the whole forward over T,
one the whole backward), the rest of a VGG layer around its IF neuron (biases, dropout, the 2x2
pooling conv, whose kernels also run AlexNet's 2x2 sum pooling) and the quantizer. CBP's penalty
kernel lives beside the engine, in ``qsnn_zoo.cbp_kernel``.

Each neuron function here computes the same function as its namesake in :mod:`.neurons` (the
readable reference), each other function names its reference; all are tested equal to them. On
CUDA tensors (or on the CPU under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests
use) a Triton kernel pair runs; where none can, a function returns None and its caller, which owns
the choice of backend (the neurons, the VGG layer, the quantizer, CBP), takes the reference. This
module imports none of them.

Why it is faster: the reference launches a handful of elementwise kernels per step and autograd
saves several full-size fp32 tensors per step. The forward kernel reads each input current once,
writes each spike once and saves only the fp32 potential the backward needs (spikes are
recomputed from it); the backward kernel walks T in reverse, keeping the carried gradient in
registers. The potential is always integrated in fp32, with the reference's arithmetic order, so
fp32 inputs give bit-identical spikes; bf16 currents (under autocast) are widened on load.
"""
from __future__ import annotations

import contextlib
import os
from typing import FrozenSet, Iterator, List, Optional, Tuple, Union

import torch

from .time import repeat_over_time

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: without it every call takes the reference path.
    triton = None

BLOCK = 1024
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Triton contracts a*b + c into one fused multiply-add by default, which rounds differently from
# PyTorch's separate operations and would flip spikes that sit exactly at threshold.
EXACT_ARITHMETIC = {"enable_fp_fusion": False}


PIECES = ("if_layer", "pool", "penalty", "quantize", "weight_step", "shared_mask", "lif_bias")
_disabled: set = set()  # pieces of PIECES switched off: callers take the path they took before the piece


def triton_enabled(t: torch.Tensor) -> bool:
    """Whether ``t`` is handled by the Triton kernels (else by the reference)."""
    return triton is not None and (t.is_cuda or _INTERPRET)


def _check_piece(piece: str) -> None:
    if piece not in PIECES:
        raise ValueError(f"unknown fused piece {piece!r}; expected one of {PIECES}")


def piece_enabled(piece: str, t: torch.Tensor) -> bool:
    """Whether the fused ``piece`` (one of PIECES) runs for ``t``."""
    _check_piece(piece)
    return piece not in _disabled and triton_enabled(t)


def set_piece_enabled(piece: str, enabled: bool) -> None:
    """Switches the fused ``piece`` on or off for this process (as timm's ``set_fused_attn``): off,
    its callers take the path they took before it, e.g. when its on-device check fails
    (scripts/benchmark.py) or to time a network without it."""
    _check_piece(piece)
    if enabled:
        _disabled.discard(piece)
    else:
        _disabled.add(piece)


def disabled_pieces() -> FrozenSet[str]:
    return frozenset(_disabled)


@contextlib.contextmanager
def pieces_disabled(*pieces: str) -> Iterator[None]:
    """The given pieces off inside the block, as they were after it."""
    before = disabled_pieces()
    try:
        for piece in pieces:
            set_piece_enabled(piece, False)
        yield
    finally:
        for piece in PIECES:
            set_piece_enabled(piece, piece not in before)


# ---------------------------------------------------------------------------------------------
# Memory layout. Kernels see each timestep as one flat run of N elements, so any layout whose
# per-step slab is dense works (contiguous, channels_last), and the time stride may be 0 when a
# constant input was expanded over T (the first layer): it is then read once per step, not copied.
# ---------------------------------------------------------------------------------------------


def dense_layout(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its storage without gaps in the contiguous or channels_last
    layout, so that an elementwise kernel may walk it as one flat run."""
    if t.is_contiguous():
        return True
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _prepare(current: torch.Tensor, steps: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    """``current`` in a kernel-readable layout, and its time stride (N or 0). With ``steps``,
    ``current`` is one step's ``[B, ...]``, the input at each of that many steps."""
    if steps is not None:
        slab = current if dense_layout(current) else current.contiguous()
        return repeat_over_time(slab, steps), 0
    slab = current[0]
    if dense_layout(slab) and current.stride(0) in (0, slab.numel()):
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


def grid_1d(n: int):
    return (triton.cdiv(n, BLOCK),)


# The neuron kernels' launch: elements per program and warps per program. Each element is walked
# over T by one thread (a thread walks elements / (32 x warps) of them) and dropout draws are counted
# per element, so any launch gives the same bits; only the speed differs, by how many loads each SM
# keeps in flight. Eight warps (four elements a thread) took 2 % off both VGG16's and cnn7's bf16
# graph step against four on one H200 (benchmarks/h200_neuron_launch.md).
NeuronLaunch = Tuple[int, int]
DEFAULT_NEURON_LAUNCH: NeuronLaunch = (BLOCK, 8)
_neuron_launch: List[NeuronLaunch] = [DEFAULT_NEURON_LAUNCH]


def check_neuron_launch(launch: NeuronLaunch) -> NeuronLaunch:
    """``(block, num_warps)``, or ValueError saying what a launch must be."""
    block, warps = launch
    if warps not in (1, 2, 4, 8, 16) or block < 32 * warps or block > 16384 or block & (block - 1):
        raise ValueError(f"neuron launch {block}x{warps}: num_warps must be 1, 2, 4, 8 or 16 and the block a "
                         f"power of two from 32 x num_warps to 16384, e.g. 1024x8")
    return block, warps


def set_neuron_launch(block: int, num_warps: int) -> None:
    """Sets the IF, LIF and TSSL kernels' launch for this process (as timm's setters): a CUDA graph
    keeps the launch it was captured with. ``scripts/benchmark.py --neuron-launch`` times the choices."""
    _neuron_launch[0] = check_neuron_launch((block, num_warps))


def neuron_launch() -> NeuronLaunch:
    return _neuron_launch[0]


def _neuron_grid(n: int):
    return (triton.cdiv(n, _neuron_launch[0][0]),)


def _neuron_meta() -> dict:
    block, warps = _neuron_launch[0]
    return {"BLOCK": block, "num_warps": warps, **EXACT_ARITHMETIC}


if triton is not None:

    # ------------------------------------------------------------------------ IF, soft reset

    # Dropout masks, a function of (seed, step, element) that the backward regenerates. One Philox
    # evaluation costs about 60 integer operations per element; one per step was by that count ~4 ms
    # of integer work in a VGG16 training step's forward on an H200, whose forward IF kernels took
    # 4.3 ms in all (benchmarks/README.md), so the generator rather than memory bounded them. So an
    # evaluation serves several consecutive steps of an element: for a drop probability that is a
    # whole number of 256ths (the recipes' 0.25) tl.randint4x's 16 bytes serve 16 steps, keep = byte
    # >= 256 p, exactly probability 1 - p; for any other p tl.rand4x's four uniforms serve four,
    # keep = uniform >= p. Steps g*G .. g*G+G-1 share the counter g * N + element.

    @triton.jit
    def _no_draws(BYTES: tl.constexpr, BLOCK: tl.constexpr):
        """The draws' registers before the loop enters its first group."""
        if BYTES:
            r0 = tl.zeros([BLOCK], dtype=tl.uint32)  # tl.randint4x's type, for 32-bit counters
        else:
            r0 = tl.zeros([BLOCK], dtype=tl.float32)
        return r0, r0, r0, r0

    @triton.jit
    def _step_keep(t, first, seed, N, offs, p_drop, r0, r1, r2, r3, BYTES: tl.constexpr, BACKWARD: tl.constexpr):
        """Whether each element is kept at step ``t``, and its group's draws for the group's other
        steps. A group is drawn where the loop enters it: at its first step going forward, at its last
        step (or the loop's first, ``first``) going backward. ``p_drop`` is 256 p with ``BYTES``."""
        if BYTES:
            lane = t % 16
        else:
            lane = t % 4
        if BACKWARD:
            if BYTES:
                entered = first | (lane == 15)
            else:
                entered = first | (lane == 3)
        else:
            entered = lane == 0
        if entered:
            if BYTES:
                r0, r1, r2, r3 = tl.randint4x(seed, (t // 16) * N + offs)
            else:
                r0, r1, r2, r3 = tl.rand4x(seed, (t // 4) * N + offs)
        if BYTES:
            word = tl.where(lane < 4, r0, tl.where(lane < 8, r1, tl.where(lane < 12, r2, r3)))
            draw = ((word >> ((lane % 4) * 8).to(tl.uint32)) & 255).to(tl.int32)
        else:
            draw = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
        return draw >= p_drop, r0, r1, r2, r3

    @triton.jit
    def _if_forward_kernel(cur_ptr, spk_ptr, pot_ptr, init_ptr, vth_ptr, bias_ptr, vout_ptr, b1_ptr, b2_ptr, N, T,
                           stride_t, C, ch_stride, seed_ptr, p_drop, drop_scale, HAS_INIT: tl.constexpr,
                           NUM_BIAS: tl.constexpr, DROPOUT: tl.constexpr, BYTES: tl.constexpr, SAVE: tl.constexpr,
                           BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        vth = tl.load(vth_ptr)
        bias = tl.load(bias_ptr)
        v_out = tl.load(vout_ptr)  # the spike value already in the output dtype, as the reference casts it
        if HAS_INIT:
            u = tl.load(init_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            u = tl.zeros([BLOCK], dtype=tl.float32)
        if NUM_BIAS > 0:  # per-channel biases, added one after the other as the reference layer does
            ch = (offs // ch_stride) % C
            b1 = tl.load(b1_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            if NUM_BIAS > 1:
                b2 = tl.load(b2_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            v_drop = v_out.to(tl.float32) * drop_scale
            seed = tl.load(seed_ptr)
            r0, r1, r2, r3 = _no_draws(BYTES, BLOCK)
        cur = cur_ptr + offs
        spk = spk_ptr + offs
        pot = pot_ptr + offs
        for t in range(T):
            i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
            if NUM_BIAS > 0:
                i = i + b1
                if NUM_BIAS > 1:
                    i = i + b2
            u = u + i + bias
            fire = u - vth >= 0
            if SAVE:
                tl.store(pot, u, mask=mask)
            if DROPOUT:
                keep, r0, r1, r2, r3 = _step_keep(t, t == 0, seed, N, offs, p_drop, r0, r1, r2, r3, BYTES, False)
                tl.store(spk, tl.where(fire & keep, v_drop, 0.0).to(spk_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(spk, tl.where(fire, v_out, 0.0), mask=mask)
            u = u - tl.where(fire, vth, 0.0)
            cur += stride_t
            spk += N
            pot += N

    @triton.jit
    def _if_backward_kernel(gspk_ptr, pot_ptr, gcur_ptr, gsum_ptr, vth_ptr, N, T, last, alpha, seed_ptr, p_drop,
                            drop_scale, DROPOUT: tl.constexpr, BYTES: tl.constexpr, SUM_T: tl.constexpr,
                            STORE_STEPS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        vth = tl.load(vth_ptr)
        if DROPOUT:
            seed = tl.load(seed_ptr)
            r0, r1, r2, r3 = _no_draws(BYTES, BLOCK)
        half_pi_alpha = 1.5707963267948966 * alpha
        gspk = gspk_ptr + last + offs
        pot = pot_ptr + last + offs
        gcur = gcur_ptr + last + offs
        g_next = tl.zeros([BLOCK], dtype=tl.float32)  # dL/du after the reset of the next step
        g_sum = tl.zeros([BLOCK], dtype=tl.float32)  # sum over T of dL/dI: the per-element bias gradient
        for step in range(T):
            u = tl.load(pot, mask=mask, other=0.0)
            gs = tl.load(gspk, mask=mask, other=0.0).to(tl.float32)
            if DROPOUT:
                keep, r0, r1, r2, r3 = _step_keep(T - 1 - step, step == 0, seed, N, offs, p_drop, r0, r1, r2, r3,
                                                  BYTES, True)
                gs = tl.where(keep, gs * drop_scale, 0.0)
            x = u - vth
            ds = vth * (alpha / 2) / (1 + (half_pi_alpha * x) * (half_pi_alpha * x))
            # u' = u - s(u): dL/du = dL/du' (1 - ds) + dL/ds * ds
            g = g_next + (gs - g_next) * ds
            if STORE_STEPS:
                tl.store(gcur, g.to(gcur_ptr.dtype.element_ty), mask=mask)
            if SUM_T:
                g_sum += g
            g_next = g
            gspk -= N
            pot -= N
            gcur -= N
        if SUM_T:
            tl.store(gsum_ptr + offs, g_sum, mask=mask)

    # ------------------------------------------------------------------------ LIF, hard reset

    @triton.jit
    def _lif_forward_kernel(cur_ptr, bias_ptr, spk_ptr, pot_ptr, N, T, stride_t, C, ch_stride, threshold, decay,
                            HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        u = tl.zeros([BLOCK], dtype=tl.float32)
        o = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_BIAS:  # the conv's per-channel bias, in the current's dtype as autocast gives it to the conv
            b = tl.load(bias_ptr + (offs // ch_stride) % C, mask=mask, other=0.0).to(tl.float32)
        cur = cur_ptr + offs
        spk = spk_ptr + offs
        pot = pot_ptr + offs
        for _ in range(T):
            i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:  # rounded to the current's dtype, as PyTorch's add of the bias to the conv output
                i = (i + b).to(cur_ptr.dtype.element_ty).to(tl.float32)
            u = decay * u * (1 - o) + i
            o = tl.where(u - threshold > 0, 1.0, 0.0)
            if SAVE:
                tl.store(pot, u, mask=mask)
            tl.store(spk, o.to(spk_ptr.dtype.element_ty), mask=mask)
            cur += stride_t
            spk += N
            pot += N

    @triton.jit
    def _lif_backward_kernel(gspk_ptr, pot_ptr, gcur_ptr, gsum_ptr, N, T, last, threshold, decay, lens,
                             SUM_T: tl.constexpr, STORE_STEPS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        gspk = gspk_ptr + last + offs
        pot = pot_ptr + last + offs
        gcur = gcur_ptr + last + offs
        g_next = tl.zeros([BLOCK], dtype=tl.float32)  # dL/du of the next step
        # Sum over T of dL/dI: a constant input's gradient, or (with STORE_STEPS) of the steps as
        # stored, whose sum over batch and space is then the bias gradient PyTorch takes from them.
        g_sum = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(T):
            u = tl.load(pot, mask=mask, other=0.0)
            x = u - threshold
            o = tl.where(x > 0, 1.0, 0.0)
            ds = tl.where(tl.abs(x) < lens, 1.0, 0.0) / (2 * lens)
            # u_next = decay * u * (1 - o) + i_next: o reaches the loss directly and through u_next
            go = tl.load(gspk, mask=mask, other=0.0).to(tl.float32) - g_next * decay * u
            g = g_next * decay * (1 - o) + go * ds
            if STORE_STEPS:
                stored = g.to(gcur_ptr.dtype.element_ty)
                tl.store(gcur, stored, mask=mask)
                if SUM_T:
                    g_sum += stored.to(tl.float32)
            elif SUM_T:
                g_sum += g
            g_next = g
            gspk -= N
            pot -= N
            gcur -= N
        if SUM_T:
            tl.store(gsum_ptr + offs, g_sum.to(gsum_ptr.dtype.element_ty), mask=mask)

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
        carried = tl.zeros([BLOCK], dtype=tl.float32)  # Theta of docs/method.md §C.4
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


    # ------------------------------------------------------------------------ a mask shared over dims

    @triton.jit
    def _shared_mask_kernel(x_ptr, m_ptr, out_ptr, R, D, D1, D2, D3, S0, S1, S2, S3, SD,
                            ROWS: tl.constexpr, COLS: tl.constexpr):
        """out = x * m, x seen in memory order as R rows of its innermost dim (D elements, m's
        stride SD along it); a row splits into up to four outer coordinates (sizes ., D1, D2, D3,
        m's strides S0..S3, 0 where m is shared). A block is ROWS rows by COLS columns, so each row
        is split once for its COLS elements, and its loads and stores run contiguous: split element
        by element, PyTorch's broadcasting multiply moved about a quarter of the copy bandwidth
        (AlexNet CBP step, benchmarks/README.md)."""
        rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS))[:, None]
        cols = (tl.program_id(1) * COLS + tl.arange(0, COLS))[None, :]
        mask = (rows < R) & (cols < D)
        i3 = rows % D3
        rest = rows // D3
        i2 = rest % D2
        rest = rest // D2
        i1 = rest % D1
        i0 = rest // D1
        offs = rows * D + cols
        keep = tl.load(m_ptr + (i0 * S0 + i1 * S1 + i2 * S2 + i3 * S3) + cols * SD, mask=mask, other=0.0)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        # As PyTorch's multiply: in fp32, rounded once to the output's dtype.
        tl.store(out_ptr + offs, (x.to(tl.float32) * keep.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)

    # ------------------------------------------------------------------------ 2x2 depthwise pooling conv

    @triton.jit
    def _pool_block(total, C, Ho, Wo, sn, sc, sh, sw, CHANNELS_LAST: tl.constexpr, WIDE: tl.constexpr,
                    PIX: tl.constexpr, CB: tl.constexpr):
        """This program's output elements: their flat offsets in memory order, the input offset of each
        one's top-left tap, its channel, and the mask.

        channels_last: a block of PIX output pixels by CB channels. Adjacent channels are adjacent in
        memory, so each tap's loads and stores are contiguous runs that the compiler vectorizes, and
        each pixel is split into (image, row, column) once for its CB channels: as one flat run of
        elements, split one by one, the kernels moved a third of what the copy bandwidth allows (VGG16
        and AlexNet CBP steps, benchmarks/README.md). Contiguous: PIX * CB consecutive elements.
        Indices are int64 only where the input reaches 2**31 elements: a GPU divides int64 several
        times slower than int32."""
        pid = tl.program_id(0)
        if WIDE:
            pid = pid.to(tl.int64)
        if CHANNELS_LAST:
            pix = (pid * PIX + tl.arange(0, PIX))[:, None]
            c = (tl.program_id(1) * CB + tl.arange(0, CB))[None, :]
            j = pix % Wo
            rest = pix // Wo
            offs = pix * C + c
            mask = (pix < total // C) & (c < C)
        else:
            offs = pid * (PIX * CB) + tl.arange(0, PIX * CB)
            j = offs % Wo
            rest = offs // Wo
            mask = offs < total
        i = rest % Ho
        rest = rest // Ho
        if not CHANNELS_LAST:
            c = rest % C
            rest = rest // C
        return offs, rest * sn + c * sc + (2 * i) * sh + (2 * j) * sw, c, mask

    @triton.jit
    def _pool_forward_kernel(x_ptr, w_ptr, y_ptr, total, C, Ho, Wo, sn, sc, sh, sw, CHANNELS_LAST: tl.constexpr,
                             GATE: tl.constexpr, WIDE: tl.constexpr, PIX: tl.constexpr, CB: tl.constexpr):
        offs, base, c, mask = _pool_block(total, C, Ho, Wo, sn, sc, sh, sw, CHANNELS_LAST, WIDE, PIX, CB)
        w = w_ptr + c  # the taps' weights, [4, C]: one row per tap
        wmask = c < C
        y = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32) * tl.load(w, mask=wmask, other=0.0)
        y = y + tl.load(x_ptr + base + sw, mask=mask, other=0.0).to(tl.float32) * tl.load(w + C, mask=wmask, other=0.0)
        y = y + tl.load(x_ptr + base + sh, mask=mask, other=0.0).to(tl.float32) * tl.load(w + 2 * C, mask=wmask,
                                                                                          other=0.0)
        y = y + tl.load(x_ptr + base + sh + sw, mask=mask, other=0.0).to(tl.float32) * tl.load(w + 3 * C, mask=wmask,
                                                                                               other=0.0)
        if GATE:
            y = tl.maximum(y, 0.0)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _pool_backward_kernel(gy_ptr, y_ptr, w_ptr, gx_ptr, total, C, Ho, Wo, sn, sc, sh, sw,
                              CHANNELS_LAST: tl.constexpr, GATE: tl.constexpr, WIDE: tl.constexpr, PIX: tl.constexpr,
                              CB: tl.constexpr):
        offs, base, c, mask = _pool_block(total, C, Ho, Wo, sn, sc, sh, sw, CHANNELS_LAST, WIDE, PIX, CB)
        w = w_ptr + c
        wmask = c < C
        g = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if GATE:  # ReLU's derivative on the pooled current: 0 where it is not positive
            g = tl.where(tl.load(y_ptr + offs, mask=mask, other=0.0) > 0, g, 0.0)
        dtype = gx_ptr.dtype.element_ty
        tl.store(gx_ptr + base, (g * tl.load(w, mask=wmask, other=0.0)).to(dtype), mask=mask)
        tl.store(gx_ptr + base + sw, (g * tl.load(w + C, mask=wmask, other=0.0)).to(dtype), mask=mask)
        tl.store(gx_ptr + base + sh, (g * tl.load(w + 2 * C, mask=wmask, other=0.0)).to(dtype), mask=mask)
        tl.store(gx_ptr + base + sh + sw, (g * tl.load(w + 3 * C, mask=wmask, other=0.0)).to(dtype), mask=mask)

    # ------------------------------------------------------------------------ quantizer Q(W)

    @triton.jit
    def _quantize_kernel(w_ptr, scale_ptr, q_ptr, N, TERNARY: tl.constexpr, BLOCK: tl.constexpr):
        """quant.quantize with its tie rules, written in q's dtype: one pass instead of a compare, two
        casts and two multiplies per layer and forward, and no separate cast under autocast."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        s = tl.load(scale_ptr)
        if TERNARY:
            half = s / 2
            q = tl.where(w > half, s, tl.where(w < -half, -s, 0.0))
        else:
            q = tl.where(w >= 0, s, -s)
        tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Autograd wrappers
# ---------------------------------------------------------------------------------------------


def _drop_threshold(dropout: float) -> Tuple[Union[int, float], bool]:
    """The kernels' drop threshold and whether masks come from bytes: 256 p where that is whole."""
    in_bytes = dropout * 256
    if 0 < dropout < 1 and in_bytes.is_integer():
        return int(in_bytes), True
    return dropout, False


class _IFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, threshold, shift_per_step, initial_potential, alpha, bias, calib_bias, dropout, seed,
                steps):
        current, stride_t = _prepare(current, steps)
        T, slab = current.shape[0], current[0]
        n = slab.numel()
        v_th = threshold.detach().to(device=current.device, dtype=torch.float32).reshape(1)
        shift = v_th * shift_per_step  # the reference's threshold * shift / T, in its fp32
        save = any(ctx.needs_input_grad[i] for i in (0, 5, 6))
        spikes = _empty_steps(slab, T, current.dtype)
        potential = _empty_steps(slab, T if save else 1, torch.float32)  # inference saves nothing
        if initial_potential is None:
            init = v_th  # never read
        else:
            init = initial_potential.detach().to(torch.float32).expand(slab.shape)
            init = _same_layout(init, potential[0])
        biases = [b.detach().contiguous() for b in (bias, calib_bias) if b is not None]
        channels, ch_stride = (slab.shape[1], slab.stride(1)) if biases else (1, 1)
        b1, b2 = (biases + [v_th, v_th])[:2]  # unused slots are never read
        drop_scale = 1 / (1 - dropout)
        if seed is None:  # no dropout: the kernels never read the seed
            seed = v_th
        p_drop, as_bytes = _drop_threshold(dropout)
        _if_forward_kernel[_neuron_grid(n)](current, spikes, potential, init, v_th, shift, v_th.to(current.dtype), b1,
                                            b2, n, T, stride_t, channels, ch_stride, seed, p_drop, drop_scale,
                                            HAS_INIT=initial_potential is not None, NUM_BIAS=len(biases),
                                            DROPOUT=dropout > 0, BYTES=as_bytes, SAVE=save, **_neuron_meta())
        ctx.save_for_backward(potential, v_th, seed)
        ctx.constants = (float(alpha), float(dropout), drop_scale)
        ctx.current_dtype = current.dtype
        ctx.constant_input = steps is not None
        ctx.bias_dtypes = (None if bias is None else bias.dtype, None if calib_bias is None else calib_bias.dtype)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        potential, v_th, seed = ctx.saved_tensors
        alpha, dropout, drop_scale = ctx.constants
        T, n = potential.shape[0], potential[0].numel()
        grad_spikes = _same_layout(grad_spikes, potential)
        bias_grad = ctx.needs_input_grad[5] or ctx.needs_input_grad[6]
        # A per-channel bias gets sum over T, batch and space of dL/dI: the kernel sums over T in
        # registers, so only one step-sized tensor is left to reduce. That sum over T is also the
        # whole gradient of a constant input, so it gets no per-step gradient and no reduction over
        # T (an expand's backward reduction took 1.74 ms of a 25.8 ms VGG16 step on an H200).
        constant = ctx.constant_input
        sum_t = bias_grad or constant
        grad_sum = torch.empty_like(potential[0]) if sum_t else potential
        # For a constant input, ``potential`` is only a placeholder: the kernel stores no step.
        grad_current = potential if constant else torch.empty_like(potential, dtype=ctx.current_dtype)
        p_drop, as_bytes = _drop_threshold(dropout)
        _if_backward_kernel[_neuron_grid(n)](grad_spikes, potential, grad_current, grad_sum, v_th, n, T, (T - 1) * n,
                                             alpha, seed, p_drop, drop_scale, DROPOUT=dropout > 0, BYTES=as_bytes,
                                             SUM_T=sum_t, STORE_STEPS=not constant, **_neuron_meta())
        grads = [None, None]
        if bias_grad:
            per_channel = grad_sum.sum(dim=[d for d in range(grad_sum.dim()) if d != 1])
            grads = [per_channel.to(dt) if ctx.needs_input_grad[5 + i] else None for i, dt in enumerate(ctx.bias_dtypes)]
        if constant:
            grad_current = grad_sum.to(ctx.current_dtype) if ctx.needs_input_grad[0] else None
        return grad_current, None, None, None, None, *grads, None, None, None


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, threshold, decay, lens, steps, bias):
        current, stride_t = _prepare(current, steps)
        T, slab = current.shape[0], current[0]
        n = slab.numel()
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[5]
        spikes = _empty_steps(slab, T, current.dtype)
        potential = _empty_steps(slab, T if save else 1, torch.float32)
        channels, ch_stride = (slab.shape[1], slab.stride(1)) if bias is not None else (1, 1)
        b = potential if bias is None else bias.detach().to(current.dtype).contiguous()  # never read without
        _lif_forward_kernel[_neuron_grid(n)](current, b, spikes, potential, n, T, stride_t, channels, ch_stride,
                                             float(threshold), float(decay), HAS_BIAS=bias is not None, SAVE=save,
                                             **_neuron_meta())
        ctx.save_for_backward(potential)
        ctx.constants = (float(threshold), float(decay), float(lens))
        ctx.current_dtype = current.dtype
        ctx.constant_input = steps is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (potential,) = ctx.saved_tensors
        threshold, decay, lens = ctx.constants
        T, n = potential.shape[0], potential[0].numel()
        grad_spikes = _same_layout(grad_spikes, potential)
        # A constant input's gradient is the kernel's sum over T, one step in the input's layout and
        # dtype: no per-step gradient, and no expand reduction over T (reduce_kernel, 178 us a call in
        # the bf16 cnn7 training step on an H200, batch 50, T=8). A bias's gradient is the sum over
        # batch and space of that sum over T: one step to reduce instead of T.
        constant, bias_grad = ctx.constant_input, ctx.needs_input_grad[5]
        grad_current = torch.empty_like(potential[0] if constant else potential, dtype=ctx.current_dtype)
        grad_sum = torch.empty_like(potential[0]) if bias_grad and not constant else grad_current
        _lif_backward_kernel[_neuron_grid(n)](grad_spikes, potential, grad_current, grad_sum, n, T, (T - 1) * n,
                                              threshold, decay, lens, SUM_T=constant or bias_grad,
                                              STORE_STEPS=not constant, **_neuron_meta())
        grad_bias = None
        if bias_grad:
            # Rounded to the current's dtype, as autocast's cast of the bias makes PyTorch's gradient.
            per_channel = grad_sum.float().sum(dim=[d for d in range(grad_sum.dim()) if d != 1])
            grad_bias = per_channel.to(ctx.current_dtype).to(ctx.bias_dtype)
        return grad_current if ctx.needs_input_grad[0] else None, None, None, None, None, grad_bias


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
        _tssl_forward_kernel[_neuron_grid(n)](current, psp, spikes, du, u_pre, n, T, stride_t, 1 - 1 / tau_m,
                                              1 / tau_m, 1 - 1 / tau_s, 1 / tau_s, float(threshold), SAVE=save,
                                              **_neuron_meta())
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
        _tssl_backward_kernel[_neuron_grid(n)](grad_psp, du, u_pre, grad_current, n, T, (T - 1) * n, 1 / tau_m,
                                               1 - 1 / tau_s, 1 / tau_s, 1 / (4 * tau_s), threshold, alpha,
                                               **_neuron_meta())
        return grad_current, None, None, None, None


# Tensors of this many elements or more index in int64 in the pooling kernels (_pool_block).
INT32_ELEMENTS = 2**31
ROW_BLOCK_COLUMNS = 64  # a block's columns along a contiguous innermost dim: 128 bytes a row in bf16


def _row_block(columns: int) -> Tuple[int, int]:
    """Rows and columns of a BLOCK-element block over rows of ``columns`` contiguous elements (the
    channels of channels_last pooling, the innermost dim of the shared mask): each row's outer
    coordinates are split once per block row, and its loads and stores run contiguous."""
    cols = min(triton.next_power_of_2(columns), ROW_BLOCK_COLUMNS)
    return BLOCK // cols, cols


def _pool_launch(x: torch.Tensor, out: torch.Tensor):
    """Grid and kernel arguments: the output's size and the input's element strides, then its memory
    order, whether indices need int64 (``x`` is the larger of the two) and the block shape."""
    channels_last = not out.is_contiguous()
    C = out.shape[1]
    if channels_last:
        pix, cb = _row_block(C)
        grid = (triton.cdiv(out.numel() // C, pix), triton.cdiv(C, cb))
    else:
        cb, pix, grid = 1, BLOCK, grid_1d(out.numel())
    args = (out.numel(), C, out.shape[2], out.shape[3], *x.stride())
    flags = {"CHANNELS_LAST": channels_last, "WIDE": x.numel() >= INT32_ELEMENTS, "PIX": pix, "CB": cb}
    return grid, args, flags


class _AvgPoolConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate):
        B, C, H, W = x.shape
        out = torch.empty((B, C, H // 2, W // 2), dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
        w = weight.detach().to(torch.float32).reshape(C, 4).t().contiguous()  # [4, C]: a tap's row is contiguous
        grid, args, flags = _pool_launch(x, out)
        _pool_forward_kernel[grid](x, w, out, *args, GATE=gate, **flags, **EXACT_ARITHMETIC)
        # The gate needs the pooled current in the backward: a quarter of the input's size.
        ctx.save_for_backward(w, out if gate else w)
        ctx.gate = gate
        ctx.input_meta = (x.shape, x.dtype, _memory_format(x))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w, out = ctx.saved_tensors
        shape, dtype, memory_format = ctx.input_meta
        grad_out = grad_out.contiguous(memory_format=memory_format)
        grad_x = torch.empty(shape, dtype=dtype, device=grad_out.device, memory_format=memory_format)
        grid, args, flags = _pool_launch(grad_x, grad_out)
        _pool_backward_kernel[grid](grad_out, out, w, grad_x, *args, GATE=ctx.gate, **flags, **EXACT_ARITHMETIC)
        return grad_x, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


# ---------------------------------------------------------------------------------------------
# The functions the neurons call with backend "fast" (same signatures as in .neurons)
# ---------------------------------------------------------------------------------------------


def if_soft_reset(
    current: torch.Tensor,
    threshold: torch.Tensor,
    shift_per_step: float,
    initial_potential: Optional[torch.Tensor],
    alpha: float,
) -> Optional[torch.Tensor]:
    """Fused :func:`.neurons.if_soft_reset`: spikes ``[T, B, ...]`` of value ``threshold``; None where
    no kernel runs."""
    if not triton_enabled(current) or _trained_state(threshold, initial_potential):
        return None
    return _IFFunction.apply(current, threshold, shift_per_step, initial_potential, alpha, None, None, 0.0, None, None)


def _trained_state(threshold: torch.Tensor, initial_potential: Optional[torch.Tensor]) -> bool:
    # The kernels give gradients for the current only; a trained threshold or start potential
    # (never the case in the zoo's recipes) keeps the reference's full autograd.
    return threshold.requires_grad or (initial_potential is not None and initial_potential.requires_grad)


def if_soft_reset_layer(
    current: torch.Tensor,
    threshold: torch.Tensor,
    shift_per_step: float,
    initial_potential: Optional[torch.Tensor],
    alpha: float,
    bias: Optional[torch.Tensor] = None,
    calib_bias: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
    *,
    steps: Optional[int] = None,
) -> Optional[torch.Tensor]:
    """The rest of a VGG layer after its bias-free conv, in one kernel pass each way: ``current``
    ``[T, B, C, ...]`` plus the per-channel ``bias`` then ``calib_bias``, IF dynamics as
    :func:`.neurons.if_soft_reset`, then dropout with probability ``dropout`` (0: none).

    With ``steps``, ``current`` is ``[B, C, ...]``, the input at each of ``steps`` steps (the first
    layer's direct encoding): the same spikes as for it expanded to ``[T, B, C, ...]``, and its
    gradient, the sum over T, comes from the kernel without a per-step gradient tensor.

    The dropout mask is drawn per element and step, as ``nn.Dropout`` on ``[T, B, ...]`` does, from
    Triton's counter-based generator seeded from torch's generator of the current's device, and
    regenerated in the backward instead of being stored: same distribution as ``nn.Dropout``,
    different draws. None where no kernel runs (:func:`.neurons.if_layer` is the reference).
    """
    elements = current.numel() * (steps or 1)
    kernel_dropout = 0 <= dropout < 1 and elements < 2**31  # int32 counters
    if not piece_enabled("if_layer", current) or _trained_state(threshold, initial_potential) or not kernel_dropout:
        return None
    # Drawn on the current's device: a captured CUDA graph then draws a new seed at every replay.
    seed = torch.randint(2**31 - 1, (1,), device=current.device) if dropout > 0 else None
    return _IFFunction.apply(current, threshold, shift_per_step, initial_potential, alpha, bias, calib_bias,
                             float(dropout), seed, steps)


SHARED_MASK_OUTER_DIMS = 4  # outer dims of the walk (_shared_mask_kernel's i0..i3)


def _mask_walk(x: torch.Tensor, keep: torch.Tensor) -> Optional[Tuple[List[int], List[int]]]:
    """``x``'s dims of more than one element from outermost to innermost in memory, as sizes and
    ``keep``'s strides broadcast to ``x`` (0 where it is shared); None where ``x`` does not fill its
    storage densely or has more dims than the kernel walks."""
    mask_strides = keep.expand(x.shape).stride()
    dims = sorted((d for d in range(x.dim()) if x.shape[d] > 1), key=lambda d: x.stride(d), reverse=True)
    expected = 1
    for d in reversed(dims):
        if x.stride(d) != expected:
            return None
        expected *= x.shape[d]
    if not dims or len(dims) > SHARED_MASK_OUTER_DIMS + 1:
        return None
    return [x.shape[d] for d in dims], [mask_strides[d] for d in dims]


def _shared_mask_multiply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    sizes, strides = _mask_walk(x, keep)
    pad = SHARED_MASK_OUTER_DIMS + 1 - len(sizes)
    sizes, strides = [1] * pad + sizes, [0] * pad + strides
    D, SD = sizes[-1], strides[-1]
    rows, cols = _row_block(D)
    out = torch.empty_like(x)  # dense, so its strides are x's
    grid = (triton.cdiv(x.numel() // D, rows), triton.cdiv(D, cols))
    _shared_mask_kernel[grid](x, keep, out, x.numel() // D, D, *sizes[1:4], *strides[:4], SD, ROWS=rows, COLS=cols,
                              **EXACT_ARITHMETIC)
    return out


class _SharedMaskFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep):
        ctx.save_for_backward(keep)
        return _shared_mask_multiply(x, keep)

    @staticmethod
    def backward(ctx, grad_out):
        (keep,) = ctx.saved_tensors
        if _mask_walk(grad_out, keep) is None:
            grad_out = grad_out.contiguous()
        return _shared_mask_multiply(grad_out, keep), None


def shared_mask_multiply(x: torch.Tensor, keep: torch.Tensor) -> Optional[torch.Tensor]:
    """``x * keep`` for a ``keep`` of ``x``'s dtype and rank broadcast over some of its dims (TSSL-BP's
    dropout mask, shared over time and columns), one pass each way in ``x``'s layout, equal to
    PyTorch's product; None where no kernel runs."""
    usable = (
        piece_enabled("shared_mask", x)
        and keep.dtype == x.dtype
        and keep.dim() == x.dim()
        and keep.is_contiguous()
        and not keep.requires_grad
        and keep.device == x.device
        and x.numel() < INT32_ELEMENTS
        and _mask_walk(x, keep) is not None
    )
    return _SharedMaskFunction.apply(x, keep) if usable else None


def avg_pool_conv(x: torch.Tensor, weight: torch.Tensor, gate: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=2, groups=C)`` for SNN-Calibration's 2x2 AvgPoolConv (``weight``
    ``[C, 1, 2, 2]``, frozen) as one elementwise pass instead of cuDNN's slow grouped kernel; with
    ``gate``, ``F.relu`` of it (the ``gate`` of :class:`qsnn_zoo.models.vgg.VGGLayer`).

    The kernel sums the four taps in a fixed order, so it equals the convolution within rounding;
    exactly when a channel's four weights are equal and its inputs are spikes of one value (the
    converted models: weights 1/4), since sums of equal terms round alike in any order.
    """
    usable = (
        _poolable(x)
        and tuple(weight.shape) == (x.shape[1], 1, 2, 2)
        and not weight.requires_grad  # the kernel gives no weight gradient: the pool weights are frozen
    )
    if not usable:
        pooled = torch.nn.functional.conv2d(x, weight, stride=2, groups=x.shape[1])
        return torch.nn.functional.relu(pooled) if gate else pooled
    return _pool(x, weight, gate)


def sum_pool_2x2(x: torch.Tensor, scale: float) -> Optional[torch.Tensor]:
    """``F.avg_pool2d(x, 2, divisor_override=1) * scale`` (TSSL-BP's pooling,
    :func:`qsnn_zoo.models.alexnet.sum_pool`) on the pooling kernels, as the depthwise conv whose taps
    are all ``scale``; None where no kernel runs.

    The kernel sums ``scale * x`` over the four taps in fp32 and rounds once to ``x``'s dtype; the
    reference rounds the sum, then its product with ``scale``: equal within rounding. The gradient,
    ``scale`` times the output's at each tap, is the same product in both.
    """
    if not _poolable(x):
        return None
    taps = torch.full((x.shape[1], 1, 2, 2), scale, dtype=torch.float32, device=x.device)
    return _pool(x, taps, False)


def _poolable(x: torch.Tensor) -> bool:
    """Whether the pooling kernels take ``x``: ``[B, C, H, W]`` with even H and W, where the piece runs."""
    return piece_enabled("pool", x) and x.dim() == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0


def _pool(x: torch.Tensor, weight: torch.Tensor, gate: bool) -> torch.Tensor:
    if not dense_layout(x):
        x = x.contiguous()
    return _AvgPoolConvFunction.apply(x, weight, gate)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, mode: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """:func:`.quant.quantize` of ``weight`` written in ``dtype`` by one kernel (no autograd: the
    caller's straight-through estimator gives the gradient); None where no kernel runs."""
    # Conv weights are channels_last on the fast backend: the kernel walks any dense layout, and Q(W)
    # takes the weight's strides, element for element.
    usable = piece_enabled("quantize", weight) and weight.dtype == torch.float32 and dense_layout(weight)
    if not usable:
        return None
    q = torch.empty_like(weight, dtype=dtype)  # a dense weight's strides, kept
    s = scale.detach().to(device=weight.device, dtype=torch.float32).reshape(1)
    _quantize_kernel[grid_1d(weight.numel())](weight, s, q, weight.numel(), TERNARY=mode == "ter", BLOCK=BLOCK,
                                            **EXACT_ARITHMETIC)
    return q


def lif_hard_reset(current: torch.Tensor, threshold: float, decay: float, lens: float,
                   steps: Optional[int] = None, bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Fused :func:`.neurons.lif_hard_reset`: spikes ``[T, B, ...]`` in {0, 1}; None where no kernel runs.

    With ``steps``, ``current`` is ``[B, ...]``, the input at each of ``steps`` steps (cnn7's first
    layer): the same spikes as for it expanded over T, and its gradient, the sum over T, comes from
    the kernel without a per-step gradient tensor. With ``bias``, a per-channel bias (dim 1 of a
    step) is added to the current in the kernel, rounded to the current's dtype as PyTorch adds a
    conv's bias to its output: cnn7's bias-free conv plus this equals the conv with its bias, and
    saves the broadcasting add and most of the bias gradients' reductions: the CBP step went from
    6.27 to 5.67 ms on one H200 (benchmarks/h200_neuron_launch.md)."""
    if not triton_enabled(current):
        return None
    if bias is not None:
        step_dims = current.dim() - (0 if steps is not None else 1)
        usable = (piece_enabled("lif_bias", current) and bias.dim() == 1 and step_dims >= 2
                  and current.shape[2 if steps is None else 1] == bias.numel() and bias.device == current.device)
        if not usable:
            return None
    return _LIFFunction.apply(current, threshold, decay, lens, steps, bias)


def tssl_neuron(current: torch.Tensor, tau_m: float, tau_s: float, threshold: float, alpha: float):
    """Fused :func:`.neurons.tssl_neuron`: ``(psp, spikes)``, both ``[T, B, ...]``; None where no kernel runs."""
    if not triton_enabled(current):
        return None
    return _TSSLFunction.apply(current, tau_m, tau_s, threshold, alpha)
