"""The STBP "7Conv, 3FC" network of leaky integrate-and-fire neurons, and its CBP children (docs/method.md §D).

Every layer, the output layer too, is a conv or FC with bias followed by a LIF neuron with hard
reset; the "pool" layers are stride-2 3x3 convolutions. The image is the input current at every
step; the output is the firing rate of the last layer.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .._builder import build_model
from .._registry import DATASETS, WEIGHT_KINDS, ModelEntry, NeuronSpec, QuantSpec, register_model
from ..layers.neurons import LIFNeuron
from ..layers.quant import is_quantized, make_conv2d, make_linear
from ..layers.time import constant_over_time, over_time
from ._base import SpikingModel
from ._common import BITS_WORD, CIFAR10_STATS, NUM_CLASSES, STBP_CLAIMS, citation, default_recipe

# (name, in, out, stride) of the conv stack; "pool" layers are stride-2 convs (docs/method.md §D.1).
CONVS = (
    ("conv1", 3, 128, 1),
    ("pool1", 128, 256, 2),
    ("conv2", 256, 256, 1),
    ("pool2", 256, 512, 2),
    ("conv3", 512, 512, 1),
    ("conv4", 512, 1024, 1),
    ("pool3", 1024, 2048, 2),
)
FCS = (("fc1", 2048 * 4 * 4, 1024), ("fc2", 1024, 512))
DECAY = {"cifar10": 0.25, "cifar100": 0.8}


class CNN7(SpikingModel):
    def __init__(
        self,
        num_classes: int = 10,
        T: int = 8,
        quant: Optional[str] = None,
        threshold: float = 0.5,
        decay: float = 0.25,
        lens: float = 0.5,
    ) -> None:
        super().__init__()
        self.T = T
        self.num_classes = num_classes
        self.layer_names = [n for n, *_ in CONVS] + [n for n, *_ in FCS] + ["fc3"]
        for i, (name, c_in, c_out, stride) in enumerate(CONVS):
            q = None if i == 0 else quant  # first and last layers stay fp32 (docs/method.md §D.1)
            self.add_module(name, make_conv2d(c_in, c_out, q, kernel_size=3, stride=stride, padding=1))
        for name, n_in, n_out in FCS:
            self.add_module(name, make_linear(n_in, n_out, quant))
        self.fc3 = nn.Linear(FCS[-1][2], num_classes)
        self.neurons = nn.ModuleDict(
            {n: LIFNeuron(threshold=threshold, decay=decay, lens=lens) for n in self.layer_names}
        )

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Output spikes ``[T, B, K]``."""
        fold = self.fold_time
        in_neuron = self._conv_bias_in_neuron(x)
        if fold:  # the image's current once, whose gradient the LIF kernel then sums over T itself
            s = self._layer("conv1", x, in_neuron, steps=self.T)
        else:
            s = self.neurons["conv1"](constant_over_time(self.conv1, x, self.T, fold))
        for name in self.layer_names[1:]:
            if name == "fc1":
                s = s.flatten(2)
            s = self._layer(name, s, in_neuron)
        return s

    def _layer(self, name: str, x: torch.Tensor, conv_bias_in_neuron: bool, steps: Optional[int] = None):
        """One layer's spikes; a conv's bias added by its neuron where ``conv_bias_in_neuron``."""
        layer, neuron = getattr(self, name), self.neurons[name]
        if conv_bias_in_neuron and isinstance(layer, nn.Conv2d):
            return neuron(self._over_steps(_bias_free(layer), x, steps), steps=steps, bias=layer.bias)
        return neuron(self._over_steps(layer, x, steps), steps=steps)

    def _over_steps(self, layer: Callable, x: torch.Tensor, steps: Optional[int]) -> torch.Tensor:
        return layer(x) if steps is not None else over_time(layer, x, self.fold_time)

    def _conv_bias_in_neuron(self, x: torch.Tensor) -> bool:
        """Whether the fast path hands each conv's bias to the LIF kernel (piece ``lif_bias``), which
        adds it as PyTorch does and saves a broadcasting pass over the currents. The conv modules
        are then bypassed, so not where a hook observes one."""
        if not self.fold_time:
            return False
        from ..layers import fused  # imported on use, as the neurons do: only the GPU path needs Triton

        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules() if isinstance(m, nn.Conv2d))
        return fused.piece_enabled("lif_bias", x) and not hooked

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        return steps.mean(0)  # firing rate of the output layer (docs/method.md §D.2)


