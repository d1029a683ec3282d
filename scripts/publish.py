"""Publishes a trained checkpoint: the weights into checkpoints/, the run's logs and curves into
runs/NAME/, and the registry record (sha256, size, metrics with their data, recipe) into
qsnn_zoo/published.json. Regenerate the cards afterwards with scripts/make_cards.py.

    python scripts/publish.py vgg16_cifar10_fp32_calib --weights W.safetensors \\
        --eval eval.json --run-dir OUT/vgg16_cifar10_fp32_calib --recipe "python scripts/train_fp32.py ..."

--eval takes the JSON of `qsnn-zoo eval NAME --data DIR --json` on the full test set: its accuracy on
the lossless rows and on all rows become the entry's top-1 metrics. --extra-metric NAME=FILE adds
the accuracy in a `scripts/evaluate.py --json` or `qsnn-zoo eval --json` result under another
metric name (e.g. top1_ann for the ANN form, top1_fp32_weights before a float16 re-save).

--not-committed REASON publishes an entry whose file is too large to commit (an fp32 parent even in
float16 over 50 MB): the file named by --weights is checked and hashed but not copied, the record's
"weights" is null and its "made_file" holds the sha256, size and float dtype of the file with the
reason, so the card can say how to make it and anyone who makes it can check theirs. Where the file
cannot be brought to this machine, --weights takes instead the JSON that
`qsnn_zoo.weights.describe_file` wrote of it where it was made.

    python scripts/publish.py cnn7_cifar10_fp32_stbp --weights W.safetensors --eval eval.json \\
        --run-dir OUT/cnn7_cifar10_fp32_stbp --recipe "..." --not-committed "over 50 MB even in float16 (124 MB)"
"""
import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent

from qsnn_zoo import get_entry
from qsnn_zoo._registry import PUBLISHED_FILE
from qsnn_zoo.hub import REPO_CHECKPOINTS
from qsnn_zoo.metrics import metric_records
from qsnn_zoo.weights import atomic_write, canonical_safetensors, describe_file

RUN_FILES = ("metrics.jsonl", "curves.png", "summary.json")


def copy_run_logs(run_dir: Path, dest: Path) -> None:
    """Each stage's metrics log, curves and summary; curves also at the top for the card."""
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        for name in RUN_FILES:
            src = stage / name
            if src.is_file():
                (dest / stage.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / stage.name / name)
                if name == "curves.png":
                    shutil.copyfile(src, dest / f"curves_{stage.name}.png")


def extra_metrics(specs, dataset: str, dest: Path):
    records = []
    for spec in specs:
        metric, _, path = spec.partition("=")
        result = json.loads(Path(path).read_text())
        source = dest / Path(path).name
        if Path(path).resolve() != source.resolve():
            shutil.copyfile(path, source)
        acc = result.get("accuracy") or {  # `qsnn-zoo eval --json`, else `scripts/evaluate.py --json`
            "all": {"top1": result["top1_all"], "rows": result["rows_all"]},
            "lossless": {"top1": result["top1_lossless"], "rows": result["rows_lossless"]},
        }
        if acc["all"]["rows"] == acc["lossless"]["rows"]:
            acc = {"lossless": acc["lossless"]}  # a --limit run over the lossless rows only
        for record in metric_records(acc, dataset, str(source.relative_to(REPO_ROOT))):
            records.append({**record, "name": metric})
    return records


def file_records(entry, described: dict, data: Optional[bytes], not_committed: Optional[str],
                 hf_repo: Optional[str]) -> dict:
    """The record's "weights" (the file ``data``, committed to checkpoints/) or, when ``not_committed``
    gives the reason, a null "weights" and the "made_file" that the run made; both as ``described``."""
    identity = {"sha256": described["sha256"], "size": described["size"]}
    if not_committed:
        return {"weights": None, "made_file": {**identity, "dtype": described["float_dtype"], "reason": not_committed}}
    target = REPO_CHECKPOINTS / f"{entry.name}.safetensors"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return {
        "weights": {
            "filename": target.name,
            **identity,
            "hf_repo": hf_repo or f"qsnn-zoo/{entry.name}",
            "revision": None,  # not uploaded to the Hub from here; the file ships in checkpoints/
        }
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--weights", required=True, help="the zoo-format file to publish")
    parser.add_argument("--eval", required=True, help="`qsnn-zoo eval NAME --data DIR --json` output for that file")
    parser.add_argument("--run-dir", help="the run's OUT/NAME directory (stages with metrics.jsonl, curves.png)")
    parser.add_argument("--recipe", required=True, help="the exact command(s) that produced the file")
    parser.add_argument("--extra-metric", action="append", default=[], help="METRIC=JSON of evaluate.py or qsnn-zoo eval")
    parser.add_argument("--hf-repo", help="Hub repository id (default: qsnn-zoo/NAME)")
    parser.add_argument("--note", action="append", default=[], help="how the run departs from SPEC's recipe (repeatable)")
    parser.add_argument("--not-committed", metavar="REASON", help="record the file's sha256 and size but leave it out of checkpoints/")
    args = parser.parse_args(argv)
    if args.not_committed and args.hf_repo:
        parser.error("--hf-repo names where a committed file is uploaded; a --not-committed file has none")

    entry = get_entry(args.name)
    weights = Path(args.weights)
    if weights.suffix == ".json":
        if not args.not_committed:
            parser.error(f"{weights} describes a file; publishing into checkpoints/ needs the file itself")
        described, data = json.loads(weights.read_text()), None
    else:
        described = describe_file(weights)
        # Files written before save_weights sorted its header differ from a rerun's only in header order.
        data = None if args.not_committed else canonical_safetensors(weights.read_bytes())
    if described["model_name"] != entry.name:
        parser.error(f"{weights} holds {described['model_name']}, not {entry.name}")
    dest = REPO_ROOT / "runs" / entry.name
    dest.mkdir(parents=True, exist_ok=True)
    if args.run_dir:
        copy_run_logs(Path(args.run_dir), dest)
    evaluation = json.loads(Path(args.eval).read_text())
    if evaluation.get("model") != entry.name or evaluation.get("T") != entry.T:
        parser.error(f"{args.eval} is not an evaluation of {entry.name} at T={entry.T}")
    eval_copy = dest / "eval.json"
    shutil.copyfile(args.eval, eval_copy)
    metrics = metric_records(evaluation["accuracy"], entry.dataset, str(eval_copy.relative_to(REPO_ROOT)))
    metrics += extra_metrics(args.extra_metric, entry.dataset, dest)

    files = file_records(entry, described, data, args.not_committed, args.hf_repo)
    published = json.loads(PUBLISHED_FILE.read_text()) if PUBLISHED_FILE.exists() else {}
    published[entry.name] = {
        **files,
        "metrics": metrics,
        "recipe": args.recipe,
        "training_notes": args.note,
    }
    text = json.dumps(published, indent=2, sort_keys=True) + "\n"
    atomic_write(PUBLISHED_FILE, lambda tmp: Path(tmp).write_text(text))
    where = "not committed" if args.not_committed else f"checkpoints/{files['weights']['filename']}"
    print(f"published {entry.name}: {where} ({described['size']} bytes), {len(metrics)} metrics")


if __name__ == "__main__":
    main()
