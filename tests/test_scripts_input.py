"""scripts/evaluate.py and scripts/half_weights.py refuse bad input with one line naming the problem
and exit status 2, never a traceback, and leave no file half-written."""
import json
from pathlib import Path

import pytest
import torch

import _train_helpers
from _train_helpers import random_parent, script
from qsnn_zoo.weights import read_metadata

# The smallest entry (binary codes, ~2 MB), so that building and saving it keeps these tests fast.
NAME = "vgg16_cifar10_bin_calib"


def run(module, argv, capsys):
    """``(exit status, stderr)`` of ``module.main(argv)``, whether argparse exits or main returns."""
    try:
        code = module.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def assert_one_line_error(err, fragment):
    """argparse prints its usage above the error line; the problem and its fix must fit that last line."""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert ": error: " in last and fragment in last, err


def bad_weights(folder, kind):
    """A weights path that is a pickle, garbage, or (any other kind) missing."""
    path = folder / f"{kind}.safetensors"
    if kind == "pickle":
        torch.save({"weight": torch.zeros(2)}, path)
    elif kind == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 8)
    return path


# ---------------------------------------------------------------- evaluate.py

@pytest.mark.parametrize("args, fragment", [
    (["nosuch", "--pretrained"], "Unknown model 'nosuch'"),
    ([NAME, "--pretrained", "--device", "foo"], "argument --device: 'foo' is not a torch device"),
    ([NAME, "--pretrained", "--T", "-1"], "argument --T: -1 is not positive"),
    ([NAME, "--pretrained", "--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    ([NAME, "--pretrained", "--limit-test", "-3"], "argument --limit-test: -3 is not positive"),
])
def test_evaluate_refuses_bad_arguments_where_it_parses_them(capsys, args, fragment):
    code, err = run(script("evaluate"), args, capsys)
    assert code == 2
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize("weights, data, fragment", [
    ("missing", "bundle", "does not exist"),
    ("pickle", "bundle", "not a readable safetensors file"),
    ("garbage", "bundle", "not a readable safetensors file"),
    (None, "missing", "data directory"),
])
def test_evaluate_refuses_missing_or_unreadable_weights_and_data(tmp_path, capsys, weights, data, fragment):
    source = ["--pretrained"] if weights is None else ["--weights", str(bad_weights(tmp_path, weights))]
    folder = _train_helpers.BUNDLE if data == "bundle" else tmp_path / "no-such-data"
    code, err = run(script("evaluate"), [NAME, *source, "--data", str(folder), "--device", "cpu"], capsys)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert len(err.strip().splitlines()) == 1


def test_evaluate_limit_test_takes_the_first_images(tmp_path, capsys):
    weights = random_parent(tmp_path, NAME)
    code = script("evaluate").main([NAME, "--weights", str(weights), "--data", str(_train_helpers.BUNDLE), "--device",
                                    "cpu", "--T", "1", "--limit-test", "8", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["rows_all"] == 8


# ---------------------------------------------------------------- half_weights.py

@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    return random_parent(tmp_path_factory.mktemp("fp32"), NAME)


def without_config(path, tmp_path):
    from safetensors.torch import load_file, save_file

    metadata = read_metadata(path)
    del metadata["config"]
    stripped = tmp_path / "no-config.safetensors"
    save_file(load_file(str(path)), str(stripped), metadata=metadata)
    return stripped


@pytest.mark.parametrize("case, fragment", [
    ("unknown name", "Unknown model 'nosuch'"),
    ("missing source", "does not exist"),
    ("pickled source", "not a readable safetensors file"),
    ("source without config", "no readable 'config'"),
    ("destination is a folder", "is a directory"),
    ("destination under a file", "is a file"),
    ("destination cannot be written", "cannot write"),
])
def test_half_weights_refuses_bad_input_and_writes_nothing(tmp_path, capsys, fp32_file, case, fragment):
    name, src, dst = NAME, fp32_file, tmp_path / "out" / "half.safetensors"
    if case == "unknown name":
        name = "nosuch"
    elif case == "missing source":
        src = tmp_path / "missing.safetensors"
    elif case == "pickled source":
        src = bad_weights(tmp_path, "pickle")
    elif case == "source without config":
        src = without_config(fp32_file, tmp_path)
    elif case == "destination is a folder":
        dst = tmp_path / "out"
        dst.mkdir()
    elif case == "destination under a file":
        (tmp_path / "out").write_text("")
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux's /proc, where no file can be made")
        dst = "/proc/qsnn-zoo-half.safetensors"
    before = sorted(tmp_path.rglob("*"))
    code, err = run(script("half_weights"), [name, str(src), str(dst)], capsys)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert sorted(tmp_path.rglob("*")) == before  # no output, and no temporary file left beside it


def test_half_weights_writes_float16_and_keeps_the_config(tmp_path, fp32_file):
    dst = tmp_path / "out" / "half.safetensors"
    assert script("half_weights").main([NAME, str(fp32_file), str(dst)]) == 0
    source, half = read_metadata(fp32_file), read_metadata(dst)
    assert half["float_dtype"] == "float16" and half["config"] == source["config"]
