"""The TSSL-BP "AlexNet" (96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024-10) and its CBP children (docs/method.md §C).

Only postsynaptic potentials (PSPs) travel between layers: each spiking layer filters its spikes
with the synaptic kernel, pooling is a fixed 2x2 sum times 1.1, dropout masks are shared over
columns and time. No layer has a bias. Scores are the output PSPs summed over T.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._builder import build_model
from .._registry import WEIGHT_KINDS, ModelEntry, NeuronSpec, QuantSpec, register_model
from ..layers.neurons import TSSLNeuron, psp_filter
from ..layers.quant import is_quantized, make_conv2d, make_linear
from ..layers.time import over_time
from ._base import SpikingModel
from ._common import BITS_WORD, CIFAR10_STATS, TSSLBP_CLAIMS, citation, default_recipe

# (name, in, out, pool after) for the convs, (name, in, out) for the FCs (docs/method.md §C.1).
CONVS = (("conv1", 3, 96, False), ("conv2", 96, 256, True), ("conv3", 256, 384, True), ("conv4", 384, 384, False), ("conv5", 384, 256, False))
FCS = (("fc1", 256 * 8 * 8, 1024), ("fc2", 1024, 1024), ("fc3", 1024, 10))
POOL_WEIGHT = 1.1  # TSSL-BP's default pooling theta; the yaml's pooling threshold is ignored (docs/method.md §C.1)
CONV_WEIGHT_SCALE = 5.0


class SharedDropout(nn.Module):
    """TSSL-BP's dropout on ``[T, B, C, H, W]`` or ``[T, B, F]``: one mask per (sample, channel, row)
    or per (sample, feature), shared over columns and time, kept values scaled by 1/(1-p) (docs/method.md §C.1)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """With ``fused`` (the fast backend) the product runs on :func:`fused.shared_mask_multiply`
        where it can: equal to PyTorch's."""
        if not self.training or self.p == 0:
            return x
        shape = (1, x.shape[1], x.shape[2], x.shape[3], 1) if x.dim() == 5 else (1, *x.shape[1:])
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        scale = 1 / (1 - self.p)
        if float(torch.tensor(scale, dtype=x.dtype)) != scale:
            return x * keep / (1 - self.p)
        # The small mask carries the scale, which x's dtype holds exactly (1.25 at the recipes'
        # p = 0.2): one pass over x each way instead of a multiply and a divide.
        keep.mul_(scale)
        if fused:
            from ..layers import fused as kernels  # imported on use: only the GPU path needs Triton

            out = kernels.shared_mask_multiply(x, keep)
            if out is not None:
                return out
        return x * keep


def sum_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, divisor_override=1) * POOL_WEIGHT


def fast_sum_pool(x: torch.Tensor) -> torch.Tensor:
    """:func:`sum_pool` on the fused 2x2 pooling kernels where they run (equal within rounding, in
    ``x``'s memory format), else :func:`sum_pool`: PyTorch's ``avg_pool2d`` kernels took a third of
    the GPU time of the bf16 CBP step on an H200 (benchmarks/README.md)."""
    from ..layers import fused  # imported on use, as the neurons do: only the GPU path needs Triton

    pooled = fused.sum_pool_2x2(x, POOL_WEIGHT)
    return sum_pool(x) if pooled is None else pooled


