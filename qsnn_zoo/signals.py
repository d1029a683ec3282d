"""SIGTERM as a clean exit, for the ``qsnn-zoo`` command and the training scripts alike.

Runs are stopped with kill (scripts/run_jobs.py, schedulers, torchrun). Python's
default for SIGTERM ends the process on the spot, leaving a file that was being written as a hidden
temporary file (a checkpoint of hundreds of MB, an export of tens) beside the intact previous one;
raising SystemExit instead unwinds the stack, so the atomic write removes it.
"""
from __future__ import annotations

import signal
import threading


def exit_on_sigterm() -> None:
    """Makes SIGTERM raise SystemExit(128 + SIGTERM), as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)
