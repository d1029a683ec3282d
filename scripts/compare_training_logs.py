"""Compares two runs' metrics.jsonl epoch by epoch on everything that training computes.

Two runs of the same command agree on every such field, to the last bit, only if they computed the
same weights at every step. Left out: wall time ("seconds") and the per-epoch test accuracy (runs
made before commit 89257c7 logged a stale one: a CUDA-graph step did not mark the quantized weights
as changed for the evaluation that followed).

    python scripts/compare_training_logs.py OLD.jsonl NEW.jsonl
"""
import json
import sys

IGNORED = ("seconds",)


def training_fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in IGNORED and not k.startswith("test_")}


def main(old_path: str, new_path: str) -> int:
    old = [training_fields(json.loads(line)) for line in open(old_path)]
    new = [training_fields(json.loads(line)) for line in open(new_path)]
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


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
