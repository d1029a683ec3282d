import dataclasses

import yaml
from huggingface_hub import ModelCard

from qsnn_zoo import _registry, get_entry
from qsnn_zoo._registry import MadeFile, Metric, WeightsFile
from qsnn_zoo.cards import REPO_ROOT, SECTIONS, render_card, stale_files, zoo_table


def test_cards_and_readme_table_are_up_to_date():
    stale = [str(p.relative_to(REPO_ROOT)) for p in stale_files()]
    assert not stale, f"stale generated files {stale}: run `python scripts/make_cards.py` and commit"


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_card_without_weights_says_how_to_make_them_and_claims_no_results():
    card = render_card(get_entry("cnn7_cifar100_bin_stbp"))
    meta = _front_matter(card)
    assert meta["library_name"] == "qsnn-zoo" and "model-index" not in meta
    assert {"snn", "spiking-neural-network", "quantization", "binary-weights", "stbp", "cifar100"} <= set(meta["tags"])
    assert "No published weights yet" in card and "python scripts/reproduce.py cnn7_cifar100_bin_stbp" in card
    for setting in ("decay", "threshold", "hard", "boxcar", "pool1, conv2", "conv1, fc3"):
        assert setting in card


def test_measured_results_reach_the_model_index():
    entry = dataclasses.replace(
        get_entry("vgg16_cifar10_bin_calib"),
        weights=WeightsFile("vgg16_cifar10_bin_calib.safetensors", "0" * 64, 1_900_000, "org/repo", "a" * 40),
        metrics=(Metric("top1", 91.25, "cifar10 test, lossless rows", 1017, "runs/x/eval.json"),
                 Metric("top1", 87.5, "cifar10 test, all rows", 10000, "runs/x/eval.json")),
    )
    card = render_card(entry)
    parsed = ModelCard(card).data.to_dict()
    values = [m["value"] for r in parsed["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [91.25, 87.5]
    assert "No published weights" not in card and "1,900,000 bytes" in card


def test_sections_are_functions_of_the_entry():
    entry = get_entry("alexnet_cifar10_ter_tsslbp")
    assert all(isinstance(section(entry), str) for section in SECTIONS)
    assert render_card(entry) == render_card(entry)


def test_quantized_card_compares_with_its_parent_on_the_same_rows():
    from qsnn_zoo.metrics import measured_top1

    entry = dataclasses.replace(
        get_entry("vgg16_cifar10_bin_calib"),
        metrics=(Metric("top1", 80.0, "cifar10 test, all rows", 10000, "runs/x/eval.json"),),
    )
    parent_all = measured_top1(get_entry(entry.parent), "all")
    card = render_card(entry)
    assert "## Against its fp32 parent" in card
    assert f"| all 10,000 rows | {parent_all:.2f} % | 80.00 % | {80.0 - parent_all:+.2f} |" in card
    assert "1,017 lossless rows |" not in card  # no child value on those rows: no row
    assert "## Against its fp32 parent" not in render_card(get_entry(entry.parent))


def _not_committed(name: str) -> _registry.ModelEntry:
    """``name`` published as an fp32 parent too large to commit: measured, its file only described."""
    return dataclasses.replace(
        get_entry(name),
        made_file=MadeFile("7" * 64, 248_440_872, "float32", "248 MB, over the repository's 50 MB per file"),
        metrics=(Metric("top1", 89.5, "cifar10 test, lossless rows", 1017, "runs/x/eval.json"),
                 Metric("top1", 86.25, "cifar10 test, all rows", 10000, "runs/x/eval.json")),
        recipe=f"python scripts/train_fp32.py {name} --epochs 30 --data DATA --out OUT",
    )


def test_card_of_a_measured_file_that_is_not_committed_says_why_and_how_to_make_it():
    entry = _not_committed("cnn7_cifar10_fp32_stbp")
    card = render_card(entry)
    assert "No published weights yet" not in card and "No measured results yet" not in card
    assert "not committed" in card and entry.made_file.reason in card
    assert f"sha256 `{entry.made_file.sha256}`" in card and "248,440,872 bytes" in card
    assert entry.recipe in card and f"python scripts/reproduce.py {entry.name}" in card
    assert f'create_model("{entry.name}", weights=PATH)' in card
    assert "| top1 | 89.50 % | cifar10 test, lossless rows | 1017 |" in card
    assert "| top1 | 86.25 % | cifar10 test, all rows | 10000 |" in card
    assert "as `create_model(..., pretrained=True)` builds it" not in card  # there is no such model to measure
    assert [r["dataset"]["name"] for r in _front_matter(card)["model-index"][0]["results"]] == [
        "cifar10 test, lossless rows", "cifar10 test, all rows"]


def test_zoo_table_shows_a_not_committed_entry_with_its_accuracy(monkeypatch):
    entry = _not_committed("cnn7_cifar10_fp32_stbp")
    monkeypatch.setitem(_registry._ENTRIES, entry.name, entry)
    row = next(line for line in zoo_table().splitlines() if f"[{entry.name}]" in line)
    assert "| 248.42 MB (not committed) | 89.50 | 86.25 |" in row
