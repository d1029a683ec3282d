import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import qsnn_zoo
from qsnn_zoo import _registry, hub
from qsnn_zoo._registry import MadeFile
from qsnn_zoo.cli import main
from qsnn_zoo.hub import sha256_of

SMALL = "vgg16_cifar10_bin_calib"  # cheapest family to simulate; run at T=2 below


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    torch.manual_seed(0)
    qsnn_zoo.save_weights(qsnn_zoo.create_model(SMALL, T=2), path)
    return path


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_filters(capsys):
    names = run_json(capsys, "list", "--method", "stbp", "--quant", "ter")
    assert names == ["cnn7_cifar100_ter_stbp", "cnn7_cifar10_ter_stbp"]
    assert run_json(capsys, "list", "vgg16_*", "--dataset", "cifar100") == [
        "vgg16_cifar100_bin_calib", "vgg16_cifar100_fp32_calib", "vgg16_cifar100_ter_calib"]
    assert run_json(capsys, "list", "--pretrained") == qsnn_zoo.list_models(pretrained=True)
    assert main(["list", "alexnet_*"]) == 0
    table = capsys.readouterr().out
    assert "alexnet_cifar10_bin_tsslbp" in table and "cnn7" not in table


def test_info_json_has_every_field(capsys):
    info = run_json(capsys, "info", "cnn7_cifar10_bin_stbp")
    assert info == json.loads(json.dumps(qsnn_zoo.model_info("cnn7_cifar10_bin_stbp")))
    assert info["neuron"]["decay"] == 0.25 and info["quant"]["mode"] == "bin"


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "vgg16_cifar10_bin_calibb"]) == 2
    assert "vgg16_cifar10_bin_calib" in capsys.readouterr().err


def test_eval_on_bundled_sample(capsys, random_weights):
    result = run_json(capsys, "eval", SMALL, "--weights", str(random_weights), "--T", "2", "--limit", "16",
                      "--batch-size", "16", "--device", "cpu")
    assert {"model", "weights", "T", "data", "accuracy", "activity", "weight_memory", "notes"} <= set(result)
    assert result["weights"]["published"] is False
    assert any("not the published checkpoint" in note for note in result["notes"])
    assert result["data"]["rows"] == result["data"]["lossless_rows"] == 16
    assert result["accuracy"]["lossless"]["rows"] == result["accuracy"]["all"]["rows"] == 16
    activity = result["activity"]
    rates = activity["firing_rates"]
    assert len(rates) == 18 and all(0.0 <= r <= 1.0 for r in rates.values()) and rates["features.0.neuron"] > 0
    # features.1.conv (3x3, 64 outputs, padding 1) gives each input spike 4 to 9 targets per channel
    spikes_in = rates["features.0.neuron"] * 64 * 32 * 32 * 2
    synops = activity["synaptic_operations"]["per_layer"]["features.1.conv"]
    assert 64 * 4 * spikes_in <= synops <= 64 * 9 * spikes_in
    assert activity["dense_first_layer"]["macs_per_image"] == 2 * 64 * 32 * 32 * 27
    assert result["weight_memory"]["weight_mb"] == pytest.approx(1.87, abs=0.01)


@pytest.fixture
def no_local_weights(monkeypatch, tmp_path):
    """No weights file is found by name (checkpoints/ holds SMALL's published one)."""
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "empty")
    monkeypatch.delenv(hub.ENV_WEIGHTS_DIR, raising=False)


def test_eval_without_weights_refuses(capsys, monkeypatch, no_local_weights):
    untrained = dataclasses.replace(qsnn_zoo.get_entry(SMALL), weights=None, metrics=())
    monkeypatch.setitem(_registry._ENTRIES, SMALL, untrained)
    assert main(["eval", SMALL, "--T", "2", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "no published weights" in err and untrained.recipe in err and "--weights PATH" in err


@pytest.fixture
def made_file_entry(monkeypatch, random_weights):
    """SMALL as an entry whose measured file (random_weights) is not committed."""
    made = MadeFile(sha256_of(random_weights), random_weights.stat().st_size, "float32", "too large to commit")
    entry = dataclasses.replace(qsnn_zoo.get_entry(SMALL), weights=None, made_file=made)
    monkeypatch.setitem(_registry._ENTRIES, SMALL, entry)
    return entry


def test_eval_of_an_uncommitted_entry_without_weights_says_why(capsys, made_file_entry, no_local_weights):
    assert main(["eval", SMALL, "--T", "2", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "no committed weights file (too large to commit)" in err and made_file_entry.recipe in err


def test_eval_recognises_the_uncommitted_file_its_card_was_measured_on(capsys, tmp_path, made_file_entry, random_weights):
    result = run_json(capsys, "eval", SMALL, "--weights", str(random_weights), "--T", "2", "--limit", "2")
    assert result["weights"]["published"] and not any("not the published" in n for n in result["notes"])
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    qsnn_zoo.save_weights(qsnn_zoo.create_model(SMALL, T=2), other)
    result = run_json(capsys, "eval", SMALL, "--weights", str(other), "--T", "2", "--limit", "2")
    assert not result["weights"]["published"] and any("not the published" in n for n in result["notes"])


def test_eval_bad_data_dir_exits_2(capsys, tmp_path, random_weights):
    assert main(["eval", SMALL, "--weights", str(random_weights), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither the .npz bundle" in err and "Traceback" not in err


def test_eval_mislabelled_data_exits_2(capsys, tmp_path, random_weights):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.array([3, 42], np.uint8))
    assert main(["eval", SMALL, "--weights", str(random_weights), "--data", str(tmp_path)]) == 2
    assert "mislabelled" in capsys.readouterr().err


def test_predict_png(capsys, tmp_path, random_weights):
    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    # at T=2 no spike reaches these random weights' classifier, so every class would tie at 0
    result = run_json(capsys, "predict", SMALL, str(image), "--weights", str(random_weights))
    top = result["predictions"][0]["top"]
    assert len(top) == 5 and len({t["label"] for t in top}) == 5
    assert all(t["label"] in qsnn_zoo.data.CIFAR10_CLASSES for t in top)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)


def test_predict_unreadable_image(capsys, tmp_path, random_weights):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    assert main(["predict", SMALL, str(bad), "--weights", str(random_weights), "--T", "2"]) == 2
    assert "not an image" in capsys.readouterr().err


def test_export_calls_export_model(capsys, tmp_path, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("qsnn_zoo.export")
    fake.export_model = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "qsnn_zoo.export", fake)
    out = tmp_path / "m.nir"
    assert main(["export", SMALL, "--format", "nir", "-o", str(out), "--allow-approximate"]) == 0
    assert calls == [((SMALL, "nir", str(out)), {"weights": None, "allow_approximate": True})]

    def failing(*args, **kwargs):
        raise ValueError("the deploy format has no TSSL neuron")

    fake.export_model = failing
    assert main(["export", SMALL, "--format", "deploy", "-o", str(out)]) == 2
    assert "no TSSL neuron" in capsys.readouterr().err

    def needs_nir(*args, **kwargs):
        raise ImportError("NIR export needs the nir package: pip install qsnn-zoo[nir]")

    fake.export_model = needs_nir
    assert main(["export", SMALL, "--format", "nir", "-o", str(out)]) == 2
    assert "pip install qsnn-zoo[nir]" in capsys.readouterr().err
