"""scripts/compare_training_logs.py: same-command runs compared on their training fields, epoch by epoch."""
import json

import pytest

from _train_helpers import script


def _log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _epoch(epoch, loss, seconds=9.0, test=80.0):
    return {"epoch": epoch, "train_loss": loss, "lagsum": 3.5, "seconds": seconds, "train_seconds": seconds - 0.5,
            "test_top1_lossless": test}


def test_wall_time_and_test_accuracy_do_not_count(tmp_path, capsys):
    old = _log(tmp_path / "old.jsonl", [_epoch(0, 2.5), _epoch(1, 2.25)])
    new = _log(tmp_path / "new.jsonl", [_epoch(0, 2.5, seconds=7.0, test=81.0)])
    assert script("compare_training_logs").main([old, new]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["epoch 0: 3 fields identical (train_loss 2.5)", "1 of 1 shared epochs identical (2 and 1 epochs logged)"]


def test_a_training_field_that_differs_is_named(tmp_path, capsys):
    old = _log(tmp_path / "old.jsonl", [_epoch(0, 2.5)])
    new = _log(tmp_path / "new.jsonl", [_epoch(0, 2.5000001)])
    assert script("compare_training_logs").main([old, new]) == 1
    assert "differ in train_loss" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{\"epoch\": 0}\nnot json\n", "line 2: not a JSON object"),
    ("[1, 2]\n", "line 1: not a JSON object"),
])
def test_unreadable_logs_are_one_line_errors(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_text(content)
    good = _log(tmp_path / "good.jsonl", [_epoch(0, 2.5)])
    assert script("compare_training_logs").main([good, str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "metrics.jsonl" in err


def test_missing_arguments_exit_2_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script("compare_training_logs").main([])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
