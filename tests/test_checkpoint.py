"""Training checkpoints: loading one cannot run code, a damaged or missing one stops ``--resume`` with
one line and exit status 2, and a diverged run stops instead of publishing NaN weights."""
import math
import os
import random
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from qsnn_zoo.cbp import CBP
from qsnn_zoo.hub import sha256_of
from qsnn_zoo.train import checkpoint, pipelines
from qsnn_zoo.train.checkpoint import (
    CheckpointError, CheckpointWriter, checksum_path, load_checkpoint, save_checkpoint,
)

from _train_helpers import random_parent, script, tiny

NAME = "vgg16_cifar10_ter_calib"
PARENT = "vgg16_cifar10_fp32_calib"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A two-epoch CBP run stopped after its first epoch: OUT and the parent's weights."""
    root = tmp_path_factory.mktemp("stopped")
    parent = random_parent(root, PARENT)
    assert script("quantize_cbp").main(_flags(root / "out", parent, "--stop-after-epoch", "1")) == 0
    return root / "out", parent


def _flags(out, parent, *extra):
    return [NAME, *tiny(out, epochs=2), "--parent-weights", str(parent), "--period-max", "1", *extra]


def _copy_of(stopped_run, tmp_path):
    out, parent = stopped_run
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out", parent, tmp_path / "out" / NAME / "calib_cbp" / "checkpoint.pt"


