"""NIR export: round trips through a file, simulated by tests/nir_sim.py, against the model's spikes."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

import qsnn_zoo  # noqa: E402
from qsnn_zoo._registry import iter_entries  # noqa: E402
from qsnn_zoo.export import ApproximateExportError, export_model, hardware_section, to_nir  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from nir_sim import NIRSimulator  # noqa: E402

T = 4
# Low thresholds keep the random-init networks firing in every layer, so every layer is compared.
# The VGG threshold also differs from 1, which exercises the spike-amplitude nodes.
CASES = [
    ("cnn7_cifar10_bin_stbp", 0.05, False),
    ("alexnet_cifar10_ter_tsslbp", 0.3, False),
    ("vgg16_cifar10_fp32_calib", 0.2, True),
]


def _model(name: str, threshold: float):
    torch.manual_seed(0)
    return qsnn_zoo.create_model(name, T=T, threshold=threshold).eval()


def _export(model, path: Path, approximate: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if approximate else "error")
        graph = to_nir(model, allow_approximate=approximate)
    nir.write(str(path), graph)
    return nir.read(str(path))


@pytest.mark.parametrize("name,threshold,approximate", CASES)
def test_round_trip_reproduces_every_layers_spikes(tmp_path, name, threshold, approximate):
    model = _model(name, threshold)
    graph = _export(model, tmp_path / "model.nir", approximate)
    assert graph.metadata["T"] == T and graph.metadata["exact"] == ("no" if approximate else "yes")

    model = model.double()
    for _, neuron in model.spiking_neurons():
        neuron.monitor = True
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model.forward_steps(x)
    output, spikes = NIRSimulator(graph).run(x, T)

    compared = set()
    for node_name, node_spikes in spikes.items():
        module = graph.nodes[node_name].metadata["model_module"]
        model_spikes = model.get_submodule(module).last_spikes
        assert model_spikes.any(), f"{module} is silent, so the comparison would prove nothing"
        assert torch.equal(model_spikes, node_spikes > 0), f"spikes of {module} differ"
        compared.add(module)
    assert compared == {n for n, _ in model.spiking_neurons()}
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


def test_quantized_nodes_carry_codes_and_scale():
    model = _model("alexnet_cifar10_ter_tsslbp", 1.0)
    graph = to_nir(model)
    node = graph.nodes["conv2"]
    codes, scale = node.metadata["weight_codes"], node.metadata["weight_scale"]
    assert node.metadata["quant"] == "ter" and codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 0, 1}
    np.testing.assert_array_equal(node.weight, codes.astype(np.float32) * np.float32(scale))
    assert "weight_codes" not in graph.nodes["conv1"].metadata  # the fp32 first layer


def test_if_export_needs_the_flag_and_says_what_differs():
    model = _model("vgg16_cifar10_bin_calib", 1.0)
    with pytest.raises(ApproximateExportError, match=">= threshold.*allow_approximate"):
        to_nir(model)
    with pytest.warns(UserWarning, match="fires only when u > threshold"):
        graph = to_nir(model, allow_approximate=True)
    threshold = graph.nodes["features.0.spike"].threshold
    assert np.all(threshold < 1) and np.all(np.nextafter(threshold, np.float32(2)) == 1)


def test_export_model_writes_a_nir_file_and_refuses_missing_weights(tmp_path):
    name = "vgg16_cifar10_ter_calib"
    if not qsnn_zoo.get_entry(name).has_weights:
        with pytest.raises(ValueError, match="--weights"):
            export_model(name, "nir", tmp_path / "x.nir", allow_approximate=True)
    with pytest.warns(UserWarning):
        path = export_model(name, "nir", tmp_path / "x.nir", allow_approximate=True, pretrained=False)
    assert nir.read(str(path)).metadata["model_name"] == name
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(name, "onnx", tmp_path / "x.onnx", pretrained=False)


def test_every_entry_has_a_hardware_section():
    for entry in iter_entries():
        text = hardware_section(entry)
        assert f"qsnn-zoo export {entry.name} --format nir" in text
        assert ("--allow-approximate" in text) == (entry.neuron.model == "if")


def test_snntorch_imports_the_lif_graph_and_matches_output_spikes(tmp_path):
    """snnTorch's import (dt = 1e-4, fire on >, reset to zero) reads the STBP graph; it runs one
    image at a time because it applies NIR's batch-free Flatten(0, -1) to its batched tensors."""
    pytest.importorskip("nirtorch")
    import_nir = pytest.importorskip("snntorch.import_nir")
    model = _model("cnn7_cifar10_bin_stbp", 0.05)
    graph = _export(model, tmp_path / "model.nir", approximate=False)
    net = import_nir.import_from_nir(graph)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_steps(x)
        for module in net.modules():
            if hasattr(module, "reset_hidden"):
                module.reset_hidden()
        steps = []
        for _ in range(T):
            out = net(x)
            steps.append(out[0] if isinstance(out, tuple) else out)
    torch.testing.assert_close(torch.stack(steps).reshape(expected.shape), expected)