class TSSLAlexNet(SpikingModel):
    def __init__(
        self,
        num_classes: int = 10,
        T: int = 5,
        quant: Optional[str] = None,
        tau_m: float = 5.0,
        tau_s: float = 3.0,
        threshold: float = 1.0,
        alpha: float = 0.2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.T = T
        self.num_classes = num_classes
        self.tau_s = tau_s
        self.pool_after = {name for name, *_, pool in CONVS if pool}
        last = len(CONVS) + len(FCS) - 1
        for i, (name, c_in, c_out, _) in enumerate(CONVS):
            q = None if i == 0 else quant  # first and last layers stay fp32 (docs/method.md §C.1)
            self.add_module(name, make_conv2d(c_in, c_out, q, kernel_size=3, padding=1, bias=False))
        for i, (name, n_in, n_out) in enumerate(FCS, start=len(CONVS)):
            n_out = num_classes if i == last else n_out
            self.add_module(name, make_linear(n_in, n_out, None if i == last else quant, bias=False))
        self.layer_names = [n for n, *_ in CONVS] + [n for n, *_ in FCS]
        self.neurons = nn.ModuleDict(
            {n: TSSLNeuron(tau_m=tau_m, tau_s=tau_s, threshold=threshold, alpha=alpha) for n in self.layer_names}
        )
        self.dropout = SharedDropout(dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # docs/method.md §C.1: PyTorch's default conv init times 5; FC kaiming-normal (fan_in, gain sqrt 2).
        for name, *_ in CONVS:
            conv = getattr(self, name)
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            conv.weight.data.mul_(CONV_WEIGHT_SCALE)
        for name, *_ in FCS:
            nn.init.kaiming_normal_(getattr(self, name).weight, mode="fan_in", nonlinearity="relu")
        for module in self.modules():
            if is_quantized(module):
                module.init_scale_()

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Output PSPs ``[T, B, K]``."""
        fold = self.fold_time
        pool = fast_sum_pool if fold else sum_pool
        a = psp_filter(x.unsqueeze(0).expand(self.T, *x.shape), self.tau_s)  # docs/method.md §C.2 input encoding
        for name in self.layer_names:
            if name == "fc1":
                a = a.flatten(2)
            a = self.neurons[name](over_time(getattr(self, name), a, fold))
            if name in self.pool_after:
                a = over_time(pool, a, fold)
            if name != self.layer_names[-1]:
                a = self.dropout(a, fused=fold)
        return a

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        return steps.sum(0)  # docs/method.md §C.3: argmax of the summed output PSP


def _create_alexnet(name: str, pretrained: bool = False, **kwargs) -> TSSLAlexNet:
    return build_model(name, TSSLAlexNet, pretrained=pretrained, **kwargs)


def _alexnet_entry(kind: str) -> ModelEntry:
    quant = None if kind == "fp32" else kind
    name = f"alexnet_cifar10_{kind}_tsslbp"
    quantized = ("conv2", "conv3", "conv4", "conv5", "fc1", "fc2")
    return ModelEntry(
        name=name,
        family="alexnet",
        method="tsslbp",
        dataset="cifar10",
        num_classes=10,
        T=5,
        neuron=NeuronSpec(
            model="tssl",
            threshold=1.0,
            reset="hard",
            comparison=">",
            surrogate="TSSL-BP: inter- and intra-neuron spike-timing gradients, with a sigmoid-derivative "
            "fallback (alpha = 0.2) where the PSP is below 1/(4*tau_s)",
            encoding="psp: the normalised image is a constant current filtered by the synaptic kernel",
            decoding="output PSPs summed over T; trained with the PSP-kernel loss against [0,1,1,1,1]",
            tau_m=5.0,
            tau_s=3.0,
        ),
        quant=QuantSpec(
            mode=quant,
            quantized_layers=quantized if quant else (),
            full_precision_layers=("conv1 (frozen)", "fc3 (frozen)") if quant else ("all",),
        ),
        arch_kwargs=(("num_classes", 10), ("T", 5), ("quant", quant)),
        mean=CIFAR10_STATS[0],
        std=CIFAR10_STATS[1],
        parent=None if quant is None else "alexnet_cifar10_fp32_tsslbp",
        paper_claim=TSSLBP_CLAIMS[("cifar10", kind)],
        recipe=default_recipe(name),
        description=(
            "AlexNet-style SNN (5 conv + 3 FC, no biases) with TSSL-BP neurons and synaptic PSP filters, "
            "trained with TSSL-BP"
            + ("" if quant is None else f", then quantized to {BITS_WORD[kind]} weights with CBP")
            + "."
        ),
        citation=citation("tsslbp", quant),
    )


model_entries = {e.name: e for e in (_alexnet_entry(kind) for kind in WEIGHT_KINDS)}


@register_model
def alexnet_cifar10_fp32_tsslbp(pretrained: bool = False, **kwargs) -> TSSLAlexNet:
    """TSSL-BP AlexNet SNN (T=5), CIFAR-10, fp32."""
    return _create_alexnet("alexnet_cifar10_fp32_tsslbp", pretrained, **kwargs)


@register_model
def alexnet_cifar10_bin_tsslbp(pretrained: bool = False, **kwargs) -> TSSLAlexNet:
    """TSSL-BP AlexNet SNN (T=5), binary weights by CBP, CIFAR-10."""
    return _create_alexnet("alexnet_cifar10_bin_tsslbp", pretrained, **kwargs)


@register_model
def alexnet_cifar10_ter_tsslbp(pretrained: bool = False, **kwargs) -> TSSLAlexNet:
    """TSSL-BP AlexNet SNN (T=5), ternary weights by CBP, CIFAR-10."""
    return _create_alexnet("alexnet_cifar10_ter_tsslbp", pretrained, **kwargs)
