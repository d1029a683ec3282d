"""scripts/diagnose_conversion.py: its layer-by-layer pass is the model's own ANN and SNN, its statistics
follow their definitions, and a CPU run writes, resumes and refuses as its docstring says (tiny sizes)."""
import json

import pytest
import torch

from _train_helpers import script
from qsnn_zoo.models.vgg import SpikingVGG


@pytest.fixture(scope="module")
def diagnose():
    return script("diagnose_conversion")


def test_the_layer_by_layer_pass_is_the_models_ann_and_snn(diagnose):
    torch.manual_seed(0)
    model = SpikingVGG(T=4, cfg=(4, 4, "M", 8, "M"), dropout=0.0).double().eval()
    for layer in model.features:
        layer.neuron.threshold.fill_(0.5)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    stats = [diagnose.LayerStats() for _ in model.features]
    ann, snn = diagnose.compare_batch(model, x, stats)
    torch.testing.assert_close(ann, model.forward_ann(x))
    torch.testing.assert_close(snn, model(x))
    # The first layer's current is the same at every step, so its IF neuron outputs q(a) exactly.
    first = stats[0].summary(0.5)
    assert first["mean_snn"] > 0
    assert first["mae"] == pytest.approx(first["ideal_mae"]) and first["silent"] == first["ideal_silent"]


def test_layer_statistics_follow_their_definitions(diagnose):
    # Two images of three one-pixel channels, V = 1, T = 4, added one image at a time.
    a = torch.tensor([[0.0, 1.6, 0.0], [0.3, 0.9, 0.0]]).view(2, 3, 1, 1)
    s = torch.tensor([[0.0, 0.75, 0.25], [0.25, 1.0, 0.0]]).view(2, 3, 1, 1)
    stats = diagnose.LayerStats()
    for i in range(2):
        stats.add(a[i:i + 1], s[i:i + 1], threshold=1.0, T=4)
    m = stats.summary(1.0)
    # q(a) = clamp(floor(4a + 1/2), 0, 4) / 4 = [[0, 1, 0], [0.25, 1, 0]]
    expected = {
        "max_ann_over_threshold": 1.6, "mean_ann": 2.8 / 6, "mean_snn": 2.25 / 6,
        "mae": 1.25 / 6, "ideal_mae": 0.75 / 6, "clip_mae": 0.6 / 6, "drift": -0.55 / 2.8,
        "channel_error": (0.05 + 0.75 + 0.25) / 2.8, "clipped": 1 / 6, "clip_mass": 0.6 / 2.8,
        "silent": 2 / 6, "ideal_silent": 3 / 6, "dead": 0.0, "dead_ann": 1 / 3,
    }
    assert {k: m[k] for k in expected} == pytest.approx(expected)


def test_a_cpu_run_writes_resumes_and_refuses_other_settings(diagnose, synthetic_cifar_bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    common = ["vgg16_cifar10_fp32_calib", "--pretrained", "--data", str(synthetic_cifar_bundle), "--out", str(out),
              "--steps", "1", "--train-batches", "1", "--batch-size", "4", "--device", "cpu"]
    assert diagnose.main([*common, "--images", "4", "--variants", "light", "potential"]) == 0
    report = json.loads((out / "diagnosis.json").read_text())
    assert list(report["results"]) == ["light@1", "potential@1"]
    light, potential = report["results"]["light@1"], report["results"]["potential@1"]
    assert light["test"]["rows"] == 4 and light["train"]["rows"] == 128
    assert len(light["test"]["layers"]) == 18
    assert light["test"]["ann_top1"] == potential["test"]["ann_top1"]
    assert "| potential | 1 |" in (out / "diagnosis.md").read_text()

    def no_evaluation(*args):
        raise AssertionError("a finished variant was evaluated again")

    monkeypatch.setattr(diagnose, "evaluate", no_evaluation)
    assert diagnose.main([*common, "--images", "4", "--variants", "potential"]) == 0
    assert diagnose.main([*common, "--images", "8"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert json.loads((out / "diagnosis.json").read_text()) == report
    assert diagnose.main(["vgg16_cifar10_bin_calib", *common[1:]]) == 2
    assert "not an fp32 SNN-Calibration entry" in capsys.readouterr().err
