"""Compares two runs' metrics.jsonl epoch by epoch on everything that training computes.

Two runs of the same command agree on every such field, to the last bit, only if they computed the
same weights at every step. Left out: wall times ("seconds", "train_seconds") and the per-epoch test accuracy (runs
made before commit 89257c7 logged a stale one: a CUDA-graph step did not mark the quantized weights
as changed for the evaluation that followed).

    python scripts/compare_training_logs.py OLD.jsonl NEW.jsonl

Exit status: 0 when every epoch both logged is identical, 1 when one differs, 2 for a file that
cannot be read as a metrics.jsonl.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List


def training_fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if not (k == "seconds" or k.endswith("_seconds") or k.startswith("test_"))}


def read_log(path: str) -> List[dict]:
    """The training fields of each epoch in ``path``; ValueError naming the file and line otherwise."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}; give the metrics.jsonl of a training stage")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object; give the metrics.jsonl of a training stage")
        records.append(training_fields(record))
    return records


def compare(old: List[dict], new: List[dict]) -> int:
    shared = min(len(old), len(new))
    differing = 0
    for a, b in zip(old, new):
        fields = sorted(set(a) | set(b))
        unequal = [k for k in fields if a.get(k) != b.get(k)]
        differing += bool(unequal)
        verdict = "identical" if not unequal else "differ in " + ", ".join(unequal)
        print(f"epoch {a.get('epoch')}: {len(fields)} fields {verdict} (train_loss {a.get('train_loss')!r})")
    print(f"{shared - differing} of {shared} shared epochs identical ({len(old)} and {len(new)} epochs logged)")
    return 1 if differing else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the earlier run's metrics.jsonl")
    parser.add_argument("new", help="the later run's metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        old, new = read_log(args.old), read_log(args.new)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return compare(old, new)


if __name__ == "__main__":
    sys.exit(main())
