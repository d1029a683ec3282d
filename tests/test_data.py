"""CIFAR batches in torchvision's layout: read as Python 2 wrote them, and never a way to run code."""
import os
import pickle
import shlex
import struct

import numpy as np
import pytest

from qsnn_zoo.data import DataError, load_cifar


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2's ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle wrote the
    CIFAR batches; Python 3's protocol 2 would write them through ``_codecs.encode`` instead."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _write_batch(path, batch, numpy_module):
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(batch)
    # The batches name numpy 1's module; numpy 2 pickles arrays through numpy._core.
    path.write_bytes(path.read_bytes().replace(b"cnumpy._core.multiarray\n", f"c{numpy_module}\n".encode()))


def _torchvision_folder(root, numpy_module, rows=4):
    """cifar-10-batches-py/ with ``rows`` random images per batch file; returns the test images and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (rows, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, rows)]
        batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": images,
                 b"filenames": [b"img_%d.png" % i for i in range(rows)]}
        _write_batch(folder / name, batch, numpy_module)
    return images, labels


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_torchvision_batches_as_python2_wrote_them_are_read(tmp_path, numpy_module):
    images, labels = _torchvision_folder(tmp_path, numpy_module)
    test = load_cifar(tmp_path, "test")
    assert test.labels.tolist() == labels
    assert np.array_equal(test.images, images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert len(load_cifar(tmp_path, "train")) == 5 * len(labels)


class _RunsAShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _TouchesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return type(self.path).touch, (self.path,)


@pytest.mark.parametrize("payload, refused", [
    (lambda marker: _RunsAShellCommand(f"touch {shlex.quote(str(marker))}"), "system"),
    (_TouchesAFile, "touch"),
])
def test_a_batch_that_would_run_code_is_refused_before_anything_runs(tmp_path, payload, refused):
    _torchvision_folder(tmp_path, "numpy.core.multiarray")
    marker = tmp_path / "code-ran"
    # The payload comes first, so the refusal is of it, not of how this Python pickles arrays.
    batch = {"filenames": [payload(marker)], "labels": [0], "data": np.zeros((1, 3072), np.uint8)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=f"test_batch asks to load .*{refused}.*refused without running it") as err:
        load_cifar(tmp_path, "test")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_batch_that_is_not_a_dict_is_refused(tmp_path):
    _torchvision_folder(tmp_path, "numpy.core.multiarray")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="holds a list, not a CIFAR batch"):
        load_cifar(tmp_path, "test")
