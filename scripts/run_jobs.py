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
jobs run, under which process id, when each started and ended and with which exit code. The runner
stops nothing from outside: jobs bound their own time (``--time-budget``) and stop at an epoch
boundary, resumably.

    python scripts/run_jobs.py scripts/plans/alexnet_cifar10_parent_stage.json --out /tmp/wd \
        --set data=/tmp/cifar10 --set wd=/tmp/wd --set parent_budget=1500
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from qsnn_zoo.signals import exit_on_sigterm
from qsnn_zoo.weights import atomic_write

POLL_SECONDS = 0.5


def load_plan(path: Path, values: Dict[str, str]) -> dict:
    plan = json.loads(Path(path).read_text())
    names = [job["name"] for job in plan["jobs"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: job names must be unique, got {names}")
    values = {"python": sys.executable, **values}
    for job in plan["jobs"]:
        unknown = [dep for dep in job.get("after", []) + job.get("wait_for", []) if dep not in names]
        if unknown:
            raise ValueError(f"{path}: job {job['name']!r} runs after unknown jobs {unknown}")
        try:
            job["argv"] = [arg.format(**values) for arg in job["argv"]]
        except KeyError as err:
            raise ValueError(f"{path}: job {job['name']!r} uses {{{err.args[0]}}}; give it with --set {err.args[0]}=...")
    return plan


def left_out(plan: dict, names: List[str]) -> List[str]:
    """``names`` and every job that needs one of them (``after``), transitively, in plan order."""
    out = set(names)
    grew = True
    while grew:
        needing = {job["name"] for job in plan["jobs"] if out & set(job.get("after", []))}
        grew = not needing <= out
        out |= needing
    return [job["name"] for job in plan["jobs"] if job["name"] in out]


class Runner:
    def __init__(self, plan: dict, out: Path, gpus: Optional[List[str]], leave_out: List[str] = ()) -> None:
        self.jobs = {job["name"]: job for job in plan["jobs"]}
        self.parallel = len(gpus) if gpus else int(plan.get("parallel", 1))
        self.free_gpus = list(gpus or [])
        self.out = out
        self.status: Dict[str, dict] = {name: {"state": "waiting"} for name in self.jobs}
        for name in left_out(plan, list(leave_out)):
            self.status[name] = {"state": "left out"}
        self.running: Dict[str, subprocess.Popen] = {}

    def _ready(self, name: str) -> Optional[bool]:
        """True when every prerequisite succeeded, False when one failed or was skipped, else None."""
        needed = [self.status[dep] for dep in self.jobs[name].get("after", [])]
        if any(s["state"] == "skipped" or s.get("returncode") not in (None, 0) for s in needed):
            return False
        waited = [self.status[dep] for dep in self.jobs[name].get("wait_for", [])]
        return True if all(s["state"] in ("done", "skipped", "left out") for s in needed + waited) else None

    def _start(self, name: str) -> None:
        env = dict(os.environ)
        gpu = self.free_gpus.pop(0) if self.free_gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log = open(self.out / "logs" / f"{name}.log", "w")
        self.running[name] = subprocess.Popen(self.jobs[name]["argv"], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        # The pid lets one job be stopped alone (kill PID), never by a pattern that also matches the caller.
        self.status[name] = {"state": "running", "started": time.time(), "gpu": gpu, "pid": self.running[name].pid,
                             "argv": self.jobs[name]["argv"]}

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

    def run(self) -> int:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
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
        failed = [n for n, s in self.status.items() if s.get("returncode") not in (None, 0) or s["state"] == "skipped"]
        return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="value of {KEY} in the plan")
    parser.add_argument("--gpus", default="", help="comma-separated GPU indices: one job per GPU at a time")
    parser.add_argument("--leave-out", default="", metavar="A,B",
                        help="comma-separated jobs to run the plan without, with the jobs that need them")
    args = parser.parse_args(argv)
    bad = [item for item in args.set if "=" not in item]
    if bad:
        parser.error(f"--set takes KEY=VALUE, got {bad}")
    try:
        plan = load_plan(args.plan, dict(item.split("=", 1) for item in args.set))
    except (OSError, ValueError) as err:
        parser.error(str(err))
    leave_out = [name for name in args.leave_out.split(",") if name]
    unknown = sorted(set(leave_out) - {job["name"] for job in plan["jobs"]})
    if unknown:
        parser.error(f"--leave-out names jobs the plan does not have: {unknown}; its jobs are "
                     f"{[job['name'] for job in plan['jobs']]}")
    gpus = [g for g in args.gpus.split(",") if g] or None
    exit_on_sigterm()  # a stopped runner passes SIGTERM on to its jobs, which stop at a clean point
    return Runner(plan, args.out, gpus, leave_out).run()


if __name__ == "__main__":
    sys.exit(main())
