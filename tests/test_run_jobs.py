"""scripts/run_jobs.py: jobs run after what they need, at most `parallel` at once, one GPU each."""
import json
import sys

import pytest

from _train_helpers import script

PRINT_ENV = "import os, sys, time; time.sleep(0.3); print(os.environ.get('CUDA_VISIBLE_DEVICES'), sys.argv[1:])"


def _plan(tmp_path, jobs, parallel=1):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"parallel": parallel, "jobs": jobs}))
    return path


def _job(name, code, after=(), *args):
    return {"name": name, "argv": ["{python}", "-c", code, *args], "after": list(after)}


def test_jobs_run_in_order_skip_after_failure_and_log(tmp_path):
    run_jobs = script("run_jobs")
    plan = _plan(tmp_path, [
        _job("first", PRINT_ENV, (), "{word}"),
        _job("fails", "raise SystemExit(3)", ["first"]),
        _job("after_failure", PRINT_ENV, ["fails"]),
        _job("second", PRINT_ENV, ["first"], "two"),
        {**_job("cleanup", PRINT_ENV), "wait_for": ["after_failure", "second"]},
    ], parallel=2)
    out = tmp_path / "out"
    assert run_jobs.main([str(plan), "--out", str(out), "--set", "word=hello"]) == 1
    status = json.loads((out / "jobs.json").read_text())
    assert status["first"]["returncode"] == 0 and status["second"]["returncode"] == 0
    assert len({status[name]["pid"] for name in ("first", "fails", "second", "cleanup")}) == 4
    assert status["fails"]["returncode"] == 3 and status["after_failure"]["state"] == "skipped"
    assert status["second"]["started"] >= status["first"]["ended"]
    assert "['hello']" in (out / "logs" / "first.log").read_text()
    assert status["cleanup"]["returncode"] == 0 and status["cleanup"]["started"] >= status["second"]["ended"]


def test_left_out_jobs_and_what_needs_them_do_not_run_nor_fail_the_plan(tmp_path, capsys):
    run_jobs = script("run_jobs")
    plan = _plan(tmp_path, [
        _job("parent", PRINT_ENV),
        _job("bin_child", PRINT_ENV, ["parent"]),
        _job("ter_child", PRINT_ENV, ["parent"]),
        _job("ter_eval", PRINT_ENV, ["ter_child"]),
        _job("ter_report", PRINT_ENV, ["ter_eval"]),
        {**_job("bench", PRINT_ENV), "wait_for": ["bin_child", "ter_eval"]},
    ], parallel=2)
    out = tmp_path / "out"
    assert run_jobs.main([str(plan), "--out", str(out), "--leave-out", "ter_child"]) == 0
    status = json.loads((out / "jobs.json").read_text())
    assert {n for n, s in status.items() if s["state"] == "left out"} == {"ter_child", "ter_eval", "ter_report"}
    assert all(status[n]["returncode"] == 0 for n in ("parent", "bin_child", "bench"))
    assert not (out / "logs" / "ter_child.log").exists()
    with pytest.raises(SystemExit) as exit_info:
        run_jobs.main([str(plan), "--out", str(out), "--leave-out", "quad_child"])
    assert exit_info.value.code == 2 and "'quad_child'" in capsys.readouterr().err


def test_each_job_gets_its_own_gpu_and_jobs_overlap(tmp_path):
    run_jobs = script("run_jobs")
    plan = _plan(tmp_path, [_job(f"j{i}", PRINT_ENV) for i in range(3)])
    out = tmp_path / "out"
    assert run_jobs.main([str(plan), "--out", str(out), "--gpus", "4,7"]) == 0
    status = json.loads((out / "jobs.json").read_text())
    assert {status["j0"]["gpu"], status["j1"]["gpu"]} == {"4", "7"}  # two GPUs: two jobs at once
    assert status["j1"]["started"] < status["j0"]["ended"]
    assert status["j2"]["started"] >= min(status["j0"]["ended"], status["j1"]["ended"])
    assert (out / "logs" / "j2.log").read_text().split()[0] in ("4", "7")


@pytest.mark.parametrize("jobs, message", [
    ([_job("a", "pass"), _job("a", "pass")], "unique"),
    ([_job("a", "pass", ["b"])], "unknown jobs"),
    ([_job("a", "pass", (), "{missing}")], "--set missing="),
])
def test_bad_plans_are_refused_with_the_fix(tmp_path, capsys, jobs, message):
    run_jobs = script("run_jobs")
    with pytest.raises(SystemExit) as exit_:
        run_jobs.main([str(_plan(tmp_path, jobs)), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
