"""scripts/summarize_grid.py: one row per run and epoch, runs ordered by parent, gate and falling lr."""
import json

import pytest

from _train_helpers import script


def _run(root, folder, records):
    path = root / folder / "vgg16_cifar10_bin_calib" / "calib_cbp" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _record(epoch, test):
    return {"epoch": epoch, "train_top1": 50.0, "test_top1_lossless": test, "test_top1_all": test - 1, "cfs": 0.01,
            "code_flips": 0.0123, "code_flips_last": 0.5, "firing_rates": {"a": 0.9, "b": 0.1, "c": 0.2, "d": 0.3}}


def test_grid_table(tmp_path, capsys):
    _run(tmp_path, "grid_bnfree_gate_lr1e-4", [_record(0, 30.0), _record(1, 40.0)])
    _run(tmp_path, "grid_bnfree_gate_lr1e-2", [_record(0, 10.0)])
    _run(tmp_path, "not_a_grid_run", [_record(0, 99.0)])
    assert script("summarize_grid").main([str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == [
        "| bnfree | on | 1e-2 | 1 | 50.0 | 10.0 | 9.0 | 0.0100 | 1.23 / 50 | 0.100 / 0.200 / 0.300 |",
        "| bnfree | on | 1e-4 | 1 | 50.0 | 30.0 | 29.0 | 0.0100 | 1.23 / 50 | 0.100 / 0.200 / 0.300 |",
        "| bnfree | on | 1e-4 | 2 | 50.0 | 40.0 | 39.0 | 0.0100 | 1.23 / 50 | 0.100 / 0.200 / 0.300 |",
    ]


def test_empty_grid_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        script("summarize_grid").main([str(tmp_path)])
    assert exit_.value.code == 2 and "no grid_* runs" in capsys.readouterr().err
