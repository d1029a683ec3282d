"""Images per second of the on-device training loader alone (no model), per augmentation set.

    python scripts/bench_loader.py --device cpu --batches 10
    python scripts/bench_loader.py --device cuda --batches 200 --json results/bench_loader_h100.json

Loads the CIFAR training set once, moves it to the device (timed separately as "upload"), then
times ``--batches`` batches of each augmentation set after one warm-up batch, synchronising the
device before reading the clock. Prints a table and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

from qsnn_zoo.data import load_cifar
from qsnn_zoo.models._common import NORMALIZATION
from qsnn_zoo.train.config import DEFAULT_DATA
from qsnn_zoo.train.data import Augment, DeviceLoader
from qsnn_zoo.train.distributed import pick_device
from qsnn_zoo.weights import atomic_write

AUGMENT_SETS = {
    "none": (),
    "crop_flip": ("crop_flip",),  # STBP, TSSL-BP
    "crop_flip+cutout": ("crop_flip", "cutout"),
    "crop_flip+autoaugment+cutout": ("crop_flip", "autoaugment", "cutout"),  # SNN-Calibration (docs/method.md §E.2)
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(loader: DeviceLoader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def images_per_second(loader: DeviceLoader, batches: int) -> float:
    stream = _endless(loader)
    next(stream)  # warm-up: first kernels, allocator
    _synchronize(loader.device)
    start = time.perf_counter()
    images = sum(len(next(stream)[1]) for _ in range(batches))
    _synchronize(loader.device)
    return images / (time.perf_counter() - start)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR directory (npz bundle or torchvision layout)")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(NORMALIZATION))
    parser.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per augmentation set")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", nargs="+", choices=sorted(AUGMENT_SETS), default=list(AUGMENT_SETS))
    parser.add_argument("--json", help="output file (default: results/bench_loader_<device>.json)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be at least 1")

    device = pick_device(args.device)
    train = load_cifar(args.data, "train", args.dataset)
    mean, std = NORMALIZATION[args.dataset]

    rows = []
    for name in args.augment:
        _synchronize(device)
        start = time.perf_counter()
        loader = DeviceLoader(
            train.images, train.labels, args.batch_size, mean, std,
            augment=Augment(AUGMENT_SETS[name]) if AUGMENT_SETS[name] else None, device=device,
        )
        _synchronize(device)
        upload_s = time.perf_counter() - start
        rate = images_per_second(loader, args.batches)
        rows.append({"augment": name, "images_per_s": rate, "ms_per_batch": 1000 * args.batch_size / rate, "upload_s": upload_s})
        del loader

    print(f"{'augmentation':32s} {'images/s':>10s} {'ms/batch':>9s} {'upload s':>9s}")
    for row in rows:
        print(f"{row['augment']:32s} {row['images_per_s']:10.0f} {row['ms_per_batch']:9.2f} {row['upload_s']:9.2f}")

    report = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dataset": args.dataset,
        "images": len(train),
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "results": rows,
    }
    out = Path(args.json or f"results/bench_loader_{device.type}.json")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
