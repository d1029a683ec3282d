"""What every spiking model in the zoo shares."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..layers.neurons import SpikingNeuron

BACKENDS = ("reference", "fast")


class SpikingModel(nn.Module):
    """Images ``[B, 3, H, W]`` in, class scores ``[B, K]`` out, simulated over ``T`` steps.

    ``forward_steps`` returns the per-step output ``[T, B, K]`` that the training losses need;
    ``forward`` decodes it into scores. Each call starts from the reset state.
    """

    T: int
    num_classes: int
    # Whether class scores are decoded from output spikes, so that a zero score means that class's
    # output neuron never fired (SNN-Calibration's VGG decodes an fp32 classifier's logits instead).
    spiking_output: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.backend = "reference"

    def set_backend(self, backend: str) -> "SpikingModel":
        """"reference": one step at a time, as the papers' code; "fast": time folded into the
        batch and fused neuron kernels on the GPU. Both compute the same function."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        for module in self.modules():
            if isinstance(module, SpikingNeuron):
                module.backend = backend
        return self

    @property
    def fold_time(self) -> bool:
        return self.backend == "fast"

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        return self.decode(self.forward_steps(x))

    def save_pretrained(self, save_directory) -> "Path":
        """Writes config.json, model.safetensors and README.md into ``save_directory``, the folder that
        ``qsnn_zoo.from_pretrained`` (and, once pushed, anyone's ``from_pretrained("OWNER/REPO")``) loads."""
        from ..hub_repository import save_pretrained

        return save_pretrained(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Uploads what :meth:`save_pretrained` writes to the Hub repository ``repo_id`` (created if needed) in
        one commit, and returns its hash; ``revision``, ``private``, ``token``, ``commit_message`` as in
        :func:`qsnn_zoo.hub_repository.push_to_hub`."""
        from ..hub_repository import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def spiking_neurons(self):
        """``(name, neuron)`` in forward order, for firing-rate statistics."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SpikingNeuron)]
