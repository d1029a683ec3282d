"""Dense bit packing of quantized weight codes.

binary  ("bin-1bit-msb"): one bit a weight, 1 = +1, 0 = -1, eight to a byte, first weight in the
                           most significant bit (numpy.packbits order).
ternary ("ter-base3-5"):   five weights a byte as a base-3 number sum_i (code_i + 1) * 3^(4 - i),
                           so 1.6 bits a weight (log2(3) = 1.585 is the bound).
The last byte is padded with -1 codes; the weight count comes from the stored shape.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

SCHEMES = {"bin": "bin-1bit-msb", "ter": "ter-base3-5"}
_PER_BYTE = {"bin": 8, "ter": 5}
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)
_TRIT_WEIGHTS = torch.tensor([81, 27, 9, 3, 1], dtype=torch.int32)


def mode_of_scheme(scheme: str) -> str:
    """``"bin"`` or ``"ter"`` for a scheme name as stored in a weights file's metadata."""
    for mode, name in SCHEMES.items():
        if name == scheme:
            return mode
    raise ValueError(f"unknown packing scheme {scheme!r}; this qsnn-zoo knows {sorted(SCHEMES.values())}")


def packed_size(numel: int, mode: str) -> int:
    return math.ceil(numel / _PER_BYTE[mode])


def _padded(codes: torch.Tensor, per_byte: int) -> torch.Tensor:
    flat = codes.reshape(-1).to(torch.int32)
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), -1)])
    return flat.view(-1, per_byte)


def pack_codes(codes: torch.Tensor, mode: str) -> torch.Tensor:
    """int8 codes in {-1, +1} (bin) or {-1, 0, +1} (ter), any shape -> uint8 bytes."""
    codes = codes.detach().cpu()
    allowed = (-1, 1) if mode == "bin" else (-1, 0, 1)
    in_range = (codes >= -1) & (codes <= 1)
    if mode == "bin":
        in_range &= codes != 0
    if not in_range.all():
        raise ValueError(f"{mode} codes must lie in {allowed}")
    if mode == "bin":
        digits, weights = (_padded(codes, 8) > 0).to(torch.int32), _BIT_WEIGHTS
    else:
        digits, weights = _padded(codes, 5) + 1, _TRIT_WEIGHTS
    return (digits * weights).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 bytes -> int8 codes of ``shape``."""
    numel = math.prod(shape)
    expected = packed_size(numel, mode)
    if packed.dtype != torch.uint8 or packed.numel() != expected:
        raise ValueError(
            f"packed {mode} codes for shape {tuple(shape)} must be {expected} uint8 bytes, "
            f"got {packed.numel()} {packed.dtype}"
        )
    values = packed.reshape(-1, 1).to(torch.int32)
    if mode == "bin":
        codes = (values // _BIT_WEIGHTS) % 2 * 2 - 1
    else:
        codes = (values // _TRIT_WEIGHTS) % 3 - 1
    return codes.reshape(-1)[:numel].to(torch.int8).reshape(tuple(shape))
