"""Each published entry's recipe is what its run used.

The card's command, parsed by the training scripts' own parser and resolved against today's
`qsnn_zoo.train.config`, must give the recipe and the result-changing options that the run recorded in
`runs/NAME/STAGE/summary.json`. This fails when a card's command is mistyped or when a default in the
config changes under a published checkpoint, either of which would make the card's command train
something else.
"""
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from qsnn_zoo._registry import iter_entries
from qsnn_zoo.train import runner
from qsnn_zoo.train.config import Recipe, RunOptions, apply_overrides, recipe_for, recipe_overrides, run_options, stages_for

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_SCRIPTS = ("scripts/train_fp32.py", "scripts/quantize_cbp.py", "scripts/reproduce.py")
# Options that change the weights a run makes (device and backend choices are tested equal elsewhere).
RESULT_OPTIONS = ("amp", "cuda_graph", "deterministic", "val_size", "limit_train")
PUBLISHED = [e.name for e in iter_entries() if e.has_weights or e.made_file]


def training_commands(recipe: str):
    """The parsed arguments of every training-script command in a card's recipe (`A && B`)."""
    parser = runner.parser("")
    parser.add_argument("name")
    for command in recipe.split("&&"):
        words = shlex.split(command)
        if words[:1] == ["python"] and words[1] in TRAINING_SCRIPTS:
            yield parser.parse_args(words[2:])


def without_later_fields(recipe: dict, recorded: dict) -> dict:
    """``recipe`` less the fields added after the run, each of which must be at its default: a field
    added with a default that keeps the old behaviour leaves a published command valid."""
    later = {k: v for k, v in recipe.items() if k not in recorded}
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe)}
    assert all(v == defaults[k] for k, v in later.items()), f"fields newer than the run are not at their defaults: {later}"
    return {k: v for k, v in recipe.items() if k in recorded}


def recorded_stages(args):
    """(stage, the recipe the card's command gives it, the run's summary.json) for each stage run."""
    overrides = recipe_overrides(args)
    for stage in stages_for(args.name):
        summary = REPO_ROOT / "runs" / args.name / stage / "summary.json"
        if summary.is_file():
            recipe = apply_overrides(recipe_for(args.name, stage, use_bn=overrides.get("use_bn", False)), overrides)
            yield stage, json.loads(json.dumps(recipe.to_dict())), json.loads(summary.read_text())


def test_every_cifar10_entry_is_published():
    assert len([n for n in PUBLISHED if "_cifar10_" in n]) == 9


@pytest.mark.parametrize("name", PUBLISHED)
def test_card_command_gives_the_recipe_and_options_the_run_recorded(name):
    entry = next(e for e in iter_entries() if e.name == name)
    compared = []
    for args in training_commands(entry.recipe):
        options = run_options(args)
        for stage, recipe, summary in recorded_stages(args):
            assert without_later_fields(recipe, summary["recipe"]) == summary["recipe"], (
                f"{args.name}/{stage}: the card's command trains another recipe")
            for option in RESULT_OPTIONS:
                recorded = summary["options"].get(option, getattr(RunOptions(), option))
                assert recorded == getattr(options, option), f"{args.name}/{stage}: --{option} differs from the run"
            compared.append(args.name)
    assert name in compared, f"no run summary under runs/{name}/ matches a command of its recipe"
