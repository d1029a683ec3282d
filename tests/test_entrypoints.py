"""The ways in: torch.hub on a fresh clone, timm, create_model; where weights are looked for, and
what the errors say."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qsnn_zoo
from qsnn_zoo import _registry, hub
from qsnn_zoo._registry import UnknownModelError, WeightsFile
from qsnn_zoo.hub import HashMismatchError, WeightsNotFoundError, resolve_weights
from qsnn_zoo.weights import export_state, save_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "vgg16_cifar100_bin_calib"  # an unpublished entry with a small quantized file (about 2 MB)
HUB_REPO = "qsnn-zoo/qsnn-zoo:main"  # torch.hub keeps a GitHub repo's copy as <hub dir>/qsnn-zoo_qsnn-zoo_main



def weights_digest(model) -> str:
    """sha256 over the stored form of every tensor: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for key, value in sorted(export_state(model)[0].items()):
        digest.update(key.encode() + value.numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def no_local_weights(monkeypatch, tmp_path):
    """No $QSNN_ZOO_WEIGHTS, an empty checkpoints/ folder, no Hub connection, an empty Hub cache."""
    monkeypatch.delenv("QSNN_ZOO_WEIGHTS", raising=False)
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "checkpoints")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A model of NAME with random weights, and its file under the name the zoo looks for."""
    torch.manual_seed(0)
    model = qsnn_zoo.create_model(NAME, T=2)
    path = save_weights(model, tmp_path_factory.mktemp("weights") / f"{NAME}.safetensors")
    return model, path


def published(monkeypatch, name: str, data: bytes) -> _registry.ModelEntry:
    """Makes ``name``'s entry point at ``data`` as published weights (restored after the test)."""
    weights = WeightsFile(f"{name}.safetensors", hashlib.sha256(data).hexdigest(), len(data), "qsnn-zoo/w", "a" * 40)
    entry = dataclasses.replace(_registry.get_entry(name), weights=weights)
    monkeypatch.setitem(_registry._ENTRIES, name, entry)
    return entry


def load_hubconf():
    spec = importlib.util.spec_from_file_location("qsnn_zoo_hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_one_documented_entrypoint_per_registry_name():
    hubconf = load_hubconf()
    assert {"torch", "safetensors", "huggingface_hub"} <= set(hubconf.dependencies)
    entrypoints = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert entrypoints == qsnn_zoo.list_models()
    for name in entrypoints:
        assert getattr(hubconf, name) is _registry.get_entry(name).builder and getattr(hubconf, name).__doc__


def test_hubconf_takes_its_entry_points_from_the_registry(monkeypatch):
    def vgg16_cifar100_bin_calib_v2(pretrained: bool = False, **kwargs):
        """A registry entry added after hubconf.py was written."""

    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))
    entry = dataclasses.replace(_registry.get_entry(NAME), name="vgg16_cifar100_bin_calib_v2")
    _registry.register_entry(entry, vgg16_cifar100_bin_calib_v2)
    assert load_hubconf().vgg16_cifar100_bin_calib_v2 is vgg16_cifar100_bin_calib_v2


