"""One training step, one training epoch, and evaluation: shared by every pipeline stage.

The step never waits for the GPU: sums (Lagrangian, loss, correct predictions) stay on the device
and are read once per epoch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..cbp import CBP
from ..data import ImageSet, to_tensor
from ..metrics import accuracy
from .distributed import DistInfo, all_reduce_sum
from .losses import compute_loss


# Per-epoch values read back from the device whose non-finite value means the run has diverged: the
# loss, the Lagrangian sum (docs/method.md §B.5) and the CBP multipliers' statistics.
FINITE_METRICS = ("train_loss", "lagsum", "lambda_mean", "lambda_max")


class NonFiniteError(ArithmeticError):
    """Training produced a NaN or infinite loss, Lagrangian or multiplier."""


def check_finite(record: Dict[str, Any]) -> None:
    """Stops a diverged run on the epoch's record, before its state is checkpointed; the step itself
    never synchronises to look."""
    bad = {k: record[k] for k in FINITE_METRICS if record.get(k) is not None and not math.isfinite(record[k])}
    if bad:
        values = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteError(
            f"training diverged in epoch {record['epoch'] + 1} ({values}); the checkpoint of the epoch before "
            "is kept. Start the stage again with a lower --lr (and --lambda-lr for CBP)"
        )


class TrainForward(nn.Module):
    """The output the losses need: per-step outputs ``[T, B, K]`` of an SNN, logits of an ANN.

    DistributedDataParallel wraps this module, so its gradient hooks see the real forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "mode", "snn") == "ann":
            return self.model.forward_ann(x)
        return self.model.forward_steps(x)


@dataclass
class StepRule:
    """What happens around the optimizer step (docs/method.md §B.4, §B.7)."""

    loss: str
    grad_clip: str = "none"  # "value" | "norm" | "none"
    grad_clip_max: float = 1.0
    weight_clamp: Optional[float] = None  # fp32 stages: every weight tensor into +-weight_clamp
    loss_scale: float = 1.0  # world size for summed losses under data parallelism
    amp: bool = False


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    # Casts cached by autocast would outlive a CUDA graph capture; the quantized layers make their
    # Q(W) in bf16 themselves, so the cache saves little anyway.
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=not capturing)


def _clip(model: nn.Module, rule: StepRule) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    if rule.grad_clip == "value":
        torch.nn.utils.clip_grad_value_(params, rule.grad_clip_max)
    elif rule.grad_clip == "norm":
        # Every weight tensor with a gradient counts, including TSSL-BP's frozen first/last layers (docs/method.md §C.5).
        torch.nn.utils.clip_grad_norm_(params, rule.grad_clip_max)
    elif rule.grad_clip != "none":
        raise ValueError(f"grad_clip must be 'value', 'norm' or 'none', got {rule.grad_clip!r}")


@torch.no_grad()
def _clamp_weights(model: nn.Module, bound: float) -> None:
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1:
            p.clamp_(-bound, bound)


def train_step(
    forward: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    rule: StepRule,
    cbp: Optional[CBP] = None,
):
    """Forward, loss (+ lambda * C), backward, clip, step, clamp. Returns device tensors
    ``(lagrangian, loss, correct)`` without synchronising.

    Under SGD with clipping by value on the GPU, CBP's quantized weights take the clip, step and
    clamp in one pass with the penalty's gradient (:meth:`CBP.weight_step`), the other parameters
    the eager passes."""
    model.zero_grad(set_to_none=True)
    fused_weights = cbp is not None and cbp.weight_step_usable(optimizer, rule.grad_clip)
    with autocast(images.device, rule.amp):
        output = forward(images)
        loss, scores = compute_loss(rule.loss, model, output, labels)
    objective = loss * rule.loss_scale
    if cbp is not None:
        objective = objective + cbp.penalty(differentiable=not fused_weights)
    objective.backward()
    if fused_weights:
        cbp.weight_step(optimizer, rule.grad_clip_max)
    _clip(model, rule)
    optimizer.step()
    if cbp is not None:
        if not fused_weights:  # the weight step has clamped them already
            cbp.clamp_()
    elif rule.weight_clamp is not None:
        _clamp_weights(model, rule.weight_clamp)
    correct = (scores.argmax(1) == labels).sum()
    return objective.detach(), loss.detach(), correct


def train_epoch(
    forward: nn.Module,
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    rule: StepRule,
    info: DistInfo,
    device: torch.device,
    cbp: Optional[CBP] = None,
    progress: bool = False,
    desc: str = "train",
    step: Optional[Callable[[torch.Tensor, torch.Tensor], tuple]] = None,
) -> Dict[str, float]:
    """One pass over ``loader``. ``lagsum`` is the sum over minibatches of the Lagrangian (docs/method.md §B.5),
    averaged over data-parallel ranks so that every rank takes the same g decision.

    ``step(images, labels)`` runs one training step (default: :func:`train_step` with these
    arguments; :class:`~qsnn_zoo.train.graph.GraphedTrainStep` replays it from a CUDA graph)."""
    from tqdm.auto import tqdm

    if step is None:
        def step(images, labels):
            return train_step(forward, model, images, labels, optimizer, rule, cbp)

    forward.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # lagsum, loss sum, correct
    steps = images_seen = 0
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not (progress and info.is_main)):
        lagrangian, loss, correct = step(images, labels)
        sums += torch.stack([lagrangian.double(), loss.double(), correct.double()])
        steps += 1
        images_seen += len(labels)
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([images_seen])]), info)
    lagsum, loss_sum, correct, images = totals.tolist()
    return {
        "lagsum": lagsum / info.world_size,
        "train_loss": loss_sum / max(steps * info.world_size, 1),
        "train_top1": 100.0 * correct / images if images else float("nan"),
        "steps": steps,
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageSet,
    mean,
    std,
    batch_size: int,
    device: torch.device,
    info: DistInfo = DistInfo(),
    amp: bool = False,
) -> np.ndarray:
    """Top-1 predictions for every row of ``data``; data-parallel ranks split the batches."""
    was_training = model.training
    model.eval()
    predictions = torch.zeros(len(data), dtype=torch.long, device=device)
    for start in range(info.rank * batch_size, len(data), batch_size * info.world_size):
        x = to_tensor(data.images[start : start + batch_size], mean, std, device)
        with autocast(device, amp):
            predictions[start : start + len(x)] = model(x).argmax(1)
    all_reduce_sum(predictions, info)
    model.train(was_training)
    return predictions.cpu().numpy()


def evaluate(model: nn.Module, data: ImageSet, mean, std, batch_size: int, device: torch.device,
             info: DistInfo = DistInfo(), amp: bool = False) -> Dict[str, Optional[float]]:
    """Top-1 (%) on all rows and, where the data marks them, on the lossless rows."""
    acc = accuracy(predict(model, data, mean, std, batch_size, device, info, amp), data)
    return {
        "top1_all": acc["all"]["top1"],
        "top1_lossless": acc["lossless"]["top1"] if acc["lossless"] else None,
        "rows_all": acc["all"]["rows"],
        "rows_lossless": acc["lossless"]["rows"] if acc["lossless"] else 0,
    }
