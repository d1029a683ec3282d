"""Two CPU processes under torchrun (gloo) finish a tiny CBP run with identical replicas."""
import json
import subprocess
import sys

from _train_helpers import REPO, random_parent, tiny



def test_two_gloo_processes_train_and_agree(tmp_path):
    parent = random_parent(tmp_path, "vgg16_cifar10_fp32_calib")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
        str(REPO / "scripts" / "quantize_cbp.py"), "vgg16_cifar10_bin_calib", *tiny(tmp_path, epochs=2),
        "--parent-weights", str(parent),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_python_env(),
                                 "TMPDIR": str(tmp_path)})  # torchrun's log folders go with tmp_path
    assert result.returncode == 0, result.stderr[-3000:]
    # The run ends with check_replicas_agree, which raises if the two ranks' weights differ.
    summary = json.loads((tmp_path / "vgg16_cifar10_bin_calib" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_two_gloo_processes_stop_together_at_the_time_budget(tmp_path):
    """Under torchrun, --time-budget stops both ranks after the same epoch, with a checkpoint and no
    weights file. (Ranks that disagree, which this budget cannot provoke, are why the stop is
    reduced across ranks: one rank would otherwise wait in the next epoch's collectives.)"""
    parent = random_parent(tmp_path, "vgg16_cifar10_fp32_calib")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29532",
        str(REPO / "scripts" / "quantize_cbp.py"), "vgg16_cifar10_bin_calib", *tiny(tmp_path, epochs=3),
        "--parent-weights", str(parent), "--time-budget", "1e-6",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_python_env(),
                                 "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "vgg16_cifar10_bin_calib" / "calib_cbp"
    assert (stage / "checkpoint.pt").is_file() and not (tmp_path / "vgg16_cifar10_bin_calib" / "summary.json").exists()
    assert [json.loads(line)["epoch"] for line in (stage / "metrics.jsonl").read_text().splitlines()] == [0]


def _python_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
