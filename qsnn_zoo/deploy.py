"""The integer deployment file for microcontrollers and FPGAs, and its numpy reference simulator.

A deploy file is a safetensors file (docs/export.md gives the byte layout): an 8-byte
little-endian header length, a JSON header, then raw little-endian tensors. The header's
``__metadata__["network"]`` is a JSON description of the whole network (input scaling, T, one
entry per op with its shape, weight encoding, scale, bias, neuron rule and output decoding), so
the file alone is enough to run the model. Quantized weights are stored as packed integer codes
(binary: 1 bit, ternary: 2 bits) with one fp32 scale per layer; the fp32 first and last layers
as float32 arrays.

:func:`simulate` reads nothing but that file's content. It runs every quantized layer as an
integer accumulation ``acc = codes (*) spikes`` followed by one multiply ``scale * gain * acc``
(``gain`` is the presynaptic spike amplitude times any pooling gain), which is what a fixed-point
implementation computes. Accumulations use float64 BLAS, which holds every integer sum exactly.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from .layers.quant import is_quantized
from .models.alexnet import POOL_WEIGHT, TSSLAlexNet
from .models.cnn7 import CNN7
from .models.vgg import SpikingVGG
from .packing import pack_codes, unpack_codes
from .weights import atomic_write, canonical_safetensors

FORMAT_NAME = "qsnn-zoo-deploy"
FORMAT_VERSION = "1"
# Weight encodings: "bin1" is qsnn_zoo.packing's 1-bit scheme (MSB first, 1 = +1, 0 = -1);
# "ter2" stores each ternary code as a 2-bit two's-complement field (01 = +1, 00 = 0, 11 = -1),
# four to a byte, first weight in the two most significant bits: decodable with a shift and a
# mask, where the 1.6-bit base-3 packing of the weights files would need divisions.
BITS = {"bin1": 1, "ter2": 2}
_TENSOR_DTYPES = {"F32": np.float32, "U8": np.uint8}
PathLike = Union[str, Path]


class DeployFormatError(ValueError):
    """A file that is not a qsnn-zoo deploy file."""


def pack_ternary_2bit(codes: np.ndarray) -> np.ndarray:
    fields = (codes.reshape(-1).astype(np.int16) & 0b11).astype(np.uint8)
    fields = np.concatenate([fields, np.zeros((-fields.size) % 4, np.uint8)]).reshape(-1, 4)
    return (fields[:, 0] << 6 | fields[:, 1] << 4 | fields[:, 2] << 2 | fields[:, 3]).astype(np.uint8)


def unpack_ternary_2bit(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    fields = np.stack([(packed >> shift) & 0b11 for shift in (6, 4, 2, 0)], axis=1).reshape(-1)
    codes = np.where(fields == 0b11, -1, fields).astype(np.int8)
    return codes[: int(np.prod(shape))].reshape(tuple(shape))


# ---------------------------------------------------------------------------------------------
# Writing


class _Writer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tensors: Dict[str, np.ndarray] = {}
        self.ops: List[Dict[str, Any]] = []
        self.shape: Tuple[int, ...] = (3, 32, 32)

    def synapse(self, name: str, layer: nn.Module, neuron: Optional[Dict[str, Any]], extra_bias=None) -> None:
        op: Dict[str, Any] = {"name": name, "in_shape": list(self.shape)}
        if isinstance(layer, nn.Conv2d):
            out_hw = [
                (size + 2 * p - (k - 1) - 1) // s + 1
                for size, p, k, s in zip(self.shape[1:], layer.padding, layer.kernel_size, layer.stride)
            ]
            op.update(op="conv2d", kernel=list(layer.kernel_size), stride=list(layer.stride), padding=list(layer.padding), groups=layer.groups)
            self.shape = (layer.out_channels, *out_hw)
        else:
            op.update(op="linear")
            self.shape = (layer.out_features,)
        op["out_shape"] = list(self.shape)
        op["weight"] = self._weight(name, layer)
        bias = None if layer.bias is None else layer.bias.detach().double()
        if extra_bias is not None:
            bias = extra_bias.double() if bias is None else bias + extra_bias.double()
        op["bias"] = None if bias is None else self._tensor(f"{name}.bias", bias.float().numpy())
        op["neuron"] = neuron
        self.ops.append(op)

    def _weight(self, name: str, layer: nn.Module) -> Dict[str, Any]:
        shape = list(layer.weight.shape)
        if not is_quantized(layer):
            return {"tensor": self._tensor(f"{name}.weight", layer.weight.detach().float().numpy()), "encoding": "float32", "shape": shape}
        codes = layer.codes().cpu()
        if layer.quant == "bin":
            encoding, packed = "bin1", pack_codes(codes, "bin").numpy()
        else:
            encoding, packed = "ter2", pack_ternary_2bit(codes.numpy())
        return {
            "tensor": self._tensor(f"{name}.weight.codes", packed),
            "encoding": encoding,
            "bits": BITS[encoding],
            "shape": shape,
            "scale": float(layer.scale),
        }

    def _tensor(self, key: str, value: np.ndarray) -> str:
        self.tensors[key] = np.ascontiguousarray(value)
        return key

    def sum_pool(self, gain: float) -> None:
        c, h, w = self.shape
        self.ops.append({"op": "sum_pool2d", "kernel": [2, 2], "stride": [2, 2], "gain": gain, "in_shape": [c, h, w], "out_shape": [c, h // 2, w // 2]})
        self.shape = (c, h // 2, w // 2)

    def flatten(self) -> None:
        self.ops.append({"op": "flatten", "order": "C,H,W", "in_shape": list(self.shape), "out_shape": [int(np.prod(self.shape))]})
        self.shape = (int(np.prod(self.shape)),)


def _lif(neuron) -> Dict[str, Any]:
    return {
        "model": "lif",
        "rule": "u = decay * u * (1 - o) + I; o = (u > threshold); spikes are 0/1",
        "threshold": neuron.threshold,
        "comparison": ">",
        "reset": "hard",
        "decay": neuron.decay,
    }


def _tssl(neuron) -> Dict[str, Any]:
    return {
        "model": "tssl",
        "rule": "syn = (1 - 1/tau_s) * syn + I / tau_s; u = (1 - 1/tau_m) * u + syn; o = (u > threshold); "
        "u = u * (1 - o); spikes are 0/1 (the PSP filter of the presynaptic spikes, moved onto the "
        "postsynaptic current, which equals it because the synapse is linear)",
        "threshold": neuron.threshold,
        "comparison": ">",
        "reset": "hard",
        "tau_m": neuron.tau_m,
        "tau_s": neuron.tau_s,
    }


def _if(writer: _Writer, name: str, neuron) -> Dict[str, Any]:
    threshold = float(neuron.threshold)
    spec = {
        "model": "if",
        "rule": "u = u + I + bias_per_step; o = (u >= threshold); u = u - threshold * o; "
        "spikes are 0/1 with amplitude spike_amplitude",
        "threshold": threshold,
        "comparison": ">=",
        "reset": "soft",
        "bias_per_step": threshold * neuron.shift / neuron.T,
        "spike_amplitude": threshold,
        "v_init": None,
    }
    if neuron.initial_potential is not None:
        spec["v_init"] = writer._tensor(f"{name}.v_init", neuron.initial_potential.detach().float().numpy())
    return spec


def _write_cnn7(writer: _Writer, model: CNN7) -> Dict[str, Any]:
    for name in model.layer_names:
        if name == "fc1":
            writer.flatten()
        writer.synapse(name, getattr(model, name), _lif(model.neurons[name]))
    return {"decode": "mean", "rule": "class scores = output spikes averaged over T (firing rate)"}


def _write_alexnet(writer: _Writer, model: TSSLAlexNet) -> Dict[str, Any]:
    for name in model.layer_names:
        if name == "fc1":
            writer.flatten()
        writer.synapse(name, getattr(model, name), _tssl(model.neurons[name]))
        if name in model.pool_after:
            writer.sum_pool(POOL_WEIGHT)
    return {
        "decode": "psp_sum",
        "tau_s": model.tau_s,
        "rule": "a = (1 - 1/tau_s) * a + o / tau_s on the output spikes; class scores = a summed over T",
    }


def _write_vgg(writer: _Writer, model: SpikingVGG) -> Dict[str, Any]:
    for i, layer in enumerate(model.features):
        if not isinstance(layer.norm, nn.Identity):
            raise ValueError("deploy export takes the zoo's BN-free VGG16; fold BatchNorm into the convolutions first")
        name = f"features.{i}"
        writer.synapse(name, layer.conv, _if(writer, name, layer.neuron), extra_bias=layer.calib_bias)
    writer.flatten()
    writer.synapse("classifier", model.classifier, None)
    return {"decode": "sum", "rule": "class scores = classifier outputs summed over T"}


def write_deploy(model: nn.Module, path: PathLike) -> Path:
    """Writes the spiking form of a zoo model (weights as they are) to ``path``, atomically."""
    from safetensors.numpy import save

    writer = _Writer(model)
    if isinstance(model, CNN7):
        output = _write_cnn7(writer, model)
    elif isinstance(model, TSSLAlexNet):
        output = _write_alexnet(writer, model)
    elif isinstance(model, SpikingVGG):
        output = _write_vgg(writer, model)
    else:
        raise TypeError(f"deploy export takes the zoo's SpikingVGG, CNN7 and TSSLAlexNet models, not {type(model).__name__}")
    entry = getattr(model, "entry", None)
    network = {
        "model_name": entry.name if entry is not None else type(model).__name__,
        "T": int(model.T),
        "num_classes": int(model.num_classes),
        "input": {
            "shape": [3, 32, 32],
            "layout": "C,H,W; RGB",
            "scaling": "x = (pixel / 255 - mean[c]) / std[c]",
            "mean": list(entry.mean) if entry is not None else None,
            "std": list(entry.std) if entry is not None else None,
            "encoding": "the same x is the input at each of the T steps",
        },
        "ops": writer.ops,
        "output": output,
    }
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "network": json.dumps(network)}
    data = canonical_safetensors(save(writer.tensors, metadata=metadata))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Reading and simulating (numpy only)


class DeployNet:
    """A deploy file in memory: ``network`` (the JSON description) and its ``tensors``."""

    def __init__(self, network: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> None:
        self.network = network
        self.tensors = tensors

    @property
    def T(self) -> int:
        return self.network["T"]

    def weight(self, op: Dict[str, Any]) -> Tuple[np.ndarray, float]:
        """``(values, scale)``: integer codes (as float64) and their scale, or fp32 weights and 1."""
        spec = op["weight"]
        raw = self.tensors[spec["tensor"]]
        if spec["encoding"] == "float32":
            return raw.astype(np.float64), 1.0
        if spec["encoding"] == "bin1":
            codes = unpack_codes(torch.from_numpy(raw.copy()), spec["shape"], "bin").numpy()
        else:
            codes = unpack_ternary_2bit(raw, spec["shape"])
        return codes.astype(np.float64), spec["scale"]


def read_deploy(path: PathLike) -> DeployNet:
    """Parses the file by its documented layout (no safetensors library needed), checking every part
    the simulator reads, so that a malformed file is refused here rather than failing mid-simulation."""
    data = Path(path).read_bytes()
    _require(len(data) >= 8, path, "it is too short to hold a header")
    (header_len,) = struct.unpack("<Q", data[:8])
    _require(8 + header_len <= len(data), path, f"its header length {header_len} runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DeployFormatError(f"{path} has no JSON header; it is not a qsnn-zoo deploy file") from None
    _require(isinstance(header, dict), path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
        raise DeployFormatError(
            f"{path} is not a qsnn-zoo deploy file of version {FORMAT_VERSION}; write one with "
            "`qsnn-zoo export NAME --format deploy -o FILE`"
        )
    body = data[8 + header_len :]
    tensors = {key: _read_tensor(path, key, info, body) for key, info in header.items()}
    network = _read_network(path, metadata.get("network"), tensors)
    return DeployNet(network, tensors)


def _require(condition: bool, path: PathLike, problem: str) -> None:
    if not condition:
        raise DeployFormatError(
            f"{path}: {problem}; the file is damaged or not written by qsnn-zoo. Write it again with "
            "`qsnn-zoo export NAME --format deploy -o FILE`"
        )


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)


def _read_tensor(path: PathLike, key: str, info: Any, body: bytes) -> np.ndarray:
    _require(isinstance(info, dict) and info.get("dtype") in _TENSOR_DTYPES and _is_shape(info.get("shape")),
             path, f"tensor {key!r} has no known dtype {sorted(_TENSOR_DTYPES)} and shape")
    dtype = np.dtype(_TENSOR_DTYPES[info["dtype"]]).newbyteorder("<")
    offsets = info.get("data_offsets")
    _require(_is_shape(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1] <= len(body), path,
             f"tensor {key!r} has data offsets {offsets!r} outside the file's {len(body)} data bytes")
    begin, end = offsets
    _require(end - begin == int(np.prod(info["shape"])) * dtype.itemsize, path,
             f"tensor {key!r} has {end - begin} bytes for shape {info['shape']} of {info['dtype']}")
    return np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"])


def _read_network(path: PathLike, text: Any, tensors: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The network description, with the fields the simulator relies on checked."""
    try:
        network = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        network = None
    _require(isinstance(network, dict), path, "its metadata has no JSON 'network' description")
    T = network.get("T")
    _require(isinstance(T, int) and not isinstance(T, bool) and T >= 1, path, f"T is {T!r}, not a positive int")
    ops, output = network.get("ops"), network.get("output")
    _require(isinstance(ops, list) and ops and all(isinstance(op, dict) for op in ops), path, "it has no list of ops")
    _require(isinstance(output, dict) and output.get("decode") in ("mean", "sum", "psp_sum"), path,
             "its output decoding is not one of mean, sum, psp_sum")
    for op in ops:
        _require(op.get("op") in ("conv2d", "linear", "sum_pool2d", "flatten"), path, f"op {op.get('op')!r} is unknown")
        if op["op"] in ("conv2d", "linear"):
            weight, neuron = op.get("weight"), op.get("neuron")
            _require(isinstance(weight, dict) and weight.get("encoding") in ("float32", *BITS), path,
                     f"op {op.get('name')!r} has no weight of a known encoding")
            optional = (op.get("bias"), neuron.get("v_init") if isinstance(neuron, dict) else None)
            wanted = [weight.get("tensor"), *(key for key in optional if key is not None)]
            missing = [key for key in wanted if not isinstance(key, str) or key not in tensors]
            _require(not missing, path, f"op {op.get('name')!r} refers to tensors {missing} that the file lacks")
    return network


