"""Hub model repositories: a zoo model as ``config.json``, ``model.safetensors`` and ``README.md``.

``config.json`` says everything needed to rebuild the network without a registry entry (architecture,
constructor arguments, T, neuron, quantization, normalisation, classes, format versions), so that
fine-tuned checkpoints can be shared and loaded by anyone: :func:`save_pretrained` writes such a
folder, :func:`from_pretrained` builds a model from one (a local folder or a Hub repository id),
:func:`push_to_hub` uploads one, and :func:`push_entry` (``qsnn-zoo push``) uploads a registry entry's
published file and card and pins the commit it made in published.json.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn

from ._builder import CROP_PCT, INTERPOLATION, attach_entry
from ._registry import ModelEntry, NeuronSpec, QuantSpec, get_entry, record_hub_revision
from .hub import (
    HUB_CONFIG_NAME,
    HUB_WEIGHTS_NAME,
    WeightsNotFoundError,
    _offline,
    hub_download,
    hub_endpoint,
    resolve_weights,
)
from .models import CNN7, SpikingVGG, TSSLAlexNet
from .weights import FORMAT_VERSION, WeightsFormatError, atomic_write, load_weights, read_metadata, save_weights

PathLike = Union[str, Path]
CONFIG_FORMAT_VERSION = 1  # bump when config.json changes in a way older readers would misread
ARCHITECTURES = {"vgg": SpikingVGG, "cnn7": CNN7, "alexnet": TSSLAlexNet}  # ModelEntry.family -> class
README_NAME = "README.md"
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class RepositoryFormatError(WeightsFormatError):
    """A folder or Hub repository that is not a qsnn-zoo model this version can rebuild."""


# ---------------------------------------------------------------- config.json

def hub_config(entry: ModelEntry, arch_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """config.json of a model of ``entry`` built with ``arch_kwargs``."""
    return {
        "library_name": "qsnn-zoo",
        "format_version": CONFIG_FORMAT_VERSION,
        "weights_format_version": int(FORMAT_VERSION),
        "model_name": entry.name,
        "architecture": entry.family,
        "arch_kwargs": arch_kwargs,
        "T": arch_kwargs.get("T", entry.T),
        "num_classes": arch_kwargs.get("num_classes", entry.num_classes),
        "method": entry.method,
        "dataset": entry.dataset,
        "parent": entry.parent,
        "neuron": dataclasses.asdict(entry.neuron),
        "quantization": dataclasses.asdict(entry.quant),
        "normalisation": {
            "input_size": list(entry.input_size),
            "mean": list(entry.mean),
            "std": list(entry.std),
            "interpolation": INTERPOLATION,
            "crop_pct": CROP_PCT,
        },
        "license": entry.license,
    }


def model_config(model: nn.Module) -> Dict[str, Any]:
    entry = getattr(model, "entry", None)
    if entry is None or not hasattr(model, "init_kwargs"):
        raise ValueError(
            f"this {type(model).__name__} was not built by qsnn_zoo.create_model or from_pretrained, so it has no "
            "record of its architecture to save; build it with create_model(NAME, ...) and load your state into it."
        )
    return hub_config(entry, {**model.init_kwargs, "T": model.T})


def _entry_from_config(config: Dict[str, Any]) -> ModelEntry:
    """The record of a model rebuilt from config.json: its settings, and no published weights or results."""
    quant = dict(config["quantization"])
    quant.update(quantized_layers=tuple(quant["quantized_layers"]),
                 full_precision_layers=tuple(quant["full_precision_layers"]))
    norm = config["normalisation"]
    return ModelEntry(
        name=config["model_name"],
        family=config["architecture"],
        method=config["method"],
        dataset=config["dataset"],
        num_classes=config["num_classes"],
        T=config["T"],
        neuron=NeuronSpec(**config["neuron"]),
        quant=QuantSpec(**quant),
        arch_kwargs=tuple(config["arch_kwargs"].items()),
        input_size=tuple(norm["input_size"]),
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        parent=config.get("parent"),
        license=config.get("license", "apache-2.0"),
    )


def read_config(path: Path, source: str) -> Dict[str, Any]:
    """config.json at ``path`` (of ``source``), checked to be one this version can rebuild a model from."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RepositoryFormatError(f"{source}: {HUB_CONFIG_NAME} is not readable JSON ({err}).") from None
    if not isinstance(config, dict) or config.get("library_name") != "qsnn-zoo":
        raise RepositoryFormatError(
            f"{source}: {HUB_CONFIG_NAME} is not a qsnn-zoo config (no \"library_name\": \"qsnn-zoo\"); qsnn-zoo "
            "loads repositories written by save_pretrained, push_to_hub or `qsnn-zoo push`."
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise RepositoryFormatError(
            f"{source}: {HUB_CONFIG_NAME} has format version {version!r}, newer than the {CONFIG_FORMAT_VERSION} "
            "this qsnn-zoo reads. Upgrade qsnn-zoo (pip install -U qsnn-zoo)."
        )
    if config.get("architecture") not in ARCHITECTURES:
        raise RepositoryFormatError(
            f"{source}: {HUB_CONFIG_NAME} names architecture {config.get('architecture')!r}; this qsnn-zoo builds "
            f"{sorted(ARCHITECTURES)}. Upgrade qsnn-zoo."
        )
    return config


def _build(config: Dict[str, Any], weights: Path, source: str) -> nn.Module:
    model_cls = ARCHITECTURES[config["architecture"]]
    try:
        entry = _entry_from_config(config)
        model = model_cls(**config["arch_kwargs"])
    except (KeyError, TypeError, ValueError) as err:
        raise RepositoryFormatError(f"{source}: {HUB_CONFIG_NAME} cannot rebuild a {model_cls.__name__}: {err!r}.") from None
    attach_entry(model, entry, config["arch_kwargs"])
    stored = read_metadata(weights).get("model_name")
    if stored != entry.name:
        raise RepositoryFormatError(
            f"{source}: {HUB_CONFIG_NAME} describes {entry.name!r} but {HUB_WEIGHTS_NAME} holds weights of "
            f"{stored!r}; the two files do not belong together. Save both with save_pretrained."
        )
    try:
        return load_weights(model, weights)
    except WeightsFormatError as err:
        raise RepositoryFormatError(
            f"{source}: {HUB_CONFIG_NAME} does not match {HUB_WEIGHTS_NAME}: {err}"
        ) from None


# ---------------------------------------------------------------- loading

def _hub_file(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    try:
        return hub_download(repo_id, filename, revision, cache_dir)
    except LocalEntryNotFoundError as err:  # before EntryNotFoundError, its base class since huggingface_hub 1.0
        reason = "HF_HUB_OFFLINE is set" if _offline() else "offline or unreachable"
        raise WeightsNotFoundError(
            f"{where}: no cached {filename} and the Hub cannot be reached ({reason}). Download the repository "
            f"where there is a network (`hf download {repo_id} --local-dir DIR`) and pass DIR instead."
        ) from err
    except RepositoryNotFoundError as err:
        raise WeightsNotFoundError(
            f"there is no Hub repository {repo_id} (or it is private: set HF_TOKEN). Check the id, or pass a local folder."
        ) from err
    except RevisionNotFoundError as err:
        raise WeightsNotFoundError(f"{repo_id} has no revision {revision!r}; pass a branch, tag or commit it has.") from err
    except EntryNotFoundError as err:
        if filename == HUB_CONFIG_NAME:
            raise RepositoryFormatError(_no_config(where)) from err
        raise WeightsNotFoundError(f"{where} has no {filename}; it is not a complete qsnn-zoo repository.") from err


def _no_config(source: str) -> str:
    return (
        f"{source} has no {HUB_CONFIG_NAME}, so it is not a qsnn-zoo model repository. Write one with "
        "model.save_pretrained(DIR) or model.push_to_hub(REPO_ID); a bare weights file of a registry model loads "
        "with create_model(NAME, weights=PATH)."
    )


def from_pretrained(
    source: PathLike, revision: Optional[str] = None, cache_dir: Optional[PathLike] = None
) -> nn.Module:
    """A model built from ``config.json`` and ``model.safetensors`` of ``source``: a local folder, or a Hub
    repository id ``OWNER/NAME`` (downloaded at ``revision``, default its main branch, into the Hub cache)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        config_path, weights = folder / HUB_CONFIG_NAME, folder / HUB_WEIGHTS_NAME
        if not config_path.is_file():
            raise RepositoryFormatError(_no_config(str(folder)))
        config = read_config(config_path, str(folder))
        if not weights.is_file():
            raise WeightsNotFoundError(f"{folder} has {HUB_CONFIG_NAME} but no {HUB_WEIGHTS_NAME}.")
        return _build(config, weights, str(folder))
    if not REPO_ID.fullmatch(str(source)):
        raise WeightsNotFoundError(f"{source} is neither a folder nor a Hub repository id OWNER/NAME.")
    repo_id, where = str(source), f"{source}@{revision or 'main'}"
    config = read_config(_hub_file(repo_id, HUB_CONFIG_NAME, revision, cache_dir), where)
    return _build(config, _hub_file(repo_id, HUB_WEIGHTS_NAME, revision, cache_dir), where)


# ---------------------------------------------------------------- saving

def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_config(folder: Path, config: Dict[str, Any]) -> None:
    _write_text(folder / HUB_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_pretrained(model: nn.Module, directory: PathLike) -> Path:
    """Writes ``model`` as a Hub repository folder; each file is written atomically."""
    from .cards import saved_model_card

    config = model_config(model)
    folder = Path(directory)
    save_weights(model, folder / HUB_WEIGHTS_NAME)
    _write_config(folder, config)
    _write_text(folder / README_NAME, saved_model_card(model.entry, config["T"]))
    return folder


def _commit_folder(folder: Path, repo_id: str, revision: Optional[str], message: str,
                   private: Optional[bool], token: Optional[str]) -> str:
    """Uploads every file of ``folder`` to ``repo_id`` (created if needed) in one commit; returns its hash."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from . import __version__

    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="qsnn-zoo", library_version=__version__)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())]
    return api.create_commit(repo_id, operations, commit_message=message, revision=revision).oid


