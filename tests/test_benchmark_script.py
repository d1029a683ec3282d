"""scripts/benchmark.py runs end to end on the CPU (tiny sizes): device checks, timings and the report.

The CUDA-only parts (graph variants, the graph-vs-eager check, bf16) run on the GPU machine; here the
report must still be complete for what a CPU measures, and hold the model to the right anchors."""
import json

from _train_helpers import script


def test_quick_cpu_run_writes_a_complete_report(tmp_path):
    benchmark = script("benchmark")
    code = benchmark.main(["--device", "cpu", "--quick", "--models", "vgg16_cifar10_bin_calib", "--out", str(tmp_path),
                           "--stem", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "cpu.json").read_text())
    model = report["models"][0]
    assert model["check"]["ok"] and not model["errors"]
    assert set(model["train"]) == {"reference", "fast"} and all(v["s"] > 0 for v in model["train"].values())
    assert all(r["ok"] for r in report["layers"].values()) and "quantize" in report["layers"]
    text = (tmp_path / "cpu.md").read_text()
    assert "## Issue #4 anchors, H100" in text and "| vgg16_cifar10_bin_calib train | 398.00 | 8.8x | 45.23 |" in text


def test_each_gpu_is_held_to_its_own_anchors():
    benchmark = script("benchmark")
    assert benchmark.anchor_gpu({"gpu": "NVIDIA H200"}) == "H200"
    assert benchmark.anchor_gpu({"gpu": "NVIDIA H100 80GB HBM3"}) == "H100"
    vgg_step = benchmark.ANCHORS[("vgg16_cifar10_bin_calib", "train")]
    assert abs(benchmark.target_s(vgg_step, "H100") - 0.045) < 5e-4  # the H100 target
    assert abs(benchmark.target_s(vgg_step, "H200") - 0.436 / 8.8) < 1e-12
