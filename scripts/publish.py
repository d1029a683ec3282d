"""Publishes a finished run: one command does everything publishing needs.

    python scripts/publish.py OUT/vgg16_cifar10_bin_calib --extra-metric top1_cpu=eval_cpu.json --note "..."

takes the run's folder (``OUT/NAME``, as the training scripts write it: ``NAME.safetensors``, one
folder per stage with ``metrics.jsonl``, ``curves.png`` and ``summary.json``, and ``eval.json``, the
output of ``qsnn-zoo eval NAME --weights OUT/NAME/NAME.safetensors --data DIR --json`` on the full
test set) and

1. writes the weights in their canonical form (safetensors header in sorted key order) to
   ``checkpoints/NAME.safetensors``, or, for a file over the repository's 50 MB limit, as parts of at
   most 45 MB, ``checkpoints/NAME.safetensors.part1-of-N`` ..., recorded in the record's "parts" (the
   library joins and checks them; :mod:`qsnn_zoo.parts`);
2. copies the evidence (each stage's log, curves and summary, the evaluations) to ``runs/NAME/``;
3. writes the registry record (sha256, size, metrics with the file each comes from, recipe, notes)
   into ``qsnn_zoo/published.json``;
4. regenerates every model card and the README's zoo table (``scripts/make_cards.py``), since a
   child's card compares it with its parent.

The recipe on the card is the run's own command (from its stages' ``summary.json``, with the data and
output folders written as DATA and OUT and the flags that change nothing dropped) unless ``--recipe``
gives it. ``--eval`` and ``--weights`` name files elsewhere than in the folder; with ``--weights`` and
``--eval`` the first argument may be the entry's name instead of a folder.

--extra-metric NAME=FILE adds the accuracy in a `scripts/evaluate.py --json` or `qsnn-zoo eval --json`
result under another metric name (top1_ann for the ANN form, top1_fp32_weights before a float16
re-save, top1_cpu for the CPU's reference backend). --note adds a line to the card's account of how
the run differs from the entry's full recipe (docs/method.md).

--not-committed REASON publishes an entry whose file is not brought to this machine: the file is checked and
hashed but not copied, the record's "weights" is null and its "made_file" holds the sha256, size and
float dtype of the file with the reason, so the card can say how to make it and anyone who makes it
can check theirs. Where the file cannot be brought to this machine, --weights takes instead the JSON
that `qsnn_zoo.weights.describe_file` wrote of it where it was made.
"""
import argparse
import dataclasses
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import make_cards
from qsnn_zoo import _registry, get_entry
from qsnn_zoo._registry import PUBLISHED_FILE
from qsnn_zoo.cards import REPO_ROOT
from qsnn_zoo.hub import REPO_CHECKPOINTS
from qsnn_zoo.metrics import metric_records
from qsnn_zoo.parts import COMMIT_LIMIT_BYTES, PART_BYTES, split_bytes
from qsnn_zoo.train.config import stages_for
from qsnn_zoo.weights import atomic_write, canonical_safetensors, describe_file

RUN_FILES = ("metrics.jsonl", "curves.png", "summary.json")
# Flags of a run's command that change where or how it ran but not the weights, left off the card's recipe.
RUN_ONLY_FLAGS = {"--device": 1, "--backend": 1, "--no-progress": 0, "--resume": 0, "--stop-after-epoch": 1, "--time-budget": 1,
                  "--checkpoint-seconds": 1}
PLACEHOLDERS = {"--data": "DATA", "--out": "OUT"}


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


def card_command(command: str) -> str:
    """A run's recorded command as a card states it: ``python`` first, DATA and OUT for its folders."""
    words, kept = shlex.split(command), []
    while words:
        word = words.pop(0)
        if word in RUN_ONLY_FLAGS:
            del words[: RUN_ONLY_FLAGS[word]]
        elif word in PLACEHOLDERS:
            kept += [word, PLACEHOLDERS[word]]
            del words[:1]
        else:
            kept.append(word)
    return "python " + shlex.join(kept)


