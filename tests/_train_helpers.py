"""Shared by the training tests: run a script in-process, tiny run flags, a random fp32 parent."""
import importlib.util
from pathlib import Path

import qsnn_zoo
from qsnn_zoo import save_weights

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".data" / "cifar10"


def script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(out, images=32, batch=16, epochs=1, T=1):
    """Flags of a run small enough for a CPU test."""
    return [
        "--out", str(out), "--data", str(DATA), "--device", "cpu", "--no-progress",
        "--limit-train", str(images), "--limit-test", "16", "--batch-size", str(batch),
        "--epochs", str(epochs), "--T", str(T),
    ]


def random_parent(directory, name):
    """An untrained fp32 entry saved as NAME.safetensors: a valid starting point for CBP tests."""
    path = Path(directory) / f"{name}.safetensors"
    save_weights(qsnn_zoo.create_model(name), path, model_name=name)
    return path
