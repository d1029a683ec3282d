"""A weights file committed as parts (qsnn_zoo/parts.py) joins back into the published bytes, or fails
clearly; an entry whose file is only in parts loads with pretrained=True."""
import dataclasses
import hashlib
import os

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry, hub
from qsnn_zoo.hub import HashMismatchError, WeightsNotFoundError, resolve_weights
from qsnn_zoo.parts import join_parts, split_bytes
from qsnn_zoo.weights import export_state, save_weights

NAME = "vgg16_cifar10_bin_calib"
FILENAME = f"{NAME}.safetensors"


def split(tmp_path, data: bytes, part_bytes: int):
    directory = tmp_path / "checkpoints"
    return split_bytes(data, FILENAME, directory, part_bytes), directory


def pairs(records, directory):
    return [(directory / r.filename, r) for r in records]


def test_split_then_join_gives_the_same_bytes(tmp_path):
    data = os.urandom(2500)
    records, directory = split(tmp_path, data, 1000)
    assert [r.filename for r in records] == [f"{FILENAME}.part{k}-of-3" for k in (1, 2, 3)]
    assert [r.size for r in records] == [1000, 1000, 500]
    assert sorted(p.name for p in directory.iterdir()) == [r.filename for r in records]  # no temporary left
    assert all(hashlib.sha256((directory / r.filename).read_bytes()).hexdigest() == r.sha256 for r in records)
    dest = join_parts(pairs(records, directory), tmp_path / "joined" / FILENAME,
                      hashlib.sha256(data).hexdigest(), len(data))
    assert dest.read_bytes() == data


def test_a_tampered_part_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    data = os.urandom(2500)
    records, directory = split(tmp_path, data, 1000)
    part = directory / records[1].filename
    part.write_bytes(b"x" + part.read_bytes()[1:])  # same size, other bytes
    dest = tmp_path / "joined" / FILENAME
    with pytest.raises(HashMismatchError) as err:
        join_parts(pairs(records, directory), dest, hashlib.sha256(data).hexdigest(), len(data))
    message = str(err.value)
    assert "\n" not in message and records[1].filename in message and "git checkout" in message
    assert not dest.exists()


def test_parts_that_join_to_another_file_are_refused(tmp_path):
    data = os.urandom(2500)
    records, directory = split(tmp_path, data, 1000)
    dest = tmp_path / "joined" / FILENAME
    with pytest.raises(HashMismatchError, match="join to 2500 bytes"):
        join_parts(pairs(records, directory), dest, "0" * 64, len(data))
    assert not dest.parent.exists() or not any(dest.parent.iterdir())


def test_a_missing_part_is_named(tmp_path):
    data = os.urandom(2500)
    records, directory = split(tmp_path, data, 1000)
    (directory / records[2].filename).unlink()
    with pytest.raises(WeightsNotFoundError, match=records[2].filename.replace(".", r"\.")):
        join_parts(pairs(records, directory), tmp_path / "joined" / FILENAME, hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def parts_only(tmp_path, monkeypatch):
    """NAME published with its file only as parts in a checkpoints/ folder, not on the Hub."""
    monkeypatch.delenv("QSNN_ZOO_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = qsnn_zoo.create_model(NAME, T=2)
    data = save_weights(source, tmp_path / "made" / FILENAME).read_bytes()
    records, directory = split(tmp_path, data, 700_000)
    assert len(records) > 1
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", directory)
    weights = _registry.WeightsFile(FILENAME, hashlib.sha256(data).hexdigest(), len(data), "qsnn-zoo/x", None,
                                    tuple(records))
    entry = dataclasses.replace(_registry.get_entry(NAME), weights=weights)
    monkeypatch.setitem(_registry._ENTRIES, NAME, entry)
    return entry, source, data, tmp_path / "cache"


def test_pretrained_loads_from_parts_joined_into_the_cache(parts_only):
    entry, source, data, cache = parts_only
    checkpoints = sorted(p.name for p in hub.REPO_CHECKPOINTS.iterdir())
    model = qsnn_zoo.create_model(NAME, pretrained=True, cache_dir=cache, T=2)
    stored, expected = export_state(model)[0], export_state(source)[0]
    assert stored.keys() == expected.keys() and all(torch.equal(stored[k], expected[k]) for k in expected)
    joined = cache / "qsnn_zoo" / "joined" / entry.weights.sha256 / FILENAME
    assert resolve_weights(entry, cache_dir=cache) == joined and joined.read_bytes() == data
    assert sorted(p.name for p in hub.REPO_CHECKPOINTS.iterdir()) == checkpoints  # checkpoints/ as committed


def test_a_joined_file_is_reused_and_a_damaged_one_joined_again(parts_only):
    entry, _, data, cache = parts_only
    joined = resolve_weights(entry, cache_dir=cache)
    first = joined.stat()
    assert resolve_weights(entry, cache_dir=cache) == joined
    assert (joined.stat().st_ino, joined.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    joined.write_bytes(b"\0" * len(data))
    assert resolve_weights(entry, cache_dir=cache).read_bytes() == data


def test_a_missing_part_of_a_registered_file_is_named_when_loading(parts_only):
    entry, _, _, cache = parts_only
    (hub.REPO_CHECKPOINTS / entry.weights.parts[-1].filename).unlink()
    with pytest.raises(WeightsNotFoundError, match=entry.weights.parts[-1].filename.replace(".", r"\.")):
        resolve_weights(entry, cache_dir=cache)


def test_a_truncated_part_is_refused_by_its_size(tmp_path):
    data = os.urandom(2500)
    records, directory = split(tmp_path, data, 1000)
    part = directory / records[0].filename
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(HashMismatchError, match="999 bytes, expected 1000 bytes"):
        join_parts(pairs(records, directory), tmp_path / "joined" / FILENAME, hashlib.sha256(data).hexdigest(), len(data))


def test_parts_in_the_weights_directory_named_by_the_environment_are_joined(parts_only, monkeypatch, tmp_path):
    entry, _, data, cache = parts_only
    monkeypatch.setenv("QSNN_ZOO_WEIGHTS", str(hub.REPO_CHECKPOINTS))
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "no-checkpoints")
    assert resolve_weights(entry, cache_dir=cache).read_bytes() == data
