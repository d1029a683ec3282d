"""The committed job plans (scripts/plans/*.json), which model cards and benchmarks/README.md cite as
the commands a GPU run executed, stay runnable: each loads in scripts/run_jobs.py, each training job
parses with the training scripts' own parser and names a registered model, and every other script a
job runs exists and knows the options it is given."""
import re
from pathlib import Path

import pytest

from _train_helpers import script
from qsnn_zoo import list_models
from qsnn_zoo.train import runner

REPO = Path(__file__).resolve().parent.parent
PLANS = sorted((REPO / "scripts" / "plans").glob("*.json"))
TRAINING_SCRIPTS = ("scripts/train_fp32.py", "scripts/quantize_cbp.py", "scripts/reproduce.py")


def loaded(path: Path) -> dict:
    """The plan with every ``{key}`` given: ``quant`` a weight kind, ``net`` and ``method`` a family's
    (as in cnn7_cifar10_bin_stbp), time budgets and epoch counts numbers, the rest a path."""
    keys = set(re.findall(r"\{(\w+)\}", path.read_text())) - {"python"}
    examples = {"quant": "bin", "net": "cnn7_cifar10", "method": "stbp"}
    values = {key: examples.get(key, "2" if key.endswith(("budget", "epochs")) else "/tmp/qsnn-plan-check")
              for key in keys}
    return script("run_jobs").load_plan(path, values)


def commands(job: dict):
    """The job's argument lists: its argv, or each command of a ``bash -c`` script."""
    if job["argv"][0] != "bash":
        yield job["argv"]
        return
    for command in re.split(r";|&&|\|\||\bdo\b|\bthen\b", job["argv"][2]):
        yield command.split()


def script_calls(plan: dict):
    """(script path, its arguments) for every ``python scripts/X.py ...`` a job runs, bash jobs' included."""
    for job in plan["jobs"]:
        for words in commands(job):
            if len(words) > 1 and words[1].startswith("scripts/") and words[1].endswith(".py"):
                yield words[1], words[2:words.index(">")] if ">" in words else words[2:]


def test_there_are_plans():
    assert PLANS, "scripts/plans/ holds no plan"


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_plan_loads_and_its_jobs_are_runnable(path):
    plan = loaded(path)
    registered = set(list_models())
    parser = runner.parser("")
    parser.add_argument("name")
    calls = list(script_calls(plan))
    assert calls, f"{path.name} runs no script"
    for name, args in calls:
        assert (REPO / name).is_file(), f"{path.name} runs {name}, which does not exist"
        if name in TRAINING_SCRIPTS:
            parsed = parser.parse_args(args)
            assert parsed.name in registered, f"{path.name}: {parsed.name} is not a registered model"
        else:
            source = (REPO / name).read_text()
            for option in (a for a in args if a.startswith("--")):
                assert f'"{option}"' in source, f"{path.name}: {name} has no option {option}"
