"""Shared by the training tests: run a script in-process, tiny run flags, a random fp32 parent, and
a synthetic CIFAR-10 bundle so the tests need no dataset (CI has none)."""
import importlib.util
import sys
from pathlib import Path
from typing import Optional

import numpy as np

import qsnn_zoo
from qsnn_zoo import save_weights

REPO = Path(__file__).resolve().parent.parent


# The synthetic bundle of this test session; conftest.py writes it under pytest's temporary directory.
BUNDLE: Optional[Path] = None


def synthetic_bundle(root: Path, train_per_file=40, test_rows=32) -> Path:
    """Random images in the .npz bundle's layout (train-0..4.npz, test.npz with its lossless mask)."""
    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)

    for i in range(5):
        x, y = images(train_per_file)
        np.savez(root / f"train-{i}.npz", images=x, labels=y)
    x, y = images(test_rows)
    np.savez(root / "test.npz", images=x, labels=y, lossless=np.arange(test_rows) < test_rows // 2)
    return root


def script(name):
    """scripts/NAME.py as a module; its folder goes on sys.path, as `python scripts/NAME.py` puts it,
    so that scripts importing their siblings load here too."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.append(str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(out, images=32, batch=16, epochs=1, T=1):
    """Flags of a run small enough for a CPU test."""
    return [
        "--out", str(out), "--data", str(BUNDLE), "--device", "cpu", "--no-progress",
        "--limit-train", str(images), "--limit-test", "16", "--batch-size", str(batch),
        "--epochs", str(epochs), "--T", str(T),
    ]


def random_parent(directory, name):
    """An untrained fp32 entry saved as NAME.safetensors: a valid starting point for CBP tests."""
    path = Path(directory) / f"{name}.safetensors"
    save_weights(qsnn_zoo.create_model(name), path, model_name=name)
    return path
