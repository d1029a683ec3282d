"""qsnn-zoo: pretrained binary and ternary spiking neural networks (CBP-QSNN) for PyTorch."""
from __future__ import annotations

from . import models  # noqa: F401  (registers every model family)
from ._builder import create_model
from ._registry import ModelEntry, UnknownModelError, get_entry, list_models, model_info
from .weights import load_weights, save_weights

__version__ = "0.1.0"


def _register_with_timm() -> None:
    """Makes every entry a timm model, so ``timm.create_model(name)`` builds it."""
    try:
        from timm.models import register_model as timm_register
        from timm.models._registry import _model_entrypoints
    except ImportError:
        return
    for name in list_models():
        if name not in _model_entrypoints:
            timm_register(get_entry(name).builder)


_register_with_timm()

__all__ = [
    "ModelEntry",
    "UnknownModelError",
    "create_model",
    "get_entry",
    "list_models",
    "load_weights",
    "model_info",
    "save_weights",
]
