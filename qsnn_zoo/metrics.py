"""What `qsnn-zoo eval` measures: accuracy, firing rates, synaptic operations and weight memory.

Every result is a plain dict of numbers and strings, so ``--json`` prints it as it is.

Activity is counted on the chain every zoo model is: synaptic layer (conv / linear) -> spiking
neuron -> [pooling, flatten, dropout] -> next synaptic layer. The first synaptic layer receives the
analog image (or its PSP), so its work is reported as dense multiply-accumulates; every later layer
receives spikes, and its synaptic operations are the sum over input spikes of each input's fan-out.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._builder import create_model
from .data import ImageSet, to_tensor
from .layers.neurons import SpikingNeuron
from .layers.quant import is_quantized

FP32_BITS = 32.0
# Bits a quantized weight takes: binary 1 bit; ternary with base-3 packing, 5 weights a byte as
# qsnn_zoo.packing stores them. docs/method.md §A.3's table counts ternary at 2 bits, reported alongside.
PACKED_BITS = {"bin": 1.0, "ter": 8 / 5}
TWO_BIT_TERNARY = 2.0
MB = 1e6  # docs/method.md §A.3: MB = 10^6 bytes
LOSSLESS_ROWS = "lossless rows"
ALL_ROWS = "all rows"


# ---------------------------------------------------------------- accuracy

def top1(predictions: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    correct = int((predictions == labels).sum())
    rows = int(len(labels))
    return {"top1": 100.0 * correct / rows if rows else None, "correct": correct, "rows": rows}


def accuracy(predictions: np.ndarray, data: ImageSet) -> Dict[str, Any]:
    """Top-1 on all rows, and on the lossless rows when the data says which rows are lossless."""
    result = {"all": top1(predictions, data.labels), "lossless": None}
    if data.lossless is not None:
        keep = data.lossless.astype(bool)
        result["lossless"] = top1(predictions[keep], data.labels[keep])
    return result


def metric_records(acc: Dict[str, Any], dataset: str, source: str) -> List[Dict[str, Any]]:
    """Registry ``Metric`` records (as dicts) of an :func:`accuracy` result, for ``published.json``.

    The row set is named in ``data`` (":data:`LOSSLESS_ROWS`" / ":data:`ALL_ROWS`"); cards and the
    README table find it there with :func:`row_set`.
    """
    records = []
    for key, label in (("lossless", LOSSLESS_ROWS), ("all", ALL_ROWS)):
        part = acc.get(key)
        if part and part["rows"]:
            records.append(
                {"name": "top1", "value": round(part["top1"], 2), "data": f"{dataset} test, {label}",
                 "rows": part["rows"], "source": source}
            )
    return records


def row_set(metric) -> Optional[str]:
    """"lossless" or "all" for a registry Metric measured on that row set, else None."""
    if LOSSLESS_ROWS in metric.data:
        return "lossless"
    if ALL_ROWS in metric.data:
        return "all"
    return None


def measured_top1(entry, rows: str) -> Optional[float]:
    """The registry's measured top-1 of ``entry`` on ``rows`` ("lossless" | "all"), or None."""
    values = [m.value for m in entry.metrics if m.name == "top1" and row_set(m) == rows]
    return values[0] if values else None


# ---------------------------------------------------------------- synaptic operations

