"""scripts/run_jobs.py: jobs run after what they need, at most `parallel` at once, one GPU each; a plan
that could not run as written, or a bad argument, is refused with one line and exit status 2."""
import json
import subprocess
import sys

import pytest

from _train_helpers import REPO, script

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


def _reached_runner(self):
    raise AssertionError("a plan that should have been refused reached the runner")


@pytest.fixture
def refusing(monkeypatch):
    """scripts/run_jobs.py whose runner fails the test if a plan reaches it, so that a plan which
    would wait for ever cannot leave the test waiting."""
    run_jobs = script("run_jobs")
    monkeypatch.setattr(run_jobs.Runner, "run", _reached_runner)
    return run_jobs


def refusal(capsys, run_jobs, argv) -> str:
    """The error line of a refused command line: exit status 2, one line after the usage, no traceback."""
    with pytest.raises(SystemExit) as exit_:
        run_jobs.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert err.count(": error: ") == 1 and ": error: " in err.splitlines()[-1], err
    return err.splitlines()[-1]


@pytest.mark.parametrize("jobs, message", [
    ([_job("a", "pass"), _job("a", "pass")], "unique"),
    ([_job("a", "pass", ["b"])], "unknown jobs ['b']"),
    ([{**_job("a", "pass"), "wait_for": ["b"]}], "unknown jobs ['b']"),
    ([_job("a", "pass", (), "{missing}")], "--set missing="),
    ([_job("a", "pass", ["a"])], "'a' waits for itself"),
    ([{**_job("a", "pass"), "wait_for": ["a"]}], "'a' waits for itself"),
    ([_job("a", "pass", ["b"]), _job("b", "pass", ["a"])], "cycle, a -> b -> a"),
    ([{**_job("a", "pass"), "wait_for": ["c"]}, _job("b", "pass", ["a"]), {**_job("c", "pass"), "wait_for": ["b"]}],
     "cycle, a -> c -> b -> a"),
    ([_job("a", "pass"), {"argv": ["true"]}], 'job 2 has no "name"'),
    ([_job("../../escape", "pass")], "cannot name its log file"),
    ([_job("logs/a", "pass")], "cannot name its log file"),
    ([_job(".hidden", "pass")], "cannot name its log file"),
    ([_job("", "pass")], "cannot name its log file"),
    ([_job("x" * 101, "pass")], "cannot name its log file"),
    ([_job(7, "pass")], "cannot name its log file"),
    (["a"], "job 1 is a string"),
    ([{"name": "a"}], 'job \'a\' has no "argv"'),
    ([{"name": "a", "argv": [1, 2]}], '"argv": [1, 2]; give its command as a non-empty list of strings'),
    ([{"name": "a", "argv": []}], '"argv": []; give its command as a non-empty list of strings'),
    ([{"name": "a", "argv": "true"}], '"argv": "true"; give its command as a non-empty list of strings'),
    ([_job("a", "pass"), {**_job("b", "pass"), "after": "a"}], '"after": "a"; give a list of job names'),
    ([_job("a", "pass"), {**_job("b", "pass"), "wait_for": "a"}], '"wait_for": "a"; give a list of job names'),
    ([_job("a", "pass"), {**_job("b", "pass"), "afer": ["a"]}], "job 'b' has unknown keys ['afer']"),
    ([_job("a", "pass", (), "{0}")], "a field without a key in '{0}'"),
    ([_job("a", "pass", (), "{}")], "a field without a key in '{}'"),
    ([_job("a", "pass", (), "{")], "not a {key} template"),
])
def test_bad_plans_are_refused_with_the_fix(tmp_path, capsys, refusing, jobs, message):
    out = tmp_path / "out"
    line = refusal(capsys, refusing, [str(_plan(tmp_path, jobs)), "--out", str(out)])
    assert message in line and str(tmp_path / "plan.json") in line
    assert "give it with --set argv" not in line
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("text, message", [
    pytest.param("[]", "holds a list; a plan is an object", id="list"),
    pytest.param('{"parallel": 1}', 'has no "jobs"', id="no-jobs"),
    pytest.param('{"jobs": []}', 'has "jobs": []', id="no-job"),
    pytest.param('{"jobs": {"name": "a"}}', 'has "jobs": {"name": "a"}', id="jobs-object"),
    pytest.param('{"jobs": [{"name": "a", "argv": ["true"]}', "is not valid JSON: Expecting ',' delimiter at line 1",
                 id="bad-json"),
    pytest.param("", "is not valid JSON", id="empty-file"),
] + [pytest.param(json.dumps({"parallel": parallel, "jobs": [_job("a", "pass")]}),
                  f'"parallel" is {json.dumps(parallel)}; give', id=f"parallel={json.dumps(parallel)}")
     for parallel in (0, -1, "x", "2", 1.5, True, None)])
