"""scripts/publish.py writes the registry record of a run, into a temporary copy of the repository's
paths (never the real published.json or checkpoints/)."""
import hashlib
import json
import pickle
import shutil
import sys

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry, cards, get_entry
from qsnn_zoo.weights import canonical_safetensors, describe_file, save_weights

from _train_helpers import random_parent, script, tiny

NAME = "vgg16_cifar100_bin_calib"  # unpublished, with a small file (about 2 MB)
RUN_NAME = "vgg16_cifar10_bin_calib"  # the smallest child the synthetic CIFAR-10 bundle can train
EVAL = {"model": NAME, "T": get_entry(NAME).T}  # what names an evaluation of NAME


def repository_copy(root, monkeypatch):
    """publish.py's module with every path it writes under ``root``: published.json, checkpoints/,
    runs/, the cards and a README with the zoo table's markers; registry changes end with the test."""
    module = script("publish")
    for target in (module, cards):
        monkeypatch.setattr(target, "REPO_ROOT", root)
    monkeypatch.setattr(module, "PUBLISHED_FILE", root / "published.json")
    monkeypatch.setattr(module, "REPO_CHECKPOINTS", root / "checkpoints")
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))
    (root / "model_cards").mkdir(exist_ok=True)
    (root / "README.md").write_text(f"# zoo\n\n{cards.TABLE_START}\n{cards.TABLE_END}\n")
    return module


@pytest.fixture
def publish_script(tmp_path, monkeypatch):
    return repository_copy(tmp_path, monkeypatch)


@pytest.fixture
def publish(publish_script, tmp_path):
    """publish.py's main, writing under tmp_path, and the files a run would hand it."""
    module = publish_script
    run = tmp_path / "run"
    weights = save_weights(qsnn_zoo.create_model(NAME), run / f"{NAME}.safetensors")
    accuracy = {"lossless": {"top1": 61.234, "rows": 1017}, "all": {"top1": 58.5, "rows": 10000}}
    evaluation = run / "eval.json"
    evaluation.write_text(json.dumps({"model": NAME, "T": get_entry(NAME).T, "accuracy": accuracy}))
    flags = ["--weights", str(weights), "--eval", str(evaluation), "--recipe", f"python scripts/reproduce.py {NAME}"]
    return lambda *extra: module.main([NAME, *flags, *extra]), tmp_path, weights


def test_not_committed_records_the_made_file_and_writes_no_checkpoint(publish):
    main, root, weights = publish
    main("--not-committed", "over 50 MB", "--note", "a shorter run")
    record = json.loads((root / "published.json").read_text())[NAME]
    data = canonical_safetensors(weights.read_bytes())
    assert record["weights"] is None
    assert record["made_file"] == {
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "dtype": "float32", "reason": "over 50 MB"
    }
    assert [m["value"] for m in record["metrics"]] == [61.23, 58.5]
    assert record["training_notes"] == ["a shorter run"] and (root / "runs" / NAME / "eval.json").is_file()
    assert not (root / "checkpoints").exists()
    entry = _registry._with_published(get_entry(NAME), record)
    assert not entry.has_weights and entry.made_file.sha256 == record["made_file"]["sha256"]


def test_a_committed_file_and_a_not_committed_one_are_the_same_bytes_described_alike(publish):
    main, root, _ = publish
    main("--not-committed", "over 50 MB")
    made = json.loads((root / "published.json").read_text())[NAME]["made_file"]
    main()
    record = json.loads((root / "published.json").read_text())[NAME]
    committed = root / "checkpoints" / f"{NAME}.safetensors"
    assert "made_file" not in record and record["weights"]["filename"] == committed.name
    assert (record["weights"]["sha256"], record["weights"]["size"]) == (made["sha256"], made["size"])
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == made["sha256"]


