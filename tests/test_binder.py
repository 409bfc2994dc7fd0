"""Binder builds the workbook from binder/ alone, and the first notebook runs there.

repo2docker (what mybinder.org runs) ignores the root-level configuration once a
binder/ folder exists, picks Python from binder/runtime.txt, and runs
``pip install -r binder/requirements.txt`` from the repository root. This test does
the same in a fresh virtual environment built from a copy of the repository in a
temporary folder (nothing is written into the working tree), then executes
notebooks/00_start_here.ipynb with that environment's own kernel.

It builds a whole environment (a minute or two): it is marked slow, and runs in
the default suite.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
NOTEBOOK = "notebooks/00_start_here.ipynb"
KERNEL = "labkit-binder-test"  # a name no other kernelspec on the machine has

pytestmark = pytest.mark.slow


def _runtime_version() -> str:
    """The "X.Y" of binder/runtime.txt (repo2docker's format: ``python-X.Y``)."""
    text = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3\.\d+)", text)
    assert match, f"binder/runtime.txt says {text!r}; repo2docker expects python-X.Y, e.g. python-3.12"
    return match.group(1)


def _python_for(version: str) -> str:
    """An interpreter of ``version`` if this machine has one, else the one running pytest."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    for candidate in filter(None, candidates):
        found = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return candidate
    return sys.executable


def _clean_env(venv: Path, home: Path) -> dict:
    """The environment a fresh Binder user has: this venv first, no Jupyter settings of ours."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "JUPYTER_PATH"}}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {done.returncode}\n"
        f"--- stdout (end)\n{done.stdout[-4000:]}\n--- stderr (end)\n{done.stderr[-6000:]}"
    )
    return done


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory):
    """A copy of the repository and a venv built from binder/ alone, as repo2docker builds it."""
    base = tmp_path_factory.mktemp("binder")
    repo = base / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", "build", ".ipynb_checkpoints",
        "artifacts", ".pytest_cache"))
    venv = base / "venv"
    python = _python_for(_runtime_version())
    _run([python, "-m", "venv", str(venv)])
    env = _clean_env(venv, base / "jupyter")
    # repo2docker's own step, from the repository root:
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
         cwd=repo, env=env, timeout=1200)
    # A kernelspec in the venv's own prefix that runs the venv's python.
    _run([venv / "bin" / "python", "-m", "ipykernel", "install", "--prefix", str(venv),
          "--name", KERNEL, "--display-name", "binder test"], env=env, timeout=120)
    return {"repo": repo, "venv": venv, "env": env, "out": base / "out", "python": python}


def test_binder_files_are_what_repo2docker_reads():
    assert (BINDER / "requirements.txt").exists()
    lines = [line.split("#", 1)[0].strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    assert "-r ../requirements.txt" in lines, "binder/requirements.txt should install the root requirements"
    required = re.search(r'requires-python\s*=\s*">=\s*(3\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert required, "pyproject.toml should say requires-python = \">=3.X\""
    as_tuple = lambda v: tuple(int(part) for part in v.split("."))  # noqa: E731
    assert as_tuple(_runtime_version()) >= as_tuple(required.group(1)), (
        "binder/runtime.txt asks for an older Python than pyproject.toml's requires-python")
    # Nothing else of repo2docker's is needed; a postBuild would slow every Binder start.
    assert not (BINDER / "postBuild").exists()


def test_binder_environment_has_labkit_and_the_server_proxy(binder_env):
    python = binder_env["venv"] / "bin" / "python"
    where = _run([python, "-c", "import labkit; print(labkit.__file__)"],
                 cwd=binder_env["out"].parent, env=binder_env["env"]).stdout.strip()
    assert Path(where).is_relative_to(binder_env["repo"]), f"labkit came from {where}, not the repository"
    # labkit.Server.browser_url goes through jupyter-server-proxy on Binder.
    listed = _run([python, "-m", "jupyter", "server", "extension", "list"], env=binder_env["env"])
    text = listed.stdout + listed.stderr
    assert re.search(r"jupyter_server_proxy\s+\S*enabled", text), text


def test_start_here_runs_in_the_binder_environment(binder_env):
    repo, out = binder_env["repo"], binder_env["out"]
    out.mkdir(exist_ok=True)
    assert (repo / NOTEBOOK).exists(), f"{NOTEBOOK} is missing from the repository"
    _run([binder_env["venv"] / "bin" / "python", "-m", "jupyter", "nbconvert",
          "--to", "notebook", "--execute", str(repo / NOTEBOOK), "--output-dir", str(out),
          f"--ExecutePreprocessor.kernel_name={KERNEL}",
          "--ExecutePreprocessor.timeout=300"],
         cwd=repo, env=binder_env["env"], timeout=900)
    assert (out / Path(NOTEBOOK).name).exists()
