"""A run stopped after an epoch and resumed ends with the uninterrupted run's weights and log."""
import json

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
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_interrupted_cbp_run_resumes_to_the_same_result(tmp_path):
    parent = random_parent(tmp_path, "vgg16_cifar10_fp32_calib")
    _run(tmp_path / "whole", parent)
    _run(tmp_path / "split", parent, "--stop-after-epoch", "1")
    assert not (tmp_path / "split" / NAME / f"{NAME}.safetensors").exists()
    _run(tmp_path / "split", parent, "--resume")
    whole, split = (tmp_path / d / NAME for d in ("whole", "split"))
    (state, meta), (resumed, resumed_meta) = (read_state(d / f"{NAME}.safetensors") for d in (whole, split))
    assert meta == resumed_meta and state.keys() == resumed.keys()
    assert all(torch.equal(state[k], resumed[k]) for k in state)
    records = _without_timing(read_metrics(split / "calib_cbp" / "metrics.jsonl"))
    assert records == _without_timing(read_metrics(whole / "calib_cbp" / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [0, 1] and records[-1]["g"] == 3  # P_max 1: g advances each epoch
    assert json.loads((split / "summary.json").read_text())["test"] == json.loads((whole / "summary.json").read_text())["test"]
