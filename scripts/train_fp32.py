"""Trains the fp32 network of a registry entry with its pipeline's recipe (docs/method.md).

    python scripts/train_fp32.py cnn7_cifar10_fp32_stbp                  # STBP, 100 epochs (docs/method.md §D.3)
    python scripts/train_fp32.py alexnet_cifar10_fp32_tsslbp --epochs 20 # a shorter TSSL-BP run
    python scripts/train_fp32.py vgg16_cifar10_fp32_calib                # VGG16 ANN, then conversion (docs/method.md §E.2-E.3)
    torchrun --nproc_per_node 4 scripts/train_fp32.py cnn7_cifar10_fp32_stbp

Writes OUT/NAME/NAME.safetensors (load it with create_model(NAME, weights=OUT/NAME)), and per stage
OUT/NAME/<stage>/{checkpoint.pt, metrics.jsonl, curves.png, summary.json}. Every recipe setting
can be overridden with its flag; --show-recipe prints the recipe and exits.
"""
from __future__ import annotations

import sys

from qsnn_zoo import get_entry
from qsnn_zoo.argtypes import registry_name
from qsnn_zoo.train import runner
from qsnn_zoo.train.config import recipe_overrides


@runner.one_line_errors
def main(argv=None) -> int:
    parser = runner.parser(__doc__)
    parser.add_argument("name", type=registry_name, help="an fp32 registry entry, e.g. cnn7_cifar10_fp32_stbp")
    parser.add_argument("--show-recipe", action="store_true", help="print the recipe and exit")
    args = parser.parse_args(argv)
    if get_entry(args.name).quant.mode is not None:
        parser.error(f"{args.name} is quantized; use scripts/quantize_cbp.py (or scripts/reproduce.py) for it")
    if args.show_recipe:
        runner.print_recipes(args.name, recipe_overrides(args))
        return 0
    runner.run_entry(args.name, args)
    runner.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
