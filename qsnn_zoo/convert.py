"""ANN-to-SNN conversion of :class:`~qsnn_zoo.models.vgg.SpikingVGG` (SNN-Calibration, docs/method.md §E.3).

The steps, each a function: fold BatchNorm into the convs (step 1), search one threshold per
spiking layer (step 3), correct the per-channel bias of the SNN in forward order (step 5, "light"
calibration), and rescale to unit thresholds (step 6) for the quantized children (docs/method.md §E.4).
:func:`potential_calibrate_` is the original's potential calibration, kept out of the recipe and used to
measure what it would change (scripts/diagnose_conversion.py).
:func:`convert_ann_to_snn` runs steps 1, 3 and 5 and gives the fp32 entry's published form.
No training happens here: every function runs under ``torch.no_grad`` with dropout off.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .layers.quant import quantized_modules
from .layers.time import constant_over_time, over_time
from .models.vgg import SpikingVGG

CALIB_MODES = ("light", "none")
NUM_CANDIDATES = 95  # V_i = max(a) * (1 - 0.01 i), i = 0..94 (docs/method.md §E.3 step 3)
# Elements of the [candidates, activations] error table evaluated at once: 2^25 float32 values are
# 128 MiB, so VGG16's first layer at batch 128 (8.4M activations) takes 4 candidates per pass.
CANDIDATE_TABLE_ELEMENTS = 1 << 25

Batch = Union[torch.Tensor, Sequence[torch.Tensor]]


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Dropout off while measuring, the caller's train/eval state restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _images(batch: Batch) -> torch.Tensor:
    """Accepts an image tensor or an ``(images, labels)`` pair, as loaders yield them."""
    return batch if isinstance(batch, torch.Tensor) else batch[0]


def _check_vgg(model: nn.Module) -> None:
    if not isinstance(model, SpikingVGG):
        raise TypeError(f"conversion works on SpikingVGG models, got {type(model).__name__}")


@torch.no_grad()
def fold_bn_(model: SpikingVGG) -> SpikingVGG:
    """Folds every BatchNorm2d into its conv and replaces it by Identity (docs/method.md §E.3 step 1).

    W' = W * gamma / sqrt(var + eps) per output channel, b' = gamma * (b - mu) / sqrt(var + eps) + beta.
    Exact for the eval-mode network (BN with running statistics).
    """
    _check_vgg(model)
    for layer in model.features:
        bn = layer.norm
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        conv = layer.conv
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros_like(bn.running_mean))
        conv.weight.mul_(gain.view(-1, 1, 1, 1))
        conv.bias.copy_(gain * (conv.bias - bn.running_mean) + bn.bias)
        layer.norm = nn.Identity()
    return model


def quantization_error(a: torch.Tensor, thresholds: torch.Tensor, T: int) -> torch.Tensor:
    """mean((a - floor(clamp(a T / V, 0, T)) V / T)^2) for each V in ``thresholds`` (one batched pass
    per chunk of candidates, so memory stays within :data:`CANDIDATE_TABLE_ELEMENTS`)."""
    flat = a.reshape(1, -1)
    chunk = max(1, CANDIDATE_TABLE_ELEMENTS // flat.shape[1])
    errors = []
    for v in thresholds.split(chunk):
        v = v.view(-1, 1)
        levels = torch.floor(torch.clamp(flat * T / v, 0, T))
        errors.append((flat - levels * v / T).pow(2).mean(dim=1))
    return torch.cat(errors)


def best_threshold(a: torch.Tensor, T: int, calib: str = "light") -> torch.Tensor:
    """The threshold of one batch of post-ReLU activations ``a`` (docs/method.md §E.3 step 3).

    ``"light"``: the candidate V_i = max(a)(1 - 0.01 i), i = 0..94, of least quantization error;
    ``"none"``: max(a).
    """
    top = a.max()
    if calib == "none":
        return top
    fractions = 1 - 0.01 * torch.arange(NUM_CANDIDATES, device=a.device, dtype=a.dtype)
    candidates = top * fractions
    return candidates[torch.argmin(quantization_error(a, candidates, T))]


def _check_calib(calib: str) -> None:
    if calib not in CALIB_MODES:
        raise ValueError(f"calib must be one of {CALIB_MODES}, got {calib!r}")


def search_thresholds(
    model: SpikingVGG, batches: Iterable[Batch], T: int, calib: str = "light", momentum: float = 0.9
) -> List[float]:
    """Sets each spiking layer's ``neuron.threshold`` from ANN activations on ``batches``.

    docs/method.md §E.3 step 3: per batch and layer, :func:`best_threshold` of the post-ReLU output of the
    ANN; across batches V <- momentum V + (1 - momentum) V_batch, the first batch initialising V.
    SNN-Calibration uses 7 augmented training batches of 128. Returns the thresholds in layer order.
    """
    _check_vgg(model)
    _check_calib(calib)
    thresholds: Optional[List[torch.Tensor]] = None
    with _eval_mode(model):
        for batch in batches:
            x = _images(batch)
            found = []
            for layer in model.features:
                x = layer.ann(x)
                found.append(best_threshold(x, T, calib))
            if thresholds is None:
                thresholds = found
            else:
                thresholds = [momentum * v + (1 - momentum) * b for v, b in zip(thresholds, found)]
    if thresholds is None:
        raise ValueError("search_thresholds needs at least one batch of images; got an empty iterable")
    for layer, v in zip(model.features, thresholds):
        layer.neuron.threshold.fill_(float(v))
    return [float(v) for v in thresholds]


def _layer_spikes(model: SpikingVGG, index: int, inputs: torch.Tensor) -> torch.Tensor:
    """Spikes ``[T, B, ...]`` of layer ``index`` given its input: the image for the first layer
    (direct encoding), the previous layer's spikes for the others."""
    layer, fold = model.features[index], model.fold_time
    if index == 0:
        return layer.snn(constant_over_time(layer.synapse, inputs, model.T, fold))
    return layer.snn(over_time(layer.synapse, inputs, fold))


