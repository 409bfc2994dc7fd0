"""Programs labkit starts (etcd, PostgreSQL) found by what they run on, for the tests that they leave none.

Shared by test_etcd.py and test_postgres.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pids(program: str, folder: str) -> set[int]:
    """The pids of the running ``program`` processes with an argument inside ``folder``."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == program and any(arg.startswith(folder + os.sep) for arg in argv):
            found.add(int(cmdline.parent.name))
    return found


def left_by_killed_kernel(kernel: str, program: str) -> tuple[set[int], set[int]]:
    """Run ``kernel`` (code that starts ``program``s and prints their folder), SIGKILL it.

    Returns the ``program`` pids found before the kill and those still there up to 10 s after.
    The folder is removed afterwards (a killed kernel cannot).
    """
    process = subprocess.Popen([sys.executable, "-c", kernel], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    folder = ""
    try:
        folder = process.stdout.readline().strip()
        before = pids(program, folder)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 10
        while pids(program, folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        return before, pids(program, folder)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
