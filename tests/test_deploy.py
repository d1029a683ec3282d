"""The integer deploy file: its byte layout, its packing, and the numpy simulator against PyTorch."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import qsnn_zoo
from qsnn_zoo import deploy
from qsnn_zoo.data import load_sample, to_tensor
from qsnn_zoo.export import export_model
from qsnn_zoo.layers.quant import quantized_modules

T = 4
# Low thresholds keep the random-init networks firing in every layer (see test_export_nir.py).
CASES = [
    ("cnn7_cifar10_ter_stbp", 0.05),
    ("alexnet_cifar10_bin_tsslbp", 0.3),
    ("vgg16_cifar10_bin_calib", 0.1),
]


def _model(name: str, threshold: float):
    torch.manual_seed(0)
    return qsnn_zoo.create_model(name, T=T, threshold=threshold).eval()


@pytest.mark.parametrize("name,threshold", CASES)
def test_numpy_simulator_reproduces_the_model_on_sample_images(tmp_path, name, threshold):
    model = _model(name, threshold)
    path = deploy.write_deploy(model, tmp_path / "model.deploy")
    images = load_sample().images[:2]

    net = deploy.read_deploy(path)
    spikes = {}
    steps = deploy.simulate(net, deploy.normalise(net, images), record=spikes)

    model = model.double()
    for _, neuron in model.spiking_neurons():
        neuron.monitor = True
    with torch.no_grad():
        expected = model.forward_steps(to_tensor(images, model.entry.mean, model.entry.std).double())
    for (op_name, layer_spikes), (module, neuron) in zip(spikes.items(), model.spiking_neurons()):
        assert neuron.last_spikes.any(), f"{module} is silent, so the comparison would prove nothing"
        np.testing.assert_array_equal(layer_spikes > 0, neuron.last_spikes.numpy(), err_msg=f"{op_name} vs {module}")
    assert len(spikes) == len(model.spiking_neurons())
    np.testing.assert_allclose(steps, expected.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(deploy.predict(path, images), model.decode(expected).argmax(1).numpy())


def test_file_is_self_describing_with_packed_codes(tmp_path):
    model = _model("alexnet_cifar10_ter_tsslbp", 1.0)
    path = deploy.write_deploy(model, tmp_path / "model.deploy")
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "qsnn-zoo-deploy"
    network = json.loads(header["__metadata__"]["network"])
    assert network["T"] == T and network["output"]["decode"] == "psp_sum"
    ops = {op["name"]: op for op in network["ops"] if "name" in op}
    assert ops["conv1"]["weight"]["encoding"] == "float32" and ops["fc3"]["weight"]["encoding"] == "float32"
    assert ops["conv2"]["neuron"] == {**ops["conv2"]["neuron"], "threshold": 1.0, "comparison": ">", "reset": "hard"}

    net = deploy.read_deploy(path)
    for name, layer in quantized_modules(model):
        spec = ops[name]["weight"]
        assert spec["encoding"] == "ter2" and spec["bits"] == 2 and spec["scale"] == float(layer.scale)
        assert header[spec["tensor"]]["dtype"] == "U8"
        assert header[spec["tensor"]]["shape"] == [-(-layer.weight.numel() // 4)]
        codes, scale = net.weight(ops[name])
        np.testing.assert_array_equal(codes, layer.codes().numpy())
        assert scale == float(layer.scale)


def test_ternary_2bit_packing_round_trips_and_puts_the_first_code_high():
    assert deploy.pack_ternary_2bit(np.array([1, 0, -1, 1], np.int8)).tolist() == [0b01_00_11_01]
    codes = np.random.default_rng(0).integers(-1, 2, size=(7, 3, 3)).astype(np.int8)
    np.testing.assert_array_equal(deploy.unpack_ternary_2bit(deploy.pack_ternary_2bit(codes), codes.shape), codes)


def test_conv2d_matches_torch_for_strides_and_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 9))
    for weight, stride, padding, groups in [((6, 4, 3, 3), (2, 2), (1, 1), 1), ((4, 1, 2, 2), (2, 2), (0, 0), 4)]:
        w = rng.standard_normal(weight)
        expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding, groups=groups)
        np.testing.assert_allclose(deploy.conv2d(x, w, stride, padding, groups), expected.numpy(), rtol=1e-12, atol=1e-12)


def test_other_files_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "weights.safetensors"
    qsnn_zoo.save_weights(_model("alexnet_cifar10_bin_tsslbp", 1.0), path)
    with pytest.raises(deploy.DeployFormatError, match="--format deploy"):
        deploy.read_deploy(path)


def test_export_model_writes_deploy_files(tmp_path):
    path = export_model("alexnet_cifar10_bin_tsslbp", "deploy", tmp_path / "a.deploy", pretrained=False)
    assert deploy.read_deploy(path).network["model_name"] == "alexnet_cifar10_bin_tsslbp"


@pytest.mark.parametrize("name", qsnn_zoo.list_models(pretrained=True))
def test_deploy_predictions_of_a_published_checkpoint_match_pytorch_on_the_bundled_sample(tmp_path, name):
    images = load_sample().images[:8]
    model = qsnn_zoo.create_model(name, pretrained=True).eval()
    path = deploy.write_deploy(model, tmp_path / f"{name}.deploy.safetensors")
    with torch.no_grad():
        expected = model(to_tensor(images, model.entry.mean, model.entry.std)).argmax(1).numpy()
    assert (deploy.predict(path, images) == expected).all()
