"""Runs the whole recipe of a registry entry: its fp32 parent first when its weights are missing.

    python scripts/reproduce.py vgg16_cifar10_bin_calib          # ANN 300 ep., conversion, CBP 100 ep.
    python scripts/reproduce.py cnn7_cifar10_ter_stbp --epochs 10  # a quicker recipe (parent too)
    torchrun --nproc_per_node 8 scripts/reproduce.py alexnet_cifar10_bin_tsslbp

Recipe overrides apply to the entry's own stages; of them only --epochs, --batch-size, --T and the
conversion settings (--use-bn, --trial, --calib, --calib-batches) are passed on to a parent trained
on the way (its learning rates and optimizers are its own). --resume continues the interrupted stage,
whose checkpoint must exist: the parent's while the parent has no weights yet (the entry's own stage
then starts fresh once the parent is done), else the entry's. Outputs: OUT/NAME/NAME.safetensors,
OUT/NAME/summary.json and each stage's OUT/NAME/<stage>/{checkpoint.pt, checkpoint.pt.sha256,
metrics.jsonl, curves.png, summary.json}.
"""
from __future__ import annotations

import sys

from qsnn_zoo import get_entry
from qsnn_zoo.argtypes import registry_name
from qsnn_zoo.train import runner
from qsnn_zoo.train.config import recipe_overrides, run_options


@runner.one_line_errors
def main(argv=None) -> int:
    parser = runner.parser(__doc__)
    parser.add_argument("name", type=registry_name, help="any registry entry, e.g. vgg16_cifar10_bin_calib")
    parser.add_argument("--show-recipe", action="store_true", help="print the recipe(s) and exit")
    args = parser.parse_args(argv)
    entry = get_entry(args.name)
    overrides = recipe_overrides(args)
    if args.show_recipe:
        if entry.parent:
            runner.print_recipes(entry.parent, runner.parent_overrides(overrides))
        runner.print_recipes(args.name, overrides)
        return 0
    if entry.parent and not runner.parent_available(args.name, run_options(args)):
        print(f"{entry.parent} has no weights yet: training it first", flush=True)
        if runner.run_entry(entry.parent, args, runner.parent_overrides(overrides)) is None:
            return 0
        # The parent was only finished now, so no checkpoint of the entry can have started from it.
        args.resume = False
    runner.run_entry(args.name, args, overrides)
    runner.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
