"""torch.hub entry points: ``torch.hub.load(repo, NAME, pretrained=True)`` for every registry name.

Each entry point is the registry's builder for that name; its keyword arguments are those of
``qsnn_zoo.create_model`` (``pretrained``, ``weights``, ``cache_dir`` and architecture overrides).
"""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]

from qsnn_zoo.models.alexnet import (  # noqa: E402,F401
    alexnet_cifar10_bin_tsslbp,
    alexnet_cifar10_fp32_tsslbp,
    alexnet_cifar10_ter_tsslbp,
)
from qsnn_zoo.models.cnn7 import (  # noqa: E402,F401
    cnn7_cifar10_bin_stbp,
    cnn7_cifar10_fp32_stbp,
    cnn7_cifar10_ter_stbp,
    cnn7_cifar100_bin_stbp,
    cnn7_cifar100_fp32_stbp,
    cnn7_cifar100_ter_stbp,
)
from qsnn_zoo.models.vgg import (  # noqa: E402,F401
    vgg16_cifar10_bin_calib,
    vgg16_cifar10_fp32_calib,
    vgg16_cifar10_ter_calib,
    vgg16_cifar100_bin_calib,
    vgg16_cifar100_fp32_calib,
    vgg16_cifar100_ter_calib,
)
