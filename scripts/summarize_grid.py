"""One table of the first CBP epochs of every run of a grid: accuracy, constraint fulfilment, code
flips and the firing rates of the last spiking layers, per epoch.

Each run is a folder ``ROOT/grid_{parent}_{gate|nogate}_lr{LR}/`` (as
``scripts/plans/vgg16_cifar10_parent_grid_stages.json`` names them) holding, at any depth, the
run's ``metrics.jsonl``.

    python scripts/summarize_grid.py ROOT --out runs/NAME/grid.md
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

from qsnn_zoo.train.metrics_log import METRICS_NAME, read_metrics
from qsnn_zoo.weights import atomic_write

RUN = re.compile(r"grid_(?P<parent>[a-z0-9]+)_(?P<gate>gate|nogate)_lr(?P<lr>[0-9.e-]+)$")
LAST_LAYERS = 3


def runs(root: Path) -> List[dict]:
    found = []
    for folder in sorted(root.iterdir()):
        match = RUN.match(folder.name)
        logs = sorted(folder.rglob(METRICS_NAME))
        if match and logs:
            found.append({**match.groupdict(), "records": read_metrics(logs[0])})
    return found


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(found: List[dict]) -> str:
    lines = ["| parent | pool gate | lr | epoch | train top-1 % | test top-1 % (lossless rows) | test top-1 % (all rows) | "
             f"CFS | code flips % (all / last layer) | firing rate of the last {LAST_LAYERS} layers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(found, key=lambda r: (r["parent"], r["gate"], -float(r["lr"])))
    for run in order:
        for r in run["records"]:
            rates = list(r.get("firing_rates", {}).values())[-LAST_LAYERS:]
            flips = f"{100 * r['code_flips']:.3g} / {100 * r['code_flips_last']:.3g}" if "code_flips" in r else "-"
            lines.append(
                f"| {run['parent']} | {'on' if run['gate'] == 'gate' else 'off'} | {run['lr']} | {r['epoch'] + 1} | "
                f"{_pct(r.get('train_top1'))} | {_pct(r.get('test_top1_lossless'))} | {_pct(r.get('test_top1_all'))} | "
                f"{r.get('cfs', float('nan')):.4f} | {flips} | {' / '.join(f'{v:.3f}' for v in rates)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder holding the grid_* run folders")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    found = runs(args.root) if args.root.is_dir() else []
    if not found:
        parser.error(f"no grid_* runs with {METRICS_NAME} under {args.root}")
    text = table(found)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
