"""Every registry entry against the contract of a published or planned checkpoint (as torchvision's
tests check its weights' metadata), and the registry's lookup functions."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import List

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry
from qsnn_zoo._registry import (
    DATASETS,
    METHODS,
    WEIGHT_KINDS,
    FilePart,
    MadeFile,
    Metric,
    ModelEntry,
    UnknownModelError,
    WeightsFile,
    get_entry,
    list_models,
    model_info,
)
from qsnn_zoo.parts import PART_BYTES, part_name
from qsnn_zoo.layers.neurons import IFNeuron, LIFNeuron, TSSLNeuron
from qsnn_zoo.layers.quant import is_quantized, quantized_modules
from qsnn_zoo.models._common import NORMALIZATION, NUM_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_NAMES = sorted(
    [f"vgg16_{d}_{w}_calib" for d in DATASETS for w in WEIGHT_KINDS]
    + [f"cnn7_{d}_{w}_stbp" for d in DATASETS for w in WEIGHT_KINDS]
    + [f"alexnet_cifar10_{w}_tsslbp" for w in WEIGHT_KINDS]
)
ARCH_OF_FAMILY = {"vgg": "vgg16", "cnn7": "cnn7", "alexnet": "alexnet"}
NEURON_CLASS = {"if": IFNeuron, "lif": LIFNeuron, "tssl": TSSLNeuron}
HEX40, HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")


def contract_violations(entry: ModelEntry) -> List[str]:
    """What is wrong with ``entry`` as a registry record (empty when it keeps the contract)."""
    problems = []
    expected_name = f"{ARCH_OF_FAMILY.get(entry.family)}_{entry.dataset}_{entry.weight_kind}_{entry.method}"
    if entry.name != expected_name:
        problems.append(f"name {entry.name} does not follow its fields ({expected_name})")
    if entry.method not in METHODS or entry.dataset not in DATASETS or entry.weight_kind not in WEIGHT_KINDS:
        problems.append("method, dataset or weight kind outside the vocabulary")
    if entry.num_classes != NUM_CLASSES.get(entry.dataset):
        problems.append(f"num_classes {entry.num_classes} for {entry.dataset}")
    arch = entry.arch_config()
    if (arch.get("num_classes"), arch.get("T"), arch.get("quant")) != (entry.num_classes, entry.T, entry.quant.mode):
        problems.append(f"arch_kwargs {arch} disagree with num_classes / T / quant of the record")
    if entry.T < 1:
        problems.append("T must be positive")

    neuron = entry.neuron
    if neuron.model not in NEURON_CLASS or neuron.reset not in ("soft", "hard") or neuron.comparison not in (">=", ">"):
        problems.append(f"neuron vocabulary: {neuron.model}, {neuron.reset}, {neuron.comparison}")
    if not (neuron.threshold > 0 and neuron.surrogate and neuron.encoding and neuron.decoding):
        problems.append("neuron threshold, surrogate, encoding and decoding must all be given")
    required = {"if": ("shift",), "lif": ("decay",), "tssl": ("tau_m", "tau_s")}.get(neuron.model, ())
    problems += [f"{neuron.model} neuron lacks {p}" for p in required if getattr(neuron, p) is None]

    quant = entry.quant
    if quant.mode is None and (quant.quantized_layers or entry.parent is not None):
        problems.append("an fp32 entry quantizes no layer and has no parent")
    if quant.mode is not None:
        if not quant.quantized_layers or not quant.full_precision_layers:
            problems.append("a quantized entry names its quantized and full-precision layers")
        parent = _registry._ENTRIES.get(entry.parent)
        if parent is None or parent.weight_kind != "fp32":
            problems.append(f"parent {entry.parent!r} is not a registered fp32 entry")
        elif (parent.family, parent.dataset, parent.method, parent.T, parent.neuron, parent.mean, parent.std) != (
            entry.family, entry.dataset, entry.method, entry.T, entry.neuron, entry.mean, entry.std
        ):
            problems.append(f"parent {parent.name} differs in more than its weights")

    if entry.input_size != (3, 32, 32) or len(entry.mean) != 3 or len(entry.std) != 3 or min(entry.std) <= 0:
        problems.append("input size or normalisation")
    if (entry.mean, entry.std) not in (NORMALIZATION[entry.dataset], NORMALIZATION["cifar10"]):
        problems.append("normalisation statistics of neither the dataset nor CIFAR-10")

    w = entry.weights
    if w is not None:
        if not (w.filename.endswith(".safetensors") and HEX64.fullmatch(w.sha256) and w.size > 0):
            problems.append(f"weights file record {w}")
        pinned = w.revision is None or HEX40.fullmatch(w.revision)  # None: only in checkpoints/ so far
        if not (re.fullmatch(r"[\w.-]+/[\w.-]+", w.hf_repo) and pinned):
            problems.append(f"weights must name a Hub repo and pin a full commit hash, got {w.hf_repo}@{w.revision}")
        committed = [p.filename for p in w.parts] or [w.filename]
        if w.revision is None and not all((REPO_ROOT / "checkpoints" / f).is_file() for f in committed):
            problems.append(f"weights not on the Hub must ship in checkpoints/, {committed} are not all there")
        if w.parts and (sum(p.size for p in w.parts) != w.size or max(p.size for p in w.parts) > PART_BYTES
                        or [p.filename for p in w.parts] != [part_name(w.filename, k, len(w.parts))
                                                             for k in range(1, len(w.parts) + 1)]):
            problems.append(f"parts {w.parts} must be named in order, each at most {PART_BYTES} bytes, adding up to the file")
        if not entry.metrics:
            problems.append("published weights come with measured metrics")
    made = entry.made_file
    if made is not None:
        if w is not None:
            problems.append("an entry has either committed weights or a made file that is not committed, not both")
        if not (HEX64.fullmatch(made.sha256) and made.size > 0 and made.dtype in ("float32", "float16") and made.reason):
            problems.append(f"made file record {made}")
        if (REPO_ROOT / "checkpoints" / f"{entry.name}.safetensors").is_file():
            problems.append("a file that is not committed must not be in checkpoints/ either (it would load unchecked)")
        if not entry.metrics:
            problems.append("a made file is recorded for its measured metrics")
    for m in entry.metrics:
        if not (0 <= m.value <= 100 and m.name and m.data and m.rows > 0 and (REPO_ROOT / m.source).is_file()):
            problems.append(f"metric {m} must say what it measured, on how many rows, by which repository file")

    if not (entry.paper_claim and entry.description and entry.license):
        problems.append("paper claim, description and license are required")
    if entry.name not in entry.recipe:
        problems.append(f"recipe {entry.recipe!r} must be the command that makes {entry.name}")
    if "@" not in entry.citation or (quant.mode is not None and "cbp" not in entry.citation.lower()):
        problems.append("citation must be BibTeX, citing CBP for quantized entries")
    if entry.builder is None or entry.builder.__name__ != entry.name or not (entry.builder.__doc__ or "").strip():
        problems.append("builder must be a documented function named like the entry")
    return problems


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_entry_keeps_the_contract(name):
    assert contract_violations(get_entry(name)) == []


def test_the_registry_holds_exactly_the_planned_checkpoints():
    assert list_models() == EXPECTED_NAMES


def test_the_contract_check_catches_broken_records():
    entry = get_entry("vgg16_cifar10_bin_calib")
    good_weights = WeightsFile(f"{entry.name}.safetensors", "a" * 64, 1_900_000, "qsnn-zoo/weights", "b" * 40)
    good_metric = Metric("top1", 90.0, "cifar10-offline test, lossless rows (1017)", 1017, "tests/test_registry.py")
    good_made = MadeFile("e" * 64, 248_000_000, "float32", "over 50 MB")
    assert contract_violations(dataclasses.replace(entry, weights=good_weights, metrics=(good_metric,))) == []
    assert contract_violations(dataclasses.replace(get_entry("cnn7_cifar10_fp32_stbp"), made_file=good_made,
                                                   metrics=(good_metric,))) == []
    broken = {
        "unpinned revision": dict(weights=dataclasses.replace(good_weights, revision="main"), metrics=(good_metric,)),
        "weights without metrics": dict(weights=good_weights, metrics=()),
        "short hash": dict(weights=dataclasses.replace(good_weights, sha256="abc"), metrics=(good_metric,)),
        "metric without source": dict(metrics=(dataclasses.replace(good_metric, source="nowhere.py"),)),
        "name and fields disagree": dict(dataset="cifar100", num_classes=100),
        "missing parent": dict(parent="vgg16_cifar10_fp32_stbp"),
        "T disagrees with arch_kwargs": dict(T=16),
        "recipe of another entry": dict(recipe="python scripts/reproduce.py vgg16_cifar10_ter_calib"),
        "made file without metrics": dict(made_file=good_made),
        "parts not adding up to the file": dict(weights=dataclasses.replace(good_weights, parts=(
            FilePart(f"{entry.name}.safetensors.part1-of-1", "e" * 64, 1_000),)), metrics=(good_metric,)),
        "made file beside weights": dict(weights=good_weights, made_file=good_made, metrics=(good_metric,)),
        "made file without reason": dict(made_file=dataclasses.replace(good_made, reason=""), metrics=(good_metric,)),
        "made file of another dtype": dict(made_file=dataclasses.replace(good_made, dtype="bf16"), metrics=(good_metric,)),
    }
    for what, changes in broken.items():
        assert contract_violations(dataclasses.replace(entry, **changes)), what


def test_records_are_frozen_and_json_able():
    entry = get_entry("cnn7_cifar100_ter_stbp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.T = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.neuron.decay = 0.5
    info = model_info(entry.name)
    assert json.loads(entry.to_json()) == json.loads(json.dumps(info))
    assert info["quant"]["quantized_layers"] and info["neuron"]["decay"] == 0.8 and "builder" not in info


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_records_describe_the_model_the_builder_makes(name):
    entry = get_entry(name)
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = qsnn_zoo.create_model(name)
    assert (model.T, model.num_classes, model.entry) == (entry.T, entry.num_classes, entry)
    quantized = {n for n, m in quantized_modules(model)}
    assert quantized == set(entry.quant.quantized_layers)
    assert all(m.quant == entry.quant.mode for _, m in quantized_modules(model))
    modules = dict(model.named_modules())
    for layer in entry.quant.full_precision_layers:
        layer = layer.replace(" (frozen)", "")
        if not layer.startswith("all"):
            assert layer in modules and not is_quantized(modules[layer]), layer
    neurons = [m for _, m in model.spiking_neurons()]
    assert neurons and all(type(m) is NEURON_CLASS[entry.neuron.model] for m in neurons)
    spec_fields = {"if": ("shift",), "lif": ("threshold", "decay"), "tssl": ("threshold", "tau_m", "tau_s")}
    for field in spec_fields[entry.neuron.model]:
        assert {getattr(m, field) for m in neurons} == {getattr(entry.neuron, field)}, field


def test_list_models_filters_with_fnmatch_and_by_published_weights(monkeypatch):
    assert list_models("*_calib") == [n for n in EXPECTED_NAMES if n.endswith("_calib")]
    assert len(list_models("*_calib")) == 6
    assert list_models("cnn7_cifar10_*") == ["cnn7_cifar10_bin_stbp", "cnn7_cifar10_fp32_stbp", "cnn7_cifar10_ter_stbp"]
    assert list_models("*_[bt][ie][nr]_*") == [n for n in EXPECTED_NAMES if "_fp32_" not in n]
    assert list_models("VGG16*") == []
    published = [n for n in EXPECTED_NAMES if get_entry(n).has_weights]
    assert list_models(pretrained=True) == published

    name = "alexnet_cifar10_ter_tsslbp"
    weights = WeightsFile(f"{name}.safetensors", "0" * 64, 1, "qsnn-zoo/weights", "1" * 40)
    monkeypatch.setitem(_registry._ENTRIES, name, dataclasses.replace(get_entry(name), weights=weights))
    assert name in list_models(pretrained=True) and name in list_models("alexnet*", pretrained=True)


def test_unknown_names_list_the_closest_ones():
    with pytest.raises(UnknownModelError) as err:
        get_entry("vgg16_cifar10_bin_calb")
    assert "vgg16_cifar10_bin_calib" in str(err.value) and "list_models" in str(err.value)
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownModelError, match="cnn7_cifar100_ter_stbp"):
        qsnn_zoo.create_model("cnn7_cifar100_ternary_stbp")
    with pytest.raises(UnknownModelError, match="Unknown model 'resnet50'"):
        model_info("resnet50")


def test_names_are_unique_and_builders_named_like_their_entry():
    entry = get_entry("cnn7_cifar10_fp32_stbp")
    with pytest.raises(ValueError, match="registered twice"):
        _registry.register_entry(entry, entry.builder)
    renamed = dataclasses.replace(entry, name="cnn7_cifar10_fp16_stbp")
    with pytest.raises(ValueError, match="must be named like its entry"):
        _registry.register_entry(renamed, entry.builder)
    assert "cnn7_cifar10_fp16_stbp" not in _registry._ENTRIES


def test_published_records_fill_weights_metrics_and_recipe():
    entry = get_entry("vgg16_cifar100_bin_calib")
    record = {
        "weights": {"filename": "v.safetensors", "sha256": "c" * 64, "size": 5, "hf_repo": "a/b", "revision": "d" * 40},
        "metrics": [{"name": "top1", "value": 60.0, "data": "cifar100 test (10000)", "rows": 10000, "source": "x.py"}],
        "recipe": "python scripts/reproduce.py vgg16_cifar100_bin_calib --seed 1",
    }
    merged = _registry._with_published(entry, record)
    assert merged.weights == WeightsFile(**record["weights"])
    assert merged.metrics == (Metric(**record["metrics"][0]),)
    assert merged.recipe == record["recipe"] and merged.neuron == entry.neuron


def test_a_record_of_a_file_committed_in_parts_keeps_them_in_order():
    entry = get_entry("cnn7_cifar10_fp32_stbp")
    parts = [{"filename": f"p.safetensors.part{k}-of-2", "sha256": c * 64, "size": 3} for k, c in ((1, "a"), (2, "b"))]
    record = {
        "weights": {"filename": "p.safetensors", "sha256": "c" * 64, "size": 6, "hf_repo": "a/b", "revision": None,
                    "parts": parts},
        "metrics": [{"name": "top1", "value": 88.0, "data": "cifar10 test, all rows", "rows": 10000, "source": "x.json"}],
    }
    merged = _registry._with_published(entry, record)
    assert merged.weights.parts == (FilePart(**parts[0]), FilePart(**parts[1]))
    assert json.loads(merged.to_json())["weights"] == record["weights"]
    committed_whole = {k: v for k, v in record["weights"].items() if k != "parts"}
    whole = _registry._with_published(entry, {**record, "weights": committed_whole})
    assert whole.weights.parts == () and json.loads(whole.to_json())["weights"] == committed_whole


def test_a_record_without_committed_weights_keeps_its_made_file_and_is_not_pretrained(monkeypatch):
    name = "cnn7_cifar10_fp32_stbp"
    record = {
        "weights": None,
        "made_file": {"sha256": "f" * 64, "size": 248_440_000, "dtype": "float32", "reason": "over 50 MB"},
        "metrics": [{"name": "top1", "value": 88.0, "data": "cifar10 test, all rows", "rows": 10000, "source": "x.json"}],
        "recipe": f"python scripts/train_fp32.py {name} --epochs 30",
    }
    merged = _registry._with_published(get_entry(name), record)
    assert merged.weights is None and not merged.has_weights
    assert merged.made_file == MadeFile("f" * 64, 248_440_000, "float32", "over 50 MB")
    assert merged.metrics == (Metric(**record["metrics"][0]),) and merged.recipe == record["recipe"]
    assert json.loads(merged.to_json())["made_file"] == record["made_file"]
    monkeypatch.setitem(_registry._ENTRIES, name, merged)
    assert name in list_models() and name not in list_models(pretrained=True)