def _bias_free(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """The conv without its bias, its (quantized) weight made once for every call."""
    weight = conv.quantized_weight() if is_quantized(conv) else conv.weight
    return lambda z: conv._conv_forward(z, weight, None)


def _create_cnn7(name: str, pretrained: bool = False, **kwargs) -> CNN7:
    return build_model(name, CNN7, pretrained=pretrained, **kwargs)


def _cnn7_entry(dataset: str, kind: str) -> ModelEntry:
    quant = None if kind == "fp32" else kind
    name = f"cnn7_{dataset}_{kind}_stbp"
    quantized = tuple(n for n, *_ in CONVS[1:]) + tuple(n for n, *_ in FCS)
    return ModelEntry(
        name=name,
        family="cnn7",
        method="stbp",
        dataset=dataset,
        num_classes=NUM_CLASSES[dataset],
        T=8,
        neuron=NeuronSpec(
            model="lif",
            threshold=0.5,
            reset="hard",
            comparison=">",
            surrogate="boxcar (rectangular), dS/du = 1/(2*lens) for |u - V_th| < lens, lens = 0.5",
            encoding="direct: the normalised image is the input current of the first layer at every step",
            decoding="firing rate of the 10/100 output LIF neurons, averaged over T",
            decay=DECAY[dataset],
        ),
        quant=QuantSpec(
            mode=quant,
            quantized_layers=quantized if quant else (),
            full_precision_layers=("conv1", "fc3", "all biases") if quant else ("all",),
        ),
        arch_kwargs=(("num_classes", NUM_CLASSES[dataset]), ("T", 8), ("quant", quant), ("decay", DECAY[dataset])),
        # docs/method.md §D.3: the STBP code normalises CIFAR-100 with the CIFAR-10 statistics too.
        mean=CIFAR10_STATS[0],
        std=CIFAR10_STATS[1],
        parent=None if quant is None else f"cnn7_{dataset}_fp32_stbp",
        paper_claim=STBP_CLAIMS[(dataset, kind)],
        recipe=default_recipe(name),
        description=(
            "7-conv-3-FC network of leaky integrate-and-fire neurons with hard reset, trained directly with "
            "STBP (boxcar surrogate, MSE on output firing rates)"
            + ("" if quant is None else f", then quantized to {BITS_WORD[kind]} weights with CBP")
            + "."
        ),
        citation=citation("stbp", quant),
    )


model_entries = {e.name: e for e in (_cnn7_entry(ds, kind) for ds in DATASETS for kind in WEIGHT_KINDS)}


@register_model
def cnn7_cifar10_fp32_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), CIFAR-10, fp32."""
    return _create_cnn7("cnn7_cifar10_fp32_stbp", pretrained, **kwargs)


@register_model
def cnn7_cifar10_bin_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), binary weights by CBP, CIFAR-10."""
    return _create_cnn7("cnn7_cifar10_bin_stbp", pretrained, **kwargs)


@register_model
def cnn7_cifar10_ter_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), ternary weights by CBP, CIFAR-10."""
    return _create_cnn7("cnn7_cifar10_ter_stbp", pretrained, **kwargs)


@register_model
def cnn7_cifar100_fp32_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), CIFAR-100, fp32."""
    return _create_cnn7("cnn7_cifar100_fp32_stbp", pretrained, **kwargs)


@register_model
def cnn7_cifar100_bin_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), binary weights by CBP, CIFAR-100."""
    return _create_cnn7("cnn7_cifar100_bin_stbp", pretrained, **kwargs)


@register_model
def cnn7_cifar100_ter_stbp(pretrained: bool = False, **kwargs) -> CNN7:
    """STBP 7-conv-3-FC LIF network (T=8), ternary weights by CBP, CIFAR-100."""
    return _create_cnn7("cnn7_cifar100_ter_stbp", pretrained, **kwargs)
