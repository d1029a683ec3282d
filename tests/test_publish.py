"""scripts/publish.py writes the registry record of a run, into a temporary copy of the repository's
paths (never the real published.json or checkpoints/)."""
import hashlib
import json

import pytest

import qsnn_zoo
from qsnn_zoo import _registry, get_entry
from qsnn_zoo.weights import canonical_safetensors, describe_file, save_weights

from _train_helpers import script

NAME = "vgg16_cifar100_bin_calib"  # unpublished, with a small file (about 2 MB)


@pytest.fixture
def publish(tmp_path, monkeypatch):
    """publish.py's main, writing under tmp_path, and the files a run would hand it."""
    module = script("publish")
    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(module, "PUBLISHED_FILE", tmp_path / "published.json")
    monkeypatch.setattr(module, "REPO_CHECKPOINTS", tmp_path / "checkpoints")
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
