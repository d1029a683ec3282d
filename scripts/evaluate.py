"""Top-1 accuracy of a registry entry's weights on the CIFAR test set, as training measures it.

    python scripts/evaluate.py vgg16_cifar10_bin_calib --weights work_dirs/vgg16_cifar10_bin_calib
    python scripts/evaluate.py cnn7_cifar10_fp32_stbp --pretrained --json

Reports all rows and, for the offline bundle, the lossless rows separately. For firing rates,
synaptic operations and weight memory use `qsnn-zoo eval`.
"""
from __future__ import annotations

import argparse
import json
import sys

from qsnn_zoo import create_model, get_entry
from qsnn_zoo.argtypes import positive_int, registry_name, torch_device
from qsnn_zoo.data import load_cifar
from qsnn_zoo.train.config import DEFAULT_DATA
from qsnn_zoo.train.distributed import pick_device
from qsnn_zoo.train.loop import evaluate
from qsnn_zoo.train.runner import one_line_errors


def add_weights_and_data(parser: argparse.ArgumentParser) -> None:
    """--weights or --pretrained (one of them), and --data: which network on which images."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weights file, or a directory holding NAME.safetensors")
    source.add_argument("--pretrained", action="store_true", help="the published weights")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR directory (default: %(default)s)")


@one_line_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", type=registry_name, help="registry entry")
    add_weights_and_data(parser)
    parser.add_argument("--T", type=positive_int, help="simulation length (default: the entry's)")
    parser.add_argument("--device", type=torch_device, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--backend", choices=("reference", "fast"), help="default: fast on cuda, reference on cpu")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--limit-test", type=positive_int, help="only the first N test images (default: all)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--ann", action="store_true", help="SNN-Calibration entries: evaluate the ANN form")
    args = parser.parse_args(argv)
    entry = get_entry(args.name)
    device = pick_device(args.device)
    # The data first: a wrong --data then fails before the weights are read or downloaded.
    data = load_cifar(args.data, "test", entry.dataset)
    if args.limit_test:
        data = data.subset(slice(0, args.limit_test))
    overrides = {"T": args.T} if args.T else {}
    model = create_model(args.name, pretrained=args.pretrained, weights=args.weights, **overrides).to(device)
    model.set_backend(args.backend or ("fast" if device.type == "cuda" else "reference"))
    if args.ann:
        if not hasattr(model, "set_mode"):
            parser.error(f"--ann needs an SNN-Calibration entry (*_calib); {args.name} has no ANN form")
        model.set_mode("ann")
    result = {"name": args.name, "form": "ann" if args.ann else "snn", **evaluate(model, data, entry.mean, entry.std, args.batch_size, device, amp=args.amp)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lossless = f"{result['top1_lossless']:.2f} % on {result['rows_lossless']} lossless rows, " if result["rows_lossless"] else ""
        print(f"{args.name}: top-1 {lossless}{result['top1_all']:.2f} % on all {result['rows_all']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
