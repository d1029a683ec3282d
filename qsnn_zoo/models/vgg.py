"""VGG16 for SNN-Calibration (ANN-to-SNN conversion) and its CBP-quantized children (docs/method.md §E).

One module holds both forms: ``mode="ann"`` is the ReLU network that is trained, ``mode="snn"``
the converted integrate-and-fire network with soft reset simulated for T steps. The fp32 entry
keeps the ANN weights with per-layer thresholds and calibration biases, so both forms are exact;
quantized entries hold the SNN with thresholds rescaled to 1 (docs/method.md §E.3 step 6, §E.4).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.neurons import IFNeuron, add_channel_biases
from ..layers.quant import is_quantized, make_conv2d
from ..layers.time import constant_over_time, over_time, repeat_over_time
from .._builder import build_model
from .._registry import DATASETS, WEIGHT_KINDS, ModelEntry, NeuronSpec, QuantSpec, register_model
from ._base import SpikingModel
from ._common import BITS_WORD, CALIB_CLAIMS, NUM_CLASSES, NORMALIZATION, citation, default_recipe

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
MODES = ("snn", "ann")


class VGGLayer(nn.Module):
    """conv (or 2x2 average-pool conv) -> [BN] -> ReLU / IF neuron -> [dropout].

    ``calib_bias`` is the light-calibration correction (docs/method.md §E.3 step 5); it applies to the SNN
    form only, so the ANN form stays the trained ANN.

    ``gate`` (pooling layers): the pooled current goes through a ReLU before the neuron, as in the
    original SNN-Calibration code. The pooled current of spikes is never negative, so the forward
    pass is unchanged, but ReLU's derivative is 0 at 0: no gradient reaches a 2x2 window that
    holds no spike at that step.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.Module, neuron: IFNeuron, dropout: float) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.neuron = neuron
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.gate = False
        self.register_buffer("calib_bias", torch.zeros(conv.out_channels))

    @property
    def is_pool(self) -> bool:
        return self.conv.groups > 1

    def synapse(self, x: torch.Tensor) -> torch.Tensor:
        current = self.conv(x)
        if self.gate:
            current = F.relu(current)
        return self.norm(current) + self.calib_bias.view(-1, 1, 1).to(x.dtype)

    def ann(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.norm(self.conv(x))))

    def snn(self, current: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.neuron(current))

    def spiking(self, x: torch.Tensor, fold: bool, T: Optional[int] = None) -> torch.Tensor:
        """The SNN layer over time: spikes ``[T, B, ...]`` in, or with ``T`` one image that is the
        input at every step; output spikes ``[T, B, ...]`` after dropout."""
        if fold and self._fusable(x):
            return self._fused_spiking(x, T)
        current = over_time(self.synapse, x, fold) if T is None else constant_over_time(self.synapse, x, T, fold)
        return self.snn(current)

    def _fusable(self, x: torch.Tensor) -> bool:
        from ..layers import fused  # imported on use, as the neurons do: only the GPU path needs Triton

        # The fused path bypasses the conv and neuron modules, so it is taken only where no hook
        # observes them and there is no norm between conv and neuron.
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (self.conv, self.neuron))
        return fused.piece_enabled("if_layer", x) and isinstance(self.norm, nn.Identity) and not hooked

    def _fused_spiking(self, x: torch.Tensor, T: Optional[int]) -> torch.Tensor:
        """Same function as ``spiking`` with the reference modules: the conv runs without its bias,
        both biases and the dropout run inside the fused IF kernel, the pool in its own kernel."""
        from ..layers import fused

        conv = self.conv
        weight = conv.quantized_weight() if is_quantized(conv) else conv.weight

        def synapse(z: torch.Tensor) -> torch.Tensor:
            return fused.avg_pool_conv(z, weight, self.gate) if self.is_pool else conv._conv_forward(z, weight, None)

        # A constant input goes to the kernel unexpanded, which then gives its gradient summed over T.
        current = over_time(synapse, x, True) if T is None else synapse(x)
        n = self.neuron
        p = self.dropout.p if self.training and isinstance(self.dropout, nn.Dropout) else 0.0
        fuse_dropout = p > 0 and not n.monitor  # a monitored neuron records its spikes before dropout
        spikes = fused.if_soft_reset_layer(current, n.threshold, n.shift / n.T, n.initial_potential, n.alpha,
                                           conv.bias, self.calib_bias, p if fuse_dropout else 0.0, steps=T)
        if spikes is None:  # no layer kernel for these inputs: the biases, then the neuron module and dropout
            current = current if T is None else repeat_over_time(current, T)
            return self.snn(add_channel_biases(current, conv.bias, self.calib_bias))
        if fuse_dropout:
            return spikes
        n._record(spikes)
        return self.dropout(spikes)


