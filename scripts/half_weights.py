"""Rewrites a zoo weights file with its float tensors in float16 (scales stay fp32), keeping its
configuration metadata: how large fp32 parents are published at half the bytes.

    python scripts/half_weights.py vgg16_cifar10_fp32_calib IN.safetensors OUT.safetensors

The output is written atomically: a failed run leaves no OUT behind, nor a partial one.
"""
import argparse
import json
import sys

import qsnn_zoo
from qsnn_zoo.argtypes import output_file, registry_name
from qsnn_zoo.hub import resolve_weights
from qsnn_zoo.train.runner import EXIT_USER_ERROR, one_line_errors
from qsnn_zoo.weights import WeightsFormatError, read_metadata


@one_line_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", type=registry_name, help="registry entry the file belongs to")
    parser.add_argument("src", help="fp32 weights file, or a directory holding NAME.safetensors")
    parser.add_argument("dst", type=output_file, help="float16 weights file to write")
    args = parser.parse_args(argv)
    # Resolved once, so that the metadata is read from the file the model was loaded from when src is a directory.
    src = resolve_weights(qsnn_zoo.get_entry(args.name), weights=args.src)
    model = qsnn_zoo.create_model(args.name, weights=src)
    try:
        config = json.loads(read_metadata(src)["config"])
    except (KeyError, json.JSONDecodeError):
        raise WeightsFormatError(
            f"{src}: its metadata has no readable 'config', which the float16 file must keep. Pass a file written "
            "by qsnn_zoo.save_weights (training writes one)."
        ) from None
    try:
        qsnn_zoo.save_weights(model, args.dst, model_name=args.name, config=config, half=True)
    except OSError as err:
        print(f"half_weights.py: error: cannot write {args.dst}: {err.strerror or err}. Pass a path in a writable "
              "directory.", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