def _calibrate_in_forward_order(
    model: SpikingVGG, batch: Batch, correct: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
) -> List[torch.Tensor]:
    """``correct(layer, o, r)`` for each layer in forward order, measured with the earlier layers already
    corrected: o the ANN's post-ReLU output, r the SNN's spikes averaged over T. Returns what it returns."""
    _check_vgg(model)
    x = _images(batch)
    corrections = []
    with _eval_mode(model):
        ann, spikes = x, x
        for index, layer in enumerate(model.features):
            ann = layer.ann(ann)
            rate = _layer_spikes(model, index, spikes).mean(dim=0)
            corrections.append(correct(layer, ann, rate))
            spikes = _layer_spikes(model, index, spikes)  # run again: the next layer sees this one corrected
    return corrections


def light_calibrate_(model: SpikingVGG, batch: Batch) -> List[torch.Tensor]:
    """docs/method.md §E.3 step 5: per-channel bias correction of the SNN, layer by layer in forward order.

    For each layer, with the earlier layers already corrected: e_c = mean(r_c) - mean(o_c), where
    o is the ANN's post-ReLU output and r the SNN's spikes averaged over T, means over batch and
    space; then ``calib_bias -= e``. ``calib_bias`` acts in SNN mode only, so the ANN stays exact.
    Unlike the original, the AvgPoolConv layers keep their corrections: the original stores them
    as plain attributes that never reach the state dict and are lost (docs/method.md §F.3); here they are
    buffers, saved with the model, so the published SNN is the one that was calibrated.
    Returns the corrections e per layer.
    """

    def correct(layer: nn.Module, ann: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        error = rate.mean(dim=(0, 2, 3)) - ann.mean(dim=(0, 2, 3))
        layer.calib_bias.sub_(error.to(layer.calib_bias.dtype))
        return error

    return _calibrate_in_forward_order(model, batch, correct)


def potential_calibrate_(model: SpikingVGG, batch: Batch) -> List[torch.Tensor]:
    """SNN-Calibration's potential calibration (docs/method.md §E.3, last paragraph), layer by layer in forward order.

    For each layer, with the earlier layers already calibrated: the neuron's initial potential grows by
    T (mean(o) - mean(r)), means over the batch only, so one value per neuron ``[1, C, H, W]``, where o is
    the ANN's post-ReLU output and r the SNN's spikes averaged over T (spikes carry the threshold). From
    zero this is the original's ``mem_pot_init``; after light calibration it corrects what the channel
    biases left. Not part of the published recipe (docs/method.md §E.3): the registry's models have no
    initial-potential tensor, so a model calibrated here saves one that their strict loading refuses.
    Returns the added potentials per layer.
    """

    def correct(layer: nn.Module, ann: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        potential = model.T * (ann.mean(dim=0, keepdim=True) - rate.mean(dim=0, keepdim=True))
        _add_initial_potential(layer.neuron, potential)
        return potential

    return _calibrate_in_forward_order(model, batch, correct)


def _add_initial_potential(neuron: nn.Module, potential: torch.Tensor) -> None:
    start = neuron.initial_potential
    total = potential.clone() if start is None else start + potential
    if "initial_potential" in dict(neuron.named_buffers(recurse=False)):
        neuron.initial_potential = total
    else:
        # A buffer, as IFNeuron(potential_shape=...) holds it: it moves with the model and is saved with it.
        del neuron.initial_potential
        neuron.register_buffer("initial_potential", total)


def set_time_steps_(model: SpikingVGG, T: int) -> SpikingVGG:
    """The simulation length of the model and of every neuron (the 0.5/T shift depends on it)."""
    model.T = T
    for _, neuron in model.spiking_neurons():
        neuron.T = T
    return model


def convert_ann_to_snn(
    model: SpikingVGG,
    calib_batches: Iterable[Batch],
    T: int = 32,
    calib: str = "light",
    bias_batch: Optional[Batch] = None,
) -> SpikingVGG:
    """ANN -> SNN in place: fold BN, search thresholds on ``calib_batches``, light-calibrate.

    The result is in mode "snn" with thresholds unfolded (spike amplitude = threshold): the ANN
    weights plus thresholds and calibration biases, the fp32 entry's published form.
    ``bias_batch`` is the light-calibration batch; the original draws a fresh augmented training
    batch for it, and when it is None the first of ``calib_batches`` is used. ``calib="none"``
    takes max(a) thresholds and skips the bias correction, as ``--calib none`` does.
    """
    _check_vgg(model)
    _check_calib(calib)
    batches = list(calib_batches)
    fold_bn_(model)
    set_time_steps_(model, T)
    search_thresholds(model, batches, T, calib=calib)
    if calib == "light":
        light_calibrate_(model, batches[0] if bias_batch is None else bias_batch)
    return model.set_mode("snn")


def _vgg_cfg(model: SpikingVGG) -> tuple:
    return tuple("M" if layer.is_pool else layer.conv.out_channels for layer in model.features)


def _dropout_p(model: SpikingVGG) -> float:
    return next((layer.dropout.p for layer in model.features if isinstance(layer.dropout, nn.Dropout)), 0.0)


def to_unit_threshold_snn(model: SpikingVGG, quant: Optional[str] = None) -> SpikingVGG:
    """A new SNN with every threshold 1 and the same spikes (docs/method.md §E.3 step 6, loaded as in E.4).

    With thresholds V_1..V_L: W_1/V_1, b_1/V_1; later layers W_l V_{l-1}/V_l, b_l/V_l, so the
    frozen AvgPoolConv weights become V_{l-1}/(4 V_l). ``calib_bias`` is a bias and is divided by
    V_l like one. Every membrane potential is then u/V_l, so each neuron fires at the same steps
    with spikes of 1 instead of V_l. Quantized layers (``quant`` "bin"/"ter") start from the
    rescaled weights with s = mean|W| (docs/method.md §B.1).

    The classifier is copied unchanged, not multiplied by V_L: the original does the same, so its
    input drops from V_L-valued to 1-valued spikes. We keep this quirk because it is the state
    CBP-QSNN starts from, and CBP retrains the classifier anyway (docs/method.md §E.3 step 6, §F.11).
    """
    _check_vgg(model)
    if any(not isinstance(layer.norm, nn.Identity) for layer in model.features):
        raise ValueError("the model still has BatchNorm layers; run fold_bn_(model) (or convert_ann_to_snn) first")
    first = model.features[0]
    snn = SpikingVGG(
        num_classes=model.num_classes,
        T=model.T,
        quant=quant,
        dropout=_dropout_p(model),
        shift=first.neuron.shift,
        alpha=first.neuron.alpha,
        mode="snn",
        cfg=_vgg_cfg(model),
    ).to(device=model.classifier.weight.device, dtype=model.classifier.weight.dtype)
    snn.set_backend(model.backend)
    with torch.no_grad():
        previous = torch.ones((), dtype=snn.classifier.weight.dtype, device=snn.classifier.weight.device)
        for src, dst in zip(model.features, snn.features):
            v = src.neuron.threshold.to(previous)
            dst.conv.weight.copy_(src.conv.weight * (previous / v))
            if src.conv.bias is not None:
                dst.conv.bias.copy_(src.conv.bias / v)
            dst.calib_bias.copy_(src.calib_bias / v)
            previous = v
        snn.classifier.load_state_dict(model.classifier.state_dict())
    for _, module in quantized_modules(snn):
        module.init_scale_()
    return snn.train(model.training)
