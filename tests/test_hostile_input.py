"""Hostile and malformed input: each case is refused with one line that names the problem and the
fix (exit status 2 from the CLI, a clear exception from the library), with no traceback, no partial
file and no silent conversion."""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import qsnn_zoo
from qsnn_zoo import deploy, hub
from qsnn_zoo.cli import _prediction, main
from qsnn_zoo.hub import WeightsNotFoundError, sha256_of
from qsnn_zoo.weights import WeightsFormatError, read_metadata, read_state

from _train_helpers import random_parent, script, tiny

SMALL = "vgg16_cifar10_bin_calib"
SPIKING = "cnn7_cifar10_bin_stbp"
REPO = Path(__file__).resolve().parent.parent


def written(tmp_path_factory, name: str, write) -> Path:
    """A file that ``write(model, path)`` makes of entry ``name`` with seeded random weights at T=2."""
    path = tmp_path_factory.mktemp("random") / name
    torch.manual_seed(0)
    write(qsnn_zoo.create_model(name, T=2), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return written(tmp_path_factory, SMALL, qsnn_zoo.save_weights)


def user_error(capsys, argv):
    """Runs the CLI and returns its stderr, checking for exit status 2 and no traceback, whether the
    error came from argparse (SystemExit) or from a command."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- weights files


def rewritten(source: Path, target: Path, tensors=None, **metadata_changes) -> Path:
    """``source`` saved again with tensors changed and metadata keys changed (None deletes a key)."""
    metadata = read_metadata(source)
    for key, value in metadata_changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    state = load_file(str(source))
    state.update((tensors or (lambda s: {}))(state))
    save_file(state, str(target), metadata=metadata)
    return target


def _retyped(dtype):
    return lambda state: {"classifier.weight": state["classifier.weight"].to(dtype)}


BAD_WEIGHTS = {
    "unknown packing scheme": (
        lambda meta: {"packing": meta["packing"].replace("bin-1bit-msb", "bin-2bit-lsb")},
        None, "unknown packing scheme 'bin-2bit-lsb'"),
    "no packing key": (lambda meta: {"packing": None}, None, "lacks ['packing']"),
    "packing not JSON": (lambda meta: {"packing": "{not json"}, None, "'packing' is not valid JSON"),
    "packing not a table": (lambda meta: {"packing": "[1, 2]"}, None, "'packing' is not a JSON object"),
    "float16 tensor in a float32 file": (lambda meta: {}, _retyped(torch.float16), "classifier.weight is stored as float16"),
    "float64 tensor in a float32 file": (lambda meta: {}, _retyped(torch.float64), "classifier.weight is stored as float64"),
    "unknown float dtype": (lambda meta: {"float_dtype": "bfloat16"}, None, "float_dtype is 'bfloat16'"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_a_damaged_weights_file_is_refused(case, capsys, tmp_path, weights):
    changes, tensors, message = BAD_WEIGHTS[case]
    bad = rewritten(weights, tmp_path / "bad.safetensors", tensors, **changes(read_metadata(weights)))
    with pytest.raises(WeightsFormatError, match=re.escape(message)):
        read_state(bad)
    err = user_error(capsys, ["eval", SMALL, "--weights", str(bad), "--T", "2", "--limit", "1"])
    assert message in err and "re-export" in err


def test_codes_of_one_kind_are_not_loaded_into_layers_of_another(tmp_path):
    ternary = tmp_path / "ternary.safetensors"
    qsnn_zoo.save_weights(qsnn_zoo.create_model("vgg16_cifar10_ter_calib", T=2), ternary)
    with pytest.raises(WeightsFormatError, match="stores features.1.conv.weight as ter codes, but the model's layer is bin"):
        qsnn_zoo.load_weights(qsnn_zoo.create_model(SMALL, T=2), ternary)


# ---------------------------------------------------------------- create_model


@pytest.mark.parametrize("call, error, message", [
    (lambda: qsnn_zoo.create_model(None), TypeError, "a model name is a str"),
    (lambda: qsnn_zoo.create_model(SMALL, T=0), ValueError, "T must be a positive int, got 0"),
    (lambda: qsnn_zoo.create_model(SMALL, T=2.5), ValueError, "T must be a positive int, got 2.5"),
    (lambda: qsnn_zoo.create_model(SMALL, num_classes=0), ValueError, "num_classes must be a positive int"),
    (lambda: qsnn_zoo.create_model(SMALL, quant="ter"), ValueError,
     r"is a bin entry; quant='ter'.*create_model\('vgg16_cifar10_ter_calib'\)"),
    (lambda: qsnn_zoo.create_model("vgg16_cifar10_bin_calibb"), KeyError, "Closest names: vgg16_cifar10_bin_calib"),
])
def test_create_model_refuses_what_it_cannot_build(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("name", ["reproduce", "train_fp32", "quantize_cbp"])
def test_scripts_suggest_close_names_for_a_misspelled_one(name, capsys):
    with pytest.raises(SystemExit) as stop:
        script(name).main(["vgg16_cifar10_fp32_calbi", "--show-recipe"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Closest names: vgg16_cifar10_fp32_calib" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "argument --epochs: -1 is not positive"),
    (["--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    (["--test-every", "-3"], "argument --test-every: -3 is negative"),
    (["--time-budget", "-5"], "argument --time-budget: -5 is negative"),
    (["--checkpoint-seconds", "-1"], "argument --checkpoint-seconds: -1 is negative"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--weight-clamp", "0"], "argument --weight-clamp: 0 is not positive"),
    (["--lr-drop-fractions", "0.5,2"], "argument --lr-drop-fractions: 2 is not between 0 and 1"),
    (["--optimizer", "bogus"], "argument --optimizer: invalid choice: 'bogus'"),
    (["--lr-schedule", "steps"], "argument --lr-schedule: invalid choice: 'steps'"),
    (["--loss", "l2"], "argument --loss: invalid choice: 'l2'"),
    (["--backend", "triton"], "argument --backend: invalid choice: 'triton'"),
    (["--augment", "mixup"], "unknown augmentation(s) ['mixup']"),
    (["--augment", "cutout,crop_flip"], "must appear once each in docs/method.md §E.2's order"),
    (["--device", "cuda"], "torch sees no CUDA GPU on this machine; pass --device cpu"),
    (["--device", "gpu0"], "'gpu0' is not a torch device"),
    (["--out", "{file}/runs"], "is a file, so"),
    (["--quant", "ter"], "vgg16_cifar10_bin_calib is bin; drop --quant"),
])
def test_training_flags_are_refused_where_they_are_parsed(flags, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    flags = [f.format(file=a_file) for f in flags]
    with pytest.raises(SystemExit) as stop:
        script("quantize_cbp").main(["vgg16_cifar10_bin_calib", *flags, "--show-recipe"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and message in err


@pytest.mark.parametrize("flags, message", [
    (["--parent-weights", "{tmp}/typo.safetensors"], "--parent-weights {tmp}/typo.safetensors is not a file"),
    (["--limit-train", "8", "--batch-size", "16"], "8 training images make no batch of 16"),
])
def test_training_settings_that_cannot_run_together_are_one_line_errors(flags, message, capsys, tmp_path):
    parent = random_parent(tmp_path, "alexnet_cifar10_fp32_tsslbp")
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = ["alexnet_cifar10_bin_tsslbp", *tiny(tmp_path / "out"), "--parent-weights", str(parent), *flags]
    assert script("quantize_cbp").main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.safetensors"))


# ---------------------------------------------------------------- command-line arguments


@pytest.mark.parametrize("argv, message", [
    (["predict", SMALL, "x.png", "--top", "-1"], "argument --top: -1 is not positive"),
    (["predict", SMALL, "x.png", "--top", "0"], "argument --top: 0 is not positive"),
    (["eval", SMALL, "--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    (["eval", SMALL, "--T", "0"], "argument --T: 0 is not positive"),
    (["eval", SMALL, "--T", "two"], "argument --T: 'two' is not a whole number"),
    (["eval", SMALL, "--limit", "0"], "argument --limit: 0 is not positive"),
    (["eval", SMALL, "--device", "cuda"], "torch sees no CUDA GPU on this machine; pass --device cpu"),
    (["eval", SMALL, "--device", "gpu0"], "'gpu0' is not a torch device"),
])
def test_bad_arguments_are_refused_where_they_are_parsed(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert message in user_error(capsys, argv)


# ---------------------------------------------------------------- data and images


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` pixels, without the pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 10000])  # 400 MP: PIL's error; 100 MP: only its warning
def test_predict_refuses_a_decompression_bomb(side, capsys, tmp_path, weights):
    image = png_declaring(tmp_path / "huge.png", side, side)
    err = user_error(capsys, ["predict", SMALL, str(image), "--weights", str(weights), "--T", "2"])
    assert "decompression bomb" in err and "downscale the image" in err


@pytest.mark.parametrize("labels, message", [
    (np.zeros(0, np.int64), "holds no images"),
    (np.array([3.0, 4.7]), "labels are float64, not integers"),
])
def test_eval_refuses_unusable_npz_data(labels, message, capsys, tmp_path, weights):
    np.savez(tmp_path / "test.npz", images=np.zeros((len(labels), 32, 32, 3), np.uint8), labels=labels)
    err = user_error(capsys, ["eval", SMALL, "--weights", str(weights), "--T", "2", "--data", str(tmp_path)])
    assert message in err


@pytest.mark.parametrize("arrays", [
    {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.zeros((2, 2), np.int64)},
    {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.array(3)},
    {"images": np.array(0, np.uint8), "labels": np.zeros(2, np.int64)},
    {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.zeros(2, np.int64), "lossless": np.array(True)},
], ids=["labels_2d", "labels_0d", "images_0d", "lossless_0d"])
def test_eval_refuses_npz_arrays_of_the_wrong_shape(arrays, capsys, tmp_path, weights):
    np.savez(tmp_path / "test.npz", **arrays)
    err = user_error(capsys, ["eval", SMALL, "--weights", str(weights), "--T", "2", "--data", str(tmp_path), "--limit", "2"])
    assert "has arrays of shapes" in err and "expected images [N, 32, 32, 3]" in err


@pytest.mark.parametrize("data", [{}, None, "pixels"])
def test_eval_refuses_a_torchvision_batch_without_pixel_data(data, capsys, tmp_path, weights):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": [0, 1]}))
    err = user_error(capsys, ["eval", SMALL, "--weights", str(weights), "--T", "2", "--data", str(tmp_path)])
    assert "does not hold cifar10 batches as torchvision writes them" in err


# ---------------------------------------------------------------- where the weights come from


@pytest.mark.parametrize("kind, what", [("missing", "does not exist"), ("file", "is a file")])
def test_a_bad_weights_directory_variable_is_refused(kind, what, monkeypatch, tmp_path):
    target = tmp_path / "weights"
    if kind == "file":
        target.write_text("")
    monkeypatch.setenv(hub.ENV_WEIGHTS_DIR, str(target))
    with pytest.raises(WeightsNotFoundError, match=f"QSNN_ZOO_WEIGHTS is {target}, which {what}"):
        hub.resolve_weights(qsnn_zoo.get_entry(SMALL))


def test_text_output_names_the_weights_file_and_its_sha256(capsys, tmp_path, weights):
    line = f"weights: {weights} (sha256 {sha256_of(weights)})"
    assert main(["eval", SMALL, "--weights", str(weights), "--T", "2", "--limit", "2", "--device", "cpu"]) == 0
    assert line in capsys.readouterr().out.splitlines()
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", SMALL, str(image), "--weights", str(weights), "--T", "2", "--device", "cpu"]) == 0
    assert line in capsys.readouterr().out.splitlines()


# ---------------------------------------------------------------- predictions without a ranking


def test_predict_says_when_no_output_neuron_fired(capsys, tmp_path):
    silent = qsnn_zoo.create_model(SPIKING, T=2)
    for parameter in silent.parameters():
        parameter.data.zero_()
    path = tmp_path / "silent.safetensors"
    qsnn_zoo.save_weights(silent, path)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    argv = ["predict", SPIKING, str(image), "--weights", str(path), "--T", "2", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no prediction: every class scores 0.0000; no output neuron fired" in out and "ship" not in out
    assert main([*argv, "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)["predictions"]
    assert prediction["top"] == [] and "no output neuron fired" in prediction["no_prediction"]


def test_tied_classes_share_a_rank_instead_of_an_arbitrary_order():
    entry = qsnn_zoo.get_entry(SPIKING)
    model = qsnn_zoo.create_model(SPIKING, T=1)
    scores = [0.0, 0.25, 0.0, 0.5, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0]
    top = _prediction(entry, model, "x.png", scores, top=3)["top"]
    assert [(t["rank"], t["label"]) for t in top] == [(1, "cat"), (2, "automobile"), (2, "dog")]
    top = _prediction(entry, model, "x.png", scores, top=4)["top"]
    assert [t["rank"] for t in top] == [1, 2, 2] + [4] * 7  # the whole tie at rank 4, not 1 of 7 picked
    assert _prediction(entry, model, "x.png", [0.5] * 10, top=5)["no_prediction"] == "every class scores 0.5000"


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("output, message", [
    (lambda tmp: tmp, "is a directory; name a file inside it"),
    (lambda tmp: tmp / "a_file" / "model.deploy", "is a file, so"),
    (lambda tmp: "", "the output path is empty"),
])
def test_export_refuses_an_impossible_output_path(output, message, capsys, tmp_path, weights):
    (tmp_path / "a_file").write_text("")
    argv = ["export", SMALL, "--format", "deploy", "-o", str(output(tmp_path)), "--weights", str(weights)]
    assert message in user_error(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_export_to_an_unwritable_directory_is_a_clear_error(capsys, monkeypatch, tmp_path, weights):
    def denied(*args, **kwargs):  # as mkstemp fails in a read-only directory (chmod does not stop root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("qsnn_zoo.weights.tempfile.mkstemp", denied)
    out = tmp_path / "out" / "model.deploy"
    err = user_error(capsys, ["export", SMALL, "--format", "deploy", "-o", str(out), "--weights", str(weights)])
    assert f"cannot write {out}: Permission denied" in err
    assert list((tmp_path / "out").iterdir()) == []


EXPORT_KILLED_WHILE_WRITING = """
import os, pathlib, signal, sys, time
from qsnn_zoo.cli import main

def write_half_then_get_killed(self, data):
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

pathlib.Path.write_bytes = write_half_then_get_killed
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_export_leaves_no_file(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["export", SMALL, "--format", "deploy", "-o", str(out / "m.deploy"), "--weights", str(weights)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", EXPORT_KILLED_WHILE_WRITING, *argv], timeout=300, env=env)
    assert done.returncode == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- deploy files


@pytest.fixture(scope="module")
def deploy_file(tmp_path_factory):
    return written(tmp_path_factory, SPIKING, deploy.write_deploy)


def with_header(source: Path, target: Path, change) -> Path:
    """``source`` with ``change(header, network)`` applied to its JSON header and network description."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    stored = header["__metadata__"]["network"]
    network = json.loads(stored)
    change(header, network)
    if header["__metadata__"]["network"] == stored:  # else the change replaced the description itself
        header["__metadata__"]["network"] = json.dumps(network)
    encoded = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return target


def _set(where, key, value):
    def change(header, network):
        target = {"header": header, "network": network, "conv2": header.get("conv2.weight.codes"),
                  "op": network["ops"][0], "metadata": header["__metadata__"]}[where]
        target[key] = value
    return change


BAD_DEPLOY = {
    "header cut short": (lambda data: data[:100], "runs past the end of the file"),
    "data cut short": (lambda data: data[: len(data) // 2], "outside the file's"),
    "header is a list": (lambda data: struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
    "no network": (_set("metadata", "network", "{"), "no JSON 'network' description"),
    "T is zero": (_set("network", "T", 0), "T is 0, not a positive int"),
    "no ops": (_set("network", "ops", []), "it has no list of ops"),
    "unknown op": (_set("op", "op", "conv3d"), "op 'conv3d' is unknown"),
    "unknown decoding": (_set("network", "output", {"decode": "max"}), "output decoding is not one of"),
    "unknown dtype": (_set("conv2", "dtype", "F64"), "tensor 'conv2.weight.codes' has no known dtype"),
    "offsets past the end": (_set("conv2", "data_offsets", [0, 1 << 40]), "data offsets [0, 1099511627776] outside"),
    "offsets of the wrong size": (_set("conv2", "data_offsets", [0, 3]), "has 3 bytes for shape"),
    "missing tensor": (lambda header, network: header.pop("conv1.bias"), "refers to tensors ['conv1.bias']"),
}


@pytest.mark.parametrize("case", BAD_DEPLOY)
def test_a_malformed_deploy_file_is_refused(case, tmp_path, deploy_file):
    change, message = BAD_DEPLOY[case]
    bad = tmp_path / "bad.deploy"
    if change.__code__.co_argcount == 1:
        bad.write_bytes(change(deploy_file.read_bytes()))
    else:
        with_header(deploy_file, bad, change)
    with pytest.raises(deploy.DeployFormatError, match=re.escape(message)):
        deploy.read_deploy(bad)


def test_an_unchanged_deploy_file_passes_the_same_checks(tmp_path, deploy_file):
    rewritten_file = with_header(deploy_file, tmp_path / "same.deploy", lambda header, network: None)
    net = deploy.read_deploy(rewritten_file)
    assert net.T == 2 and set(net.tensors) == set(deploy.read_deploy(deploy_file).tensors)
