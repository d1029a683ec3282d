import numpy as np
import pytest
import torch
from torch import nn

from qsnn_zoo.data import ImageSet
from qsnn_zoo.metrics import accuracy, dense_macs, entry_weight_memory, metric_records, synaptic_operations


def test_synops_conv_counts_each_spike_fan_out_with_borders():
    conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
    counts = torch.zeros(1, 1, 3, 3)
    counts[0, 0, 0, 0] = 1  # a corner pixel reaches 2x2 outputs per channel
    counts[0, 0, 1, 1] = 3  # the centre reaches all 3x3 outputs, three spikes
    assert synaptic_operations(conv, counts) == 2 * (4 + 3 * 9)


def test_synops_strided_and_grouped_conv():
    strided = nn.Conv2d(1, 1, kernel_size=3, stride=2, padding=1)
    counts = torch.zeros(1, 1, 4, 4)
    counts[0, 0, 1, 1] = 1  # inside the windows of outputs (0,0), (0,1), (1,0), (1,1)
    counts[0, 0, 3, 3] = 1  # only in the window of output (1,1)
    assert synaptic_operations(strided, counts) == 5
    pool = nn.Conv2d(2, 2, kernel_size=2, stride=2, groups=2, bias=False)
    assert synaptic_operations(pool, torch.ones(1, 2, 4, 4)) == 32  # one target per spike


def test_synops_linear_and_dense_macs():
    fc = nn.Linear(4, 3)
    assert synaptic_operations(fc, torch.tensor([[0.0, 2.0, 0.0, 1.0]])) == 9
    assert dense_macs(nn.Conv2d(3, 8, 3, padding=1), (8, 5, 5)) == 8 * 25 * 27
    assert dense_macs(fc, (3,)) == 12


# docs/method.md §A.3's derived weight memory (weights only, MB = 1e6 bytes): (name, binary, ternary at 2 bits, fp32).
SPEC_A = [
    ("vgg16_cifar10", 1.87, 3.71, 58.86),
    ("cnn7_cifar10", 7.80, 15.56, 248.42),
    ("alexnet_cifar10", 2.69, 5.34, 84.63),
]


@pytest.mark.parametrize("stem, binary, ternary, fp32", SPEC_A)
def test_weight_memory_matches_spec_a(stem, binary, ternary, fp32):
    method = {"vgg16": "calib", "cnn7": "stbp", "alexnet": "tsslbp"}[stem.split("_")[0]]
    bin_mem = entry_weight_memory(f"{stem}_bin_{method}")
    ter_mem = entry_weight_memory(f"{stem}_ter_{method}")
    fp_mem = entry_weight_memory(f"{stem}_fp32_{method}")
    assert bin_mem["weight_mb"] == pytest.approx(binary, abs=0.01)
    assert ter_mem["weight_mb_2bit_ternary"] == pytest.approx(ternary, abs=0.01)
    assert fp_mem["weight_mb"] == pytest.approx(fp32, abs=0.01)
    assert bin_mem["fp32_weight_mb"] == pytest.approx(fp32, abs=0.01)
    # base-3 packing: 1.6 bits a ternary weight
    assert ter_mem["weight_bits"] == pytest.approx(
        ter_mem["quantized_weights"] * 1.6 + ter_mem["full_precision_weights"] * 32
    )


def test_accuracy_separates_lossless_rows():
    data = ImageSet(np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 3]), np.array([True, True, False, False]))
    acc = accuracy(np.array([0, 9, 2, 9]), data)
    assert acc["all"] == {"top1": 50.0, "correct": 2, "rows": 4}
    assert acc["lossless"] == {"top1": 50.0, "correct": 1, "rows": 2}
    records = metric_records(acc, "cifar10", "runs/x/eval.json")
    assert [r["data"] for r in records] == ["cifar10 test, lossless rows", "cifar10 test, all rows"]
    unlabelled = accuracy(np.array([0, 1, 2, 3]), ImageSet(data.images, data.labels))
    assert unlabelled["lossless"] is None and unlabelled["all"]["top1"] == 100.0