def push_to_hub(model: nn.Module, repo_id: str, revision: Optional[str] = None, private: Optional[bool] = None,
                token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Uploads ``model`` as save_pretrained writes it to the Hub repository ``repo_id``; returns the commit."""
    with tempfile.TemporaryDirectory(prefix="qsnn-zoo-push-") as tmp:
        folder = save_pretrained(model, tmp)
        message = commit_message or f"{model.entry.name}: weights, config.json and card saved with qsnn-zoo"
        return _commit_folder(folder, repo_id, revision, message, private, token)


def _stage_entry(name: str, folder: Path) -> Path:
    """Writes entry ``name``'s Hub repository into ``folder``: its published file as model.safetensors (the
    bytes the registry's sha256 names), config.json and the card; checks that the folder loads."""
    from .cards import hub_card

    entry = get_entry(name)
    if entry.weights is None:
        why = f"its weights file is not committed ({entry.made_file.reason})" if entry.made_file else "it has no published weights"
        raise WeightsNotFoundError(f"{name} cannot be pushed: {why}. Publish it first (scripts/publish.py).")
    shutil.copyfile(resolve_weights(entry), folder / HUB_WEIGHTS_NAME)
    _write_config(folder, hub_config(entry, entry.arch_config()))
    _write_text(folder / README_NAME, hub_card(entry))
    from_pretrained(folder)
    return folder


def push_entry(name: str, repo_id: Optional[str] = None, revision: Optional[str] = None,
               private: Optional[bool] = None, token: Optional[str] = None) -> str:
    """Publishes registry entry ``name`` to the Hub repository ``repo_id`` (default: the one its record names)
    and pins the commit made as the entry's revision in published.json; returns the commit hash."""
    entry = get_entry(name)
    with tempfile.TemporaryDirectory(prefix="qsnn-zoo-push-") as tmp:
        folder = _stage_entry(name, Path(tmp))
        repo_id = repo_id or entry.weights.hf_repo
        message = f"{name}: published weights (sha256 {entry.weights.sha256}), config.json and model card"
        commit = _commit_folder(folder, repo_id, revision, message, private, token)
    record_hub_revision(name, repo_id, commit)
    return commit
