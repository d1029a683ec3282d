"""Publishing to the Hub and loading any Hub repository, through the real huggingface_hub client against
the Hub stand-in on 127.0.0.1 (tests/hf_server.py): `qsnn-zoo push`, save_pretrained / push_to_hub and
from_pretrained. published.json is a copy under tmp_path; the registry is restored after each test."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

import qsnn_zoo
from qsnn_zoo import _registry, cards, cli, hub
from qsnn_zoo.hub import WeightsNotFoundError
from qsnn_zoo.hub_repository import RepositoryFormatError, from_pretrained
from qsnn_zoo.weights import save_weights

from hf_server import FakeHub, isolate_client

NAME = "vgg16_cifar10_bin_calib"  # published, a 1.9 MB file in checkpoints/
REPO = "someone/vgg16-bin"
TOKEN = "hf_test_token"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running Hub stand-in that wants TOKEN, a private copy of published.json and of the registry."""
    isolate_client(monkeypatch, tmp_path, TOKEN)
    published = tmp_path / "published.json"
    published.write_text(_registry.PUBLISHED_FILE.read_text())
    monkeypatch.setattr(_registry, "PUBLISHED_FILE", published)
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))
    with FakeHub() as server:
        server.token = TOKEN
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---", 1)[0])


def outputs(model, seed: int = 0) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_push_uploads_the_entry_pins_the_commit_and_pretrained_downloads_it_back(fake_hub, monkeypatch, tmp_path, capsys):
    assert cli.main(["push", NAME, "--repo-id", REPO]) == 0
    commit = fake_hub.repos[REPO].branches["main"]
    assert commit in capsys.readouterr().out
    record = json.loads(_registry.PUBLISHED_FILE.read_text())[NAME]["weights"]
    assert (record["hf_repo"], record["revision"]) == (REPO, commit)
    assert _registry._published()[NAME]["weights"]["revision"] == commit, "a later import reads the pinned commit"
    assert f"as `model.safetensors` of [{REPO}](https://huggingface.co/{REPO}) at revision `{commit}`" in cards.render_card(
        _registry.get_entry(NAME)), "the regenerated card names the pin"

    files = fake_hub.files(REPO, commit)
    published_file = hub.REPO_CHECKPOINTS / f"{NAME}.safetensors"
    assert files["model.safetensors"] == published_file.read_bytes()
    config = json.loads(files["config.json"])
    entry = _registry.get_entry(NAME)
    assert config["architecture"] == "vgg" and config["T"] == entry.T == config["arch_kwargs"]["T"]
    assert config["quantization"]["mode"] == "bin" and config["neuron"]["model"] == "if"
    assert config["normalisation"]["mean"] == list(entry.mean) and config["num_classes"] == 10
    meta = front_matter(files["README.md"])
    assert meta["library_name"] == "qsnn-zoo" and "snn" in meta["tags"] and meta["datasets"] == ["cifar10"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == entry.metrics[0].value
    assert "model.safetensors` of this repository" in files["README.md"].decode()

    reference = qsnn_zoo.create_model(NAME, weights=published_file, T=2)
    monkeypatch.setattr(hub, "REPO_CHECKPOINTS", tmp_path / "no-checkpoints")
    fake_hub.commit(REPO, {"model.safetensors": b"a later upload"})  # main moves on; the pin does not
    fake_hub.requests.clear()
    downloaded = qsnn_zoo.create_model(NAME, pretrained=True, T=2)
    assert ("GET", f"/{REPO}/resolve/{commit}/model.safetensors") in fake_hub.requests
    assert torch.equal(outputs(downloaded), outputs(reference))
    assert torch.equal(outputs(from_pretrained(REPO, revision=commit)), outputs(qsnn_zoo.create_model(NAME, weights=published_file)))


def test_push_to_a_branch_pins_that_branch_commit_and_leaves_main(fake_hub):
    assert cli.main(["push", NAME, "--repo-id", REPO, "--revision", "v1"]) == 0
    repo = fake_hub.repos[REPO]
    assert "model.safetensors" in repo.commits[repo.branches["v1"]]
    assert "model.safetensors" not in repo.commits[repo.branches["main"]]
    assert _registry.get_entry(NAME).weights.revision == repo.branches["v1"]


def test_list_says_where_the_weights_are_before_and_after_the_push(fake_hub, capsys):
    def row() -> str:
        cli.main(["list", NAME])
        return capsys.readouterr().out.splitlines()[-1]

    assert "checkpoints/ (clone)" in row()
    assert cli.main(["push", NAME, "--repo-id", REPO]) == 0
    capsys.readouterr()
    assert f"Hub {REPO}@{fake_hub.repos[REPO].branches['main'][:7]}" in row()


def test_a_push_the_hub_refuses_exits_2_with_one_line_and_records_nothing(fake_hub, monkeypatch, capsys):
    before = _registry.PUBLISHED_FILE.read_text()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert cli.main(["push", NAME, "--repo-id", REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "401" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert _registry.PUBLISHED_FILE.read_text() == before and REPO not in fake_hub.repos


def test_a_push_whose_upload_breaks_off_exits_2_with_one_line_and_records_nothing(fake_hub, monkeypatch, capsys):
    from qsnn_zoo import hub_repository

    def broken(*args, **kwargs):
        raise RuntimeError("upload of model.safetensors failed: connection reset")

    before = _registry.PUBLISHED_FILE.read_text()
    monkeypatch.setattr(hub_repository, "push_entry", broken)
    assert cli.main(["push", NAME, "--repo-id", REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "connection reset" in err and "run the same command again" in err
    assert _registry.PUBLISHED_FILE.read_text() == before


def test_a_push_to_a_hub_that_does_not_answer_exits_2_with_one_line_and_records_nothing(fake_hub, monkeypatch, capsys):
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    before = _registry.PUBLISHED_FILE.read_text()
    assert cli.main(["push", NAME, "--repo-id", REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not complete" in err and "run the same command again" in err
    assert _registry.PUBLISHED_FILE.read_text() == before


@pytest.mark.parametrize("repo_id, message", [
    ("bad id!!/x", "Repo id must use alphanumeric chars"),
    ("a/b/c", "'a/b/c' is not OWNER/NAME"),
    ("vgg16-bin", "'vgg16-bin' is not OWNER/NAME"),
])
def test_a_malformed_repository_id_is_refused_before_any_request(repo_id, message, fake_hub, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["push", NAME, "--repo-id", repo_id])
    assert stop.value.code == 2 and message in capsys.readouterr().err and fake_hub.requests == []


def test_an_entry_without_a_published_file_cannot_be_pushed(fake_hub, capsys):
    assert cli.main(["push", "vgg16_cifar100_bin_calib", "--repo-id", REPO]) == 2
    assert "no published weights" in capsys.readouterr().err and fake_hub.requests == []


def test_a_child_card_names_its_pushed_parent_as_base_model(fake_hub):
    child = _registry.get_entry(NAME)
    assert "base_model" not in front_matter(cards.hub_card(child).encode()), "the Hub refuses a base_model that does not exist"
    _registry.record_hub_revision(child.parent, "someone/vgg16-fp32", "b" * 40)
    meta = front_matter(cards.hub_card(child).encode())
    assert (meta["base_model"], meta["base_model_relation"]) == ("someone/vgg16-fp32", "quantized")


def test_a_fine_tuned_model_round_trips_through_a_folder_and_the_hub(fake_hub, tmp_path):
    torch.manual_seed(0)
    model = qsnn_zoo.create_model("vgg16_cifar100_ter_calib", T=3)
    with torch.no_grad():
        model.classifier.bias.add_(0.5)  # a change no registry file has
    folder = model.save_pretrained(tmp_path / "tuned")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = qsnn_zoo.from_pretrained(folder)
    assert type(loaded) is type(model) and loaded.T == 3 and loaded.num_classes == 100
    assert loaded.entry.weights is None and loaded.entry.metrics == (), "a saved model claims no published results"
    assert torch.equal(outputs(loaded), outputs(model))

    commit = model.push_to_hub("someone/tuned")
    assert fake_hub.repos["someone/tuned"].branches["main"] == commit
    assert torch.equal(outputs(qsnn_zoo.from_pretrained("someone/tuned")), outputs(model))
    assert front_matter(fake_hub.files("someone/tuned")["README.md"])["library_name"] == "qsnn-zoo"


@pytest.fixture
def saved(tmp_path):
    model = qsnn_zoo.create_model("vgg16_cifar100_bin_calib", T=2)
    return model.save_pretrained(tmp_path / "saved")


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_folder_without_config_json_is_refused(saved):
    (saved / "config.json").unlink()
    with pytest.raises(RepositoryFormatError, match="has no config.json, so it is not a qsnn-zoo model repository"):
        qsnn_zoo.from_pretrained(saved)


def test_a_newer_config_format_is_refused(saved):
    edit_config(saved, format_version=2)
    with pytest.raises(RepositoryFormatError, match="format version 2, newer than the 1.*Upgrade qsnn-zoo"):
        qsnn_zoo.from_pretrained(saved)


def test_a_config_that_does_not_match_the_weights_is_refused(saved, tmp_path):
    edit_config(saved, arch_kwargs={"num_classes": 10, "T": 2, "quant": "bin"})
    with pytest.raises(RepositoryFormatError, match="config.json does not match model.safetensors.*shape"):
        qsnn_zoo.from_pretrained(saved)
    save_weights(qsnn_zoo.create_model("vgg16_cifar10_bin_calib", T=2), saved / "model.safetensors")
    edit_config(saved, arch_kwargs={"num_classes": 100, "T": 2, "quant": "bin"})
    with pytest.raises(RepositoryFormatError, match="describes 'vgg16_cifar100_bin_calib'.*holds weights of 'vgg16_cifar10_bin_calib'"):
        qsnn_zoo.from_pretrained(saved)


def test_a_hub_repository_without_config_json_or_that_does_not_exist(fake_hub, saved):
    fake_hub.commit("someone/bare", {"model.safetensors": (saved / "model.safetensors").read_bytes()})
    with pytest.raises(RepositoryFormatError, match="someone/bare@main has no config.json"):
        qsnn_zoo.from_pretrained("someone/bare")
    with pytest.raises(WeightsNotFoundError, match="there is no Hub repository someone/nothing"):
        qsnn_zoo.from_pretrained("someone/nothing")
    with pytest.raises(WeightsNotFoundError, match="neither a folder nor a Hub repository id"):
        qsnn_zoo.from_pretrained("no-such-folder")


def test_a_model_not_built_by_the_zoo_cannot_be_saved(tmp_path):
    from qsnn_zoo.models import CNN7

    with pytest.raises(ValueError, match="not built by qsnn_zoo.create_model"):
        CNN7(T=1).save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()
