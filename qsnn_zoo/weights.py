"""The zoo's weights format: safetensors with quantized layers stored as packed codes.

For a quantized layer ``L`` the file holds ``L.weight.codes`` (uint8, see :mod:`qsnn_zoo.packing`)
and ``L.scale`` (fp32); its latent fp32 weight is not stored, since the forward pass only ever
uses ``scale * code``. Every other tensor is stored as it is (fp32, or fp16 when asked for).
``__metadata__`` holds the format version, the model name, the packing of every packed tensor
and the model configuration, all as strings (safetensors allows nothing else).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .layers.quant import quantized_modules
from .packing import SCHEMES, mode_of_scheme, pack_codes, unpack_codes

FORMAT_NAME = "qsnn-zoo"
FORMAT_VERSION = "1"
CODES_SUFFIX = ".weight.codes"
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Keys every file written by save_weights has, and their readers need.
REQUIRED_METADATA = ("model_name", "packing", "float_dtype")
PathLike = Union[str, Path]


class WeightsFormatError(ValueError):
    """A file that is not a qsnn-zoo weights file, or does not fit the model."""


def atomic_write(path: PathLike, write) -> None:
    """Calls ``write(tmp_path)`` then renames into place, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates files readable by the owner only; published files are for everyone.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written in sorted key order.

    safetensors serialises the header from a hash map whose order changes from one call to the next,
    so the same tensors and metadata give different bytes, and a different sha256, every time.
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to a multiple of 8 bytes with spaces
    return struct.pack("<Q", len(header)) + header + data[8 + length :]


def export_state(model: nn.Module, half: bool = False) -> tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors and packing table that :func:`save_weights` writes."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    packing: Dict[str, Any] = {}
    for name, module in quantized_modules(model):
        weight_key = f"{name}.weight"
        codes = module.codes()
        state.pop(weight_key)
        state[name + CODES_SUFFIX] = pack_codes(codes, module.quant)
        packing[weight_key] = {"scheme": SCHEMES[module.quant], "shape": list(codes.shape)}
    if half:
        state = {k: v.half() if v.is_floating_point() and not k.endswith(".scale") else v for k, v in state.items()}
    return state, packing


