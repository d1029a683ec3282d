"""CIFAR images as uint8 arrays, from the layouts users have, with clear errors for the rest.

Readers return :class:`ImageSet`: ``images`` uint8 ``[N, 32, 32, 3]`` (NHWC, RGB), ``labels``
int64 ``[N]``, and ``lossless`` (bool ``[N]``) when the source says which rows are lossless, else
``None``: the offline ``.npz`` bundle marks the rows that hold the canonical images, the others being
JPEG recompressions of them, so accuracy on the lossless rows estimates canonical test accuracy.

Layouts:
- the ``.npz`` bundle: ``train-0.npz`` ... ``train-4.npz`` and ``test.npz`` in one directory;
- torchvision's extracted archives: ``cifar-10-batches-py/`` or ``cifar-100-python/`` (or their parent).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

PathLike = Union[str, Path]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
SAMPLE_FILE = Path(__file__).with_name("assets") / "cifar10_sample.npz"
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class DataError(ValueError):
    """Data that is missing, unreadable or inconsistent."""


@dataclass
class ImageSet:
    images: np.ndarray
    labels: np.ndarray
    lossless: Optional[np.ndarray] = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Union[slice, np.ndarray, Sequence[int]]) -> "ImageSet":
        lossless = None if self.lossless is None else self.lossless[index]
        return ImageSet(self.images[index], self.labels[index], lossless, self.source)


def load_cifar(root: PathLike, split: str = "test", dataset: str = "cifar10") -> ImageSet:
    """Reads ``split`` of ``dataset`` from ``root`` in whichever supported layout it finds there."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if dataset not in _NUM_CLASSES:
        raise DataError(f"dataset must be one of {tuple(_NUM_CLASSES)}, got {dataset!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is a file, not a directory" if root.exists() else "does not exist"
        raise DataError(f"data directory {root} {state}. Pass --data DIR with CIFAR data in it.")
    if (root / "test.npz").is_file():
        if dataset != "cifar10":
            raise DataError(f"{root} holds the .npz bundle, which is CIFAR-10; {dataset} needs torchvision's layout.")
        data = _read_npz_bundle(root, split)
    else:
        folder = root if root.name == _TORCHVISION_DIRS[dataset] else root / _TORCHVISION_DIRS[dataset]
        if not folder.is_dir():
            raise DataError(
                f"{root} holds neither the .npz bundle (test.npz, train-0..4.npz) nor torchvision's "
                f"{_TORCHVISION_DIRS[dataset]}/. Download {dataset} with torchvision.datasets.{dataset.upper()}"
                f"(root, download=True) on a networked machine, or point --data at the bundle."
            )
        data = _read_torchvision(folder, split, dataset)
    _validate(data, _NUM_CLASSES[dataset])
    return data


def _read_npz_bundle(root: Path, split: str) -> ImageSet:
    names = ["test.npz"] if split == "test" else [f"train-{i}.npz" for i in range(5)]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root} lacks {missing} of the .npz bundle; copy the whole bundle.")
    parts = []
    for name in names:
        try:
            with np.load(root / name, allow_pickle=False) as f:
                parts.append({k: f[k] for k in f.files})
        except Exception as err:  # zip, format and pickle-refusal errors all mean "unreadable"
            raise DataError(f"{root / name} is not a readable .npz file ({err}); check it with sha256sum -c SHA256SUMS.") from None
    for name, part in zip(names, parts):
        if "images" not in part or "labels" not in part:
            raise DataError(f"{root / name} has arrays {sorted(part)}, expected 'images' and 'labels'.")
        shapes = {k: part[k].shape for k in ("images", "labels", "lossless") if k in part}
        if part["images"].ndim != 4 or any(part[k].ndim != 1 for k in ("labels", "lossless") if k in part):
            raise DataError(f"{root / name} has arrays of shapes {shapes}; expected images [N, 32, 32, 3] and "
                            "labels (and lossless) [N].")
    images = np.concatenate([p["images"] for p in parts])
    labels = _integer_labels(np.concatenate([p["labels"] for p in parts]), f"npz:{root}")
    lossless = parts[0].get("lossless") if split == "test" else np.ones(len(labels), dtype=bool)
    return ImageSet(images, labels, None if lossless is None else lossless.astype(bool), f"npz:{root}")


class _CifarBatchUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR's Python batches hold and nothing else: dicts, lists, strings, numbers and
    numpy arrays. The files were written by Python 2's cPickle, which names the array through
    ``numpy.core.multiarray._reconstruct`` (``numpy._core`` since numpy 2), ``numpy.ndarray`` and
    ``numpy.dtype``; every other global, the way a crafted pickle runs code, is refused before it is
    called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise DataError(
                f"{self.path} asks to load {module}.{name}, which no CIFAR batch holds: refused without running it. "
                "Re-extract the archive from its official source."
            ) from None

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} is missing from the torchvision CIFAR folder; re-extract the archive.")
    try:
        with open(path, "rb") as f:
            batch = _CifarBatchUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path} is not a readable CIFAR batch ({err}); re-extract the archive.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; re-extract the archive.")
    return batch


def _read_torchvision(folder: Path, split: str, dataset: str) -> ImageSet:
    if dataset == "cifar10":
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        label_key = "labels"
    else:
        names, label_key = [split], "fine_labels"
    batches = [_unpickle(folder / n) for n in names]
    try:
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        labels = _integer_labels(np.concatenate([np.asarray(b[label_key]) for b in batches]), f"torchvision:{folder}")
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{folder} does not hold {dataset} batches as torchvision writes them ({err}).") from None
    return ImageSet(images.transpose(0, 2, 3, 1).copy(), labels, None, f"torchvision:{folder}")


def _integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """int64 labels; float labels are refused, since casting would truncate 2.7 to class 2 silently."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels are {labels.dtype}, not integers; store class indices as integers.")
    return labels.astype(np.int64)


def _validate(data: ImageSet, num_classes: int) -> None:
    where = data.source
    if len(data.labels) == 0:
        raise DataError(f"{where}: the data holds no images; point --data at a complete copy of the dataset.")
    if data.images.dtype != np.uint8 or data.images.shape[1:] != (32, 32, 3):
        raise DataError(f"{where}: images must be uint8 [N, 32, 32, 3], got {data.images.dtype} {data.images.shape}.")
    if data.labels.ndim != 1:
        raise DataError(f"{where}: labels must be one class index per image, got shape {data.labels.shape}.")
    if len(data.images) != len(data.labels):
        raise DataError(f"{where}: {len(data.images)} images but {len(data.labels)} labels.")
    if (data.labels.min() < 0 or data.labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels span {data.labels.min()}..{data.labels.max()}, outside 0..{num_classes - 1}; "
            "the files are mislabelled or belong to another dataset."
        )
    if data.lossless is not None and len(data.lossless) != len(data.labels):
        raise DataError(f"{where}: 'lossless' has {len(data.lossless)} rows for {len(data.labels)} labels.")


def load_sample() -> ImageSet:
    """The small set of lossless CIFAR-10 test images bundled with the package."""
    with np.load(SAMPLE_FILE, allow_pickle=False) as f:
        data = ImageSet(f["images"], f["labels"].astype(np.int64), f["lossless"].astype(bool), f"bundled:{SAMPLE_FILE.name}")
    _validate(data, 10)
    return data


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float], device=None) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW, as ToTensor + Normalize compute it."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255)
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