def test_malformed_plan_files_are_refused_naming_the_file(tmp_path, capsys, refusing, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text)
    line = refusal(capsys, refusing, [str(path), "--out", str(tmp_path / "out")])
    assert str(path) in line and message in line
    assert not (tmp_path / "out").exists()


def test_a_missing_plan_file_is_refused(tmp_path, capsys, refusing):
    line = refusal(capsys, refusing, [str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "out")])
    assert f"{tmp_path / 'nowhere.json'}: cannot read the plan (No such file or directory)" in line


def test_a_cycle_is_refused_at_once_rather_than_waited_on(tmp_path):
    plan = _plan(tmp_path, [_job("a", "pass", ["b"]), _job("b", "pass", ["a"])])
    done = subprocess.run([sys.executable, "scripts/run_jobs.py", str(plan), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cycle, a -> b -> a" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item", ["=v", "novalue"])
def test_set_needs_a_key_and_a_value(tmp_path, capsys, refusing, item):
    plan = _plan(tmp_path, [_job("a", "pass")])
    line = refusal(capsys, refusing, [str(plan), "--out", str(tmp_path / "out"), "--set", item])
    assert f"argument --set: {item!r} is not KEY=VALUE" in line


@pytest.mark.parametrize("out, message", [
    ("afile", "afile is a file"), ("afile/sub", "afile/sub cannot be written (Not a directory)"),
])
def test_an_out_that_cannot_be_a_folder_is_refused(tmp_path, capsys, refusing, out, message):
    (tmp_path / "afile").write_text("kept")
    plan = _plan(tmp_path, [_job("a", "pass")])
    line = refusal(capsys, refusing, [str(plan), "--out", str(tmp_path / out)])
    assert f"--out {tmp_path}/{message}" in line and "name a folder this user can write" in line
    assert (tmp_path / "afile").read_text() == "kept"


def test_an_unwritable_out_is_refused(tmp_path, capsys, refusing):
    # sysfs refuses a new folder to every user, root included, unlike a folder made read-only
    plan = _plan(tmp_path, [_job("a", "pass")])
    line = refusal(capsys, refusing, [str(plan), "--out", "/sys/qsnn-zoo-jobs"])
    assert "--out /sys/qsnn-zoo-jobs cannot be written (Operation not permitted)" in line


@pytest.mark.parametrize("program", ["missing", "not_executable"])
def test_a_job_whose_program_cannot_start_fails_and_the_plan_goes_on(tmp_path, program):
    run_jobs = script("run_jobs")
    (tmp_path / "not_executable").write_text("#!/bin/sh\n")
    plan = _plan(tmp_path, [
        {"name": "ghost", "argv": [str(tmp_path / program)]},
        _job("needs_ghost", PRINT_ENV, ["ghost"]),
        {**_job("cleanup", PRINT_ENV), "wait_for": ["ghost"]},
    ])
    out = tmp_path / "out"
    assert run_jobs.main([str(plan), "--out", str(out), "--gpus", "3"]) == 1
    status = json.loads((out / "jobs.json").read_text())
    assert status["ghost"]["state"] == "failed" and str(tmp_path / program) in status["ghost"]["error"]
    assert status["needs_ghost"]["state"] == "skipped"
    assert status["cleanup"]["returncode"] == 0 and status["cleanup"]["gpu"] == "3"  # the GPU was given back
