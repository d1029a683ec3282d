"""Every registry entry, with random weights: a forward pass, no state carried between calls, and a
round trip through the weights format (packed codes for both quantizations) that changes nothing."""
from __future__ import annotations

import pytest
import torch

import qsnn_zoo
from qsnn_zoo.layers.quant import quantized_modules
from qsnn_zoo.weights import load_weights, save_weights

# Small T keeps every entry a few seconds on a CPU. The reference backend re-quantizes every
# quantized layer at every step, which for the 62M weights of cnn7 dominates: it runs at T=1.
STEPS = {"vgg": 2, "alexnet": 2, "cnn7": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """At these sizes one thread costs less CPU than two fighting other test runs on a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(model, x):
    """Scores and the spikes of every spiking layer, for comparing two runs exactly."""
    for _, neuron in model.spiking_neurons():
        neuron.monitor = True
    with torch.no_grad():
        scores = model(x)
    return scores, [neuron.last_spikes for _, neuron in model.spiking_neurons()]


def stored_weights(model) -> dict:
    """What a checkpoint must reproduce exactly: codes and scales of quantized layers, every other tensor."""
    quantized = quantized_modules(model)
    weights = {f"{n}.codes": m.codes() for n, m in quantized}
    weights.update({f"{n}.scale": m.scale.clone() for n, m in quantized})
    latent = {f"{n}.weight" for n, _ in quantized}
    weights.update({k: v.clone() for k, v in model.state_dict().items() if k not in latent})
    return weights


@pytest.mark.parametrize("name", qsnn_zoo.list_models())
def test_forward_weights_round_trip_and_no_state_leak(name, tmp_path):
    torch.manual_seed(0)
    steps = STEPS[qsnn_zoo.get_entry(name).family]
    model = qsnn_zoo.create_model(name, T=steps).eval()
    entry = model.entry
    x = torch.randn(2, *entry.input_size)

    scores, spikes = run(model, x)
    assert scores.shape == (2, entry.num_classes) and torch.isfinite(scores).all()
    assert len(spikes) == len(model.spiking_neurons()) and spikes[0].any(), "the first layer must spike"
    assert all(s.shape[:2] == (steps, 2) for s in spikes)

    path = save_weights(model, tmp_path / f"{name}.safetensors")
    expected = stored_weights(model)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()  # so that everything the model computes with must come back from the file
    load_weights(model, path, expected_name=name)
    loaded = stored_weights(model)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)

    # A second call, after the round trip, with the images in the other order: a state carried over
    # from the first call, or shared between the samples of a batch, would change the results.
    flipped_scores, flipped_spikes = run(model, x.flip(0))
    assert torch.equal(flipped_scores, scores.flip(0))
    assert all(torch.equal(a, b.flip(1)) for a, b in zip(flipped_spikes, spikes))
