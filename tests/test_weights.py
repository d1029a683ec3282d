"""The weights format: packed codes, sizes, metadata, strict loading, and never unpickling."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import qsnn_zoo
from qsnn_zoo.layers.quant import quantized_modules
from qsnn_zoo.models.vgg import SpikingVGG
from qsnn_zoo.packing import SCHEMES, pack_codes, packed_size, unpack_codes
from qsnn_zoo.weights import (
    WeightsFormatError,
    atomic_write,
    export_state,
    load_weights,
    read_metadata,
    save_weights,
    storage_report,
)

TINY_CFG = (8, "M", 16, "M")
LEVELS = {"bin": (-1, 1), "ter": (-1, 0, 1)}


def tiny_model(quant="bin", seed=0, num_classes=10) -> SpikingVGG:
    torch.manual_seed(seed)
    return SpikingVGG(num_classes=num_classes, T=2, quant=quant, cfg=TINY_CFG).eval()


@pytest.fixture(scope="module")
def vgg16_files(tmp_path_factory):
    """Binary and ternary VGG16 (random weights) and their files: the zoo's smallest real checkpoints."""
    directory = tmp_path_factory.mktemp("vgg16")
    files = {}
    for kind in ("bin", "ter"):
        model = qsnn_zoo.create_model(f"vgg16_cifar10_{kind}_calib", T=2)
        files[kind] = model, save_weights(model, directory / f"{kind}.safetensors")
    return files


def random_codes(mode: str, shape, seed: int = 0) -> torch.Tensor:
    levels = torch.tensor(LEVELS[mode], dtype=torch.int8)
    generator = torch.Generator().manual_seed(seed)
    return levels[torch.randint(len(levels), tuple(shape), generator=generator)]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def rewrite(path: Path, change) -> Path:
    """Rewrites a weights file with ``change(tensors, metadata)`` applied."""
    tensors, metadata = load_file(str(path)), read_metadata(path)
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    return path


ODD_AND_EVEN_SHAPES = [(1,), (2,), (4,), (5,), (6,), (7,), (8,), (9,), (11,), (16,), (17,), (3, 5, 7), (64, 3, 3, 3)]


@pytest.mark.parametrize("mode", ["bin", "ter"])
@pytest.mark.parametrize("shape", ODD_AND_EVEN_SHAPES)
def test_packing_round_trips_for_any_length(mode, shape):
    codes = random_codes(mode, shape, seed=sum(shape))
    packed = pack_codes(codes, mode)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(math.prod(shape), mode)
    assert packed.numel() == math.ceil(math.prod(shape) / {"bin": 8, "ter": 5}[mode])
    assert torch.equal(unpack_codes(packed, shape, mode), codes)


def test_packing_layout_is_the_documented_one():
    msb_first = torch.tensor([1, -1, -1, -1, -1, -1, -1, 1, 1], dtype=torch.int8)
    assert pack_codes(msb_first, "bin").tolist() == [0b10000001, 0b10000000]
    base3 = torch.tensor([1, 0, -1, -1, -1, 1], dtype=torch.int8)  # digits 2,1,0,0,0 | 2 then -1 padding
    assert pack_codes(base3, "ter").tolist() == [2 * 81 + 1 * 27, 2 * 81]
    assert SCHEMES == {"bin": "bin-1bit-msb", "ter": "ter-base3-5"}


def test_packing_rejects_off_level_codes_and_wrong_byte_counts():
    with pytest.raises(ValueError, match="bin codes must lie in"):
        pack_codes(torch.tensor([1, 0, -1], dtype=torch.int8), "bin")
    with pytest.raises(ValueError, match="ter codes must lie in"):
        pack_codes(torch.tensor([2], dtype=torch.int8), "ter")
    with pytest.raises(ValueError, match=r"must be 2 uint8 bytes, got 3"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), (9,), "bin")


