"""Every Triton kernel compiles for the zoo's GPUs (sm_90: H100, H200) on this CPU-only machine.

Triton's interpreter (``tests/test_fused.py``) runs the kernels' arithmetic in NumPy and checks no
types: a loop-carried value that changes type, or an operation the GPU compiler refuses, shows only
when a GPU compiles the kernel. Here the compiler runs ahead of any GPU, with the specialisations the
JIT makes at launch (a unit stride as the constant 1, 16-divisible pointers and sizes).
"""
from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from qsnn_zoo import cbp_kernel  # noqa: E402
from qsnn_zoo.layers import fused  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
INTEGERS = {"N", "T", "stride_t", "C", "ch_stride", "last", "total", "Ho", "Wo", "sn", "sc", "sh", "sw"}


def compile_for_hopper(kernel, constants: dict, types: dict = None, divisible=()) -> str:
    """PTX of ``kernel`` with ``constants`` for its constexpr arguments; the others are fp32
    pointers (``*_ptr``), int32 (sizes and strides) or fp32 scalars unless ``types`` says otherwise."""
    types = types or {}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in types:
            signature[name] = types[name]
        else:
            signature[name] = "*fp32" if name.endswith("_ptr") else "i32" if name in INTEGERS else "fp32"
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=HOPPER).asm["ptx"]


BF16_IF = {"cur_ptr": "*bf16", "spk_ptr": "*bf16", "vout_ptr": "*bf16", "seed_ptr": "*i64"}
CASES = {
    "if_forward_dropout_bytes": (fused._if_forward_kernel, dict(HAS_INIT=True, NUM_BIAS=2, DROPOUT=True, BYTES=True,
                                                                 SAVE=True, BLOCK=1024), {**BF16_IF, "p_drop": "i32"}),
    "if_forward_dropout_uniform": (fused._if_forward_kernel, dict(HAS_INIT=False, NUM_BIAS=1, DROPOUT=True,
                                                                   BYTES=False, SAVE=True, BLOCK=1024), BF16_IF),
    "if_forward_inference": (fused._if_forward_kernel, dict(HAS_INIT=False, NUM_BIAS=0, DROPOUT=False, BYTES=False,
                                                             SAVE=False, BLOCK=1024), BF16_IF),
    "if_backward_dropout_bytes": (fused._if_backward_kernel, dict(DROPOUT=True, BYTES=True, SUM_T=True,
                                                                   STORE_STEPS=True, BLOCK=1024),
                                  {"gspk_ptr": "*bf16", "gcur_ptr": "*bf16", "seed_ptr": "*i64", "p_drop": "i32"}),
    "if_backward_dropout_uniform": (fused._if_backward_kernel, dict(DROPOUT=True, BYTES=False, SUM_T=False,
                                                                     STORE_STEPS=True, BLOCK=1024),
                                    {"gspk_ptr": "*bf16", "gcur_ptr": "*bf16", "seed_ptr": "*i64"}),
    "lif_forward": (fused._lif_forward_kernel, dict(HAS_BIAS=False, SAVE=True, BLOCK=1024),
                    {"cur_ptr": "*bf16", "spk_ptr": "*bf16"}),
    "lif_forward_bias": (fused._lif_forward_kernel, dict(HAS_BIAS=True, SAVE=True, BLOCK=1024),
                         {"cur_ptr": "*bf16", "bias_ptr": "*bf16", "spk_ptr": "*bf16"}),
    "lif_backward_constant_input": (fused._lif_backward_kernel, dict(SUM_T=True, STORE_STEPS=False, BLOCK=1024),
                                    {"gspk_ptr": "*bf16", "gcur_ptr": "*bf16", "gsum_ptr": "*bf16"}),
    "lif_backward_bias": (fused._lif_backward_kernel, dict(SUM_T=True, STORE_STEPS=True, BLOCK=1024),
                          {"gspk_ptr": "*bf16", "gcur_ptr": "*bf16"}),
    "tssl_forward": (fused._tssl_forward_kernel, dict(SAVE=True, BLOCK=1024),
                     {"cur_ptr": "*bf16", "psp_ptr": "*bf16", "spk_ptr": "*bf16"}),
    "tssl_backward": (fused._tssl_backward_kernel, dict(BLOCK=1024), {"delta_ptr": "*bf16", "gcur_ptr": "*bf16"}),
    "quantize": (fused._quantize_kernel, dict(TERNARY=True, BLOCK=1024), {"q_ptr": "*bf16"}),
    "penalty_forward": (cbp_kernel._penalty_forward_kernel, dict(TERNARY=False, BLOCK=1024), None),
    "penalty_backward": (cbp_kernel._penalty_backward_kernel, dict(TERNARY=True, BLOCK=1024), None),
    "sgd_weight_step_first": (cbp_kernel._sgd_weight_step_kernel, dict(TERNARY=False, HAS_GRAD=True, DECAY=True,
                                                                       FIRST=True, BLOCK=1024), None),
    "sgd_weight_step": (cbp_kernel._sgd_weight_step_kernel, dict(TERNARY=True, HAS_GRAD=False, DECAY=False,
                                                                 FIRST=False, BLOCK=1024), None),
}
POOL_STRIDES = ("sn", "sh", "sw", "C", "total")
POOL_TYPES = {"x_ptr": "*bf16", "y_ptr": "*bf16", "gy_ptr": "*bf16", "gx_ptr": "*bf16"}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_compiles_for_hopper(case):
    kernel, constants, types = CASES[case]
    assert ".entry" in compile_for_hopper(kernel, constants, types)


@pytest.mark.parametrize("kernel", [fused._pool_forward_kernel, fused._pool_backward_kernel], ids=["forward", "backward"])
@pytest.mark.parametrize("wide", [False, True])
def test_pooling_kernels_move_channels_last_taps_in_128_bit_accesses(kernel, wide):
    """In channels_last the taps are contiguous over a block's channels, so each thread loads (forward)
    or stores (backward) whole 16-byte vectors, where one flat run of elements split one by one moved
    one 2-byte element at a time (benchmarks/README.md)."""
    pointers = [n for n in kernel.arg_names if n.endswith("_ptr")]
    constants = dict(GATE=kernel is fused._pool_backward_kernel, WIDE=wide, sc=1, CHANNELS_LAST=True, PIX=16, CB=64)
    ptx = compile_for_hopper(kernel, constants, POOL_TYPES, (*pointers, *POOL_STRIDES))
    access = "ld" if kernel is fused._pool_forward_kernel else "st"
    assert re.search(rf"{access}\.global(\.\w+)*\.v4", ptx)


def test_shared_mask_kernel_moves_rows_in_128_bit_accesses():
    """A block's columns are one contiguous run of the innermost dim, so each thread loads and stores
    16-byte vectors of bf16 PSPs (the mask, strided along the channels, is read element by element)."""
    kernel = fused._shared_mask_kernel
    sizes = {name: "i32" for name in ("R", "D", "D1", "D2", "D3", "S0", "S1", "S2", "S3", "SD")}
    types = {"x_ptr": "*bf16", "m_ptr": "*bf16", "out_ptr": "*bf16", **sizes}
    ptx = compile_for_hopper(kernel, dict(ROWS=16, COLS=64), types, ("x_ptr", "m_ptr", "out_ptr", "D"))
    assert re.search(r"ld\.global(\.\w+)*\.v4", ptx) and re.search(r"st\.global(\.\w+)*\.v4", ptx)
