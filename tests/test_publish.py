"""scripts/publish.py writes the registry record of a run, into a temporary copy of the repository's
paths (never the real published.json or checkpoints/)."""
import hashlib
import json
import sys

import pytest

import qsnn_zoo
from qsnn_zoo import _registry, cards, get_entry
from qsnn_zoo.weights import canonical_safetensors, describe_file, save_weights

from _train_helpers import random_parent, script, tiny

NAME = "vgg16_cifar100_bin_calib"  # unpublished, with a small file (about 2 MB)
RUN_NAME = "vgg16_cifar10_bin_calib"  # the smallest child the synthetic CIFAR-10 bundle can train


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
