"""scripts/benchmark.py runs end to end on the CPU (tiny sizes): device checks, timings and the report.

The CUDA-only parts (graph variants, the graph-vs-eager check, bf16) run on the GPU machine; here the
report must still be complete for what a CPU measures, and hold the model to the right anchors."""
import json
from pathlib import Path

import pytest

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


def test_checks_only_stops_a_plan_before_training_when_a_kernel_disagrees(tmp_path, monkeypatch):
    """``--checks-only`` runs the device checks and no model: exit 0 when all pass, 1 when one fails,
    so that a plan's training job that comes ``after`` it is skipped."""
    benchmark = script("benchmark")
    args = ["--device", "cpu", "--checks-only", "--out", str(tmp_path), "--stem", "checks"]
    assert benchmark.main(args) == 0
    report = json.loads((tmp_path / "checks.json").read_text())
    assert report["models"] == [] and "weight_step" in report["layers"] and report["neurons"]
    piece, check = benchmark.LAYER_CHECKS["quantize"]
    monkeypatch.setitem(benchmark.LAYER_CHECKS, "quantize", (piece, lambda device: {**check(device), "used_kernel": True,
                                                                                     "outputs_equal": False}))
    try:
        assert benchmark.main(args) == 1
    finally:
        benchmark.fused.set_piece_enabled(piece, True)  # the failed check switched the piece off


def test_floor_counts_every_neuron_step_of_cnn7():
    """cnn7's fast path gives its first LIF layer one step and the number of steps: its T steps still count."""
    import torch
    import qsnn_zoo
    from qsnn_zoo.models.cnn7 import CONVS, FCS

    size, per_step = 32, 0
    for _, _, channels, stride in CONVS:
        size //= stride
        per_step += channels * size * size
    per_step += sum(n_out for *_, n_out in FCS) + 10
    model = qsnn_zoo.create_model("cnn7_cifar10_fp32_stbp", T=3)
    work = script("benchmark").count_work(model, batch=4, device=torch.device("cpu"))
    assert work["neuron_steps"] == 3 * 4 * per_step


def test_each_gpu_is_held_to_its_own_anchors():
    benchmark = script("benchmark")
    assert benchmark.anchor_gpu({"gpu": "NVIDIA H200"}) == "H200"
    assert benchmark.anchor_gpu({"gpu": "NVIDIA H100 80GB HBM3"}) == "H100"
    vgg_step = benchmark.ANCHORS[("vgg16_cifar10_bin_calib", "train")]
    assert abs(benchmark.target_s(vgg_step, "H100") - 0.045) < 5e-4  # the H100 target
    assert abs(benchmark.target_s(vgg_step, "H200") - 0.436 / 8.8) < 1e-12


def test_stage_benchmark_times_whole_epochs_and_projects_the_schedule(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(script("benchmark").__file__).rsplit("/", 1)[0])  # it imports its sibling
    stages = script("benchmark_stages")
    code = stages.main(["--device", "cpu", "--quick", "--stages", "tssl_fp32", "calib_ann", "--no-spikingjelly",
                        "--no-concurrency", "--out", str(tmp_path), "--stem", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "cpu.json").read_text())
    tssl = report["stages"]["tssl_fp32"]
    assert tssl["epochs_run"] == 2 and tssl["schedule_epochs"] == 150 and len(tssl["epoch_s"]) == 2
    p = tssl["projection"]
    expected = tssl["epoch_s"][0] + 149 * tssl["epoch_s"][1] + tssl["wall_s"] - sum(tssl["epoch_s"])
    assert abs(p["projected_s"] - expected) < 1e-9 and p["step_s"] > 0
    assert report["stages"]["calib_ann"]["convert_s"] > 0  # the ANN stage's time includes its conversion
    assert {t["target"] for t in report["targets"]} == {"tssl_fp32", "calib_ann"}
    assert "| tssl_fp32 | alexnet_cifar10_fp32_tsslbp |" in (tmp_path / "cpu.md").read_text()


def test_stage_profile_lists_the_loops_work_beside_its_wall_time(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(script("benchmark").__file__).rsplit("/", 1)[0])
    stages = script("benchmark_stages")
    code = stages.main(["--device", "cpu", "--quick", "--stages", "tssl_fp32", "--profile", "--no-spikingjelly",
                        "--no-concurrency", "--out", str(tmp_path), "--stem", "cpu"])
    assert code == 0
    profile = json.loads((tmp_path / "cpu.json").read_text())["stages"]["tssl_fp32"]["profile"]
    assert 0 < profile["kernel_s"] and profile["wall_s"] > 0 and "aten::" in profile["table"]
    assert "Profiled tssl_fp32" in (tmp_path / "cpu.md").read_text()


