"""argparse ``type=`` functions shared by the ``qsnn-zoo`` command and the scripts, so that a bad
value is refused where it is parsed: one line naming the argument and the fix, exit status 2."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._registry import UnknownModelError, get_entry


def _whole_number(value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number; pass one of {least}, {least + 1}, {least + 2}, ...") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"{number} is {'not positive' if least else 'negative'}; pass {least} or more")
    return number


def positive_int(value: str) -> int:
    return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
    return _whole_number(value, 0)


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def non_negative_float(value: str) -> float:
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number:g} is negative; pass 0 or more")
    return number


def positive_float(value: str) -> float:
    number = _number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{number:g} is not positive; pass a number above 0")
    return number


def fraction(value: str) -> float:
    """A number strictly between 0 and 1 (a point within a schedule)."""
    number = _number(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{number:g} is not between 0 and 1; pass e.g. 0.5")
    return number


def registry_name(value: str) -> str:
    try:
        return get_entry(value).name
    except UnknownModelError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def torch_device(value: str) -> str:
    """A device torch can parse and this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a torch device; pass cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{value}: torch sees no CUDA GPU on this machine; pass --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{value}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{value}: MPS is not available on this machine; pass --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{value}: qsnn-zoo runs on cpu, cuda or mps, not {device.type}")
    return value


def output_file(value: str) -> str:
    """A file path whose directory exists or can be made: not a directory, not under a file."""
    if not value.strip():
        raise argparse.ArgumentTypeError("the output path is empty; name the file to write")
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; name a file inside it, e.g. {path / 'model.out'}")
    _refuse_a_file_above(path, path.parents)
    return value


def output_dir(value: str) -> str:
    """A directory that exists or can be made: not a file, not under a file."""
    if not value.strip():
        raise argparse.ArgumentTypeError("the output folder is empty; name a folder to write into")
    path = Path(value).expanduser()
    _refuse_a_file_above(path, (path, *path.parents))
    return value


def _refuse_a_file_above(path: Path, folders) -> None:
    """Refuses ``path`` when the nearest of ``folders`` that exists is a file, which no folder can be made in."""
    existing = next((folder for folder in folders if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, so {path} cannot be made; choose another path")


def hub_repo_id(value: str) -> str:
    """A Hugging Face Hub repository id OWNER/NAME, as the Hub itself validates it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.count("/") != 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not OWNER/NAME; pass e.g. my-user/{value.rsplit('/', 1)[-1] or 'model'}")
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise argparse.ArgumentTypeError(" ".join(str(err).split())) from None
    return value
