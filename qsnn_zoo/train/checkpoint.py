"""The resumable training state, written atomically once per epoch.

It holds everything a run needs to continue exactly where it stopped: model, optimizers, learning-rate
schedule, CBP state (multipliers, g, period, previous Lagrangian, lambda optimizer), every random
generator (python, numpy, torch CPU and CUDA) and the next epoch. It is a pickle (``torch.save``)
for the run's own use only; what a run publishes is ``NAME.safetensors`` (:func:`qsnn_zoo.save_weights`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..weights import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    # A checkpoint loaded with map_location="cuda" carries the generator states as GPU tensors; the
    # generators take CPU byte tensors only.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """python, numpy and torch (CPU and every GPU) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """cuDNN and cuBLAS in their deterministic modes. Their default algorithms sum in an order that varies
    from run to run (atomics, autotuning), which is enough to give a different weights file."""
    # cuBLAS reads this when its first handle is created, so it must be set before any GPU matmul.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # warn_only: an op without a deterministic version names itself in the log instead of stopping the run.
    torch.use_deterministic_algorithms(True, warn_only=True)


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    state = dict(state, rng=rng_state())
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: Optional[torch.device] = None) -> Dict[str, Any]:
    """The saved state; random generators are restored by the caller with :func:`set_rng_state`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--resume was given but {path} does not exist; start without --resume")
    # Our own file with numpy RNG state and plain Python values in it, so not weights_only.
    return torch.load(path, map_location=map_location, weights_only=False)