def recorded_recipe(name: str, run_dir: Path) -> str:
    """The commands of the run's stages, in the order the entry's stages run, joined with ``&&``."""
    commands = []
    for stage in stages_for(name):
        summary = run_dir / stage / "summary.json"
        if summary.is_file():
            command = card_command(json.loads(summary.read_text())["command"])
            if command not in commands:
                commands.append(command)
    if not commands:
        raise FileNotFoundError(f"{run_dir} holds no summary.json of a stage of {name} {stages_for(name)}; "
                                "pass --recipe with the command that made the weights")
    return " && ".join(commands)


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
    weights = {
        "filename": target.name,
        **identity,
        "hf_repo": hf_repo or f"qsnn-zoo/{entry.name}",
        "revision": None,  # not uploaded to the Hub from here; the file ships in checkpoints/
    }
    if len(data) <= COMMIT_LIMIT_BYTES:
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
        parts = []
    else:
        parts = split_bytes(data, target.name, REPO_CHECKPOINTS, PART_BYTES)
    # An earlier publication's whole file or parts would otherwise be found beside the new ones.
    written = {part.filename for part in parts} or {target.name}
    for stale in [target, *REPO_CHECKPOINTS.glob(f"{target.name}.part*-of-*")]:
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    in_parts = {"parts": [dataclasses.asdict(part) for part in parts]} if parts else {}
    return {"weights": {**weights, **in_parts}}


def fail(message: str) -> None:
    """Ends with a one-line error and exit status 2, as argparse does for bad arguments."""
    print(f"publish.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the finished run's folder OUT/NAME (or NAME, with --weights and --eval)")
    parser.add_argument("--weights", help="the zoo-format file to publish (default: RUN/NAME.safetensors)")
    parser.add_argument("--eval", help="`qsnn-zoo eval NAME --data DIR --json` of that file (default: RUN/eval.json)")
    parser.add_argument("--run-dir", help="the run's folder, when the first argument is the entry's name")
    parser.add_argument("--recipe", help="the exact command(s) that made the file (default: the run's own)")
    parser.add_argument("--extra-metric", action="append", default=[], help="METRIC=JSON of evaluate.py or qsnn-zoo eval")
    parser.add_argument("--hf-repo", help="Hub repository id (default: qsnn-zoo/NAME)")
    parser.add_argument("--note", action="append", default=[],
                        help="how the run differs from the entry's full recipe (repeatable)")
    parser.add_argument("--not-committed", metavar="REASON", help="record the file's sha256 and size but leave it out of checkpoints/")
    args = parser.parse_args(argv)
    if args.not_committed and args.hf_repo:
        parser.error("--hf-repo names where a committed file is uploaded; a --not-committed file has none")
    run = Path(args.run)
    if run.is_dir():
        args.name, args.run_dir = run.name, str(run)
    elif args.weights and args.eval:
        args.name = args.run
    else:
        parser.error(f"{run} is not a run folder (OUT/NAME); pass the folder, or the entry's name with --weights and --eval")
    run_dir = Path(args.run_dir) if args.run_dir else None
    args.weights = args.weights or str(run_dir / f"{args.name}.safetensors")
    args.eval = args.eval or str(run_dir / "eval.json")
    for flag, path in (("--weights", args.weights), ("--eval", args.eval)):
        if not Path(path).is_file():
            parser.error(f"{path} does not exist; write it first or name another file with {flag}")
    if args.recipe is None:
        if run_dir is None:
            parser.error("--recipe is needed without a run folder to read the command from")
        try:
            args.recipe = recorded_recipe(args.name, run_dir)
        except FileNotFoundError as err:
            parser.error(str(err))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    entry = get_entry(args.name)
    weights = Path(args.weights)
    if weights.suffix == ".json":
        if not args.not_committed:
            fail(f"{weights} describes a file; publishing into checkpoints/ needs the file itself")
        described, data = json.loads(weights.read_text()), None
    else:
        described = describe_file(weights)
        # Files written before save_weights sorted its header differ from a rerun's only in header order.
        data = None if args.not_committed else canonical_safetensors(weights.read_bytes())
    if described["model_name"] != entry.name:
        fail(f"{weights} holds {described['model_name']}, not {entry.name}")
    evaluation = json.loads(Path(args.eval).read_text())
    if evaluation.get("model") != entry.name or evaluation.get("T") != entry.T:
        fail(f"{args.eval} is not an evaluation of {entry.name} at T={entry.T}")
    dest = REPO_ROOT / "runs" / entry.name
    dest.mkdir(parents=True, exist_ok=True)
    if args.run_dir:
        copy_run_logs(Path(args.run_dir), dest)
    eval_copy = dest / "eval.json"
    if Path(args.eval).resolve() != eval_copy.resolve():
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
    _registry.publish_record(entry.name, published[entry.name])
    make_cards.write_all()
    parts = len(files["weights"].get("parts", ())) if files["weights"] else 0
    where = ("not committed" if args.not_committed
             else f"checkpoints/{files['weights']['filename']}" + (f" as {parts} parts" if parts else ""))
    print(f"published {entry.name}: {where} ({described['size']} bytes), {len(metrics)} metrics")


if __name__ == "__main__":
    main()
