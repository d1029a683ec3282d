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

Every input is read and checked before the first write, so a bad one ends with a one-line error
(exit status 2) and leaves the repository as it was.

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
import sys
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Tuple

import make_cards
from qsnn_zoo import ModelEntry, UnknownModelError, _registry, get_entry
from qsnn_zoo._registry import PUBLISHED_FILE
from qsnn_zoo.cards import REPO_ROOT
from qsnn_zoo.hub import REPO_CHECKPOINTS
from qsnn_zoo.metrics import metric_records
from qsnn_zoo.parts import COMMIT_LIMIT_BYTES, PART_BYTES, split_bytes
from qsnn_zoo.train.config import stages_for
from qsnn_zoo.weights import WeightsFormatError, atomic_write, canonical_safetensors, describe_file

RUN_FILES = ("metrics.jsonl", "curves.png", "summary.json")
# Flags of a run's command that change where or how it ran but not the weights, left off the card's recipe.
RUN_ONLY_FLAGS = {"--device": 1, "--backend": 1, "--no-progress": 0, "--resume": 0, "--stop-after-epoch": 1, "--time-budget": 1,
                  "--checkpoint-seconds": 1}
PLACEHOLDERS = {"--data": "DATA", "--out": "OUT"}
DESCRIPTION = {"model_name": str, "float_dtype": str, "sha256": str, "size": int}  # as describe_file writes it
EVALUATE_KEYS = {"top1_all", "rows_all", "top1_lossless", "rows_lossless"}  # `scripts/evaluate.py --json`
EVAL_FIX = "pass the output of `qsnn-zoo eval {name} --data DIR --json` with --eval"
EXTRA_FIX = "pass the output of `qsnn-zoo eval {name} --json` or `scripts/evaluate.py {name} --json`"
DESCRIPTION_FIX = "pass the JSON that qsnn_zoo.weights.describe_file wrote of the weights file"
SUMMARY_FIX = "restore it from the run, or pass --recipe with the command that made the weights"

# What to write under runs/NAME/: each destination with the file it copies and that file's bytes.
Evidence = Dict[Path, Tuple[Path, bytes]]


@dataclasses.dataclass
class Publication:
    """Everything a publication writes, read and checked before its first write."""
    entry: ModelEntry
    described: dict
    data: Optional[bytes]  # the canonical file for checkpoints/; None when it is not committed
    hf_repo: Optional[str]
    evidence: Evidence
    record: dict  # the registry record, less the committed file's "weights" that only writing it gives
    published: dict  # published.json as it is