def test_hubconf_dependencies_cover_what_import_qsnn_zoo_imports():
    """torch.hub checks `dependencies` before importing hubconf.py: it must list every third-party package
    that a module loaded by `import qsnn_zoo` imports at its top, and huggingface_hub for downloads, and
    nothing else (a package listed but not needed stops torch.hub.load where it is not installed)."""
    import ast

    loaded = subprocess.run(
        [sys.executable, "-c", "import json, sys, qsnn_zoo; print(json.dumps([m.__file__ for n, m in "
         "sys.modules.items() if n.split('.')[0] == 'qsnn_zoo']))"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    needed = {"huggingface_hub"}
    for path in json.loads(loaded.stdout):
        for node in ast.parse(Path(path).read_text()).body:
            if isinstance(node, ast.Import):
                needed |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                needed.add(node.module.split(".")[0])
    needed -= set(sys.stdlib_module_names) | {"__future__", "qsnn_zoo"}  # timm is optional, imported in a try
    assert set(load_hubconf().dependencies) == needed


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs a git checkout")
def test_torch_hub_list_and_load_on_a_fresh_clone(tmp_path, random_weights):
    source, weights_file = random_weights
    clone = tmp_path / "torch" / "hub" / "qsnn-zoo_qsnn-zoo_main"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    script = f'''
import hashlib, json, sys, torch
names = torch.hub.list({HUB_REPO!r}, trust_repo=True, skip_validation=True, verbose=False)
doc = torch.hub.help({HUB_REPO!r}, {NAME!r}, trust_repo=True, skip_validation=True)
model = torch.hub.load(sys.argv[1], {NAME!r}, source="local", pretrained=True, T=2)
fresh = torch.hub.load({HUB_REPO!r}, "alexnet_cifar10_fp32_tsslbp", trust_repo=True, skip_validation=True,
                       verbose=False, pretrained=False, T=2)
import qsnn_zoo
from qsnn_zoo.weights import export_state
{inspect.getsource(weights_digest)}
print(json.dumps({{"names": names, "doc": doc, "package": qsnn_zoo.__file__, "digest": weights_digest(model),
                  "fresh": [type(fresh).__name__, fresh.T, fresh.entry.name]}}))
'''
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QSNN_ZOO_WEIGHTS")}
    env.update(TORCH_HOME=str(tmp_path / "torch"), QSNN_ZOO_WEIGHTS=str(weights_file.parent), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(clone)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["names"] == qsnn_zoo.list_models()
    assert Path(out["package"]).resolve().is_relative_to(clone.resolve()), "must import the clone's package"
    assert out["doc"].strip() == _registry.get_entry(NAME).builder.__doc__.strip()
    assert out["digest"] == weights_digest(source)
    assert out["fresh"] == ["TSSLAlexNet", 2, "alexnet_cifar10_fp32_tsslbp"]


def test_timm_creates_and_lists_the_zoo(monkeypatch, no_local_weights, random_weights):
    import timm

    source, weights_file = random_weights
    assert sorted(timm.list_models("*_calib")) == qsnn_zoo.list_models("*_calib")
    assert set(qsnn_zoo.list_models()) <= set(timm.list_models())
    model = timm.create_model("vgg16_cifar100_ter_calib", T=2)
    assert type(model).__name__ == "SpikingVGG" and model.entry is _registry.get_entry("vgg16_cifar100_ter_calib")
    assert model.pretrained_cfg["name"] == "vgg16_cifar100_ter_calib" and model.num_classes == 100

    monkeypatch.setenv("QSNN_ZOO_WEIGHTS", str(weights_file.parent))
    from_timm = timm.create_model(NAME, pretrained=True, T=2)
    from_zoo = qsnn_zoo.create_model(NAME, pretrained=True, T=2)
    assert weights_digest(from_timm) == weights_digest(from_zoo) == weights_digest(source)


def test_resolution_order_explicit_then_env_then_checkpoints_then_hub(monkeypatch, no_local_weights):
    data = b"published bytes"
    entry = published(monkeypatch, NAME, data)
    places = {
        "explicit": no_local_weights / "mine" / "my-run.safetensors",
        "env": no_local_weights / "env" / entry.weights.filename,
        "checkpoints": hub.REPO_CHECKPOINTS / entry.weights.filename,
    }
    for path in places.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    monkeypatch.setenv("QSNN_ZOO_WEIGHTS", str(places["env"].parent))
    downloads = []
    monkeypatch.setattr(hub, "_download", lambda entry, cache_dir: downloads.append(cache_dir) or Path("hub"))

    assert resolve_weights(entry, weights=places["explicit"]) == places["explicit"]
    assert resolve_weights(entry, weights=places["env"].parent) == places["env"]  # an explicit directory
    assert resolve_weights(entry) == places["env"]
    places["env"].unlink()
    assert resolve_weights(entry) == places["checkpoints"]
    places["checkpoints"].unlink()
    assert resolve_weights(entry, cache_dir="c") == Path("hub") and downloads == ["c"]

    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(entry, weights=no_local_weights / "nowhere.safetensors")
    with pytest.raises(WeightsNotFoundError, match=f"holds no {entry.weights.filename}"):
        resolve_weights(entry, weights=places["env"].parent)


def test_explicit_weights_file_loads_into_the_model(random_weights):
    source, weights_file = random_weights
    model = qsnn_zoo.create_model(NAME, weights=weights_file, T=2)
    assert weights_digest(model) == weights_digest(source)


def test_unpublished_entry_says_how_to_make_or_supply_its_weights(no_local_weights):
    name = "cnn7_cifar100_bin_stbp"
    with pytest.raises(WeightsNotFoundError) as err:
        qsnn_zoo.create_model(name, pretrained=True, T=2)
    message = str(err.value)
    assert f"{name} has no published weights yet" in message
    assert f"python scripts/reproduce.py {name}" in message
    assert "weights=PATH" in message and f"{name}.safetensors" in message and "QSNN_ZOO_WEIGHTS" in message


def test_an_entry_whose_measured_file_is_not_committed_says_why_pretrained_fails(monkeypatch, no_local_weights):
    name = "cnn7_cifar10_fp32_stbp"
    made = _registry.MadeFile("7" * 64, 248_440_872, "float32", "248 MB, over 50 MB per file")
    monkeypatch.setitem(_registry._ENTRIES, name, dataclasses.replace(_registry.get_entry(name), made_file=made))
    with pytest.raises(WeightsNotFoundError) as err:
        qsnn_zoo.create_model(name, pretrained=True, T=2)
    message = str(err.value)
    assert f"the weights file of {name} is not committed ({made.reason})" in message
    assert f"Make them with `{_registry.get_entry(name).recipe}`" in message and "weights=PATH" in message


def test_a_local_file_with_other_bytes_than_the_published_ones(monkeypatch, no_local_weights, random_weights):
    _, weights_file = random_weights
    entry = published(monkeypatch, NAME, b"the published bytes")
    monkeypatch.setenv("QSNN_ZOO_WEIGHTS", str(weights_file.parent))
    with pytest.raises(HashMismatchError) as err:
        qsnn_zoo.create_model(NAME, pretrained=True, T=2)
    assert entry.weights.sha256 in str(err.value) and hub.sha256_of(weights_file) in str(err.value)
    assert weights_file.exists(), "a user's own file is reported, never deleted"


def test_an_explicit_path_is_the_users_own_file_and_not_held_to_the_published_hash(monkeypatch, random_weights):
    model, weights_file = random_weights
    published(monkeypatch, NAME, b"the published bytes")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        for given in (weights_file, weights_file.parent):
            assert torch.equal(qsnn_zoo.create_model(NAME, weights=given, T=2).eval()(x), expected)


def test_offline_without_a_cached_copy(monkeypatch, no_local_weights):
    entry = published(monkeypatch, NAME, b"published elsewhere")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE is set.*QSNN_ZOO_WEIGHTS.*weights=DIR") as err:
        qsnn_zoo.create_model(NAME, pretrained=True, cache_dir=no_local_weights / "hf-cache", T=2)
    assert f"--revision {entry.weights.revision}" in str(err.value)


def test_bad_names_and_arguments_are_explained():
    with pytest.raises(UnknownModelError, match="Closest names: vgg16_cifar10_bin_calib"):
        qsnn_zoo.create_model("vgg16_cifar10_bin_calibb")
    with pytest.raises(TypeError, match=r"does not take \['depth'\]; it takes \[.*'T'"):
        qsnn_zoo.create_model(NAME, depth=19)
    with pytest.raises(ValueError, match="has 100 classes; pretrained weights cannot be loaded with num_classes=10"):
        qsnn_zoo.create_model(NAME, pretrained=True, num_classes=10)
