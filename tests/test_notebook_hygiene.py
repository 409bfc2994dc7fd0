"""Notebook hygiene: every notebook stops everything it started, and keeps the cell conventions.

Each notebook of solutions/ is executed once, in a kernel running this test's Python,
with one extra cell first that notes the threads already running and one at the end
that reports the labkit servers still running, the links still open and the threads
the notebook started that are still alive: all must be none. The same run shows that
every check passes. (The student edition runs the same cells with stubs for answers;
nbval runs it, and its checks must say "not attempted yet" there.)
"""

from __future__ import annotations

import json
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit.grading import release
from labkit.grading.authoring import questions
from labkit.grading.verdicts import not_attempted

ROOT = Path(__file__).resolve().parents[1]
EDITIONS = {"solutions": "solution", "notebooks": "student"}
NOTEBOOKS = [path for folder in EDITIONS for path in sorted((ROOT / folder).glob(release.PATTERN))]
IDS = [f"{p.parent.name}/{p.name}" for p in NOTEBOOKS]

CURRENT_ENV = "labkit-current-env"

#: Run first, in the notebook's kernel: the threads that are not the notebook's.
BEFORE = "import threading as _threading\n_hygiene_threads = set(_threading.enumerate())"

#: Run last: what the notebook left running (threads get a few seconds to end; the kernel's
#: own, such as pyzmq's garbage collector started on a large output, are not the notebook's, and
#: neither is the reader of the kernel's connection to its examiner, which lives as long as the kernel).
REPORT = """\
import json as _json, time as _time, labkit as _labkit
def _alive():
    return sorted(t.name for t in _threading.enumerate() if t not in _hygiene_threads and t.is_alive()
                  and type(t).__module__.split(".")[0] not in ("zmq", "ipykernel", "IPython")
                  and t.name != "labkit-check-reader")
_deadline = _time.monotonic() + 5
while _alive() and _time.monotonic() < _deadline:
    _time.sleep(0.1)
print(_json.dumps({"servers": [s.name for s in _labkit.running()], "links": len(_labkit.open_links()), "threads": _alive()}))"""


class _CurrentEnvSpecs(KernelSpecManager):
    """A kernel spec that runs this very Python (as nbval's --nbval-current-env does)."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name == CURRENT_ENV:
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


def execute(nb, folder: Path) -> dict:
    """Execute ``nb`` (in place) in ``folder`` with the report cell appended; return the report."""
    nb.cells.insert(0, new_code_cell(BEFORE, id="labkit-hygiene-before"))
    nb.cells.append(new_code_cell(REPORT, id="labkit-hygiene-report"))
    km = AsyncKernelManager(kernel_name=CURRENT_ENV, kernel_spec_manager=_CurrentEnvSpecs())
    NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(folder)}}).execute()
    report = nb.cells.pop()
    nb.cells.pop(0)
    text = "".join(o.get("text", "") for o in report.outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


# -- the notebooks of the workbook -------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_cell_conventions_hold(path):
    nb = nbformat.read(path, as_version=4)
    assert release.problems(nb, edition=EDITIONS[path.parent.name]) == []
    known = questions()
    for cell in nb.cells:
        marks = release.role(cell)
        if marks:
            assert marks[0] in known, f"{path.name}: {marks[0]} has no hidden tests in labkit/grading/hidden"


@pytest.mark.parametrize("folder", list(EDITIONS))
def test_question_ids_are_unique_across_notebooks(folder):
    seen: dict[str, str] = {}
    for path in sorted((ROOT / folder).glob(release.PATTERN)):
        for cell in nbformat.read(path, as_version=4).cells:
            marks = release.role(cell)
            if marks and marks[1] == "answer":
                assert marks[0] not in seen, f"{marks[0]} is answered in {seen[marks[0]]} and {path.name}"
                seen[marks[0]] = path.name


SOLUTION_NOTEBOOKS = [path for path in NOTEBOOKS if EDITIONS[path.parent.name] == "solution"]


@pytest.mark.parametrize("path", SOLUTION_NOTEBOOKS, ids=[p.name for p in SOLUTION_NOTEBOOKS])
def test_every_notebook_stops_everything_it_started(path):
    """Executed from top to bottom, a notebook leaves no server running, no link open and no
    thread alive, and every check passes."""
    nb = nbformat.read(path, as_version=4)
    report = execute(nb, path.parent)
    assert report == {"servers": [], "links": 0, "threads": []}, f"{path.name} leaves these running: {report}"
    for cell in nb.cells:
        marks = release.role(cell)
        if marks and marks[1] == "check":
            assert stdout(cell).startswith(f"{marks[0]} passed the public tests: "), stdout(cell)


def test_the_student_edition_says_not_attempted_in_every_check():
    """Its stored outputs, which nbval compares when it runs the student edition."""
    for path in NOTEBOOKS:
        if EDITIONS[path.parent.name] == "student":
            for cell in nbformat.read(path, as_version=4).cells:
                marks = release.role(cell)
                if marks and marks[1] == "check":
                    assert stdout(cell) == not_attempted(marks[0]).line + "\n", (path.name, stdout(cell))


# -- the harness itself, so the tests above cannot pass by seeing nothing --------------------------


def test_the_report_sees_a_server_left_running(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("A notebook that forgets to stop its server.", id="intro"),
        new_code_cell("import labkit\nfrom labkit.apps import create\n"
                      "hello = labkit.serve(create('hello'), name='forgotten')\n"
                      "link = labkit.Link(hello)\n"
                      "import threading\n"
                      "threading.Thread(target=threading.Event().wait, name='forgotten-thread', daemon=True).start()",
                      id="start"),
    ])
    assert execute(nb, tmp_path) == {"servers": ["forgotten"], "links": 1,
                                     "threads": ["forgotten-thread", "labkit-links", "labkit-server-forgotten"]}
    nb.cells[-1].source = nb.cells[-1].source.replace("threading.Event().wait", "lambda: None")
    nb.cells.append(new_code_cell("link.close()\nlabkit.stop_all()", id="stop"))
    assert execute(nb, tmp_path) == {"servers": [], "links": 0, "threads": []}
