"""The training step replayed from a CUDA graph.

One CBP step of the zoo's SNNs launches hundreds of small kernels (per-layer quantizer and
penalty, clipping, the optimizer, the clamp), so in eager mode the GPU spends much of the step
waiting for Python to launch them (benchmarks/README.md: ~10 of the STBP step's 22 ms). A graph
captures the whole step of :func:`~qsnn_zoo.train.loop.train_step` once (forward, loss + penalty,
backward, clip, optimizer step, clamp) and replays it: the same kernels on the same memory, so
it computes what the eager step computes, without the launch gaps.

What a capture fixes, and so what makes the step capture again: the batch's shape, dtype and
layout; every learning rate (the optimizers hand them to their kernels as numbers; CBP drops them
at g = 20, schedulers change them each epoch); CBP's window u = 1 - 1/g (handed to the penalty
kernel). A batch of another shape, such as the last partial batch of an epoch, runs eagerly.
The multipliers, weights and optimizer state are updated in place, so a replay sees their
current values. Random draws (the VGG dropout seed) come from the device generator, which a
replay advances as an eager step would. A replay writes memory behind autograd's back, so the
step bumps the version counter of every parameter and buffer of the model after it, as an eager
in-place update would: what is keyed on versions (the quantized layers' inference Q(W)) then
sees the new weights.

The outputs of a replay, ``(lagrangian, loss, correct)``, live in the graph's memory and are
overwritten by the next replay: read or accumulate them before the next step, as
:func:`~qsnn_zoo.train.loop.train_epoch` does.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn
from torch.autograd.graph import increment_version

from ..cbp import CBP
from .loop import StepRule, train_step

StepOutputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
WARMUP_STEPS = 3  # eager steps before the first capture: cuDNN autotuning, Triton compiles, optimizer state


def capture_cuda_graph(fn: Callable[[], StepOutputs]) -> Tuple[Callable[[], None], StepOutputs]:
    """Captures one call of ``fn`` (nothing runs) and returns the graph's replay and ``fn``'s outputs."""
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


def on_side_stream(fn: Callable[[], StepOutputs]) -> StepOutputs:
    """Runs ``fn`` eagerly on a side stream, as CUDA graphs need for the steps before a capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        outputs = fn()
    torch.cuda.current_stream().wait_stream(side)
    return outputs


class GraphedTrainStep:
    """``step(images, labels)``: :func:`train_step` with its arguments bound, replayed from a CUDA graph
    for CUDA batches. The first ``warmup_steps`` calls (and any batch the graph does not fit) run eagerly;
    every call is a real training step."""

    def __init__(
        self,
        forward: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rule: StepRule,
        cbp: Optional[CBP] = None,
        warmup_steps: int = WARMUP_STEPS,
        capture: Callable = capture_cuda_graph,
        warm_up: Callable = on_side_stream,
    ) -> None:
        self.forward, self.model, self.optimizer, self.rule, self.cbp = forward, model, optimizer, rule, cbp
        self.warmup_steps = warmup_steps
        self._capture, self._warm_up = capture, warm_up
        self.eager_steps = self.replays = self.captures = 0
        self._key = None
        self._replay: Optional[Callable[[], None]] = None
        self._inputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._outputs: Optional[StepOutputs] = None
        # A captured optimizer step must keep its step counts on the device (Adam/AdamW).
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        return train_step(self.forward, self.model, images, labels, self.optimizer, self.rule, self.cbp)

    def _eager(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        self.eager_steps += 1
        return self._step(images, labels)

    def key(self, images: torch.Tensor, labels: torch.Tensor) -> tuple:
        """Everything a capture fixes (module docstring)."""
        batch = tuple((t.shape, t.stride(), t.dtype, t.device) for t in (images, labels))
        lrs = tuple(group["lr"] for group in self.optimizer.param_groups)
        return batch, lrs, None if self.cbp is None else self.cbp.u

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        key = self.key(images, labels)
        if self._replay is not None:
            if key == self._key:
                self._inputs[0].copy_(images)
                self._inputs[1].copy_(labels)
                return self._run_replay()
            if key[0] != self._key[0]:
                return self._eager(images, labels)  # another batch shape: the graph keeps the usual one
            self._release()  # a learning rate or the window changed: capture again
        elif self.eager_steps < self.warmup_steps:
            self.eager_steps += 1
            return self._warm_up(lambda: self._step(images, labels))
        self._inputs = (images.clone(), labels.clone())
        self._replay, self._outputs = self._capture(lambda: self._step(*self._inputs))
        self._key = key
        self.captures += 1
        return self._run_replay()

    def _run_replay(self) -> StepOutputs:
        self._replay()
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            increment_version(tensor)
        self.replays += 1
        return self._outputs

    def _release(self) -> None:
        """Drops the graph (its memory goes back once its outputs are no longer referenced)."""
        self._replay = self._outputs = None
