"""Is the VGG16 CBP starting point at chance because of the quantizer or because of the network?

Builds the binary CBP child of a VGG16 SNN-Calibration parent exactly as CBP does
(``to_unit_threshold_snn(parent, quant="bin")``), checks that it computes the same function as the
fp32 unit-threshold SNN with every quantized layer's weights replaced by mean|W| * sign(W) by hand,
then binarizes one layer at a time. Writes a JSON of top-1 % on the first ROWS (lossless) test rows.

    python runs/unpublished/vgg16_binarize_one_layer.py PARENT.safetensors DATA OUT.json [--rows 64]
"""
import argparse
import copy
import json
from pathlib import Path

import torch

import qsnn_zoo
from qsnn_zoo.convert import to_unit_threshold_snn
from qsnn_zoo.data import load_cifar, to_tensor
from qsnn_zoo.layers.quant import quantized_modules


def binarize_(model, names):
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight.data
        modules[name].weight.data = weight.abs().mean() * torch.sign(weight)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    parent = qsnn_zoo.create_model("vgg16_cifar10_fp32_calib", weights=args.parent).eval()
    test = load_cifar(args.data, "test")
    images = to_tensor(test.images[: args.rows], parent.entry.mean, parent.entry.std)
    labels = torch.as_tensor(test.labels[: args.rows]).long()

    def run(model):
        with torch.no_grad():
            scores = model.eval()(images)
        return round(100 * float((scores.argmax(1) == labels).float().mean()), 2), scores

    fp32 = to_unit_threshold_snn(parent, quant=None)
    child = to_unit_threshold_snn(parent, quant="bin")
    names = [name for name, _ in quantized_modules(child)]
    (fp32_top1, _), (child_top1, child_scores) = run(fp32), run(child)
    by_hand_top1, by_hand_scores = run(binarize_(copy.deepcopy(fp32), names))
    result = {
        "parent": args.parent,
        "rows": args.rows,
        "top1_parent_as_published": run(parent)[0],
        "top1_unit_threshold_fp32": fp32_top1,
        "top1_cbp_binary_start": child_top1,
        "top1_binarized_by_hand": by_hand_top1,
        "max_score_difference_child_vs_by_hand": float((child_scores - by_hand_scores).abs().max()),
        "top1_only_this_layer_binarized": {name: run(binarize_(copy.deepcopy(fp32), [name]))[0] for name in names},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
