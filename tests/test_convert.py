"""ANN-to-SNN conversion (docs/method.md §E.3): BN folding, threshold search, light calibration, unit thresholds."""
import copy

import pytest
import torch
from torch import nn

from qsnn_zoo import convert
from qsnn_zoo.convert import (
    best_threshold,
    convert_ann_to_snn,
    fold_bn_,
    light_calibrate_,
    potential_calibrate_,
    search_thresholds,
    to_unit_threshold_snn,
)
from qsnn_zoo.layers.quant import QuantConv2d
from qsnn_zoo.models.vgg import SpikingVGG

SMALL_CFG = (4, "M", 6, "M")
# VGG16's topology (13 convs, 5 AvgPoolConvs) at a width that simulates in a second.
NARROW_VGG16_CFG = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M")


def _model(cfg=SMALL_CFG, T=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    return SpikingVGG(T=T, cfg=cfg, dropout=0.0, **kwargs).double().eval()


def _images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def converted_once():
    model = _model(SMALL_CFG, T=8)
    return convert_ann_to_snn(model, [_images(seed=2), _images(seed=3)], T=8, bias_batch=_images(seed=4))


@pytest.fixture
def converted(converted_once):
    return copy.deepcopy(converted_once)


def test_fold_bn_is_exact_in_eval_mode():
    model = _model(use_bn=True)
    model.features[0].conv.bias = None  # folding must also work for a conv without bias
    gen = torch.Generator().manual_seed(5)
    for layer in model.features:
        if isinstance(layer.norm, nn.BatchNorm2d):
            c = layer.norm.num_features
            layer.norm.running_mean.copy_(torch.randn(c, generator=gen))
            layer.norm.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            layer.norm.weight.data.copy_(torch.randn(c, generator=gen))
            layer.norm.bias.data.copy_(torch.randn(c, generator=gen))
    x = _images()
    before = model.forward_ann(x)
    fold_bn_(model)
    assert all(isinstance(layer.norm, nn.Identity) for layer in model.features)
    assert model.features[0].conv.bias is not None
    torch.testing.assert_close(model.forward_ann(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("table_elements", [convert.CANDIDATE_TABLE_ELEMENTS, 1])
def test_best_threshold_picks_analytic_optimum(monkeypatch, table_elements):
    # max(a) = 1 and every other value just above a level of V* = 0.8 (candidate i = 20) at T = 4:
    # V* quantizes them to within 0.001; any larger V drops 0.201 to level 0, any smaller V
    # shifts every level by >= 0.0025 and clips the maximum further.
    monkeypatch.setattr(convert, "CANDIDATE_TABLE_ELEMENTS", table_elements)
    bulk = torch.tensor([0.001, 0.201, 0.401, 0.601, 0.801], dtype=torch.float64).repeat(40)
    a = torch.cat([bulk, torch.tensor([1.0], dtype=torch.float64)]).view(1, 1, 3, 67)
    assert float(best_threshold(a, T=4)) == pytest.approx(0.8)
    assert float(best_threshold(a, T=4, calib="none")) == 1.0


def test_quantization_error_matches_its_definition():
    a = torch.rand(3, 5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    candidates = torch.tensor([0.3, 0.7, 1.0], dtype=torch.float64)
    expected = [((a - torch.floor(torch.clamp(a * 8 / v, 0, 8)) * v / 8) ** 2).mean() for v in candidates]
    torch.testing.assert_close(convert.quantization_error(a, candidates, 8), torch.stack(expected))


@pytest.mark.parametrize("calib", ["light", "none"])
def test_search_thresholds_is_an_ema_over_batches(calib):
    model = _model()
    batches = [_images(seed=s) for s in (6, 7, 8)]
    per_batch = []
    with torch.no_grad():
        for x in batches:
            found = []
            for layer in model.features:
                x = layer.ann(x)
                found.append(float(best_threshold(x, 8, calib)))
            per_batch.append(found)
    expected = per_batch[0]
    for found in per_batch[1:]:
        expected = [0.9 * v + 0.1 * b for v, b in zip(expected, found)]
    result = search_thresholds(model, [(x, None) for x in batches], T=8, calib=calib)
    assert result == pytest.approx(expected)
    assert [float(layer.neuron.threshold) for layer in model.features] == pytest.approx(expected)


def _first_layer_rate_error(model, x):
    """Per-channel mean SNN rate minus mean ANN output of layer 0, measured through the model."""
    neuron = model.features[0].neuron
    neuron.monitor = True
    model(x)
    neuron.monitor = False
    rate = neuron.last_spikes.double().mean(0) * neuron.threshold
    ann = model.features[0].ann(x)
    return rate.mean(dim=(0, 2, 3)) - ann.mean(dim=(0, 2, 3))


def test_light_calibration_corrects_the_first_layer_mean_error():
    model = _model()
    x = _images(8, seed=9)
    search_thresholds(model, [x], T=8)
    error = _first_layer_rate_error(model, x)
    ann_before = model.forward_ann(x)
    errors = light_calibrate_(model, x)
    torch.testing.assert_close(errors[0], error)
    torch.testing.assert_close(model.features[0].calib_bias, -error)
    residual = _first_layer_rate_error(model, x)
    assert residual.abs().mean() < 0.5 * error.abs().mean()
    torch.testing.assert_close(model.forward_ann(x), ann_before, rtol=0, atol=0)


def test_light_calibration_measures_each_layer_after_correcting_the_earlier_ones():
    model = _model()
    x = _images(8, seed=9)
    search_thresholds(model, [x], T=8)
    reference = _model()
    reference.load_state_dict(model.state_dict())
    errors = light_calibrate_(model, x)
    reference.features[0].calib_bias.copy_(model.features[0].calib_bias)
    neuron = reference.features[1].neuron
    neuron.monitor = True
    reference(x)
    rate = neuron.last_spikes.double().mean(0) * neuron.threshold
    ann = reference.features[1].ann(reference.features[0].ann(x))
    torch.testing.assert_close(errors[1], rate.mean(dim=(0, 2, 3)) - ann.mean(dim=(0, 2, 3)))


def _neuron_rate_error(model, index, x):
    """Per-neuron mean over the batch of layer ``index``'s SNN output minus its ANN output, ``[1, C, H, W]``."""
    neuron = model.features[index].neuron
    neuron.monitor = True
    model(x)
    neuron.monitor = False
    rate = neuron.last_spikes.double().mean(0) * neuron.threshold
    ann = x
    for layer in model.features[: index + 1]:
        ann = layer.ann(ann)
    return (rate - ann).mean(dim=0, keepdim=True)


def test_potential_calibration_sets_each_neurons_start_from_its_mean_error_in_forward_order():
    model = _model()
    x = _images(8, seed=9)
    search_thresholds(model, [x], T=8)
    # A systematic error for the calibration to remove: layer 0's current raised by 0.1 threshold.
    model.features[0].calib_bias.fill_(0.1 * float(model.features[0].neuron.threshold))
    reference = copy.deepcopy(model)
    first_error = _neuron_rate_error(model, 0, x)
    ann_before = model.forward_ann(x)
    added = potential_calibrate_(model, x)
    torch.testing.assert_close(added[0], -8 * first_error)
    assert _neuron_rate_error(model, 0, x).abs().mean() < 0.5 * first_error.abs().mean()
    # Layer 1 is measured with layer 0 already calibrated.
    reference.features[0].neuron.initial_potential = added[0]
    torch.testing.assert_close(added[1], -8 * _neuron_rate_error(reference, 1, x))
    # A buffer, saved with the model; a second pass adds to it; the ANN is untouched.
    state = model.state_dict()
    torch.testing.assert_close(state["features.1.neuron.initial_potential"], added[1])
    again = potential_calibrate_(model, x)
    torch.testing.assert_close(model.features[0].neuron.initial_potential, added[0] + again[0])
    torch.testing.assert_close(model.forward_ann(x), ann_before, rtol=0, atol=0)


def test_convert_returns_the_snn_with_unfolded_thresholds(converted):
    model = converted
    assert model.mode == "snn"
    assert all(float(layer.neuron.threshold) > 0 for layer in model.features)
    assert any(layer.calib_bias.abs().sum() > 0 for layer in model.features)


def _spikes_and_logits(model, x):
    for _, neuron in model.spiking_neurons():
        neuron.monitor = True
    logits = model(x)
    return [n.last_spikes for _, n in model.spiking_neurons()], logits


def test_unit_threshold_snn_fires_the_same_spikes(converted):
    model = converted
    unit = to_unit_threshold_snn(model)
    thresholds = [layer.neuron.threshold for layer in model.features]
    assert all(float(layer.neuron.threshold) == 1.0 for layer in unit.features)
    pool, before_pool = unit.features[1], thresholds[0]
    torch.testing.assert_close(pool.conv.weight, torch.full_like(pool.conv.weight, 0.25) * before_pool / thresholds[1])
    assert not pool.conv.weight.requires_grad
    torch.testing.assert_close(pool.calib_bias, model.features[1].calib_bias / thresholds[1])

    x = _images(4, seed=10)
    spikes, logits = _spikes_and_logits(model, x)
    unit_spikes, unit_logits = _spikes_and_logits(unit, x)
    for layer_spikes, layer_unit_spikes in zip(spikes, unit_spikes):
        assert torch.equal(layer_spikes, layer_unit_spikes)
    # The classifier is not rescaled (docs/method.md §E.3 step 6): multiplying its input by V_L restores the logits.
    last = unit_spikes[-1].double().flatten(2) * thresholds[-1]
    torch.testing.assert_close(unit.classifier(last).sum(0), logits)
    assert not torch.allclose(unit_logits, logits)


@pytest.mark.parametrize("quant", ["bin", "ter"])
def test_unit_threshold_snn_quantized_scales_start_at_mean_abs_weight(converted, quant):
    model = converted
    reference = to_unit_threshold_snn(model)
    unit = to_unit_threshold_snn(model, quant=quant)
    assert not isinstance(unit.features[0].conv, QuantConv2d)
    conv = unit.features[2].conv
    assert isinstance(conv, QuantConv2d) and conv.quant == quant
    torch.testing.assert_close(conv.weight, reference.features[2].conv.weight)
    torch.testing.assert_close(conv.scale, conv.weight.abs().mean())


def test_unit_threshold_snn_needs_folded_bn():
    with pytest.raises(ValueError, match="fold_bn_"):
        to_unit_threshold_snn(_model(use_bn=True))


def test_bad_calib_mode_and_empty_batches_are_refused():
    with pytest.raises(ValueError, match="calib must be one of"):
        convert_ann_to_snn(_model(), [_images()], calib="advanced")
    with pytest.raises(ValueError, match="at least one batch"):
        search_thresholds(_model(), [], T=8)


def test_converted_vgg16_snn_approaches_the_ann_as_T_grows():
    # The SNN's output is the logits summed over T; their mean over T approaches the ANN's logits.
    # The "fast" backend folds T into the batch for the convs (on the CPU the neurons stay the
    # reference), which keeps this to seconds at T = 64.
    x = _images(4, seed=11)
    with torch.no_grad():
        ann = _model(NARROW_VGG16_CFG).forward_ann(x)
    errors = []
    for T in (4, 16, 64):
        snn = convert_ann_to_snn(_model(NARROW_VGG16_CFG).set_backend("fast"), [x], T=T)
        with torch.no_grad():
            errors.append(float((snn(x) / T - ann).abs().mean() / ann.abs().mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.06