def test_spikingjelly_neurons_replace_ours_with_the_same_dynamics():
    pytest = __import__("pytest")
    pytest.importorskip("spikingjelly")
    import torch
    from qsnn_zoo.layers.neurons import IFNeuron, LIFNeuron

    stages = script("benchmark_stages")
    x = torch.randn(6, 4, 50)
    for ours in (IFNeuron(T=6, threshold=1.0), LIFNeuron(threshold=0.5, decay=0.25, lens=0.5)):
        holder = torch.nn.Sequential(ours)
        expected = ours(x)
        theirs = stages.with_spikingjelly_neurons(holder)[0]
        assert isinstance(theirs, stages.SpikingJellyNeuron)
        assert torch.equal(theirs(x), expected) and torch.equal(theirs(x), expected)  # no state kept between calls
    # the LIF neuron, as cnn7's fast path calls its first layer: one step and its number of steps
    assert torch.equal(theirs(x[0], steps=6), ours(x[0], steps=6))


def test_stbp_trio_is_projected_with_its_children_side_by_side():
    stages = script("benchmark_stages")
    report = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "stages_h200_weight_step.json").read_text())
    measured = report["stages"]
    speedup = report["concurrency"]["aggregate_speedup"]
    rows = [r for r in stages.targets(measured, speedup) if r["target"] == "stbp"]
    parent, child = (measured[s]["projection"]["projected_s"] for s in ("stbp_fp32", "stbp_cbp"))
    expected = [parent + 2 * child, parent + 2 * child / speedup]
    assert all(abs(r["projected_min"] * 60 - e) < 1e-9 for r, e in zip(rows, expected)) and len(rows) == 2
    assert "side by side" in rows[1]["what"] and len(stages.targets(measured)) == len(stages.targets(measured, speedup)) - 1


def test_stages_side_by_side_train_the_weights_they_train_alone(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(script("benchmark").__file__).rsplit("/", 1)[0])
    stages = script("benchmark_stages")
    pair = "alexnet_cifar10_bin_tsslbp,alexnet_cifar10_ter_tsslbp"
    code = stages.main(["--device", "cpu", "--quick", "--stages", "tssl_cbp", "--no-spikingjelly", "--concurrent", pair,
                        "--out", str(tmp_path), "--stem", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "cpu.json").read_text())
    (group,) = report["concurrency"]
    assert group["jobs"] == pair.split(",") and group["one_after_another_s"] > 0 and group["together_s"] > 0
    assert all(group["weights_equal_alone"].values()), group
    assert stages.children_speedup(report["concurrency"]) is None  # not the cnn7 children: no trio row
    assert "2 stages side by side (alexnet_cifar10_bin_tsslbp" in (tmp_path / "cpu.md").read_text()


def test_neuron_launch_sweep_times_each_launch_beside_the_default(tmp_path):
    benchmark = script("benchmark")
    code = benchmark.main(["--device", "cpu", "--quick", "--models", "alexnet_cifar10_bin_tsslbp", "--neuron-launch",
                           "128x1", "--out", str(tmp_path), "--stem", "launch"])
    assert code == 0
    sweep = json.loads((tmp_path / "launch.json").read_text())["models"][0]["neuron_launch"]
    assert list(sweep["launches"]) == ["1024x8", "128x1"]
    assert all(r["s"] > 0 for r in sweep["launches"].values())
    # No kernel runs on the CPU, so the bits are reported as not checked rather than as equal; the
    # interpreter test in test_fused.py checks them.
    assert all(r["kernels_equal"] is None for r in sweep["launches"].values())
    assert benchmark.fused.neuron_launch() == benchmark.fused.DEFAULT_NEURON_LAUNCH  # restored after the sweep
    text = (tmp_path / "launch.md").read_text()
    assert "| alexnet_cifar10_bin_tsslbp | fast fp32 |" in text and "Bits not checked" in text


def test_neuron_launch_that_triton_cannot_take_is_refused_at_parse_time(capsys):
    benchmark = script("benchmark")
    for bad in ("1000x4", "1024", "axb"):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(["--device", "cpu", "--neuron-launch", bad])
        assert exit_info.value.code == 2
        assert f"--neuron-launch '{bad}'" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["--device", "foo"], "argument --device: 'foo' is not a torch device"),
    (["--models", "nosuch", "--time-budget", "1"], "Unknown model 'nosuch'"),
    (["--out", "{tmp}/afile/x"], "afile is a file"),
    (["--out", "/proc/qsnn-zoo-bench"], "cannot make this folder"),
    (["--runs", "-5"], "argument --runs: -5 is not positive"),
    (["--warmup", "-1"], "argument --warmup: -1 is negative"),
    (["--infer-batches", "0"], "argument --infer-batches: 0 is not positive"),
    (["--time-budget", "0"], "argument --time-budget: 0 is not positive"),
])
def test_bad_arguments_are_refused_before_any_device_check(tmp_path, capsys, monkeypatch, args, fragment):
    if "/proc/" in args[-1] and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no folder can be made")
    benchmark = script("benchmark")
    monkeypatch.setattr(benchmark, "check_neurons", lambda device: pytest.fail("the device checks ran"))
    (tmp_path / "afile").write_text("")
    argv = ["--device", "cpu", "--out", str(tmp_path / "out"), *(a.format(tmp=tmp_path) for a in args)]
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and fragment in err.strip().splitlines()[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no report folder made


def test_neuron_launch_error_gives_its_example_once(capsys):
    with pytest.raises(SystemExit):
        script("benchmark").main(["--device", "cpu", "--neuron-launch", "3x3"])
    assert capsys.readouterr().err.count("e.g. 1024x8") == 1