def test_a_file_over_the_limit_is_committed_as_parts_that_join_to_it(publish, publish_script, monkeypatch):
    main, root, weights = publish
    module = publish_script
    monkeypatch.setattr(module, "COMMIT_LIMIT_BYTES", 1_000_000)
    monkeypatch.setattr(module, "PART_BYTES", 800_000)
    main()
    record = json.loads((root / "published.json").read_text())[NAME]["weights"]
    data = canonical_safetensors(weights.read_bytes())
    n = -(-len(data) // 800_000)
    assert n > 1 and [p["filename"] for p in record["parts"]] == [f"{NAME}.safetensors.part{k}-of-{n}" for k in range(1, n + 1)]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == sorted(p["filename"] for p in record["parts"])
    assert b"".join((root / "checkpoints" / p["filename"]).read_bytes() for p in record["parts"]) == data
    assert (record["sha256"], record["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert len(_registry._with_published(get_entry(NAME), {"weights": record}).weights.parts) == n
    assert f"as {n} parts of at most 0.8 MB" in (root / "model_cards" / f"{NAME}.md").read_text()
    monkeypatch.setattr(module, "COMMIT_LIMIT_BYTES", 50_000_000)
    main()  # published again whole: the parts go, so only the new file is found
    assert [p.name for p in (root / "checkpoints").iterdir()] == [f"{NAME}.safetensors"]
    assert "parts" not in json.loads((root / "published.json").read_text())[NAME]["weights"]


def test_not_committed_refuses_a_hub_repository(publish):
    main, root, _ = publish
    with pytest.raises(SystemExit):
        main("--not-committed", "over 50 MB", "--hf-repo", "org/repo")
    assert not (root / "published.json").exists()


def test_a_description_written_where_the_file_was_made_publishes_it_as_not_committed(publish, tmp_path):
    main, root, weights = publish
    main("--not-committed", "over 50 MB")
    from_file = json.loads((root / "published.json").read_text())[NAME]
    description = tmp_path / "made_file.json"
    description.write_text(json.dumps(describe_file(weights)))
    main("--weights", str(description), "--not-committed", "over 50 MB")  # the later --weights wins
    assert json.loads((root / "published.json").read_text())[NAME] == from_file
    with pytest.raises(SystemExit):
        main("--weights", str(description))


def test_a_finished_run_folder_is_published_in_one_command(tmp_path, monkeypatch):
    """A real (tiny) run's folder in, and out: the canonical weights, the evidence, the record with the
    run's own command, the card and the README row."""
    root = tmp_path / "repo"
    root.mkdir()
    module = repository_copy(root, monkeypatch)
    out = tmp_path / "out"
    parent = random_parent(tmp_path, get_entry(RUN_NAME).parent)
    command = [RUN_NAME, *tiny(out), "--parent-weights", str(parent)]
    monkeypatch.setattr(sys, "argv", ["scripts/quantize_cbp.py", *command])  # what the run records as its command
    script("quantize_cbp").main(command)
    run = out / RUN_NAME
    accuracy = {"lossless": {"top1": 50.0, "rows": 16}, "all": {"top1": 43.75, "rows": 32}}
    (run / "eval.json").write_text(json.dumps({"model": RUN_NAME, "T": get_entry(RUN_NAME).T, "accuracy": accuracy}))

    module.main([str(run), "--note", "a tiny run"])

    record = json.loads((root / "published.json").read_text())[RUN_NAME]
    committed = root / "checkpoints" / f"{RUN_NAME}.safetensors"
    assert committed.read_bytes() == canonical_safetensors((run / f"{RUN_NAME}.safetensors").read_bytes())
    assert record["weights"]["sha256"] == hashlib.sha256(committed.read_bytes()).hexdigest()
    assert record["recipe"].startswith(f"python scripts/quantize_cbp.py {RUN_NAME} ")
    assert "--data DATA" in record["recipe"] and "--out OUT" in record["recipe"] and "--device" not in record["recipe"]
    assert [(m["value"], m["source"]) for m in record["metrics"]] == [
        (50.0, f"runs/{RUN_NAME}/eval.json"), (43.75, f"runs/{RUN_NAME}/eval.json")]
    assert {"metrics.jsonl", "summary.json"} <= {p.name for p in (root / "runs" / RUN_NAME / "calib_cbp").iterdir()}
    card = (root / "model_cards" / f"{RUN_NAME}.md").read_text()
    assert record["recipe"] in card and "- a tiny run" in card and record["weights"]["sha256"] in card
    row = next(line for line in (root / "README.md").read_text().splitlines() if f"[{RUN_NAME}]" in line)
    assert "| 50.00 | 43.75 |" in row


def test_a_folder_without_its_evaluation_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    module = repository_copy(root, monkeypatch)
    run = tmp_path / "out" / NAME
    save_weights(qsnn_zoo.create_model(NAME), run / f"{NAME}.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(run), "--recipe", "python scripts/reproduce.py " + NAME])
    assert exit_info.value.code == 2
    assert not (root / "published.json").exists() and not (root / "checkpoints").exists()


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """Two different weights files of NAME, saved once for the tests of run folders (saving is slow)."""
    folder = tmp_path_factory.mktemp("weights")
    files = []
    for seed in (0, 1):
        with torch.random.fork_rng():  # the seed stays out of later tests
            torch.manual_seed(seed)
            files.append(save_weights(qsnn_zoo.create_model(NAME), folder / f"{seed}.safetensors"))
    return files


def run_folder(out, weights, accuracy):
    """A finished run's folder of NAME as the training scripts leave it, but made without training."""
    run = out / NAME
    run.mkdir(parents=True)
    shutil.copyfile(weights, run / f"{NAME}.safetensors")
    lossless, every = accuracy
    acc = {"lossless": {"top1": lossless, "rows": 1017}, "all": {"top1": every, "rows": 10000}}
    (run / "eval.json").write_text(json.dumps({**EVAL, "accuracy": acc}))
    stage = run / "calib_cbp"
    stage.mkdir()
    command = f"scripts/quantize_cbp.py {NAME} --data /data --out {out} --device cuda"
    (stage / "summary.json").write_text(json.dumps({"command": command, "top1": lossless}))
    (stage / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_top1_lossless": lossless}) + "\n")
    (stage / "curves.png").write_bytes(b"\x89PNG" + str(accuracy).encode())
    return run


def snapshot(root):
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def republished(tmp_path, monkeypatch, weights_files):
    """publish.py writing under tmp_path/repo, which holds a publication of NAME, and the folder of a
    later run of NAME whose every file differs from the published ones."""
    root = tmp_path / "repo"
    root.mkdir()
    module = repository_copy(root, monkeypatch)
    module.main([str(run_folder(tmp_path / "first", weights_files[0], (61.234, 58.5)))])
    return module, root, run_folder(tmp_path / "out", weights_files[1], (70.0, 65.0))


def write(path, text):
    path.write_text(text)
    return str(path)


def description(run, **fields):
    return write(run / "made_file.json", json.dumps(fields))


def pickled(run):
    path = run / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": {"conv.weight": [0.5]}}))
    return str(path)


def renamed(run):
    folder = run.parent / "not_an_entry"
    shutil.copytree(run, folder)
    (folder / f"{NAME}.safetensors").rename(folder / "not_an_entry.safetensors")
    return str(folder)


def stage_summary(run, text):
    write(run / "calib_cbp" / "summary.json", text)
    return str(run)


def another_evaluation(run):
    """An evaluation named eval.json, as the run's own, from another folder."""
    return write(run.parent / "eval.json", json.dumps({**EVAL, "accuracy": {"all": {"top1": 1.0, "rows": 9}}}))


MALFORMED = {"all": {"top1": "x", "rows": 3}}  # a top-1 that is no number
# Each bad input: the arguments it is given with (from the run's folder) and what its error names.
BAD_INPUTS = {
    "extra metric without its file": (lambda run: [str(run), "--extra-metric", "nosign"], "'nosign' is not METRIC=FILE"),
    "missing extra metric file": (lambda run: [str(run), "--extra-metric", "top1_cpu=nonexist.json"],
                                  "nonexist.json does not exist"),
    "extra metric not JSON": (lambda run: [str(run), "--extra-metric", f"top1_cpu={run / f'{NAME}.safetensors'}"],
                              "safetensors is not readable JSON"),
    "empty extra metric": (lambda run: [str(run), "--extra-metric", f"top1_cpu={write(run / 'empty.safetensors', '')}"],
                           "empty.safetensors is not readable JSON"),
    "extra metric without accuracy": (lambda run: [str(run), "--extra-metric", f"top1_cpu={write(run / 'cpu.json', '{}')}"],
                                      "cpu.json holds no \"accuracy\""),
    "extra metric over the evaluation": (lambda run: [str(run), "--extra-metric", f"top1_cpu={another_evaluation(run)}"],
                                         "would both be copied to runs/"),
    "evaluation without accuracy": (lambda run: [str(run), "--eval", write(run / "noaccuracy.json", json.dumps(EVAL))],
                                    "noaccuracy.json holds no \"accuracy\""),
    "evaluation of malformed accuracy": (
        lambda run: [str(run), "--eval", write(run / "bad.json", json.dumps({**EVAL, "accuracy": MALFORMED}))],
        "bad.json holds no \"accuracy\""),
    "empty evaluation": (lambda run: [str(run), "--eval", write(run / "empty.json", "")], "empty.json is not readable JSON"),
    "evaluation not JSON": (lambda run: [str(run), "--eval", write(run / "text.json", "top-1 61 %")],
                            "text.json is not readable JSON"),
    "evaluation a list": (lambda run: [str(run), "--eval", write(run / "list.json", "[1]")], "list.json holds a JSON list"),
    "pickled weights": (lambda run: [str(run), "--weights", pickled(run)], "model.pt is not a readable safetensors file"),
    "empty description": (lambda run: [str(run), "--weights", description(run), "--not-committed", "x"],
                          "has no valid model_name, float_dtype, sha256, size"),
    "description of a wrong size": (
        lambda run: [str(run), "--not-committed", "x", "--weights",
                     description(run, model_name=NAME, float_dtype="float32", sha256="0" * 64, size="2 MB")],
        "has no valid size"),
    "malformed stage summary": (lambda run: [stage_summary(run, "{")], "summary.json is not readable JSON"),
    "stage summary without its command": (lambda run: [stage_summary(run, "{}")], "summary.json records no \"command\""),
    "run folder of no entry": (lambda run: [renamed(run)], "Unknown model 'not_an_entry'"),
    "missing run folder": (lambda run: [NAME, "--weights", str(run / f"{NAME}.safetensors"), "--eval", str(run / "eval.json"),
                                        "--recipe", "python x.py", "--run-dir", str(run / "missing")], "missing is not a folder"),
    "stage summary of an unquoted command": (lambda run: [stage_summary(run, json.dumps({"command": "x.py 'a"}))],
                                             "no shell command line"),
    "note of two lines": (lambda run: [str(run), "--note", "shorter\nrun"], "--note 'shorter\\nrun' is not one line"),
    "empty reason": (lambda run: [str(run), "--not-committed", ""], "--not-committed '' is not one line"),
}


@pytest.mark.parametrize("arguments, named", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_a_bad_input_is_refused_in_one_line_before_anything_is_written(republished, capsys, arguments, named):
    module, root, run = republished
    before = snapshot(root)
    argv = arguments(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("publish.py: error: ") and err.count("\n") == 1 and named in err
    assert snapshot(root) == before


def test_extra_metrics_of_either_evaluation_script_are_recorded_with_their_files(republished, tmp_path):
    module, root, run = republished
    cpu = {**EVAL, "accuracy": {"lossless": {"top1": 69.5, "rows": 1017}, "all": {"top1": 64.25, "rows": 10000}}}
    ann = {"top1_all": 71.0, "rows_all": 10000, "top1_lossless": None, "rows_lossless": 0}
    module.main([str(run), "--extra-metric", f"top1_cpu={write(tmp_path / 'cpu.json', json.dumps(cpu))}",
                 "--extra-metric", f"top1_ann={write(tmp_path / 'ann.json', json.dumps(ann))}"])
    record = json.loads((root / "published.json").read_text())[NAME]
    assert [(m["name"], m["value"], m["source"]) for m in record["metrics"]] == [
        ("top1", 70.0, f"runs/{NAME}/eval.json"), ("top1", 65.0, f"runs/{NAME}/eval.json"),
        ("top1_cpu", 69.5, f"runs/{NAME}/cpu.json"), ("top1_cpu", 64.25, f"runs/{NAME}/cpu.json"),
        ("top1_ann", 71.0, f"runs/{NAME}/ann.json")]
    assert json.loads((root / "runs" / NAME / "ann.json").read_text()) == ann
    log = NAME + "/calib_cbp/metrics.jsonl"
    assert (root / "runs" / log).read_bytes() == (run.parent / log).read_bytes()
