"""Export to the Neuromorphic Intermediate Representation (NIR, https://neuroir.org).

NIR nodes are continuous-time ODEs; our models are discrete-time. Every graph we write states its
time step ``dt`` and the discrete-time semantics below (graph metadata); under them it is exact.
They are the ones snnTorch's NIR import uses; docs/export.md derives every parameter.

STBP LIF and TSSL-BP map exactly. SNN-Calibration's IF compares with ``>=`` where NIR has only
``>``, so its export needs ``allow_approximate=True``.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..layers.quant import is_quantized
from ..models.alexnet import POOL_WEIGHT, TSSLAlexNet
from ..models.cnn7 import CNN7
from ..models.vgg import SpikingVGG

TIME_SEMANTICS = (
    "One model step is one forward-Euler step of length dt. Nodes are evaluated in the order of the graph's "
    "forward edges; an edge that closes a cycle carries its source's value of the previous step (zero at the "
    "first step); a node's input is the sum of its incoming edges. LIF/IF/CubaLIF integrate, fire where "
    "v > v_threshold, then set v = v_reset in the same step; CubaLIF first updates its synaptic current "
    "(tau_syn dI/dt = -I + w_in x), then the membrane integrates the new current. I: v += dt r x. "
    "LI: v += dt/tau (v_leak - v + r x), output v. Threshold: x > threshold."
)

# Seconds per model step. snnTorch's NIR import assumes 1e-4, so the same file imports there too;
# every time constant below is a multiple of it, so the choice changes no spike.
DT = 1e-4

IF_TIE_WARNING = (
    "SNN-Calibration's IF neuron fires when u >= threshold; NIR's Threshold fires only when u > threshold. "
    "The graph's Threshold nodes hold the largest float below each threshold (in the file's float dtype), "
    "so 'u > that' equals 'u >= threshold' for every potential computed in that dtype; a simulator that "
    "computes in wider arithmetic, or in exact reals as NIR's equations are written, differs where a "
    "potential falls strictly between the two floats."
)
V_INIT_WARNING = (
    "NIR 1.0 has no initial state; the IF layers' calibrated initial potentials are stored as the "
    "integrator nodes' metadata['v_init'], which NIR tools other than qsnn-zoo's ignore."
)


class ApproximateExportError(ValueError):
    """The model has no exact NIR form; the message says what differs and how to export anyway."""


def _nir():
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the nir package: pip install qsnn-zoo[nir]") from None
    return nir


def to_nir(model: nn.Module, allow_approximate: bool = False, dt: float = DT):
    """The spiking form of a zoo model as a ``nir.NIRGraph``, in the model's float dtype.

    Spiking nodes carry ``metadata["model_module"]``, the name of the model's neuron module whose
    spikes they reproduce. Quantized layers carry their integer codes and scale in metadata.
    """
    nir = _nir()
    if isinstance(model, CNN7):
        graph = _GraphBuilder(nir, model, dt, exact=True)
        _cnn7(graph, model)
    elif isinstance(model, TSSLAlexNet):
        graph = _GraphBuilder(nir, model, dt, exact=True)
        _alexnet(graph, model)
    elif isinstance(model, SpikingVGG):
        reasons = [IF_TIE_WARNING]
        if any(layer.neuron.initial_potential is not None for layer in model.features):
            reasons.append(V_INIT_WARNING)
        if not allow_approximate:
            raise ApproximateExportError(
                " ".join(reasons) + " Pass allow_approximate=True (CLI: --allow-approximate) to export anyway."
            )
        warnings.warn(" ".join(reasons), stacklevel=2)
        graph = _GraphBuilder(nir, model, dt, exact=False, approximations=reasons)
        _vgg(graph, model)
    else:
        raise TypeError(
            f"to_nir exports the zoo's SpikingVGG, CNN7 and TSSLAlexNet models, not {type(model).__name__}"
        )
    return graph.build()


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class _GraphBuilder:
    """Collects nodes and edges of a chain of layers, tracking the current node and its shape."""

    def __init__(self, nir, model: nn.Module, dt: float, exact: bool, approximations: Sequence[str] = ()):
        self.nir = nir
        self.model = model
        self.dtype = next(model.parameters()).detach().cpu().numpy().dtype
        self.dt = dt
        self.shape: Tuple[int, ...] = (3, 32, 32)
        self.nodes: Dict[str, object] = {"input": nir.Input(input_type={"input": np.array(self.shape)})}
        self.edges: List[Tuple[str, str]] = []
        self.last = "input"
        self.metadata = {"exact": "yes" if exact else "no", "approximations": " ".join(approximations)}
        self.io_metadata: Dict[str, str] = {}

    def add(self, name: str, node, shape: Optional[Sequence[int]] = None, source: Optional[str] = None) -> str:
        self.nodes[name] = node
        self.edges.append((source or self.last, name))
        self.last = name
        if shape is not None:
            self.shape = tuple(int(d) for d in shape)
        return name

    def full(self, value: float, dtype=np.float64) -> np.ndarray:
        """A parameter array over the current shape. Neuron constants are float64 whatever the
        weights' dtype: in float32, dt / tau would differ from the model's decay in the 8th digit."""
        return np.full(self.shape, value, dtype=dtype)

    def synapse(self, name: str, layer: nn.Module, extra_bias: Optional[torch.Tensor] = None) -> str:
        """A Conv2d, Affine or Linear node with the layer's exact weights (scale * code when quantized)."""
        weight = layer.quantized_weight() if is_quantized(layer) else layer.weight
        weight = _array(weight.to(self.model_dtype))
        bias = None if layer.bias is None else layer.bias.detach()
        if extra_bias is not None:
            bias = extra_bias if bias is None else bias + extra_bias
        metadata = {"model_module": name}
        if is_quantized(layer):
            metadata.update(
                quant=layer.quant,
                weight_codes=_array(layer.codes()),
                weight_scale=float(layer.scale),
            )
        if isinstance(layer, nn.Conv2d):
            out_shape = (layer.out_channels, *conv_output_hw(layer, self.shape[1:]))
            node = self.nir.Conv2d(
                input_shape=self.shape[1:],
                weight=dense_kernel(weight, layer.groups),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=1,
                bias=np.zeros(layer.out_channels, self.dtype) if bias is None else _array(bias.to(self.model_dtype)),
                metadata=metadata,
            )
        elif bias is None:
            out_shape = (layer.out_features,)
            node = self.nir.Linear(weight=weight, metadata=metadata)
        else:
            out_shape = (layer.out_features,)
            node = self.nir.Affine(weight=weight, bias=_array(bias.to(self.model_dtype)), metadata=metadata)
        return self.add(name, node, out_shape)

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def flatten(self) -> str:
        return self.add("flatten", self.nir.Flatten(input_type={"input": np.array(self.shape)}, start_dim=0, end_dim=-1), (int(np.prod(self.shape)),))

    def build(self):
        entry = getattr(self.model, "entry", None)
        self.add("output", self.nir.Output(output_type={"output": np.array(self.shape)}))
        metadata = {
            "source": "qsnn-zoo",
            "model_name": entry.name if entry is not None else type(self.model).__name__,
            "T": int(self.model.T),
            "dt": float(self.dt),
            "time_semantics": TIME_SEMANTICS,
            **self.metadata,
            **self.io_metadata,
        }
        return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)