def conv2d(x: np.ndarray, weight: np.ndarray, stride: Sequence[int], padding: Sequence[int], groups: int) -> np.ndarray:
    """``[N, C, H, W]`` (*) ``[O, C/groups, kh, kw]`` as one im2col matrix product per group."""
    out_channels, _, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    n, c, ho, wo = windows.shape[:4]
    cols = windows.reshape(n, groups, c // groups, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    cols = cols.reshape(groups, n * ho * wo, -1)
    kernels = weight.reshape(groups, out_channels // groups, -1).transpose(0, 2, 1)
    out = cols @ kernels
    return out.reshape(groups, n, ho, wo, -1).transpose(1, 0, 4, 2, 3).reshape(n, out_channels, ho, wo)


def _synapse(net: DeployNet, op: Dict[str, Any], h: np.ndarray, gain: float) -> np.ndarray:
    """The input current ``scale * gain * (W (*) h) + bias`` of every step, time folded into the batch."""
    values, scale = net.weight(op)
    folded = h.reshape(-1, *h.shape[2:])
    if op["op"] == "conv2d":
        acc = conv2d(folded, values, op["stride"], op["padding"], op["groups"])
    else:
        acc = folded @ values.T
    current = (scale * gain) * acc
    if op["bias"] is not None:
        bias = net.tensors[op["bias"]].astype(np.float64)
        current = current + (bias.reshape(-1, 1, 1) if op["op"] == "conv2d" else bias)
    return current.reshape(*h.shape[:2], *current.shape[1:])


def _neuron(net: DeployNet, spec: Dict[str, Any], current: np.ndarray) -> Tuple[np.ndarray, float]:
    """Spikes ``[T, B, ...]`` (0/1) and their amplitude."""
    spikes = np.zeros_like(current)
    u = np.zeros_like(current[0])
    threshold = spec["threshold"]
    if spec["model"] == "lif":
        o = np.zeros_like(u)
        for t, i_t in enumerate(current):
            u = spec["decay"] * u * (1 - o) + i_t
            o = (u > threshold).astype(u.dtype)
            spikes[t] = o
        return spikes, 1.0
    if spec["model"] == "tssl":
        keep_m, keep_s = 1 - 1 / spec["tau_m"], 1 - 1 / spec["tau_s"]
        syn = np.zeros_like(u)
        for t, i_t in enumerate(current):
            syn = keep_s * syn + i_t / spec["tau_s"]
            u = keep_m * u + syn
            o = (u > threshold).astype(u.dtype)
            u = u * (1 - o)
            spikes[t] = o
        return spikes, 1.0
    if spec["v_init"] is not None:
        u = u + net.tensors[spec["v_init"]].astype(np.float64)
    for t, i_t in enumerate(current):
        u = u + i_t + spec["bias_per_step"]
        o = (u >= threshold).astype(u.dtype)
        u = u - threshold * o
        spikes[t] = o
    return spikes, spec["spike_amplitude"]


def sum_pool2d(h: np.ndarray) -> np.ndarray:
    return h.reshape(*h.shape[:-2], h.shape[-2] // 2, 2, h.shape[-1] // 2, 2).sum(axis=(-3, -1))


def simulate(net: DeployNet, x: np.ndarray, record: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
    """Per-step outputs ``[T, B, K]`` for normalised images ``x[B, 3, 32, 32]``.

    ``record``, when given, receives every spiking layer's 0/1 spikes ``[T, B, ...]`` by op name.
    """
    h = np.broadcast_to(np.asarray(x, np.float64), (net.T, *x.shape))
    gain = 1.0
    for op in net.network["ops"]:
        if op["op"] == "flatten":
            h = h.reshape(*h.shape[:2], -1)
        elif op["op"] == "sum_pool2d":
            h, gain = sum_pool2d(h), gain * op["gain"]
        else:
            h, gain = _synapse(net, op, h, gain), 1.0
            if op["neuron"] is not None:
                h, gain = _neuron(net, op["neuron"], h)
                if record is not None:
                    record[op["name"]] = h
    output = net.network["output"]
    if output["decode"] == "psp_sum":
        psp, a = np.zeros_like(h), np.zeros_like(h[0])
        for t, o in enumerate(h):
            a = (1 - 1 / output["tau_s"]) * a + o / output["tau_s"]
            psp[t] = a
        return psp
    return h


def scores(net: DeployNet, steps: np.ndarray) -> np.ndarray:
    """Class scores ``[B, K]`` from :func:`simulate`'s per-step outputs, as the file's decoding says."""
    return steps.mean(0) if net.network["output"]["decode"] == "mean" else steps.sum(0)


def normalise(net: DeployNet, images: np.ndarray) -> np.ndarray:
    """uint8 ``[B, 32, 32, 3]`` images -> the float input ``[B, 3, 32, 32]`` the file specifies."""
    spec = net.network["input"]
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def predict(path: PathLike, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Predicted classes of uint8 ``[B, 32, 32, 3]`` images by the numpy reference simulator."""
    net = read_deploy(path)
    out = [scores(net, simulate(net, normalise(net, images[i : i + batch_size]))).argmax(1) for i in range(0, len(images), batch_size)]
    return np.concatenate(out)
