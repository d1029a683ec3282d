"""Runs a plan of training jobs on one machine: each job after the jobs it needs, as many at once
as the plan allows, each on its own GPU when there are several.

A plan is JSON: ``{"parallel": N, "jobs": [{"name": ..., "argv": [...], "after": [...]}, ...]}``.
``{key}`` in an argument is replaced by ``--set key=value`` (and ``{python}`` by this Python, so
``["{python}", "scripts/quantize_cbp.py", ...]`` runs a sibling script). A job starts once every
job in its ``after`` list has exited 0 and every job in its ``wait_for`` list has ended, however;
a job whose ``after`` prerequisite failed is skipped. ``--leave-out A,B`` runs the plan without
jobs A and B and the jobs that need them (``after``), e.g. one child of a plan that trains two. With
``--gpus 0,1,2,3`` each running job gets one of those GPUs alone (``CUDA_VISIBLE_DEVICES``), one
job a GPU; without it, jobs share the machine's GPU (start CUDA MPS first to let small jobs run
side by side rather than time-slice).

Every job's output goes to ``OUT/logs/NAME.log``; ``OUT/jobs.json`` says, at every change, which
jobs run, under which process id, when each started and ended and with which exit code, or, for a
job whose program could not start, state ``failed`` and the error. A plan that could not run as
written (a dependency cycle, an unknown job, a malformed job) is refused before any job starts. The
runner stops nothing from outside: jobs bound their own time (``--time-budget``) and stop at an
epoch boundary, resumably.

    python scripts/run_jobs.py scripts/plans/alexnet_cifar10_parent_stage.json --out /tmp/wd \
        --set data=/tmp/cifar10 --set wd=/tmp/wd --set parent_budget=1500
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from qsnn_zoo.signals import exit_on_sigterm
from qsnn_zoo.weights import atomic_write

POLL_SECONDS = 0.5
# A job's name is its log's file name, OUT/logs/NAME.log: no separator or leading dot may take it elsewhere.
JOB_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
JOB_KEYS = {"name", "argv", "after", "wait_for"}
JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}
# A job that has ended, however: what a ``wait_for`` waits for.
ENDED = ("done", "failed", "skipped", "left out")


def load_plan(path: Path, values: Dict[str, str]) -> dict:
    """The plan at ``path`` with ``{key}`` replaced by ``values[key]``. A plan that could not run as
    written (not JSON, a malformed job, a dependency that is unknown or circular) raises ValueError,
    one line naming the problem and its fix, before any job starts."""
    plan = _read_plan(path)
    _check_shape(path, plan)
    _check_dependencies(path, plan["jobs"])
    values = {"python": sys.executable, **values}
    for job in plan["jobs"]:
        job["argv"] = [_substitute(path, job["name"], arg, values) for arg in job["argv"]]
    return plan


def _read_plan(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read the plan ({err.strerror}); pass a plan file such as "
                         f"scripts/plans/cbp_children_stage.json") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text; pass a JSON plan file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
                         f"fix the plan file") from None


def _kind(value) -> str:
    return JSON_KINDS.get(type(value), type(value).__name__)


def _check_shape(path: Path, plan) -> None:
    if not isinstance(plan, dict):
        raise ValueError(f'{path} holds {_kind(plan)}; a plan is an object, {{"parallel": N, "jobs": [...]}}')
    jobs = plan.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        found = 'no "jobs"' if jobs is None else f'"jobs": {json.dumps(jobs)}'
        raise ValueError(f'{path} has {found}; list the jobs as "jobs": [{{"name": ..., "argv": [...]}}, ...]')
    parallel = plan.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f'{path}: "parallel" is {json.dumps(parallel)}; give how many jobs may run at once, '
                         f'a whole number, 1 or more')
    for number, job in enumerate(jobs, 1):
        _check_job(path, number, job)


def _check_job(path: Path, number: int, job) -> None:
    if not isinstance(job, dict):
        raise ValueError(f'{path}: job {number} is {_kind(job)}; write each job as {{"name": ..., "argv": [...]}}')
    if "name" not in job:
        raise ValueError(f'{path}: job {number} has no "name"; name it with letters, digits, _, . and -')
    name = job["name"]
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise ValueError(f"{path}: job name {json.dumps(name)} cannot name its log file; use up to 100 letters, "
                         f"digits, _, . and -, not starting with .")
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:  # a misspelt "after" would otherwise drop a dependency without a word
        raise ValueError(f"{path}: job {name!r} has unknown keys {unknown}; a job takes {sorted(JOB_KEYS)}")
    if "argv" not in job:
        raise ValueError(f'{path}: job {name!r} has no "argv"; give its command as a list of strings, '
                         f'e.g. ["{{python}}", "scripts/evaluate.py"]')
    argv = job["argv"]
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError(f'{path}: job {name!r} has "argv": {json.dumps(argv)}; give its command as a non-empty '
                         f'list of strings, e.g. ["{{python}}", "scripts/evaluate.py"]')
    for key in ("after", "wait_for"):
        deps = job.get(key, [])
        if not isinstance(deps, list) or not all(isinstance(dep, str) for dep in deps):
            raise ValueError(f'{path}: job {name!r} has "{key}": {json.dumps(deps)}; give a list of job names, '
                             f'e.g. ["first"]')


def _check_dependencies(path: Path, jobs: List[dict]) -> None:
    """Unique names, and ``after``/``wait_for`` naming other jobs of the plan without a cycle, which
    would otherwise leave the jobs on it waiting for ever."""
    names = [job["name"] for job in jobs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: job names must be unique; rename all but one of each of {repeated}")
    deps = {job["name"]: job.get("after", []) + job.get("wait_for", []) for job in jobs}
    for name, needed in deps.items():
        if name in needed:
            raise ValueError(f'{path}: job {name!r} waits for itself; take {name!r} out of its "after" and "wait_for"')
        unknown = [dep for dep in needed if dep not in deps]
        if unknown:
            raise ValueError(f"{path}: job {name!r} waits for unknown jobs {unknown}; the plan's jobs are {names}")
    cycle = _cycle(deps)
    if cycle:
        raise ValueError(f"{path}: jobs wait for each other in a cycle, {' -> '.join(cycle)}, so none of them can "
                         f'start; drop one of these links from its job\'s "after" or "wait_for"')


def _cycle(deps: Dict[str, List[str]]) -> List[str]:
    """A cycle of ``deps`` as [a, b, ..., a], or [] when the jobs can all run in some order."""
    waiting = dict(deps)
    while True:
        free = [name for name, needed in waiting.items() if not waiting.keys() & set(needed)]
        if not free:
            break
        for name in free:
            del waiting[name]
    if not waiting:
        return []
    # Each job left waits for another job left, so following those leads round a cycle.
    walk, name = [], next(iter(waiting))
    while name not in walk:
        walk.append(name)
        name = next(dep for dep in waiting[name] if dep in waiting)
    return walk[walk.index(name):] + [name]


def _substitute(path: Path, name: str, arg: str, values: Dict[str, str]) -> str:
    try:
        return arg.format(**values)
    except KeyError as err:
        raise ValueError(f"{path}: job {name!r} uses {{{err.args[0]}}}; give it with --set {err.args[0]}=...") from None
    except IndexError:
        raise ValueError(f"{path}: job {name!r} has a field without a key in {arg!r}; name it, e.g. {{data}} "
                         f"given with --set data=...") from None
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: job {name!r} has {arg!r}, not a {{key}} template ({err}); write a literal "
                         f"brace twice, {{{{ or }}}}") from None


def left_out(plan: dict, names: List[str]) -> List[str]:
    """``names`` and every job that needs one of them (``after``), transitively, in plan order."""
    out = set(names)
    grew = True
    while grew:
        needing = {job["name"] for job in plan["jobs"] if out & set(job.get("after", []))}
        grew = not needing <= out
        out |= needing
    return [job["name"] for job in plan["jobs"] if job["name"] in out]


def _failed(status: dict) -> bool:
    """The job did not succeed: it exited nonzero, could not start, or was skipped."""
    return status["state"] in ("failed", "skipped") or status.get("returncode") not in (None, 0)


class Runner:
    def __init__(self, plan: dict, out: Path, gpus: Optional[List[str]], leave_out: List[str] = ()) -> None:
        self.jobs = {job["name"]: job for job in plan["jobs"]}
        self.parallel = len(gpus) if gpus else plan.get("parallel", 1)
        self.free_gpus = list(gpus or [])
        self.out = out
        self.status: Dict[str, dict] = {name: {"state": "waiting"} for name in self.jobs}
        for name in left_out(plan, list(leave_out)):
            self.status[name] = {"state": "left out"}
        self.running: Dict[str, subprocess.Popen] = {}

    def _ready(self, name: str) -> Optional[bool]:
        """True when every prerequisite succeeded, False when one failed or was skipped, else None."""
        needed = [self.status[dep] for dep in self.jobs[name].get("after", [])]
        if any(_failed(s) for s in needed):
            return False
        waited = [self.status[dep] for dep in self.jobs[name].get("wait_for", [])]
        return True if all(s["state"] in ENDED for s in needed + waited) else None

    def _start(self, name: str) -> None:
        argv = self.jobs[name]["argv"]
        env = dict(os.environ)
        gpu = self.free_gpus[0] if self.free_gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        started = time.time()
        try:
            with open(self.out / "logs" / f"{name}.log", "w") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        except OSError as err:  # no such program, not executable, no log: this job fails, the others go on
            self.status[name] = {"state": "failed", "started": started, "ended": time.time(), "argv": argv,
                                 "error": str(err)}
            return
        if gpu is not None:
            self.free_gpus.remove(gpu)
        self.running[name] = proc
        # The pid lets one job be stopped alone (kill PID), never by a pattern that also matches the caller.
        self.status[name] = {"state": "running", "started": started, "gpu": gpu, "pid": proc.pid, "argv": argv}

    def _reap(self) -> None:
        for name, proc in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[name]
            if self.status[name]["gpu"] is not None:
                self.free_gpus.append(self.status[name]["gpu"])
            self.status[name].update(state="done", ended=time.time(), returncode=code)
            self.status[name]["seconds"] = self.status[name]["ended"] - self.status[name]["started"]

    def _write(self) -> None:
        text = json.dumps(self.status, indent=2) + "\n"
        atomic_write(self.out / "jobs.json", lambda tmp: Path(tmp).write_text(text))

    def prepare(self) -> None:
        """Makes OUT/logs and writes jobs.json, every job waiting: an OSError here means OUT is unusable."""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self._write()

    def run(self) -> int:
        try:
            while True:
                self._reap()
                for name in self.jobs:
                    if self.status[name]["state"] != "waiting":
                        continue
                    ready = self._ready(name)
                    if ready is False:
                        self.status[name] = {"state": "skipped"}
                    elif ready and len(self.running) < self.parallel:
                        self._start(name)
                self._write()
                if not self.running and all(s["state"] != "waiting" for s in self.status.values()):
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for proc in self.running.values():  # interrupted: ask the jobs to stop as they would on SIGTERM
                proc.terminate()
            for proc in self.running.values():
                proc.wait()
        return 1 if any(_failed(s) for s in self.status.values()) else 0


def key_value(text: str) -> Tuple[str, str]:
    """argparse type of ``--set KEY=VALUE``."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; pass e.g. --set data=/tmp/cifar10")
    return key, value


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="value of {KEY} in the plan")
    parser.add_argument("--gpus", default="", help="comma-separated GPU indices: one job per GPU at a time")
    parser.add_argument("--leave-out", default="", metavar="A,B",
                        help="comma-separated jobs to run the plan without, with the jobs that need them")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan, dict(args.set))
    except ValueError as err:
        parser.error(str(err))
    leave_out = [name for name in args.leave_out.split(",") if name]
    unknown = sorted(set(leave_out) - {job["name"] for job in plan["jobs"]})
    if unknown:
        parser.error(f"--leave-out names jobs the plan does not have: {unknown}; its jobs are "
                     f"{[job['name'] for job in plan['jobs']]}")
    gpus = [g for g in args.gpus.split(",") if g] or None
    runner = Runner(plan, args.out, gpus, leave_out)
    try:
        runner.prepare()
    except OSError as err:
        problem = "is a file" if args.out.is_file() else f"cannot be written ({err.strerror})"
        parser.error(f"--out {args.out} {problem}; name a folder this user can write (it is made if missing)")
    exit_on_sigterm()  # a stopped runner passes SIGTERM on to its jobs, which stop at a clean point
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