def dense_kernel(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's kernel as the equivalent dense one (zeros between groups).

    NIR 1.0's Conv2d derives its input channels from weight.shape[1], ignoring ``groups``, so a
    grouped conv (VGG's depthwise AvgPoolConv) would fail NIR's type check on every read. The
    added products are exact zeros, so the dense conv computes the same values.
    """
    if groups == 1:
        return weight
    out_channels, per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    dense = np.zeros((out_channels, per_group * groups, *weight.shape[2:]), weight.dtype)
    for o in range(out_channels):
        g = o // out_per_group
        dense[o, g * per_group : (g + 1) * per_group] = weight[o]
    return dense


def conv_output_hw(conv: nn.Conv2d, hw: Sequence[int]) -> Tuple[int, int]:
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    )


def _cnn7(graph: _GraphBuilder, model: CNN7) -> None:
    """STBP: u_t = decay * u_{t-1} * (1 - o_{t-1}) + I_t, o_t = [u_t > V_th].

    NIR LIF under forward Euler: v_t = (1 - dt/tau) v'_{t-1} + (dt r / tau) I_t with v' the
    post-reset potential (v_reset = 0). tau = dt / (1 - decay) and r = tau / dt give
    v_t = decay * v'_{t-1} + I_t, and since v'_{t-1} = u_{t-1} (1 - o_{t-1}) the two are equal.
    """
    graph.io_metadata = {
        "input_encoding": "the normalised image [3, 32, 32], the same current at every one of the T steps",
        "output_decoding": "output spikes; class scores are their mean over the T steps (firing rate)",
    }
    for name in model.layer_names:
        if name == "fc1":
            graph.flatten()
        graph.synapse(name, getattr(model, name))
        neuron = model.neurons[name]
        tau = graph.dt / (1 - neuron.decay)
        graph.add(
            f"{name}.neuron",
            graph.nir.LIF(
                tau=graph.full(tau),
                r=graph.full(tau / graph.dt),
                v_leak=graph.full(0.0),
                v_threshold=graph.full(neuron.threshold),
                v_reset=graph.full(0.0),
                metadata={"model_module": f"neurons.{name}"},
            ),
        )


def _alexnet(graph: _GraphBuilder, model: TSSLAlexNet) -> None:
    """TSSL-BP: the PSP filter a = psp(o) sits after each neuron; because W, pooling and flatten
    are linear and time-invariant, W * psp(o) = psp(W * o), so the filter moves onto the next
    layer's CubaLIF synapse. Forward Euler with tau_syn = tau_s dt, w_in = 1 gives
    I_t = (1 - 1/tau_s) I_{t-1} + (W o)_t / tau_s = W a_t; tau_mem = tau_m dt, r = tau_m gives
    v_t = (1 - 1/tau_m) v'_{t-1} + I_t = u~_t, fire on ``>``, reset to 0 at once. The input PSP
    psp(x) likewise becomes conv1's synapse, and the output PSP is an LI node (tau_s dt, r = 1).
    """
    graph.io_metadata = {
        "input_encoding": "the normalised image [3, 32, 32], the same current at every one of the T steps "
        "(conv1's synaptic filter turns it into the model's PSP input)",
        "output_decoding": "output PSPs (the LI node); class scores are their sum over the T steps",
    }
    for name in model.layer_names:
        if name == "fc1":
            graph.flatten()
        graph.synapse(name, getattr(model, name))
        neuron = model.neurons[name]
        graph.add(
            f"{name}.neuron",
            graph.nir.CubaLIF(
                tau_syn=graph.full(neuron.tau_s * graph.dt),
                tau_mem=graph.full(neuron.tau_m * graph.dt),
                r=graph.full(neuron.tau_m),
                v_leak=graph.full(0.0),
                v_threshold=graph.full(neuron.threshold),
                v_reset=graph.full(0.0),
                w_in=graph.full(1.0),
                metadata={"model_module": f"neurons.{name}"},
            ),
        )
        if name in model.pool_after:
            c, h, w = graph.shape
            graph.add(f"{name}.pool", graph.nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])), (c, h // 2, w // 2))
            graph.add(f"{name}.pool_gain", graph.nir.Scale(scale=graph.full(POOL_WEIGHT)))
    tau_s = model.neurons[model.layer_names[-1]].tau_s
    graph.add("psp", graph.nir.LI(tau=graph.full(tau_s * graph.dt), r=graph.full(1.0), v_leak=graph.full(0.0)))


def _vgg(graph: _GraphBuilder, model: SpikingVGG) -> None:
    """SNN-Calibration IF: u += I_t + V_th shift / T; s = V_th [u >= V_th]; u -= s.

    NIR's IF resets to zero, so the soft reset is built from primitives: an integrator I
    (r = 1/dt, so v += I per step), a Threshold, and a Scale(-V_th) edge from the Threshold back
    into the integrator, which subtracts V_th one step later, before the next integration, as the
    model does. The shift goes into the conv bias with the calibration bias. Spikes of amplitude
    V_th (the fp32 entries) go through a Scale(V_th) node; thresholds of 1 need none. ``>=`` is
    written as ``>`` the next float down (see IF_TIE_WARNING): the AvgPoolConv's potentials are
    often exact multiples of 1/8 that tie with the threshold, where a plain ``>`` would differ.
    """
    graph.io_metadata = {
        "input_encoding": "the normalised image [3, 32, 32], the same current at every one of the T steps",
        "output_decoding": "per-step logits of the classifier; class scores are their sum over the T steps",
    }
    for i, layer in enumerate(model.features):
        if not isinstance(layer.norm, nn.Identity):
            raise ValueError(
                "NIR export takes the zoo's BN-free VGG16; fold BatchNorm into the convolutions before exporting"
            )
        name = f"features.{i}"
        neuron = layer.neuron
        threshold = float(neuron.threshold)
        shift = neuron.threshold.to(graph.model_dtype) * neuron.shift / neuron.T
        graph.synapse(name, layer.conv, extra_bias=layer.calib_bias.to(graph.model_dtype) + shift)
        integrator_metadata = {}
        if neuron.initial_potential is not None:
            integrator_metadata["v_init"] = np.broadcast_to(_array(neuron.initial_potential.to(graph.model_dtype)), graph.shape).copy()
        integrator = graph.add(f"{name}.integrator", graph.nir.I(r=graph.full(1 / graph.dt), metadata=integrator_metadata))
        spike = graph.add(
            f"{name}.spike",
            graph.nir.Threshold(
                threshold=graph.full(np.nextafter(graph.dtype.type(threshold), graph.dtype.type(-np.inf)), graph.dtype),
                metadata={"model_module": f"{name}.neuron", "model_threshold": threshold, "model_comparison": ">="},
            ),
        )
        graph.add(f"{name}.reset", graph.nir.Scale(scale=graph.full(-threshold)))
        graph.edges.append((f"{name}.reset", integrator))
        graph.last = spike
        if threshold != 1.0:
            graph.add(f"{name}.amplitude", graph.nir.Scale(scale=graph.full(threshold)))
    graph.flatten()
    graph.synapse("classifier", model.classifier)
