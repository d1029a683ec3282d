"""The three pipelines' losses, each on the per-step network output ``[T, B, K]`` (or ANN logits ``[B, K]``).

Their scaling conventions differ and are kept (docs/method.md §B.8): the constraint term lambda * C is added
unscaled, so the conventions set the relative weight of the constraint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers.neurons import psp_filter

LOSSES = ("ce", "mse_rate", "tssl_kernel")


def desired_spikes(T: int, device=None) -> torch.Tensor:
    """TSSL-BP's desired spike train of the label neuron (docs/method.md §C.3): [0, 1, 1, ...] below T = 10,
    [0, 1, 0, 1, ...] from T = 10 on."""
    t = torch.arange(T, device=device)
    if T < 10:
        return (t > 0).float()
    return (t % 2 == 1).float()


def tssl_kernel_loss(psp: torch.Tensor, labels: torch.Tensor, tau_s: float) -> torch.Tensor:
    """1/2 * sum over batch, class and time of (a_t - target_t)^2; the target is the PSP of the
    desired spike train for the label neuron, 0 elsewhere (docs/method.md §C.3). Summed, not averaged."""
    T, _, K = psp.shape
    target_psp = psp_filter(desired_spikes(T, psp.device).view(T, 1), tau_s).view(T, 1, 1)
    target = target_psp * F.one_hot(labels, K).to(psp.dtype).unsqueeze(0)
    return 0.5 * ((psp - target) ** 2).sum()


def mse_rate_loss(rate: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """STBP: MSE between output firing rates and the one-hot label, mean over batch x classes (docs/method.md §D.2)."""
    return F.mse_loss(rate, F.one_hot(labels, rate.shape[-1]).to(rate.dtype))


def is_summed(loss: str) -> bool:
    """Whether the loss sums over the batch: data-parallel ranks then scale it by the world size
    so that averaged gradients equal the single-process ones."""
    return loss == "tssl_kernel"


def compute_loss(loss: str, model, output: torch.Tensor, labels: torch.Tensor):
    """``(loss, scores)`` of a batch: ``output`` is ``[T, B, K]`` per-step outputs of an SNN, or
    ``[B, K]`` logits of an ANN; ``scores`` are what accuracy is measured on."""
    scores = model.decode(output) if output.dim() == 3 else output
    if loss == "ce":
        return F.cross_entropy(scores.float(), labels), scores
    if loss == "mse_rate":
        return mse_rate_loss(scores.float(), labels), scores
    if loss == "tssl_kernel":
        return tssl_kernel_loss(output.float(), labels, model.tau_s), scores
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
