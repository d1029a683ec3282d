"""The resumable training state, written atomically once per epoch.

It holds everything a run needs to continue exactly where it stopped: model, optimizers, learning-rate
schedule, CBP state (multipliers, g, period, previous Lagrangian, lambda optimizer), every random
generator (python, numpy, torch CPU and CUDA) and the next epoch. It is written with ``torch.save``
and read back with ``weights_only=True``, so it holds only tensors and plain Python values (the numpy
generator's state is stored as a tensor) and loading it cannot run code. ``checkpoint.pt.sha256``
beside it (``sha256sum`` format) is checked before the file is read: a corrupted, truncated or
replaced checkpoint is refused instead of resuming with garbage. What a run publishes is
``NAME.safetensors`` (:func:`qsnn_zoo.save_weights`).
"""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..hub import sha256_of
from ..weights import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
_HEX_DIGITS = set("0123456789abcdef")


class CheckpointError(ValueError):
    """A checkpoint that ``--resume`` cannot continue from: missing, corrupted, or of another run."""


def rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    # A checkpoint loaded with map_location="cuda" carries the generator states as GPU tensors; the
    # generators take CPU byte tensors only.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _numpy_state_to_plain(state: tuple) -> Dict[str, Any]:
    """numpy's legacy generator state with its key array as a tensor, which ``weights_only`` loads."""
    kind, key, pos, has_gauss, cached_gaussian = state
    return {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _numpy_state_from_plain(state: Dict[str, Any]) -> tuple:
    key = state["key"].cpu().numpy().astype(np.uint32)
    return state["kind"], key, state["pos"], state["has_gauss"], state["cached_gaussian"]


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


def checksum_path(path: Path) -> Path:
    """``checkpoint.pt.sha256`` beside ``checkpoint.pt``."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _write_checksums(path: Path, digests: List[str]) -> None:
    text = "".join(f"{d}  {Path(path).name}\n" for d in digests)
    atomic_write(checksum_path(path), lambda tmp: Path(tmp).write_text(text))


def _read_checksums(path: Path) -> List[str]:
    sums = checksum_path(path)
    try:
        lines = sums.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} cannot be checked: {sums} is missing or unreadable ({err.__class__.__name__}); restore both "
            "files from a copy, or run without --resume to start the stage again"
        ) from None
    digests = [line.split()[0] for line in lines if line.strip()]
    if not digests or any(len(d) != 64 or not set(d) <= _HEX_DIGITS for d in digests):
        raise CheckpointError(f"{sums} is not a sha256 checksum file; restore it from a copy, or run without --resume")
    return digests


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Writes ``path`` and its checksum file so that whenever the process stops, the checkpoint on disk
    matches a digest in the checksum file: the new digest is added before the new file replaces the
    old one, and the old digest removed after."""
    _write_checkpoint(path, dict(state, rng=rng_state()))


def _on_cpu(value: Any) -> Any:
    """A copy of ``value`` with every tensor copied to the CPU: what training changes next cannot reach it."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


class CheckpointWriter:
    """:func:`save_checkpoint` with the serialising and hashing in a background thread.

    A CBP checkpoint holds the weights, the multipliers and both optimizers' state (0.5 GB for AlexNet):
    its ``torch.save``, sha256 and rename took 1.5 s on the development CPU
    (benchmarks/checkpoint_write_cpu.txt), which the training loop paid at every write, once a minute.
    ``save`` copies the state to the CPU (with the random generators' states, taken now) and returns;
    one write runs at a time, so the next ``save`` and ``wait`` first finish the one before, and a
    failed write raises there."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def save(self, state: Dict[str, Any], wait: bool = False) -> None:
        """Writes ``state`` as it is now; with ``wait``, returns only when it is on disk."""
        self.wait()
        if wait:
            save_checkpoint(self.path, state)
            return
        snapshot = _on_cpu(dict(state, rng=rng_state()))
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snapshot: Dict[str, Any]) -> None:
        try:
            _write_checkpoint(self.path, snapshot)
        except BaseException as err:  # re-raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def _write_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    previous = _previous_checksums(path)
    digest: List[str] = []

    def write(tmp: str) -> None:
        torch.save(state, tmp)
        digest.append(sha256_of(tmp))
        _write_checksums(path, digest + previous)

    atomic_write(path, write)
    _write_checksums(path, digest)


def _previous_checksums(path: Path) -> List[str]:
    """The digests that vouch for the checkpoint now at ``path`` (none when there is no valid pair)."""
    if not Path(path).is_file() or not checksum_path(path).is_file():
        return []
    try:
        return _read_checksums(path)
    except CheckpointError:
        return []


def load_checkpoint(path: Path, map_location: Optional[torch.device] = None) -> Dict[str, Any]:
    """The saved state, after its checksum is verified; random generators are restored by the caller
    with :func:`set_rng_state`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"--resume was given but {path} does not exist (the stage has not finished an epoch there); "
            "check --out, or run without --resume to start the stage"
        )
    if sha256_of(path) not in _read_checksums(path):
        raise CheckpointError(
            f"{path} is corrupted or was replaced: its sha256 is not the one in {checksum_path(path).name}; "
            "restore it from a copy, or run without --resume to start the stage again"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # an unpickling refusal, a zip error: either way not a state this version wrote
        raise CheckpointError(
            f"{path} is not a checkpoint this version of qsnn-zoo can read ({_first_line(err)}); "
            "run without --resume to start the stage again"
        ) from None


def restore_checkpoint(path: Path, map_location: torch.device, model, optimizer, scheduler, cbp) -> Tuple[int, Dict[str, Any]]:
    """Restores model, optimizer, schedule, CBP and random generators from ``path``; returns the epoch to
    start from and the best-epoch record."""
    state = load_checkpoint(path, map_location)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if cbp is not None:
            cbp.load_state_dict(state["cbp"])
        set_rng_state(state["rng"])
        return int(state["epoch"]), state["best"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} does not fit this run ({_first_line(err)}); resume with the recipe flags of the run that "
            "wrote it, or run without --resume to start the stage again"
        ) from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {lines[0] if lines else ''}"