class _Payload:
    """Unpickling this object creates a file: the proof that a loader ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return type(self.marker).touch, (self.marker,)


def _flip_bytes_inside_a_tensor(path, marker):
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # torch.save stores entries uncompressed: the tensor's bytes follow the 30-byte local header.
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[start:start + 64] = bytes(255 - b for b in data[start:start + 64])
    path.write_bytes(bytes(data))


def _truncate(path, marker):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickled_code_with_its_checksum(path, marker):
    torch.save({"epoch": _Payload(marker)}, path)
    checksum_path(path).write_text(f"{sha256_of(path)}  {path.name}\n")


DAMAGE = {
    "bytes flipped inside a tensor": (_flip_bytes_inside_a_tensor, "is corrupted or was replaced"),
    "truncated": (_truncate, "is corrupted or was replaced"),
    "empty": (lambda path, marker: path.write_bytes(b""), "is corrupted or was replaced"),
    "random bytes": (lambda path, marker: path.write_bytes(os.urandom(4096)), "is corrupted or was replaced"),
    "missing": (lambda path, marker: path.unlink(), "--resume was given but .* does not exist"),
    "checksum file missing": (lambda path, marker: checksum_path(path).unlink(), "checkpoint.pt.sha256 is missing"),
    "checksum file garbled": (lambda path, marker: checksum_path(path).write_text("nonsense\n"), "is not a sha256 checksum file"),
    "pickled code with a matching checksum": (_pickled_code_with_its_checksum, "is not a checkpoint this version"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_from_a_damaged_checkpoint_is_one_line_and_exit_2(stopped_run, tmp_path, capsys, damage):
    out, parent, path = _copy_of(stopped_run, tmp_path)
    marker = tmp_path / "code-ran"
    apply, message = DAMAGE[damage]
    apply(path, marker)
    capsys.readouterr()
    assert script("quantize_cbp").main(_flags(out, parent, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantize_cbp.py: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not marker.exists()
    assert not (out / NAME / f"{NAME}.safetensors").exists()


def test_a_checkpoint_of_another_model_does_not_fit_and_says_so(stopped_run, tmp_path, capsys):
    out, parent, path = _copy_of(stopped_run, tmp_path)
    state = torch.load(path, weights_only=True)
    state["model"] = {"conv.weight": torch.zeros(1)}
    torch.save(state, path)
    checksum_path(path).write_text(f"{sha256_of(path)}  {path.name}\n")
    assert script("quantize_cbp").main(_flags(out, parent, "--resume")) == 2
    err = capsys.readouterr().err
    assert "does not fit this run (RuntimeError: Error(s) in loading state_dict" in err and err.count("\n") == 1, err


def _diverging(monkeypatch, metric):
    """Makes the first epoch's ``metric`` infinite, as a learning rate far too large would: the
    command line refuses a non-finite rate, and a finite one that large overflows elsewhere first."""
    if metric == "train_loss":
        real = pipelines.train_epoch
        monkeypatch.setattr(pipelines, "train_epoch", lambda *a, **k: {**real(*a, **k), "train_loss": math.inf})
    else:
        real = CBP.stats
        monkeypatch.setattr(CBP, "stats", lambda self: {**real(self), metric: math.inf})


@pytest.mark.parametrize("metric", ["train_loss", "lambda_max"])
def test_a_diverging_run_stops_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch, metric):
    parent = random_parent(tmp_path, PARENT)
    _diverging(monkeypatch, metric)
    assert script("quantize_cbp").main([*_flags(tmp_path / "out", parent), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "training diverged in epoch 1" in err and f"{metric} = inf" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / NAME / f"{NAME}.safetensors").exists()
    assert not (tmp_path / "out" / NAME / "calib_cbp" / "checkpoint.pt").exists()


def test_random_generators_round_trip_through_a_checkpoint_loaded_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy then holds a cached Gaussian, part of its state
    save_checkpoint(path, {"epoch": 1})
    expected = (random.random(), np.random.normal(), np.random.random(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.set_rng_state(load_checkpoint(path)["rng"])
    drawn = (random.random(), np.random.normal(), np.random.random(), torch.rand(2))
    assert drawn[:3] == expected[:3] and torch.equal(drawn[3], expected[3])


@pytest.mark.parametrize("stop_at_rename", [1, 2, 3])
def test_a_save_stopped_at_any_rename_leaves_a_checkpoint_that_verifies(tmp_path, monkeypatch, stop_at_rename):
    """A save renames three files into place (checksums with both digests, the checkpoint, checksums with
    the new digest); SIGTERM may stop it at each."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert len(checksum_path(path).read_text().splitlines()) == 1
    replace, renames = os.replace, []

    def stopped_at_the_nth(src, dst):
        renames.append(dst)
        if len(renames) == stop_at_rename:
            raise SystemExit(143)  # SIGTERM, as exit_on_sigterm raises it
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stopped_at_the_nth)
    with pytest.raises(SystemExit):
        save_checkpoint(path, {"epoch": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] in (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    save_checkpoint(path, {"epoch": 4})
    assert load_checkpoint(path)["epoch"] == 4


def test_background_writer_saves_the_state_as_it_was_when_asked(tmp_path):
    """The training loop goes on changing its tensors in place while the writer serialises: the file
    holds them (and the generators) as they were at ``save``, verified as a synchronous save's is."""
    weights = {"w": torch.arange(6.0), "nested": [torch.ones(2), {"m": torch.zeros(3)}]}
    writer = CheckpointWriter(tmp_path / "checkpoint.pt")
    torch.manual_seed(5)
    writer.save({"model": weights, "epoch": 1})
    drawn_after = torch.rand(1)
    weights["w"].add_(100.0)
    weights["nested"][1]["m"].fill_(7.0)
    writer.wait()
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0)) and torch.equal(loaded["model"]["nested"][1]["m"],
                                                                                torch.zeros(3))
    checkpoint.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(1), drawn_after)
    writer.save({"epoch": 2}, wait=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2


def test_background_writer_raises_a_failed_write_in_the_training_thread(tmp_path, monkeypatch):
    writer = CheckpointWriter(tmp_path / "checkpoint.pt")
    writer.save({"epoch": 1}, wait=True)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    writer.save({"epoch": 2})
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1  # the last good one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]


def test_a_checkpoint_file_is_refused_when_loading_would_run_code(tmp_path):
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "code-ran"
    _pickled_code_with_its_checksum(path, marker)
    with pytest.raises(CheckpointError, match="not a checkpoint this version of qsnn-zoo can read"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_benchmark_times_both_writes(capsys):
    assert script("benchmark_checkpoint").main(["--parameters", "1000"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cpu: 0\.00 GB; save_checkpoint [\d.]+ s; CheckpointWriter\.save returned after [\d.]+ s, "
                     r"the file written after [\d.]+ s", out), out
