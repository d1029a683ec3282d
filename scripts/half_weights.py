"""Rewrites a zoo weights file with its float tensors in float16 (scales stay fp32), keeping its
configuration metadata: how large fp32 parents are published at half the bytes.

    python scripts/half_weights.py vgg16_cifar10_fp32_calib IN.safetensors OUT.safetensors
"""
import argparse
import json

import qsnn_zoo
from qsnn_zoo.weights import read_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="registry entry the file belongs to")
    parser.add_argument("src", help="fp32 weights file")
    parser.add_argument("dst", help="float16 weights file to write")
    args = parser.parse_args()
    model = qsnn_zoo.create_model(args.name, weights=args.src)
    config = json.loads(read_metadata(args.src)["config"])
    qsnn_zoo.save_weights(model, args.dst, model_name=args.name, config=config, half=True)


if __name__ == "__main__":
    main()
