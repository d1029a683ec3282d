"""qsnn-zoo: pretrained binary and ternary spiking neural networks (CBP-QSNN) for PyTorch."""
from __future__ import annotations

import sys

from . import models  # noqa: F401  (registers every model family)
from ._builder import create_model
from ._registry import ModelEntry, UnknownModelError, get_entry, list_models, model_info
from .hub_repository import from_pretrained
from .weights import load_weights, save_weights

__version__ = "0.1.0"


def _register_with_timm() -> None:
    """Makes every entry a timm model, so ``timm.create_model(name)`` builds it, with the entry's
    preprocessing as its pretrained_cfg and, for an entry with weights, ``timm.list_models(pretrained=True)``
    listing it."""
    try:
        from timm.models import register_model as timm_register
        from timm.models._registry import _model_entrypoints
    except ImportError:
        return
    from ._builder import pretrained_cfg

    for name in list_models():
        builder = get_entry(name).builder
        # timm's register_model takes a model's pretrained_cfg from its module's `default_cfgs` table.
        family = sys.modules[builder.__module__]
        family.__dict__.setdefault("default_cfgs", {})[name] = pretrained_cfg(get_entry(name))
        if name not in _model_entrypoints:
            timm_register(builder)


_register_with_timm()

__all__ = [
    "ModelEntry",
    "UnknownModelError",
    "create_model",
    "from_pretrained",
    "get_entry",
    "list_models",
    "load_weights",
    "model_info",
    "save_weights",
]
