"""Each pipeline end to end on a few images with tiny T; the weights load with create_model."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry, get_entry, hub
from qsnn_zoo.layers.quant import quantized_modules
from qsnn_zoo.train.metrics_log import read_metrics

from _train_helpers import script, tiny


def _check_outputs(out, name, stage):
    stage_dir = out / name / stage
    records = read_metrics(stage_dir / "metrics.jsonl")
    assert records and records[-1]["epoch"] == len(records) - 1
    assert (stage_dir / "curves.png").stat().st_size > 0
    assert (stage_dir / "checkpoint.pt").is_file()
    summary = json.loads((out / name / "summary.json").read_text())
    assert summary["name"] == name and summary["test"]["rows_all"] == 16
    if summary["stage"] == stage:
        # the stage that wrote the summary ran at least its last epoch in that process (a resumed run counts
        # from its resume); a calibration parent's summary comes from the conversion, which trains no epoch
        assert summary["process_seconds"] >= records[-1]["seconds"]
    return records, summary


def _check_quantized(model):
    for _, layer in quantized_modules(model):
        levels = torch.tensor({"bin": [-1.0, 1.0], "ter": [-1.0, 0.0, 1.0]}[layer.quant]) * layer.scale
        assert torch.isin(layer.weight, levels).all()


def _unpublish(monkeypatch, tmp_path, name):
    """Makes ``name`` look unpublished, so reproduce.py must train it first."""
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "no-checkpoints")
    monkeypatch.setitem(_registry._ENTRIES, name, dataclasses.replace(get_entry(name), weights=None))
    monkeypatch.delenv("QSNN_ZOO_WEIGHTS", raising=False)


def test_snn_calibration_pipeline_reproduces_parent_then_cbp(tmp_path, monkeypatch):
    _unpublish(monkeypatch, tmp_path, "vgg16_cifar10_fp32_calib")
    # "--calib none" keeps the CPU test short (threshold search by max); C2's tests cover light calibration.
    args = ["vgg16_cifar10_bin_calib", *tiny(tmp_path, epochs=2), "--calib", "none", "--calib-batches", "1"]
    assert script("reproduce").main([*args, "--stop-after-epoch", "1"]) == 0
    # --resume continues the parent's stage; the entry's own stage has no checkpoint and starts once it is done.
    assert script("reproduce").main([*args, "--resume"]) == 0
    _, parent_summary = _check_outputs(tmp_path, "vgg16_cifar10_fp32_calib", "calib_ann")
    assert parent_summary["stage"] == "calib_convert" and parent_summary["process_seconds"] > 0
    records, summary = _check_outputs(tmp_path, "vgg16_cifar10_bin_calib", "calib_cbp")
    assert {"lagsum", "train_loss", "cfs", "g", "off_level", "train_top1", "test_top1_lossless"} <= set(records[0])
    assert summary["recipe"]["lambda_lr"] == 1e-3 and summary["recipe"]["stage"] == "calib_cbp"
    fp32 = qsnn_zoo.create_model("vgg16_cifar10_fp32_calib", pretrained=True, weights=tmp_path / "vgg16_cifar10_fp32_calib")
    assert fp32.mode == "snn" and float(fp32.features[0].neuron.threshold) != 1.0
    # The entry is published, so a file found by name must be the published one; this is our own file.
    model = qsnn_zoo.create_model("vgg16_cifar10_bin_calib", pretrained=True, weights=tmp_path / "vgg16_cifar10_bin_calib")
    _check_quantized(model)
    assert all(float(n.threshold) == 1.0 for _, n in model.spiking_neurons())


def test_tsslbp_pipeline(tmp_path):
    flags = tiny(tmp_path, images=20, batch=10, T=2)
    assert script("train_fp32").main(["alexnet_cifar10_fp32_tsslbp", *flags]) == 0
    assert script("quantize_cbp").main(["alexnet_cifar10_fp32_tsslbp", "--quant", "ter", *flags]) == 0
    records, summary = _check_outputs(tmp_path, "alexnet_cifar10_ter_tsslbp", "tssl_cbp")
    assert summary["recipe"]["lambda_optimizer"] == "adamw" and summary["recipe"]["train_layers"] == "quantized"
    parent = qsnn_zoo.create_model("alexnet_cifar10_fp32_tsslbp", weights=tmp_path / "alexnet_cifar10_fp32_tsslbp")
    model = qsnn_zoo.create_model("alexnet_cifar10_ter_tsslbp", weights=tmp_path / "alexnet_cifar10_ter_tsslbp")
    _check_quantized(model)
    # conv1 and fc3 are frozen in TSSL-BP's CBP (docs/method.md §C.5): they leave the run as they came in
    assert torch.equal(model.conv1.weight, parent.conv1.weight) and torch.equal(model.fc3.weight, parent.fc3.weight)


def test_stbp_pipeline(tmp_path, monkeypatch):
    from qsnn_zoo.layers import fused
    from qsnn_zoo.train import pipelines

    flags = tiny(tmp_path, images=10, batch=10)
    assert script("train_fp32").main(["cnn7_cifar10_fp32_stbp", *flags]) == 0
    off_while_fitting = []
    fit = pipelines.fit

    def fit_noting_the_switches(*args, **kwargs):
        off_while_fitting.append(fused.disabled_pieces())
        return fit(*args, **kwargs)

    monkeypatch.setattr(pipelines, "fit", fit_noting_the_switches)
    assert script("quantize_cbp").main(["cnn7_cifar10_bin_stbp", *flags, "--fused-off", "lif_bias,pool"]) == 0
    assert off_while_fitting == [{"lif_bias", "pool"}]  # off for the stage ...
    assert fused.disabled_pieces() == frozenset()  # ... and back on after it
    _, summary = _check_outputs(tmp_path, "cnn7_cifar10_bin_stbp", "stbp_cbp")
    assert summary["recipe"]["grad_clip"] == "value" and summary["recipe"]["lr"] == 5e-3
    assert summary["options"]["fused_off"] == ["lif_bias", "pool"]
    _check_quantized(qsnn_zoo.create_model("cnn7_cifar10_bin_stbp", weights=tmp_path / "cnn7_cifar10_bin_stbp"))


def test_fast_backend_trains_in_channels_last(tmp_path, monkeypatch):
    """The fast backend trains with weights and batches in channels_last (pipelines.memory_format)."""
    from qsnn_zoo.train import pipelines

    seen = {}
    fit = pipelines.fit

    def watching_fit(run, model, data, cbp_enabled):
        loader = pipelines.train_loader(run, data.train)
        loader.set_epoch(0)
        seen["batch"] = next(iter(loader))[0]
        seen["model"] = model
        return fit(run, model, data, cbp_enabled)

    monkeypatch.setattr(pipelines, "fit", watching_fit)
    flags = [*tiny(tmp_path, images=10, batch=10), "--backend", "fast"]
    assert script("train_fp32").main(["cnn7_cifar10_fp32_stbp", *flags]) == 0
    convs = [m.weight for m in seen["model"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    assert seen["batch"].is_contiguous(memory_format=torch.channels_last)
    _check_outputs(tmp_path, "cnn7_cifar10_fp32_stbp", "stbp_fp32")
    published = qsnn_zoo.create_model("cnn7_cifar10_fp32_stbp", weights=tmp_path / "cnn7_cifar10_fp32_stbp")
    assert all(torch.equal(published.state_dict()[k], v.cpu()) for k, v in seen["model"].state_dict().items())


@pytest.mark.parametrize("name, args, message", [
    ("quantize_cbp", ["cnn7_cifar10_fp32_stbp", "--quant", "bin"], "reproduce.py cnn7_cifar10_fp32_stbp"),
    ("reproduce", ["cnn7_cifar10_bin_stbpp"], "Closest names: cnn7_cifar10_bin_stbp"),
    ("train_fp32", ["cnn7_cifar10_fp32_stbp", "--data", "no-such-dir"], "data directory no-such-dir does not exist"),
    ("train_fp32", ["cnn7_cifar10_fp32_stbp", "--data", __file__], "is a file, not a directory"),
    ("train_fp32", ["cnn7_cifar10_fp32_stbp", "--fused-off", "pooling"], "no fused kernel 'pooling'; choose from"),
])
def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys, name, args, message):
    flags = [*tiny(tmp_path), *args]  # the later --data wins
    try:
        code = script(name).main(flags)
    except SystemExit as exit_:  # refused by argparse while parsing: its usage line, then the error
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    # argparse names the program after sys.argv[0] (pytest's, in this process); the scripts' own handler after the script
    assert error.startswith((f"{name}.py: error: ", f"{Path(sys.argv[0]).name}: error: ")) and message in error, error
