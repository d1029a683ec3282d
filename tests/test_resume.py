"""A run stopped after an epoch and resumed ends with the uninterrupted run's weights and log."""
import json
import signal
import subprocess
import sys

import pytest

import torch

from qsnn_zoo.weights import read_state
from qsnn_zoo.train.metrics_log import read_metrics

from _train_helpers import random_parent, script, tiny

NAME = "vgg16_cifar10_ter_calib"


def _run(out, parent, *extra):
    flags = [NAME, *tiny(out, epochs=2), "--parent-weights", str(parent), "--period-max", "1", *extra]
    assert script("quantize_cbp").main(flags) == 0


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return random_parent(tmp_path_factory.mktemp("parent"), "vgg16_cifar10_fp32_calib")


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, parent):
    """OUT of the uninterrupted two-epoch run, which the tests below compare their runs with."""
    out = tmp_path_factory.mktemp("whole")
    _run(out, parent)
    return out


def test_interrupted_cbp_run_resumes_to_the_same_result(tmp_path, parent, whole_run):
    _run(tmp_path / "split", parent, "--stop-after-epoch", "1")
    assert not (tmp_path / "split" / NAME / f"{NAME}.safetensors").exists()
    _run(tmp_path / "split", parent, "--resume")
    whole, split = whole_run / NAME, tmp_path / "split" / NAME
    (state, meta), (resumed, resumed_meta) = (read_state(d / f"{NAME}.safetensors") for d in (whole, split))
    assert meta == resumed_meta and state.keys() == resumed.keys()
    assert all(torch.equal(state[k], resumed[k]) for k in state)
    records = _without_timing(read_metrics(split / "calib_cbp" / "metrics.jsonl"))
    assert records == _without_timing(read_metrics(whole / "calib_cbp" / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [0, 1] and records[-1]["g"] == 3  # P_max 1: g advances each epoch
    assert json.loads((split / "summary.json").read_text())["test"] == json.loads((whole / "summary.json").read_text())["test"]


def test_time_budget_stops_at_an_epoch_boundary_and_resumes_to_the_same_result(tmp_path, parent, whole_run):
    """A budget that the first epoch already uses up: the stage stops after it with a checkpoint and
    no weights file, and --resume then ends with the uninterrupted run's weights."""
    _run(tmp_path / "split", parent, "--time-budget", "1e-6", "--checkpoint-seconds", "1e9")
    split = tmp_path / "split" / NAME
    assert not (split / f"{NAME}.safetensors").exists()
    assert [r["epoch"] for r in read_metrics(split / "calib_cbp" / "metrics.jsonl")] == [0]
    _run(tmp_path / "split", parent, "--resume")
    (state, _), (resumed, _) = (read_state(d / NAME / f"{NAME}.safetensors") for d in (whole_run, tmp_path / "split"))
    assert all(torch.equal(state[k], resumed[k]) for k in state)
    records = read_metrics(split / "calib_cbp" / "metrics.jsonl")
    assert {"code_flips", "code_flips_last", "firing_rates"} <= set(records[-1])
    assert 0 <= records[-1]["code_flips_last"] <= 1 and len(records[-1]["firing_rates"]) == 18  # 13 convs + 5 pools


class _Killed(BaseException):
    """The process ending right after a checkpoint reached the disk (not an Exception: nothing catches it)."""


def test_run_killed_after_a_background_checkpoint_resumes_to_the_same_result(tmp_path, parent, whole_run, monkeypatch):
    """The checkpoint written in the background (the training state copied to the CPU: optimizer,
    schedule, CBP's multipliers, generators) resumes as the synchronous one does: the first epoch's is
    written by the writer's thread, the run dies once it is on disk, and --resume ends with the
    uninterrupted run's weights and log."""
    from qsnn_zoo.train.checkpoint import CheckpointWriter

    save = CheckpointWriter.save
    backgrounds = []

    def save_then_die(self, state, wait=False):
        save(self, state, wait=wait)
        if not wait:
            backgrounds.append(state["epoch"])
            self.wait()
            raise _Killed

    monkeypatch.setattr(CheckpointWriter, "save", save_then_die)
    with pytest.raises(_Killed):
        _run(tmp_path / "split", parent, "--checkpoint-seconds", "0")
    monkeypatch.undo()
    assert backgrounds == [1]  # written after the first epoch, in the background
    _run(tmp_path / "split", parent, "--resume")
    whole, split = whole_run / NAME, tmp_path / "split" / NAME
    (state, _), (resumed, _) = (read_state(d / f"{NAME}.safetensors") for d in (whole, split))
    assert state.keys() == resumed.keys() and all(torch.equal(state[k], resumed[k]) for k in state)
    records = _without_timing(read_metrics(split / "calib_cbp" / "metrics.jsonl"))
    assert records == _without_timing(read_metrics(whole / "calib_cbp" / "metrics.jsonl"))


def test_constant_lr_run_stopped_early_finishes_as_the_shorter_run(tmp_path, parent):
    """How a GPU run is cut short when its time is up: stop a 3-epoch CBP run after epoch 1, then
    ``--epochs 1 --resume`` publishes exactly what ``--epochs 1`` would have (CBP's lr is constant and
    its g schedule does not look at the epoch count)."""
    short = [NAME, *tiny(tmp_path / "short", epochs=1), "--parent-weights", str(parent), "--period-max", "1"]
    assert script("quantize_cbp").main(short) == 0
    cut = [NAME, *tiny(tmp_path / "cut", epochs=3), "--parent-weights", str(parent), "--period-max", "1"]
    assert script("quantize_cbp").main([*cut, "--stop-after-epoch", "1"]) == 0
    assert script("quantize_cbp").main([*cut, "--epochs", "1", "--resume"]) == 0
    (state, meta), (finished, finished_meta) = (
        read_state(tmp_path / d / NAME / f"{NAME}.safetensors") for d in ("short", "cut")
    )
    assert meta == finished_meta
    assert all(torch.equal(state[k], finished[k]) for k in state)


def test_deterministic_flag_switches_torch_to_deterministic_algorithms(tmp_path, monkeypatch, parent):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        # The switch happens before training starts; one epoch of the two is enough to pass it.
        _run(tmp_path / "run", parent, "--deterministic", "--stop-after-epoch", "1")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


def test_same_command_twice_writes_the_same_file(tmp_path, parent, whole_run):
    from qsnn_zoo.hub import sha256_of

    _run(tmp_path / "second", parent)
    first, second = (sha256_of(out / NAME / f"{NAME}.safetensors") for out in (whole_run, tmp_path / "second"))
    assert first == second


SIGTERM_DURING_SAVE = """
import os, signal, sys, time
from pathlib import Path
from qsnn_zoo.train.runner import exit_on_sigterm
from qsnn_zoo.weights import atomic_write

exit_on_sigterm()

def write(tmp):
    Path(tmp).write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_sigterm_during_a_checkpoint_save_leaves_the_previous_checkpoint_alone(tmp_path):
    # Runs are ended early with kill (docs/reproduce.md); a run killed while saving must neither replace
    # its last checkpoint with half a file nor leave the temp file behind (Python's default for
    # SIGTERM, without exit_on_sigterm, ends the process before the atomic write can remove it).
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"last whole checkpoint")
    done = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, str(checkpoint)], timeout=120)
    assert checkpoint.read_bytes() == b"last whole checkpoint"
    assert done.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
