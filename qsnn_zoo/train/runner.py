"""Command-line plumbing shared by ``scripts/train_fp32.py``, ``quantize_cbp.py`` and ``reproduce.py``."""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from .._registry import UnknownModelError, get_entry
from ..data import DataError
from ..hub import HashMismatchError, WeightsNotFoundError, resolve_weights
from ..signals import exit_on_sigterm
from ..weights import WeightsFormatError
from .checkpoint import CheckpointError
from .config import RunOptions, add_arguments, apply_overrides, recipe_for, recipe_overrides, run_options, stages_for
from . import distributed
from .loop import NonFiniteError
from .pipelines import RunSetupError, run_stage, weights_path

# Recipe settings a quick run shares with the parent that reproduce.py trains first: its length, size
# and the SNN-Calibration conversion settings. The others (learning rates, optimizers, clipping, ...)
# differ between fp32 training and CBP and stay the parent's own.
SHARED_WITH_PARENT = ("epochs", "batch_size", "T", "use_bn", "trial", "calib", "calib_batches")

# Failures of a run that the user can fix (a name, a file, the data, a checkpoint, a diverging recipe).
USER_ERRORS = (
    UnknownModelError, DataError, WeightsNotFoundError, HashMismatchError, WeightsFormatError, CheckpointError,
    NonFiniteError, RunSetupError,
)
EXIT_USER_ERROR = 2


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Makes a training script's ``main`` print one line naming the problem and the fix for a
    :data:`USER_ERRORS` failure and return exit status 2, as the ``qsnn-zoo`` command does; any other
    exception is a bug and keeps its traceback."""
    program = Path(main.__code__.co_filename).name

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            print(f"{program}: error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR

    return guarded


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def print_recipes(name: str, overrides: Dict) -> None:
    for stage in stages_for(name):
        recipe = apply_overrides(recipe_for(name, stage, use_bn=overrides.get("use_bn", False)), overrides)
        print(f"{name} / {stage}")
        for key, value in recipe.settings(get_entry(name).T).items():
            print(f"  {key:<18} {value}")


def run_entry(name: str, args: argparse.Namespace, overrides: Optional[Dict] = None) -> Optional[Path]:
    """Runs every stage of ``name`` with its recipe and ``overrides``; returns the weights path
    (None when stopped early with --stop-after-epoch)."""
    exit_on_sigterm()
    overrides = recipe_overrides(args) if overrides is None else overrides
    options = run_options(args)
    path = None
    for stage in stages_for(name):
        recipe = apply_overrides(recipe_for(name, stage, use_bn=overrides.get("use_bn", False)), overrides)
        path = run_stage(name, recipe, options, command_deadline(args))
        if path is None:
            return None
    return path


def command_deadline(args: argparse.Namespace) -> Optional[float]:
    """The ``time.monotonic()`` at which --time-budget runs out. It counts from the first stage the
    command runs, so reproduce.py's parent and child stages share one budget."""
    if not getattr(args, "time_budget", None):
        return None
    if getattr(args, "deadline", None) is None:
        args.deadline = time.monotonic() + args.time_budget
    return args.deadline


def parent_available(name: str, options: RunOptions) -> bool:
    """Whether CBP for ``name`` has fp32 weights to start from without training them."""
    parent = get_entry(name).parent
    if options.parent_weights or weights_path(options.out, parent).is_file():
        return True
    try:
        resolve_weights(get_entry(parent))
    except WeightsNotFoundError:
        return False
    return True


def parent_overrides(overrides: Dict) -> Dict:
    return {k: v for k, v in overrides.items() if k in SHARED_WITH_PARENT}


def finish() -> None:
    """Leaves the process group, if a torchrun launch made one."""
    distributed.shutdown()
