"""Per-epoch metrics as JSON lines, and the training-curve plot the model card shows."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

from ..weights import atomic_write

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _write_lines(path: Path, records: List[Dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class MetricsLog:
    """``metrics.jsonl``: one record per epoch. On resume it keeps only the epochs before ``start_epoch``,
    so a run killed between logging and checkpointing does not log an epoch twice."""

    def __init__(self, path: Path, start_epoch: int = 0) -> None:
        self.path = Path(path)
        self.records = [r for r in read_metrics(self.path) if r.get("epoch", -1) < start_epoch]
        _write_lines(self.path, self.records)

    def append(self, record: Dict[str, Any]) -> None:
        self.records.append(record)
        _write_lines(self.path, self.records)


# (panel title, [(metric key, label)]) of the curves figure
PANELS = (
    ("loss", [("train_loss", "train")]),
    ("accuracy (%)", [("train_top1", "train"), ("val_top1", "validation"), ("test_top1_lossless", "test, lossless rows"), ("test_top1_all", "test, all rows")]),
    ("CFS", [("cfs", "CFS")]),
    ("g", [("g", "g")]),
)


def plot_curves(records: List[Dict[str, Any]], path: Path, title: str) -> bool:
    """Writes the curves of every metric present in ``records``; False when there is nothing to plot."""
    panels = [(t, [(k, lab) for k, lab in series if any(_finite(r.get(k)) for r in records)]) for t, series in PANELS]
    panels = [(t, s) for t, s in panels if s]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (panel_title, series) in zip(axes[0], panels):
        for key, label in series:
            points = [(r["epoch"] + 1, r[key]) for r in records if _finite(r.get(key))]
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        if panel_title == "g":
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