@pytest.mark.parametrize("quant", ["bin", "ter"])
def test_save_then_load_is_bit_identical(tmp_path, quant):
    source, target = tiny_model(quant, seed=0), tiny_model(quant, seed=1)
    path = save_weights(source, tmp_path / "tiny.safetensors", model_name="tiny")
    assert not same_tensors(export_state(source)[0], export_state(target)[0])
    load_weights(target, path, expected_name="tiny")
    assert same_tensors(export_state(source)[0], export_state(target)[0])
    for (_, a), (_, b) in zip(quantized_modules(source), quantized_modules(target)):
        assert torch.equal(a.quantized_weight(), b.quantized_weight()) and torch.equal(a.scale, b.scale)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_file_layout_and_metadata(vgg16_files):
    model, path = vgg16_files["ter"]
    metadata, tensors = read_metadata(path), load_file(str(path))
    assert metadata["format"] == "qsnn-zoo" and metadata["format_version"] == "1"
    assert metadata["model_name"] == "vgg16_cifar10_ter_calib" and metadata["float_dtype"] == "float32"
    assert json.loads(metadata["config"]) == json.loads(model.entry.to_json())
    packing = json.loads(metadata["packing"])
    assert sorted(packing) == sorted(f"{n}.weight" for n in model.entry.quant.quantized_layers)
    for weight_key, info in packing.items():
        layer = weight_key[: -len(".weight")]
        assert info == {"scheme": "ter-base3-5", "shape": list(model.get_submodule(layer).weight.shape)}
        assert weight_key not in tensors, "latent fp32 weights of quantized layers are not stored"
        assert tensors[f"{layer}.weight.codes"].dtype == torch.uint8
        assert tensors[f"{layer}.scale"].dtype == torch.float32 and tensors[f"{layer}.scale"].dim() == 0


@pytest.mark.parametrize("kind, bits", [("bin", 1.0), ("ter", 1.6)])
def test_bits_per_quantized_weight(vgg16_files, kind, bits):
    model, path = vgg16_files[kind]
    report = storage_report(path)
    quantized = sum(m.weight.numel() for _, m in quantized_modules(model))
    assert report["quantized_weights"] == quantized == 14_708_736  # docs/method.md §A.3, weight memory table
    assert bits <= report["bits_per_quantized_weight"] < bits + 0.001  # the scales cost next to nothing
    assert report["file_bytes"] == path.stat().st_size
    latent = {f"{n}.weight" for n, _ in quantized_modules(model)} | {f"{n}.scale" for n, _ in quantized_modules(model)}
    assert report["other_values"] == sum(v.numel() for k, v in model.state_dict().items() if k not in latent)


def test_a_binary_vgg16_file_is_under_2_mb(vgg16_files):
    size = vgg16_files["bin"][1].stat().st_size
    assert size < 2.0e6, f"binary VGG16 file is {size} bytes"


def test_wrong_model_name_is_refused(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "a.safetensors", model_name="vgg16_cifar10_bin_calib")
    wrong = "holds weights of 'vgg16_cifar10_bin_calib', not 'vgg16_cifar10_ter_calib'"
    with pytest.raises(WeightsFormatError, match=wrong):
        load_weights(tiny_model(), path, expected_name="vgg16_cifar10_ter_calib")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "a.safetensors")
    rewrite(path, lambda tensors, _: tensors.pop("classifier.bias"))
    with pytest.raises(WeightsFormatError, match=r"missing tensors \['classifier.bias'\], unexpected tensors \[\]"):
        load_weights(tiny_model(), path)
    path = save_weights(tiny_model(), tmp_path / "b.safetensors")
    rewrite(path, lambda tensors, _: tensors.update({"head.weight": torch.zeros(2)}))
    with pytest.raises(WeightsFormatError, match=r"missing tensors \[\], unexpected tensors \['head.weight'\]"):
        load_weights(tiny_model(), path)


