"""Downloads through the real huggingface_hub client from a Hub stand-in on 127.0.0.1 (tests/hf_server.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry, hub
from qsnn_zoo._registry import WeightsFile
from qsnn_zoo.hub import HashMismatchError, WeightsNotFoundError, resolve_weights
from qsnn_zoo.weights import export_state, save_weights

from hf_server import FakeHub

REPO = "qsnn-zoo/test-weights"
NAME = "vgg16_cifar10_bin_calib"
FILENAME = f"{NAME}.safetensors"  # the registry's name of the file; its Hub repository calls it model.safetensors
ON_HUB = hub.HUB_WEIGHTS_NAME


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running Hub stand-in that the client reaches through HF_ENDPOINT; no local weights anywhere."""
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "no-checkpoints")
    monkeypatch.delenv("QSNN_ZOO_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "hf-cache"


def publish(monkeypatch, server: FakeHub, data: bytes, commit: str | None = None):
    """Makes NAME's registry entry point at ``data`` as if it were published (restored after the test)."""
    commit = commit or server.commit(REPO, {ON_HUB: data})
    weights = WeightsFile(FILENAME, hashlib.sha256(data).hexdigest(), len(data), REPO, commit)
    entry = dataclasses.replace(_registry.get_entry(NAME), weights=weights)
    monkeypatch.setitem(_registry._ENTRIES, NAME, entry)
    return entry


def downloaded_files(cache_dir: Path):
    """Blobs and snapshot links in a huggingface_hub cache (links may dangle)."""
    in_store = lambda p: "blobs" in p.parts or "snapshots" in p.parts  # noqa: E731
    return sorted(p.name for p in cache_dir.rglob("*") if in_store(p) and (p.is_file() or p.is_symlink()))


def test_first_download_then_cache_hit_with_the_server_stopped(fake_hub, monkeypatch, cache_dir):
    data = os.urandom(3000)
    entry = publish(monkeypatch, fake_hub, data)
    path = resolve_weights(entry, cache_dir=cache_dir)
    assert path.read_bytes() == data
    assert cache_dir in path.parents and entry.weights.revision in path.parts
    resolve_path = f"/{REPO}/resolve/{entry.weights.revision}/{ON_HUB}"
    assert fake_hub.requests == [("HEAD", resolve_path), ("GET", resolve_path)]

    fake_hub.stop()
    assert resolve_weights(entry, cache_dir=cache_dir) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights(entry, cache_dir=cache_dir) == path
    assert len(fake_hub.requests) == 2


def test_the_pinned_revision_is_downloaded_not_the_branch_head(fake_hub, monkeypatch, cache_dir):
    old, new = os.urandom(500), os.urandom(700)
    pinned = fake_hub.commit(REPO, {ON_HUB: old})
    head = fake_hub.commit(REPO, {ON_HUB: new})
    entry = publish(monkeypatch, fake_hub, old, commit=pinned)
    assert resolve_weights(entry, cache_dir=cache_dir).read_bytes() == old
    assert all(pinned in path for _, path in fake_hub.requests)

    import huggingface_hub

    on_main = huggingface_hub.hf_hub_download(
        REPO, ON_HUB, revision="main", cache_dir=cache_dir, endpoint=fake_hub.url
    )
    assert Path(on_main).read_bytes() == new and head in Path(on_main).parts


def test_wrong_bytes_of_the_right_size_are_rejected_and_removed(fake_hub, monkeypatch, cache_dir):
    data = os.urandom(4096)
    entry = publish(monkeypatch, fake_hub, data)
    fake_hub.fault = "wrong_bytes"
    with pytest.raises(HashMismatchError) as err:
        resolve_weights(entry, cache_dir=cache_dir)
    served = bytes(b ^ 0xFF for b in data)
    assert hashlib.sha256(served).hexdigest() in str(err.value)
    assert entry.weights.sha256 in str(err.value)
    assert downloaded_files(cache_dir) == [], "the bad download must leave the cache"

    fake_hub.fault = None
    assert resolve_weights(entry, cache_dir=cache_dir).read_bytes() == data


def test_a_truncated_download_fails_clearly_and_leaves_nothing(fake_hub, monkeypatch, cache_dir):
    data = os.urandom(4096)
    entry = publish(monkeypatch, fake_hub, data)
    fake_hub.fault = "truncated"
    with pytest.raises(WeightsNotFoundError, match=f"downloading {FILENAME} of {NAME}.*failed.*QSNN_ZOO_WEIGHTS"):
        resolve_weights(entry, cache_dir=cache_dir)
    assert downloaded_files(cache_dir) == []

    fake_hub.fault = None
    assert resolve_weights(entry, cache_dir=cache_dir).read_bytes() == data


def test_a_file_missing_from_the_pinned_revision(fake_hub, monkeypatch, cache_dir):
    commit = fake_hub.commit(REPO, {"README.md": b"no weights here"})
    entry = publish(monkeypatch, fake_hub, b"never served", commit=commit)
    with pytest.raises(WeightsNotFoundError, match=f"{REPO}@{commit} has no file {ON_HUB}.*weights=DIR"):
        resolve_weights(entry, cache_dir=cache_dir)


def test_a_revision_missing_from_the_hub(fake_hub, monkeypatch, cache_dir):
    fake_hub.commit(REPO, {ON_HUB: b"x"})
    entry = publish(monkeypatch, fake_hub, b"x", commit="0" * 40)
    with pytest.raises(WeightsNotFoundError, match=f"{REPO}@{'0' * 40} has no file"):
        resolve_weights(entry, cache_dir=cache_dir)


def test_offline_without_a_cached_copy_says_how_to_supply_the_file(fake_hub, monkeypatch, cache_dir):
    entry = publish(monkeypatch, fake_hub, os.urandom(100))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(entry, cache_dir=cache_dir)
    message = str(err.value)
    assert "HF_HUB_OFFLINE is set" in message and "QSNN_ZOO_WEIGHTS" in message and "weights=DIR" in message
    assert f"--revision {entry.weights.revision}" in message
    assert fake_hub.requests == []


def test_pretrained_model_downloaded_from_the_hub(fake_hub, monkeypatch, tmp_path, cache_dir):
    source = qsnn_zoo.create_model(NAME, T=2)
    data = save_weights(source, tmp_path / FILENAME).read_bytes()
    publish(monkeypatch, fake_hub, data)
    model = qsnn_zoo.create_model(NAME, pretrained=True, cache_dir=cache_dir, T=2)
    stored, expected = export_state(model)[0], export_state(source)[0]
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[k], expected[k]) for k in expected)
