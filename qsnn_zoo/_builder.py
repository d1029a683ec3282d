"""The one path from a registry name to a model: resolve the entry, build, load weights."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type, Union

from torch import nn

from ._registry import ModelEntry, get_entry, list_models
from .hub import HUB_WEIGHTS_NAME


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Builds registry entry ``name``; ``pretrained=True`` loads its published weights.

    ``overrides`` change the architecture's arguments (``T``, ``num_classes`` ...); ``weights=PATH``
    loads a given file or directory; ``cache_dir`` is passed to the Hub download.
    """
    return get_entry(name).builder(pretrained=pretrained, **overrides)


# Passed by timm.create_model to every entrypoint; qsnn-zoo's records replace timm's configs.
_TIMM_ONLY_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay")
# The preprocessing of `qsnn-zoo eval`: the whole 32x32 image (no crop), pixels scaled to [0, 1] and
# normalised with the entry's mean/std; other sizes are resized as `qsnn-zoo predict` does (bilinear).
INTERPOLATION = "bilinear"
CROP_PCT = 1.0


def pretrained_cfg(entry: ModelEntry) -> Dict[str, Any]:
    """timm's pretrained_cfg of ``entry``, so that ``timm.data.resolve_data_config`` and
    ``create_transform`` give the inputs the zoo's own evaluation uses."""
    return {
        "architecture": entry.name,
        "hf_hub_id": entry.weights.hf_repo if entry.weights else None,
        "hf_hub_filename": HUB_WEIGHTS_NAME,
        "input_size": entry.input_size,
        "fixed_input_size": True,
        "interpolation": INTERPOLATION,
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "mean": entry.mean,
        "std": entry.std,
        "num_classes": entry.num_classes,
        "license": entry.license,
        "description": entry.description,
    }


def attach_entry(model: nn.Module, entry: ModelEntry, init_kwargs: Mapping[str, Any]) -> nn.Module:
    """Gives ``model`` the record it was built from and the arguments it was built with, which
    saving it (save_weights, save_pretrained) writes beside its tensors."""
    model.entry = entry
    model.init_kwargs = dict(init_kwargs)
    model.pretrained_cfg = {**entry.to_dict(), **pretrained_cfg(entry)}  # timm reads this attribute
    return model


def build_model(
    name: str,
    model_cls: Type[nn.Module],
    pretrained: bool = False,
    weights: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    **overrides: Any,
) -> nn.Module:
    """Builds registry entry ``name`` as ``model_cls`` with its configuration and ``overrides``.

    ``pretrained=True`` loads the entry's published weights (see :func:`qsnn_zoo.hub.resolve_weights`
    for where they are looked for); ``weights`` loads a given file or directory instead.
    """
    entry = get_entry(name)
    for key in _TIMM_ONLY_ARGS:
        overrides.pop(key, None)
    config = entry.arch_config()
    _check_overrides(name, model_cls, overrides)
    _check_values(entry, overrides)
    if (pretrained or weights is not None) and overrides.get("num_classes", entry.num_classes) != entry.num_classes:
        raise ValueError(
            f"{name} has {entry.num_classes} classes; pretrained weights cannot be loaded with "
            f"num_classes={overrides['num_classes']}. Build with pretrained=False to train a new head."
        )
    config.update(overrides)
    model = attach_entry(model_cls(**config), entry, config)
    if pretrained or weights is not None:
        from .hub import resolve_weights
        from .weights import load_weights

        path = resolve_weights(entry, weights=weights, cache_dir=cache_dir)
        load_weights(model, path, expected_name=name)
    return model


def _check_overrides(name: str, model_cls: Type[nn.Module], overrides: dict) -> None:
    allowed = set(inspect.signature(model_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"{name} does not take {unknown}; it takes {sorted(allowed)}")


def _check_values(entry: ModelEntry, overrides: dict) -> None:
    """Refuses overrides no model can be built with, and a weight kind other than the entry's: the
    kind is part of what an entry is (its name, weights and metrics), so it has an entry of its own."""
    for key in ("T", "num_classes"):
        value = overrides.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{entry.name}: {key} must be a positive int, got {value!r}")
    if "quant" in overrides and overrides["quant"] != entry.quant.mode:
        sibling = entry.name.replace(f"_{entry.weight_kind}_", f"_{overrides['quant'] or 'fp32'}_")
        instead = f"create_model({sibling!r})" if sibling in list_models() else "the entry of the kind you want"
        raise ValueError(
            f"{entry.name} is a {entry.weight_kind} entry; quant={overrides['quant']!r} would build another model "
            f"under its name (and load its {entry.weight_kind} weights as another kind). Use {instead}."
        )