def save_weights(
    model: nn.Module,
    path: PathLike,
    model_name: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    half: bool = False,
) -> Path:
    """Writes ``model`` to ``path`` atomically. ``half`` stores float tensors (scales excepted) as fp16."""
    entry = getattr(model, "entry", None)
    model_name = model_name or (entry.name if entry is not None else type(model).__name__)
    config = config if config is not None else (entry.to_dict() if entry is not None else {})
    state, packing = export_state(model, half=half)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "packing": json.dumps(packing, sort_keys=True),
        "float_dtype": "float16" if half else "float32",
        "config": json.dumps(config, sort_keys=True, default=str),
    }
    data = canonical_safetensors(save(state, metadata=metadata))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def read_metadata(path: PathLike) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFormatError(
            f"{path} is not a readable safetensors file ({err}). qsnn-zoo loads only .safetensors files "
            "written by qsnn_zoo.save_weights; never pickled checkpoints."
        ) from None
    if metadata.get("format") != FORMAT_NAME:
        raise WeightsFormatError(
            f"{path} is a safetensors file but not a qsnn-zoo weights file (no 'format: {FORMAT_NAME}' in its "
            "metadata). Write weights with qsnn_zoo.save_weights."
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsFormatError(
            f"{path} has weights format version {metadata.get('format_version')!r}; this qsnn-zoo reads "
            f"version {FORMAT_VERSION}. Upgrade qsnn-zoo or re-export the file."
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise WeightsFormatError(
            f"{path}: its metadata lacks {missing}, which every file written by qsnn_zoo.save_weights has. "
            "The file was altered or written by other code; re-export it with qsnn_zoo.save_weights."
        )
    if metadata["float_dtype"] not in FLOAT_DTYPES:
        raise WeightsFormatError(
            f"{path}: metadata float_dtype is {metadata['float_dtype']!r}, not one of {sorted(FLOAT_DTYPES)}; "
            "re-export the file with qsnn_zoo.save_weights."
        )
    return metadata


def read_packing(path: PathLike, metadata: Mapping[str, str]) -> Dict[str, tuple[str, list]]:
    """``{weight key: (mode, shape)}`` of every packed tensor, from the metadata's packing table."""
    fix = "The file was altered or written by other code; re-export it with qsnn_zoo.save_weights."
    try:
        table = json.loads(metadata["packing"])
    except json.JSONDecodeError as err:
        raise WeightsFormatError(f"{path}: metadata 'packing' is not valid JSON ({err}). {fix}") from None
    if not isinstance(table, dict):
        raise WeightsFormatError(f"{path}: metadata 'packing' is not a JSON object. {fix}")
    packing = {}
    for weight_key, info in table.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not weight_key.endswith(".weight") or not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise WeightsFormatError(f"{path}: packing record of {weight_key!r} is not {{scheme, shape}}: {info!r}. {fix}")
        try:
            packing[weight_key] = (mode_of_scheme(info.get("scheme")), shape)
        except ValueError as err:
            raise WeightsFormatError(f"{path}: {weight_key}: {err}. Upgrade qsnn-zoo, or re-export the file.") from None
    return packing


def _check_dtypes(path: PathLike, tensors: Mapping[str, torch.Tensor], float_dtype: str) -> None:
    """Refuses float tensors stored in another dtype than the metadata declares (scales are always fp32),
    since loading would silently convert them."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        expected = torch.float32 if key.endswith(".scale") else FLOAT_DTYPES[float_dtype]
        if tensor.dtype != expected:
            raise WeightsFormatError(
                f"{path}: tensor {key} is stored as {str(tensor.dtype).replace('torch.', '')}, but the metadata "
                f"says {str(expected).replace('torch.', '')}. The file was altered or written by other code; "
                "re-export it with qsnn_zoo.save_weights."
            )


def describe_file(path: PathLike) -> Dict[str, Any]:
    """What the registry records of a weights file: its model, float dtype, and the sha256 and size of
    its canonical bytes. Written where a file too large to bring back was made (the GPU machine), so
    that it can be published as an uncommitted file (``scripts/publish.py --not-committed``)."""
    metadata = read_metadata(path)
    data = canonical_safetensors(Path(path).read_bytes())
    return {
        "model_name": metadata["model_name"],
        "float_dtype": metadata["float_dtype"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def read_state(path: PathLike) -> tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The full state dict stored in ``path`` (codes unpacked to ``scale * code``) and its metadata."""
    metadata = read_metadata(path)
    packing = read_packing(path, metadata)
    tensors = load_file(str(path))
    _check_dtypes(path, tensors, metadata["float_dtype"])
    for weight_key, (mode, shape) in packing.items():
        layer = weight_key[: -len(".weight")]
        codes_key, scale_key = layer + CODES_SUFFIX, layer + ".scale"
        if codes_key not in tensors or scale_key not in tensors:
            raise WeightsFormatError(f"{path}: packed tensor {weight_key} lacks {codes_key} or {scale_key}")
        try:
            codes = unpack_codes(tensors.pop(codes_key), shape, mode)
        except ValueError as err:
            raise WeightsFormatError(f"{path}: tensor {codes_key}: {err}") from None
        tensors[weight_key] = codes.to(torch.float32) * tensors[scale_key].float()
    return tensors, metadata


def load_weights(model: nn.Module, path: PathLike, expected_name: Optional[str] = None) -> nn.Module:
    """Loads ``path`` into ``model`` strictly: every name, shape and the model name must match."""
    state, metadata = read_state(path)
    stored_name = metadata.get("model_name")
    if expected_name is not None and stored_name != expected_name:
        raise WeightsFormatError(
            f"{path} holds weights of {stored_name!r}, not {expected_name!r}. Pass the file of "
            f"{expected_name!r}, or create_model({stored_name!r}) for this one."
        )
    _check_against(model, state, path)
    _check_quant(model, read_packing(path, metadata), path)
    target = model.state_dict()
    state = {k: v.to(dtype=target[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


def _check_against(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise WeightsFormatError(
            f"{path} does not fit {type(model).__name__}: missing tensors {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Check that the file belongs to this model."
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise WeightsFormatError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target[key].shape)}. Check that the file belongs to this model."
            )


def _check_quant(model: nn.Module, packing: Mapping[str, tuple], path: PathLike) -> None:
    """Refuses codes packed as one kind for a layer of another: binary codes read as ternary (or the
    reverse) give a model that runs but is not the one in the file."""
    for name, module in quantized_modules(model):
        stored = packing.get(f"{name}.weight", (None,))[0]
        if stored is not None and stored != module.quant:
            raise WeightsFormatError(
                f"{path} stores {name}.weight as {stored} codes, but the model's layer is {module.quant}. "
                f"Load it into a {stored} model (the registry entry the file was written for)."
            )


def storage_report(path: PathLike) -> Dict[str, Any]:
    """Bytes on disk, and bits per quantized weight including its scale."""
    metadata = read_metadata(path)
    packing = read_packing(path, metadata)
    from safetensors import safe_open

    quantized_weights = sum(math.prod(shape) for _, shape in packing.values())
    quantized_bytes = 4 * len(packing)  # one fp32 scale per quantized layer
    other_values = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            numel = math.prod(f.get_slice(key).get_shape())
            if key.endswith(CODES_SUFFIX):
                quantized_bytes += numel
            elif not key.endswith(".scale"):
                other_values += numel
    return {
        "file_bytes": os.path.getsize(path),
        "quantized_weights": quantized_weights,
        "quantized_bytes": quantized_bytes,
        "bits_per_quantized_weight": 8 * quantized_bytes / quantized_weights if quantized_weights else None,
        "other_values": other_values,
        "float_dtype": metadata.get("float_dtype", "float32"),
    }
