"""Does bf16 autocast change what a trained checkpoint predicts? (issue #4: "same predictions on the
test set within 0.1 point"). Evaluates one checkpoint on the test set with the reference path, the
fast path in fp32 and the fast path under bf16 autocast, and writes accuracies and agreement as JSON.

    python scripts/bf16_agreement.py vgg16_cifar10_fp32_calib --data DIR --out benchmarks/bf16_agreement.json
"""
import argparse
import json
from pathlib import Path

import torch

import qsnn_zoo
from qsnn_zoo.data import load_cifar, to_tensor
from qsnn_zoo.weights import atomic_write


@torch.no_grad()
def predictions(model, images, entry, device, batch_size, bf16):
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size], entry.mean, entry.std, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x).float().argmax(1).cpu())
    return torch.cat(out)


def accuracy(pred, labels, rows):
    return round(100.0 * (pred[rows] == labels[rows]).float().mean().item(), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--data", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    test = load_cifar(args.data, "test", qsnn_zoo.get_entry(args.name).dataset)
    labels = torch.as_tensor(test.labels)
    lossless = torch.as_tensor(test.lossless) if test.lossless is not None else torch.ones_like(labels, dtype=torch.bool)
    every = torch.ones_like(lossless)
    model = qsnn_zoo.create_model(args.name, pretrained=True).to(device).eval()
    runs = {}
    for label, backend, bf16 in (("reference_fp32", "reference", False), ("fast_fp32", "fast", False), ("fast_bf16", "fast", True)):
        model.set_backend(backend)
        runs[label] = predictions(model, test.images, model.entry, device, args.batch_size, bf16)
    base = runs["reference_fp32"]
    result = {
        "model": args.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": {"all": int(every.sum()), "lossless": int(lossless.sum())},
        "runs": {
            label: {
                "top1_all": accuracy(pred, labels, every),
                "top1_lossless": accuracy(pred, labels, lossless),
                "agreement_with_reference": round(100.0 * (pred == base).float().mean().item(), 2),
            }
            for label, pred in runs.items()
        },
    }
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