def synaptic_operations(layer: nn.Module, spike_counts: torch.Tensor) -> float:
    """Synaptic events caused by ``spike_counts`` (time-summed spikes ``[B, *input shape]``).

    Each input spike costs one operation per output it connects to, so the total is ``layer``
    applied to the counts with all-ones weights of the layer's geometry, summed. An all-ones conv
    gives the same map for every output channel of a group, so one channel per group is computed
    (exact, and cheap for wide layers).
    """
    counts = spike_counts.float()
    if isinstance(layer, nn.Linear):
        return float(counts.sum()) * layer.out_features
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"synaptic operations are defined for Conv2d and Linear, not {type(layer).__name__}")
    if layer.padding_mode != "zeros":
        raise ValueError(f"{layer}: only zero padding is counted exactly")
    g = layer.groups
    per_group = counts.unflatten(1, (g, layer.in_channels // g)).sum(2)
    ones = per_group.new_ones(g, 1, *layer.kernel_size)
    fan = F.conv2d(per_group, ones, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=g)
    return float(fan.sum()) * (layer.out_channels // g)


def dense_macs(layer: nn.Module, output_shape: Tuple[int, ...]) -> int:
    """Multiply-accumulates of one call of ``layer`` on one sample with output ``output_shape``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return math.prod(output_shape) * fan_in


def _as_layer_input(counts: torch.Tensor, input_shape: Tuple[int, ...], layer_name: str) -> torch.Tensor:
    """Spike counts ``[B, C, H, W]`` of a neuron in the shape the next layer reads them.

    Between them sit only flattening and non-overlapping pooling (TSSL-BP's 2x2 sum pool); a
    pooled cell forwards every spike of its window, so pooling sums the counts.
    """
    if counts.shape[1:] == input_shape:
        return counts
    if counts[0].numel() == math.prod(input_shape):
        return counts.reshape(len(counts), *input_shape)
    if counts.dim() == 4 and len(input_shape) == 3 and counts.shape[1] == input_shape[0]:
        factor = counts.shape[2] // input_shape[1]
        if factor > 1 and counts.shape[2] == factor * input_shape[1] and counts.shape[3] == factor * input_shape[2]:
            return F.avg_pool2d(counts, factor, divisor_override=1)
    raise ValueError(
        f"cannot map spikes of shape {tuple(counts.shape[1:])} onto the input {input_shape} of {layer_name}: "
        "the model is not a chain of synaptic layers and neurons with flatten or pooling between them"
    )


class ActivityMeter:
    """Counts spikes and synaptic operations of a :class:`~qsnn_zoo.models.SpikingModel` while it runs.

    Use as a context manager around forward passes; hooks record the order of synaptic layers and
    neurons, neurons' ``monitor`` flag makes them keep ``last_spikes`` (the spikes behind a TSSL
    PSP too), which are reduced right after each batch and then dropped to save memory.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.T = model.T
        self.images = 0
        self.layer_order: List[str] = []
        self.neuron_order: List[str] = []
        self.layer_io: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}
        self.spikes: Dict[str, float] = {}
        self.neuron_steps: Dict[str, int] = {}
        self.synops: Dict[str, float] = {}
        self._counts: Dict[str, torch.Tensor] = {}
        self._layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self._neurons = {n: m for n, m in model.named_modules() if isinstance(m, SpikingNeuron)}
        self._handles: list = []

    def __enter__(self) -> "ActivityMeter":
        for name, layer in self._layers.items():
            self._handles.append(layer.register_forward_hook(self._layer_hook(name)))
        for name, neuron in self._neurons.items():
            neuron.monitor = True
            self._handles.append(neuron.register_forward_hook(self._neuron_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for neuron in self._neurons.values():
            neuron.monitor = False
            neuron.last_spikes = None

    def _layer_hook(self, name: str):
        def hook(module, inputs, output):
            if name not in self.layer_io:
                self.layer_order.append(name)
                self.layer_io[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

        return hook

    def _neuron_hook(self, name: str):
        def hook(module, inputs, output):
            spikes = module.last_spikes  # [T, B, ...]
            module.last_spikes = None
            if name not in self.spikes:
                self.neuron_order.append(name)
                self.spikes[name], self.neuron_steps[name] = 0.0, 0
            counts = spikes.sum(0, dtype=torch.float32)
            self.spikes[name] += float(counts.sum())
            self.neuron_steps[name] += spikes.numel()
            self._counts[name] = counts

        return hook

    def end_batch(self, batch_size: int) -> None:
        """Adds the synaptic operations of the batch just run; call once after each forward."""
        self.images += batch_size
        layers, neurons = self.layer_order, self.neuron_order
        if len(neurons) not in (len(layers) - 1, len(layers)):
            raise ValueError(
                f"{type(self.model).__name__} ran {len(layers)} synaptic layers and {len(neurons)} neurons; "
                "activity is counted only on a chain of layer -> neuron -> layer"
            )
        for layer_name, source in zip(layers[1:], neurons):
            counts = _as_layer_input(self._counts[source], self.layer_io[layer_name][0], layer_name)
            ops = synaptic_operations(self._layers[layer_name], counts)
            self.synops[layer_name] = self.synops.get(layer_name, 0.0) + ops
        self._counts.clear()

    def firing_rates(self) -> Dict[str, float]:
        """Spikes per neuron per timestep, by neuron, in forward order."""
        return {n: self.spikes[n] / self.neuron_steps[n] for n in self.neuron_order}

    def summary(self) -> Dict[str, Any]:
        images = max(self.images, 1)
        first = self.layer_order[0]
        first_macs = dense_macs(self._layers[first], self.layer_io[first][1])
        per_layer = {n: self.synops[n] / images for n in self.layer_order[1:]}
        return {
            "images": self.images,
            "T": self.T,
            "firing_rates": self.firing_rates(),
            "spikes_per_image": sum(self.spikes.values()) / images,
            "synaptic_operations": {
                "per_image": sum(per_layer.values()),
                "per_layer": per_layer,
            },
            # The analog input is presented at every one of the T steps.
            "dense_first_layer": {
                "layer": first,
                "macs_per_step": first_macs,
                "macs_per_image": first_macs * self.T,
            },
        }


# ---------------------------------------------------------------- evaluation loop

@torch.no_grad()
def run_model(
    model: nn.Module,
    data: ImageSet,
    mean,
    std,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Top-1 predictions for every image of ``data`` and the activity summary of the run."""
    from tqdm.auto import tqdm

    model.eval().to(device)
    predictions = []
    starts = range(0, len(data), batch_size)
    with ActivityMeter(model) as meter:
        for start in tqdm(starts, desc="eval", unit="batch", disable=None if progress else True):
            x = to_tensor(data.images[start : start + batch_size], mean, std, device)
            predictions.append(model(x).argmax(1).cpu().numpy())
            meter.end_batch(len(x))
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64), meter.summary()


# ---------------------------------------------------------------- weight memory

def _weight_layers(model: nn.Module):
    """``(name, module)`` of every conv / linear layer whose weights a deployment stores.

    SNN-Calibration's AvgPoolConv (the zoo's only grouped convs) is average pooling with frozen
    weights 1/4 (docs/method.md §E.1): no stored weights, as docs/method.md §A.3's table counts it.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            yield name, module


def weight_memory(model: nn.Module) -> Dict[str, Any]:
    """Memory of ``model``'s weights: quantized layers at their packed bits, the rest at fp32.

    ``weight_bytes`` counts weights only, as docs/method.md §A.3's table does; ``total_bytes`` adds biases and
    the per-layer scales. ``weight_bytes_2bit_ternary`` is the same count with ternary weights at
    2 bits (docs/method.md §A.3's table); it equals ``weight_bytes`` for binary and fp32 models.
    """
    layers, quantized, full, biases, scales = [], 0, 0, 0, 0
    bits = two_bit = 0.0
    for name, module in _weight_layers(model):
        n = module.weight.numel()
        mode = module.quant if is_quantized(module) else None
        per_weight = PACKED_BITS[mode] if mode else FP32_BITS
        layers.append({"layer": name, "quant": mode or "fp32", "weights": n, "bits_per_weight": per_weight})
        bits += n * per_weight
        two_bit += n * (TWO_BIT_TERNARY if mode == "ter" else per_weight)
        quantized += n if mode else 0
        full += 0 if mode else n
        scales += 1 if mode else 0
        biases += module.bias.numel() if module.bias is not None else 0
    fp32_bytes = (quantized + full) * FP32_BITS / 8
    weight_bytes = bits / 8
    total_bytes = weight_bytes + (biases + scales) * FP32_BITS / 8
    return {
        "quantized_weights": quantized,
        "full_precision_weights": full,
        "biases": biases,
        "scales": scales,
        "weight_bits": bits,
        "weight_bytes": weight_bytes,
        "weight_mb": weight_bytes / MB,
        "weight_bytes_2bit_ternary": two_bit / 8,
        "weight_mb_2bit_ternary": two_bit / 8 / MB,
        "fp32_weight_bytes": fp32_bytes,
        "fp32_weight_mb": fp32_bytes / MB,
        "fraction_of_fp32": weight_bytes / fp32_bytes if fp32_bytes else None,
        "total_bytes": total_bytes,
        "total_mb": total_bytes / MB,
        "layers": layers,
    }


def entry_weight_memory(name: str, **overrides: Any) -> Dict[str, Any]:
    """:func:`weight_memory` of registry entry ``name``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return weight_memory(model)
