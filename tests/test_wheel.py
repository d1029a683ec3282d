"""What a pip user gets: the wheel, installed into a directory outside the repository and run from another,
loads a pushed entry from the Hub (the stand-in on 127.0.0.1) at its pinned revision, and for an entry not
yet pushed `list` and the error say where its weights are and how to load them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

import qsnn_zoo
from qsnn_zoo import _registry, hub
from qsnn_zoo.hub_repository import push_entry

from hf_server import FakeHub, isolate_client

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("qsnn_zoo", "setup.cfg", "pyproject.toml", "README.md")  # what building the wheel reads
PUSHED, UNPUSHED = "vgg16_cifar10_bin_calib", "alexnet_cifar10_bin_tsslbp"
REPO = "someone/vgg16-bin"
TOKEN = "hf_test_token"

USER_SCRIPT = f'''
import contextlib, io, json, torch, qsnn_zoo
from qsnn_zoo import cli
x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    scores = qsnn_zoo.create_model({PUSHED!r}, pretrained=True, T=2).eval()(x)
try:
    qsnn_zoo.create_model({UNPUSHED!r}, pretrained=True)
    error = None
except FileNotFoundError as err:
    error = str(err)
listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    cli.main(["list", "--pretrained"])
print(json.dumps({{"package": qsnn_zoo.__file__, "scores": scores.tolist(), "error": error,
                  "list": listing.getvalue()}}))
'''


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def pip(*args: str) -> None:
    run(sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "-q", env={**os.environ, "PIP_NO_CACHE_DIR": "1"})


def build_wheel(src: Path, dist: Path) -> Path:
    pip("wheel", "--no-build-isolation", "-w", str(dist), str(src))
    (wheel,) = dist.glob("qsnn_zoo-*.whl")
    return wheel


def test_a_wheel_installed_outside_the_repository_loads_a_pushed_entry_at_its_pinned_revision(monkeypatch, tmp_path):
    isolate_client(monkeypatch, tmp_path, TOKEN)
    src = tmp_path / "src"
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copyfile
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(REPO_ROOT / name, src / name, **kwargs)
    monkeypatch.setattr(_registry, "PUBLISHED_FILE", src / "qsnn_zoo" / "published.json")
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))

    with FakeHub() as server:
        server.token = TOKEN
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        commit = push_entry(PUSHED, REPO)  # pins the commit in the copy's published.json, which the wheel ships
        wheel = build_wheel(src, tmp_path / "dist")
        shipped = zipfile.ZipFile(wheel).namelist()
        assert "qsnn_zoo/published.json" in shipped and not any(n.endswith(".safetensors") for n in shipped)
        site = tmp_path / "site"
        pip("install", "--target", str(site), str(wheel))

        cwd = tmp_path / "elsewhere"
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "QSNN_ZOO_WEIGHTS", "HF_HUB_OFFLINE")}
        env.update(PYTHONPATH=str(site), HF_HOME=str(tmp_path / "user-hf-home"))
        env.pop("HF_HUB_CACHE", None)
        server.requests.clear()
        out = json.loads(run(sys.executable, "-c", USER_SCRIPT, cwd=cwd, env=env).stdout.strip().splitlines()[-1])

    assert Path(out["package"]).resolve().is_relative_to(site.resolve()), "must import the installed wheel"
    assert ("GET", f"/{REPO}/resolve/{commit}/model.safetensors") in server.requests
    published_file = hub.REPO_CHECKPOINTS / f"{PUSHED}.safetensors"
    reference = qsnn_zoo.create_model(PUSHED, weights=published_file, T=2).eval()
    with torch.no_grad():
        expected = reference(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.tensor(out["scores"]), expected)

    rows = {line.split()[0]: line for line in out["list"].splitlines()[2:]}
    assert f"Hub {REPO}@{commit[:7]}" in rows[PUSHED] and "checkpoints/ (clone)" in rows[UNPUSHED]
    assert f"{UNPUSHED}.safetensors of {UNPUSHED} is not on the Hub yet" in out["error"]
    assert "QSNN_ZOO_WEIGHTS=CLONE/checkpoints" in out["error"] and "weights=PATH" in out["error"]
