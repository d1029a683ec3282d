"""Quantizes an fp32 network to binary or ternary weights with CBP (docs/method.md §B) and its pipeline's recipe.

    python scripts/quantize_cbp.py cnn7_cifar10_fp32_stbp --quant bin
    python scripts/quantize_cbp.py vgg16_cifar10_fp32_calib --quant ter --parent-weights my_snn.safetensors
    python scripts/quantize_cbp.py alexnet_cifar10_bin_tsslbp          # the quantized entry's name works too

The fp32 weights come from --parent-weights, else OUT/PARENT/PARENT.safetensors, else the published
file. Writes OUT/NAME/NAME.safetensors and OUT/NAME/<stage>/{checkpoint.pt, metrics.jsonl, curves.png,
summary.json}; --resume continues an interrupted run.
"""
from __future__ import annotations

import argparse
import sys

from qsnn_zoo import get_entry
from qsnn_zoo.argtypes import registry_name
from qsnn_zoo.train import runner
from qsnn_zoo.train.config import recipe_overrides


def quantized_name(parser: argparse.ArgumentParser, name: str, quant: str | None) -> str:
    """The quantized entry for ``name`` (an fp32 entry, or a quantized one) and ``quant``; a pair that
    names none is a usage error (exit status 2)."""
    entry = get_entry(name)
    if entry.quant.mode is not None:
        if quant not in (None, entry.quant.mode):
            parser.error(f"{name} is {entry.quant.mode}; drop --quant or pass its fp32 parent {entry.parent}")
        return name
    if quant is None:
        parser.error(f"{name} is fp32: say which quantization with --quant bin or --quant ter")
    return get_entry(name.replace("_fp32_", f"_{quant}_")).name


@runner.one_line_errors
def main(argv=None) -> int:
    parser = runner.parser(__doc__)
    parser.add_argument("name", type=registry_name, help="an fp32 entry (with --quant) or a quantized entry")
    parser.add_argument("--quant", choices=("bin", "ter"), help="binary {-s, s} or ternary {-s, 0, s}")
    parser.add_argument("--show-recipe", action="store_true", help="print the recipe and exit")
    args = parser.parse_args(argv)
    name = quantized_name(parser, args.name, args.quant)
    if args.show_recipe:
        runner.print_recipes(name, recipe_overrides(args))
        return 0
    runner.run_entry(name, args)
    runner.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
