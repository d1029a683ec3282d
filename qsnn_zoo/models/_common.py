"""Facts shared by the three model families' registry tables."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
NORMALIZATION: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "cifar10": CIFAR10_STATS,
    "cifar100": CIFAR100_STATS,
}

BITS_WORD = {"bin": "binary {-s, +s}", "ter": "ternary {-s, 0, +s}"}

_CBP_CIFAR10 = "CBP-QSNN (abstract): accuracy drop from the FP32 SNN below 1 point in the worst case on CIFAR-10."
_NOT_PUBLISHED = "No published number for this configuration."

CALIB_CLAIMS = {
    ("cifar10", "fp32"): "SNN-Calibration README, VGG16 with BN: ANN 95.76 %, light-calibrated SNN (T=32) "
    "93.30 +- 0.08 %. The BN-free variant that CBP-QSNN uses has no published number.",
    ("cifar10", "bin"): _CBP_CIFAR10,
    ("cifar10", "ter"): _CBP_CIFAR10,
    ("cifar100", "fp32"): "SNN-Calibration README, VGG16 with BN: ANN 77.98 %, light-calibrated SNN (T=32) "
    "65.26 +- 0.99 %.",
    ("cifar100", "bin"): "CBP-QSNN (abstract): 3.72 points more accurate than its FP32 SNN, at 3.5 % of its "
    "weight memory.",
    ("cifar100", "ter"): _NOT_PUBLISHED,
}
STBP_CLAIMS = {
    ("cifar10", "fp32"): _NOT_PUBLISHED,
    ("cifar10", "bin"): _CBP_CIFAR10,
    ("cifar10", "ter"): _CBP_CIFAR10,
    ("cifar100", "fp32"): _NOT_PUBLISHED,
    ("cifar100", "bin"): _NOT_PUBLISHED,
    ("cifar100", "ter"): _NOT_PUBLISHED,
}
TSSLBP_CLAIMS = {
    ("cifar10", "fp32"): "TSSL-BP README: 88.98 +- 0.27 % (best 89.37 %) at T=5.",
    ("cifar10", "bin"): _CBP_CIFAR10,
    ("cifar10", "ter"): _CBP_CIFAR10,
}

_CBP_QSNN = (
    "@article{yoo2023cbpqsnn,\n  title={CBP-QSNN: Spiking Neural Networks Quantized Using Constrained "
    "Backpropagation},\n  author={Yoo, Donghyung and Jeong, Doo Seok},\n  journal={IEEE Journal on Emerging and "
    "Selected Topics in Circuits and Systems},\n  volume={13},\n  number={4},\n  year={2023}\n}"
)
_CBP = (
    "@inproceedings{kim2021cbp,\n  title={{CBP}: backpropagation with constraint on weight precision using a "
    "pseudo-Lagrange multiplier method},\n  author={Kim, Guhyun and Jeong, Doo Seok},\n  booktitle={Advances in "
    "Neural Information Processing Systems},\n  year={2021}\n}"
)
_METHOD_CITATIONS = {
    "calib": "@inproceedings{li2021free,\n  title={A Free Lunch From {ANN}: Towards Efficient, Accurate Spiking "
    "Neural Networks Calibration},\n  author={Li, Yuhang and Deng, Shikuo and Dong, Xin and Gong, Ruihao and Gu, "
    "Shi},\n  booktitle={International Conference on Machine Learning},\n  year={2021}\n}",
    "stbp": "@article{wu2018stbp,\n  title={Spatio-Temporal Backpropagation for Training High-Performance Spiking "
    "Neural Networks},\n  author={Wu, Yujie and Deng, Lei and Li, Guoqi and Zhu, Jun and Shi, Luping},\n  "
    "journal={Frontiers in Neuroscience},\n  volume={12},\n  year={2018}\n}",
    "tsslbp": "@inproceedings{zhang2020tssl,\n  title={Temporal Spike Sequence Learning via Backpropagation for "
    "Deep Spiking Neural Networks},\n  author={Zhang, Wenrui and Li, Peng},\n  booktitle={Advances in Neural "
    "Information Processing Systems},\n  year={2020}\n}",
}


def citation(method: str, quant: Optional[str]) -> str:
    """BibTeX for an entry: the base training method, plus CBP-QSNN and CBP when quantized."""
    parts = [_METHOD_CITATIONS[method]]
    if quant is not None:
        parts += [_CBP_QSNN, _CBP]
    return "\n\n".join(parts)


def default_recipe(name: str) -> str:
    """The command that reproduces an entry with the full schedule of docs/method.md."""
    return f"python scripts/reproduce.py {name}"
