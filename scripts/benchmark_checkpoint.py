"""Time of writing a CBP child's resumable checkpoint in the training loop and in the background.

A CBP AlexNet checkpoint holds 21.1 M latent weights, as many multipliers and both AdamW states, about
0.5 GB. ``save_checkpoint`` (``torch.save``, sha256, rename) is what the loop paid every
``--checkpoint-seconds``; ``CheckpointWriter.save`` returns once the state is copied to the CPU and
writes it in a thread. The state is built on ``--device``, so on a GPU the copy is the device-to-host one.

    python scripts/benchmark_checkpoint.py --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import torch

from qsnn_zoo.train.checkpoint import CheckpointWriter, save_checkpoint

PARAMETERS = 21_200_000  # the CBP AlexNet's 21,143,552 latent weights (conv2-fc2), rounded up; as many multipliers


def cbp_sized_state(device: torch.device, parameters: int = PARAMETERS) -> dict:
    """Weights and multipliers with an AdamW state (two moments) each: six tensors of ``parameters``."""
    return {name: torch.randn(parameters, device=device) for name in
            ("weights", "weights_avg", "weights_avg_sq", "multipliers", "multipliers_avg", "multipliers_avg_sq")}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parameters", type=int, default=PARAMETERS, help="latent weights (smoke tests: fewer)")
    args = parser.parse_args(argv)
    state = cbp_sized_state(torch.device(args.device), args.parameters)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        start = time.perf_counter()
        save_checkpoint(path, state)
        in_loop = time.perf_counter() - start
        writer = CheckpointWriter(path)
        start = time.perf_counter()
        writer.save(state)
        returned = time.perf_counter() - start
        writer.wait()
        written = time.perf_counter() - start
        print(f"{args.device}: {path.stat().st_size / 1e9:.2f} GB; save_checkpoint {in_loop:.2f} s; "
              f"CheckpointWriter.save returned after {returned:.2f} s, the file written after {written:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