def make_avg_pool_conv(channels: int) -> nn.Conv2d:
    """SNN-Calibration's AvgPoolConv: depthwise 2x2 stride-2 conv with frozen weights 1/4."""
    conv = nn.Conv2d(channels, channels, kernel_size=2, stride=2, groups=channels, bias=False)
    nn.init.constant_(conv.weight, 0.25)
    conv.weight.requires_grad_(False)
    return conv


class SpikingVGG(SpikingModel):
    spiking_output = False

    def __init__(
        self,
        num_classes: int = 10,
        T: int = 32,
        quant: Optional[str] = None,
        use_bn: bool = False,
        dropout: float = 0.25,
        threshold: float = 1.0,
        shift: float = 0.5,
        alpha: float = 2.0,
        mode: str = "snn",
        cfg=VGG16_CFG,
        pool_gate: bool = False,
    ) -> None:
        super().__init__()
        self.T = T
        self.num_classes = num_classes
        self.mode = mode
        layers: List[VGGLayer] = []
        in_channels, size = 3, 32
        for width in cfg:
            if width == "M":
                conv, norm, drop = make_avg_pool_conv(in_channels), nn.Identity(), 0.0
                size //= 2
            else:
                first = not layers
                conv = make_conv2d(in_channels, width, None if first else quant, kernel_size=3, padding=1)
                norm = nn.BatchNorm2d(width) if use_bn else nn.Identity()
                drop = 0.0 if use_bn else dropout
                in_channels = width
            neuron = IFNeuron(T, threshold=threshold, shift=shift, alpha=alpha)
            layers.append(VGGLayer(conv, norm, neuron, drop))
        self.features = nn.ModuleList(layers)
        self.classifier = nn.Linear(in_channels * size * size, num_classes)
        self.set_mode(mode)
        self.set_pool_gate(pool_gate)
        self._init_weights()

    @property
    def pool_gate(self) -> bool:
        return any(layer.gate for layer in self.features)

    def set_pool_gate(self, on: bool) -> "SpikingVGG":
        """The original code's backward through the pooling layers (:class:`VGGLayer`'s ``gate``):
        a training setting, since the forward pass is the same either way."""
        for layer in self.features:
            layer.gate = bool(on) and layer.is_pool
        return self

    def set_mode(self, mode: str) -> "SpikingVGG":
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        return self

    def _init_weights(self) -> None:
        # docs/method.md §E.1: conv N(0, sqrt(2 / (9 * C_out))), bias at PyTorch's default; linear N(0, 1/n_in).
        for layer in self.features:
            if not layer.is_pool:
                n = layer.conv.kernel_size[0] * layer.conv.kernel_size[1] * layer.conv.out_channels
                nn.init.normal_(layer.conv.weight, 0.0, math.sqrt(2.0 / n))
                if is_quantized(layer.conv):
                    layer.conv.init_scale_()
        nn.init.normal_(self.classifier.weight, 0.0, 1.0 / self.classifier.in_features)
        nn.init.zeros_(self.classifier.bias)

    def forward_ann(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features:
            x = layer.ann(x)
        return self.classifier(x.flatten(1))

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits ``[T, B, K]``; the image is the input current at every step."""
        fold = self.fold_time
        first, *rest = self.features
        s = first.spiking(x, fold, T=self.T)
        for layer in rest:
            s = layer.spiking(s, fold)
        return over_time(self.classifier, s.flatten(2), fold)

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        return steps.sum(0)  # docs/method.md §E.3: logits summed over T, not averaged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "ann":
            return self.forward_ann(x)
        return super().forward(x)


def _create_vgg(name: str, pretrained: bool = False, **kwargs) -> SpikingVGG:
    return build_model(name, SpikingVGG, pretrained=pretrained, **kwargs)


def _vgg_entry(dataset: str, kind: str) -> ModelEntry:
    quant = None if kind == "fp32" else kind
    name = f"vgg16_{dataset}_{kind}_calib"
    convs = [f"features.{i}.conv" for i, w in enumerate(VGG16_CFG) if w != "M"]
    pools = [f"features.{i}.conv" for i, w in enumerate(VGG16_CFG) if w == "M"]
    return ModelEntry(
        name=name,
        family="vgg",
        method="calib",
        dataset=dataset,
        num_classes=NUM_CLASSES[dataset],
        T=32,
        neuron=NeuronSpec(
            model="if",
            threshold=1.0,
            reset="soft",
            comparison=">=",
            surrogate="arctan, dS/du = (alpha/2) / (1 + (pi*alpha*(u - V_th)/2)^2), alpha = 2",
            encoding="direct: the normalised image is the input current of the first layer at every step",
            decoding="logits of the FP32 classifier summed over T (not averaged)",
            shift=0.5,
            initial_potential="zero",
        ),
        quant=QuantSpec(
            mode=quant,
            quantized_layers=tuple(convs[1:]) if quant else (),
            full_precision_layers=(convs[0], "classifier", *pools, "all biases")
            if quant
            else ("all",),
        ),
        arch_kwargs=(("num_classes", NUM_CLASSES[dataset]), ("T", 32), ("quant", quant)),
        mean=NORMALIZATION[dataset][0],
        std=NORMALIZATION[dataset][1],
        parent=None if quant is None else f"vgg16_{dataset}_fp32_calib",
        paper_claim=CALIB_CLAIMS[(dataset, kind)],
        recipe=default_recipe(name),
        description=(
            "VGG16 (13 conv + 1 FC, no BN, dropout 0.25) trained as an ANN and converted to an "
            "integrate-and-fire SNN with SNN-Calibration (threshold search, light calibration)"
            + ("" if quant is None else f", then quantized to {BITS_WORD[kind]} weights with CBP")
            + "."
        ),
        citation=citation("calib", quant),
    )


model_entries = {e.name: e for e in (_vgg_entry(ds, kind) for ds in DATASETS for kind in WEIGHT_KINDS)}


@register_model
def vgg16_cifar10_fp32_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 ANN with its SNN-Calibration conversion (T=32), CIFAR-10, fp32."""
    return _create_vgg("vgg16_cifar10_fp32_calib", pretrained, **kwargs)


@register_model
def vgg16_cifar10_bin_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 SNN (T=32), binary weights by CBP on SNN-Calibration, CIFAR-10."""
    return _create_vgg("vgg16_cifar10_bin_calib", pretrained, **kwargs)


@register_model
def vgg16_cifar10_ter_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 SNN (T=32), ternary weights by CBP on SNN-Calibration, CIFAR-10."""
    return _create_vgg("vgg16_cifar10_ter_calib", pretrained, **kwargs)


@register_model
def vgg16_cifar100_fp32_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 ANN with its SNN-Calibration conversion (T=32), CIFAR-100, fp32."""
    return _create_vgg("vgg16_cifar100_fp32_calib", pretrained, **kwargs)


@register_model
def vgg16_cifar100_bin_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 SNN (T=32), binary weights by CBP on SNN-Calibration, CIFAR-100."""
    return _create_vgg("vgg16_cifar100_bin_calib", pretrained, **kwargs)


@register_model
def vgg16_cifar100_ter_calib(pretrained: bool = False, **kwargs) -> SpikingVGG:
    """VGG16 SNN (T=32), ternary weights by CBP on SNN-Calibration, CIFAR-100."""
    return _create_vgg("vgg16_cifar100_ter_calib", pretrained, **kwargs)
