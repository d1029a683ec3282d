"""Runs a test module's ``__main__`` part in a child process under Triton's interpreter.

Triton decides when it is imported whether kernels are compiled or interpreted, so the kernels run
on the CPU only in a process that starts with ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(script: str) -> dict:
    """The JSON that ``script`` prints on its last line when run with the interpreter on."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