def fail(message: str) -> NoReturn:
    """Ends with a one-line error and exit status 2, as argparse does for bad arguments."""
    print(f"publish.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_json(path: Path, fix: str) -> dict:
    """The JSON object in ``path``; ``fix`` tells the user what to pass instead."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: not UTF-8, or not JSON
        fail(f"{path} is not readable JSON ({err}); {fix}")
    if not isinstance(value, dict):
        fail(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def existing_file(path: Path, flag: str) -> Path:
    if not path.is_file():
        fail(f"{path} does not exist; write it first or name another file with {flag}")
    return path


def one_line(flag: str, text: str) -> str:
    # The card prints it as one list item; an empty or multi-line one would break its markdown.
    if not text.strip() or "\n" in text:
        fail(f"{flag} {text!r} is not one line of text; give it as one non-empty line")
    return text


def known_entry(name: str, run: str) -> ModelEntry:
    try:
        return get_entry(name)
    except UnknownModelError as err:
        fail(f"{run}: {err} A run folder is named after its entry: OUT/NAME.")


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


def stage_command(summary: Path) -> str:
    command = read_json(summary, SUMMARY_FIX).get("command")
    if not isinstance(command, str):
        fail(f"{summary} records no \"command\" string; {SUMMARY_FIX}")
    try:
        return card_command(command)
    except ValueError as err:  # shlex: unbalanced quotes
        fail(f"{summary} records a \"command\" that is no shell command line ({err}); {SUMMARY_FIX}")


def recorded_recipe(name: str, run_dir: Path) -> str:
    """The commands of the run's stages, in the order the entry's stages run, joined with ``&&``."""
    commands = []
    for stage in stages_for(name):
        summary = run_dir / stage / "summary.json"
        if summary.is_file():
            command = stage_command(summary)
            if command not in commands:
                commands.append(command)
    if not commands:
        fail(f"{run_dir} holds no summary.json of a stage of {name} {stages_for(name)}; "
             "pass --recipe with the command that made the weights")
    return " && ".join(commands)


def read_weights(path: Path, entry: ModelEntry, not_committed: Optional[str]) -> Tuple[dict, Optional[bytes]]:
    """What the registry records of the file (as describe_file gives it) and, unless it is not
    committed, its canonical bytes."""
    if path.suffix == ".json":
        if not not_committed:
            fail(f"{path} describes a file; publishing into checkpoints/ needs the file itself")
        described, data = read_json(path, DESCRIPTION_FIX), None
        wrong = [key for key, kind in DESCRIPTION.items() if not isinstance(described.get(key), kind)]
        if wrong:
            fail(f"{path} has no valid {', '.join(wrong)}; {DESCRIPTION_FIX}")
    else:
        try:
            described = describe_file(path)
        except WeightsFormatError as err:
            fail(str(err))
        # Files written before save_weights sorted its header differ from a rerun's only in header order.
        data = None if not_committed else canonical_safetensors(path.read_bytes())
    if described["model_name"] != entry.name:
        fail(f"{path} holds {described['model_name']}, not {entry.name}")
    return described, data


def measured_rows(part) -> bool:
    """Whether ``part`` is a row set's result as qsnn_zoo.metrics.top1 gives it (or absent)."""
    if part is None:
        return True
    if not isinstance(part, dict) or not isinstance(part.get("rows"), int):
        return False
    return part["rows"] == 0 or isinstance(part.get("top1"), (int, float))


def checked_accuracy(acc, path: Path, fix: str) -> dict:
    """``acc`` once it is an accuracy as qsnn_zoo.metrics.accuracy gives it, measured on some rows."""
    parts = [acc.get(key) for key in ("lossless", "all")] if isinstance(acc, dict) else []
    if not parts or not all(map(measured_rows, parts)) or not any(part and part["rows"] for part in parts):
        fail(f"{path} holds no \"accuracy\" with a top-1 measured on some rows; {fix}")
    return acc


def add_evidence(evidence: Evidence, source: Path, dest: Path) -> None:
    data = source.read_bytes()
    earlier = evidence.get(dest)
    if earlier and earlier[1] != data:
        fail(f"{earlier[0]} and {source} would both be copied to {dest.relative_to(REPO_ROOT)}; rename one of them")
    evidence[dest] = (source, data)


def run_logs(run_dir: Path, dest: Path, evidence: Evidence) -> None:
    """Each stage's metrics log, curves and summary; curves also at the top for the card."""
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        for name in RUN_FILES:
            src = stage / name
            if src.is_file():
                add_evidence(evidence, src, dest / stage.name / name)
                if name == "curves.png":
                    add_evidence(evidence, src, dest / f"curves_{stage.name}.png")


def evaluation_metrics(path: Path, entry: ModelEntry, dest: Path, evidence: Evidence) -> List[dict]:
    fix = EVAL_FIX.format(name=entry.name)
    evaluation = read_json(path, fix)
    if evaluation.get("model") != entry.name or evaluation.get("T") != entry.T:
        fail(f"{path} is not an evaluation of {entry.name} at T={entry.T}; {fix}")
    acc = checked_accuracy(evaluation.get("accuracy"), path, fix)
    add_evidence(evidence, path, dest / "eval.json")
    return metric_records(acc, entry.dataset, str((dest / "eval.json").relative_to(REPO_ROOT)))


def extra_metrics(spec: str, entry: ModelEntry, dest: Path, evidence: Evidence) -> List[dict]:
    """The records of ``--extra-metric METRIC=FILE``: FILE's accuracy under the name METRIC."""
    metric, sep, name = spec.partition("=")
    if not (metric and sep and name):
        fail(f"--extra-metric {spec!r} is not METRIC=FILE; write it as, e.g., top1_cpu=eval_cpu.json")
    path, fix = existing_file(Path(name), "--extra-metric"), EXTRA_FIX.format(name=entry.name)
    result = read_json(path, fix)
    acc = result.get("accuracy")
    if acc is None and EVALUATE_KEYS <= result.keys():  # `scripts/evaluate.py --json`
        acc = {"all": {"top1": result["top1_all"], "rows": result["rows_all"]},
               "lossless": {"top1": result["top1_lossless"], "rows": result["rows_lossless"]}}
    acc = checked_accuracy(acc, path, fix)
    if acc.get("lossless") and acc.get("all") and acc["all"]["rows"] == acc["lossless"]["rows"]:
        acc = {"lossless": acc["lossless"]}  # a --limit run over the lossless rows only
    add_evidence(evidence, path, dest / path.name)
    records = metric_records(acc, entry.dataset, str((dest / path.name).relative_to(REPO_ROOT)))
    return [{**record, "name": metric} for record in records]


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
    if args.not_committed is not None and args.hf_repo:
        parser.error("--hf-repo names where a committed file is uploaded; a --not-committed file has none")
    return args


def located(args) -> Tuple[ModelEntry, Optional[Path], Path, Path]:
    """The entry, the run's folder (if any), the weights file and its evaluation that ``args`` name."""
    run = Path(args.run)
    if run.is_dir():
        name, run_dir = run.name, run
    elif args.weights and args.eval:
        name, run_dir = args.run, Path(args.run_dir) if args.run_dir else None
    else:
        fail(f"{run} is not a run folder (OUT/NAME); pass the folder, or the entry's name with --weights and --eval")
    if run_dir is not None and not run_dir.is_dir():
        fail(f"{run_dir} is not a folder; pass the run's folder OUT/NAME with --run-dir")
    entry = known_entry(name, args.run)
    weights = existing_file(Path(args.weights or run_dir / f"{name}.safetensors"), "--weights")
    evaluation = existing_file(Path(args.eval or run_dir / "eval.json"), "--eval")
    return entry, run_dir, weights, evaluation


def read_publication(args) -> Publication:
    """Reads and checks every input, so that a bad one stops the publication before anything is written."""
    entry, run_dir, weights, evaluation = located(args)
    if args.recipe is None and run_dir is None:
        fail("--recipe is needed without a run folder to read the command from")
    notes = [one_line("--note", note) for note in args.note]
    if args.not_committed is not None:
        one_line("--not-committed", args.not_committed)
    recipe = recorded_recipe(entry.name, run_dir) if args.recipe is None else args.recipe
    described, data = read_weights(weights, entry, args.not_committed)
    dest, evidence = REPO_ROOT / "runs" / entry.name, {}
    if run_dir is not None:
        run_logs(run_dir, dest, evidence)
    metrics = evaluation_metrics(evaluation, entry, dest, evidence)
    for spec in args.extra_metric:
        metrics += extra_metrics(spec, entry, dest, evidence)
    record = {"metrics": metrics, "recipe": recipe, "training_notes": notes}
    if args.not_committed is not None:
        identity = {"sha256": described["sha256"], "size": described["size"]}
        record.update(weights=None, made_file={**identity, "dtype": described["float_dtype"],
                                                  "reason": args.not_committed})
    published = json.loads(PUBLISHED_FILE.read_text()) if PUBLISHED_FILE.exists() else {}
    return Publication(entry, described, data, args.hf_repo, evidence, record, published)


def commit_weights(entry: ModelEntry, described: dict, data: bytes, hf_repo: Optional[str]) -> dict:
    """Writes ``data`` to checkpoints/, whole or in parts; the record's "weights" of it."""
    target = REPO_CHECKPOINTS / f"{entry.name}.safetensors"
    weights = {
        "filename": target.name,
        "sha256": described["sha256"],
        "size": described["size"],
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
    return {**weights, **in_parts}


def write_publication(publication: Publication) -> dict:
    """Writes the checked publication: weights, evidence, record, cards; returns the record."""
    entry, record = publication.entry, publication.record
    if publication.data is not None:
        record = {"weights": commit_weights(entry, publication.described, publication.data, publication.hf_repo), **record}
    for dest, (_, data) in publication.evidence.items():
        atomic_write(dest, lambda tmp, data=data: Path(tmp).write_bytes(data))
    published = {**publication.published, entry.name: record}
    text = json.dumps(published, indent=2, sort_keys=True) + "\n"
    atomic_write(PUBLISHED_FILE, lambda tmp: Path(tmp).write_text(text))
    _registry.publish_record(entry.name, record)
    make_cards.write_all()
    return record


def main(argv=None) -> None:
    publication = read_publication(parse_args(argv))
    record = write_publication(publication)
    weights = record["weights"]
    parts = len(weights.get("parts", ())) if weights else 0
    where = ("not committed" if weights is None
             else f"checkpoints/{weights['filename']}" + (f" as {parts} parts" if parts else ""))
    print(f"published {publication.entry.name}: {where} ({publication.described['size']} bytes), "
          f"{len(record['metrics'])} metrics")


if __name__ == "__main__":
    main()
