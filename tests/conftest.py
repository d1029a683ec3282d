import os
import shutil
import signal
import tempfile

import pytest

# Importing torchvision makes torch create its compile cache folder, /tmp/torchinductor_USER, even
# though no test compiles; it goes into a folder of this session instead (subprocesses inherit it),
# removed at the end. Set before the test modules import torch.
_TORCH_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _TORCH_CACHE = tempfile.mkdtemp(prefix="qsnn-zoo-tests-torchinductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _TORCH_CACHE

import _train_helpers  # noqa: E402  (imports torch)

_PYTEST_ROOTS = []


@pytest.fixture(autouse=True)
def default_sigterm():
    """The CLI and the training scripts install their SIGTERM handler in the process that calls them,
    here pytest's; put the default back so that a test run stays stoppable with SIGTERM."""
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def synthetic_cifar_bundle(tmp_path_factory):
    """The bundle that ``tiny()`` runs read, under pytest's temporary directory so that it goes with it."""
    _PYTEST_ROOTS.append(tmp_path_factory.getbasetemp().parent)
    _train_helpers.BUNDLE = _train_helpers.synthetic_bundle(tmp_path_factory.mktemp("synthetic-cifar"))
    return _train_helpers.BUNDLE


def pytest_unconfigure(config):
    if _TORCH_CACHE:
        shutil.rmtree(_TORCH_CACHE, ignore_errors=True)
    # pytest-of-USER, once a passing session's folder has gone from it (setup.cfg's retention policy).
    for root in _PYTEST_ROOTS:
        if root.name.startswith("pytest-of-"):
            current = root / "pytest-current"
            if current.is_symlink() and not current.exists():  # it pointed at the folder just removed
                current.unlink()
            try:
                root.rmdir()
            except OSError:  # other sessions' folders, or this failed session's, are still in it
                pass