def test_shape_mismatches_name_the_tensor(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "a.safetensors")
    rewrite(path, lambda tensors, _: tensors.update({"classifier.bias": torch.zeros(5)}))
    with pytest.raises(WeightsFormatError, match=r"tensor classifier.bias has shape \(5,\), the model expects \(10,\)"):
        load_weights(tiny_model(), path)

    def transpose_packed(_, metadata):  # same number of codes, other shape
        packing = json.loads(metadata["packing"])
        packing["features.2.conv.weight"]["shape"] = [8, 16, 3, 3]
        metadata["packing"] = json.dumps(packing)

    path = rewrite(save_weights(tiny_model(), tmp_path / "b.safetensors"), transpose_packed)
    with pytest.raises(WeightsFormatError, match=r"tensor features.2.conv.weight has shape \(8, 16, 3, 3\)"):
        load_weights(tiny_model(), path)

    path = rewrite(
        save_weights(tiny_model(), tmp_path / "c.safetensors"),
        lambda tensors, _: tensors.update({"features.2.conv.weight.codes": torch.zeros(3, dtype=torch.uint8)}),
    )
    with pytest.raises(WeightsFormatError, match="tensor features.2.conv.weight.codes: packed bin codes"):
        load_weights(tiny_model(), path)


class _Payload:
    """Unpickling this object would create a file: the proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoints_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "payload": _Payload(marker)}, path)
    with pytest.raises(WeightsFormatError, match="not a readable safetensors file.*never pickled"):
        load_weights(tiny_model(), path)
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(WeightsFormatError, match="never pickled"):
        load_weights(tiny_model(), tmp_path / "model.pkl")
    assert not marker.exists()


def test_foreign_safetensors_files_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(tiny_model().state_dict(), str(path))
    with pytest.raises(WeightsFormatError, match="not a qsnn-zoo weights file.*save_weights"):
        load_weights(tiny_model(), path)
    path = save_weights(tiny_model(), tmp_path / "future.safetensors")
    rewrite(path, lambda _, metadata: metadata.update({"format_version": "99"}))
    with pytest.raises(WeightsFormatError, match="format version '99'; this qsnn-zoo reads version 1"):
        load_weights(tiny_model(), path)


def test_half_precision_files_keep_codes_and_scales_exact(tmp_path):
    source = tiny_model("ter", seed=0)
    full = save_weights(source, tmp_path / "full.safetensors")
    half = save_weights(source, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < full.stat().st_size
    assert read_metadata(half)["float_dtype"] == "float16"
    tensors = load_file(str(half))
    assert tensors["classifier.weight"].dtype == torch.float16
    assert tensors["features.2.conv.scale"].dtype == torch.float32
    assert storage_report(half)["float_dtype"] == "float16"

    target = load_weights(tiny_model("ter", seed=1), half)
    assert all(v.dtype == torch.float32 for v in target.state_dict().values() if v.is_floating_point())
    exact, rounded = export_state(source)[0], export_state(target)[0]
    for key, value in exact.items():
        expected = value.half().float() if value.is_floating_point() and not key.endswith(".scale") else value
        assert torch.equal(rounded[key], expected), key


def test_atomic_write_leaves_the_old_file_or_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"old")

    def fail(tmp):
        Path(tmp).write_bytes(b"half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    atomic_write(tmp_path / "new" / "x.bin", lambda tmp: Path(tmp).write_bytes(b"new"))
    assert (tmp_path / "new" / "x.bin").read_bytes() == b"new"


def test_files_are_byte_reproducible_and_canonical_form_is_lossless(tmp_path):
    from qsnn_zoo.weights import canonical_safetensors

    model = tiny_model()
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (first, second):
        save_weights(model, path, model_name="tiny", config={"b": 1, "a": 2})
    assert first.read_bytes() == second.read_bytes()
    data = first.read_bytes()
    assert canonical_safetensors(data) == data
    shuffled = tmp_path / "shuffled.safetensors"
    save_file(load_file(str(first)), str(shuffled), metadata=read_metadata(first))
    assert canonical_safetensors(shuffled.read_bytes()) == data
