"""Running stateless layers over the time axis of ``[T, B, ...]`` tensors.

The reference applies a layer once per timestep, exactly as the original code does; the fast
path folds T into the batch and runs it once. Both compute the same function.
"""
from __future__ import annotations

from typing import Callable

import torch

Layer = Callable[[torch.Tensor], torch.Tensor]


def over_time(layer: Layer, x: torch.Tensor, fold: bool) -> torch.Tensor:
    """``layer`` applied to each ``x[t]``; with ``fold`` as one call on ``[T*B, ...]``."""
    if fold:
        y = layer(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])
    return torch.stack([layer(x_t) for x_t in x])


def constant_over_time(layer: Layer, x: torch.Tensor, T: int, fold: bool) -> torch.Tensor:
    """``layer`` on an input that is the same at every step (direct encoding).

    The fast path computes it once and repeats it: exact, and T times cheaper for the first layer.
    """
    if fold:
        return repeat_over_time(layer(x), T)
    return torch.stack([layer(x) for _ in range(T)])


def repeat_over_time(y: torch.Tensor, T: int) -> torch.Tensor:
    """``y`` as the value at each of ``T`` steps, ``[T, *y.shape]``: a view with time stride 0, not a copy."""
    return y.unsqueeze(0).expand(T, *y.shape)
