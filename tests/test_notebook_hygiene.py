"""Notebook hygiene: every notebook stops every server it started, and keeps the cell conventions.

Each notebook of solutions/ and notebooks/ is executed once, in a kernel running this
test's Python, with one extra cell at the end that reports the labkit servers still
running and the links still open: both must be none. The same run shows the check
verdicts: "passed" in the solution edition, "not attempted yet" in the student edition.
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
from labkit.grading.check import not_attempted_line, questions

ROOT = Path(__file__).resolve().parents[1]
EDITIONS = {"solutions": "solution", "notebooks": "student"}
NOTEBOOKS = [path for folder in EDITIONS for path in sorted((ROOT / folder).glob(release.PATTERN))]
IDS = [f"{p.parent.name}/{p.name}" for p in NOTEBOOKS]

CURRENT_ENV = "labkit-current-env"

#: Run last, in the notebook's kernel: what labkit still has running.
REPORT = """\
import json as _json, labkit as _labkit, labkit.net as _net
print(_json.dumps({"servers": sorted(_labkit.running()), "links": _labkit.open_links()}))"""


class _CurrentEnvSpecs(KernelSpecManager):
    """A kernel spec that runs this very Python (as nbval's --nbval-current-env does)."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name == CURRENT_ENV:
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


def execute(nb, folder: Path) -> dict:
    """Execute ``nb`` (in place) in ``folder`` with the report cell appended; return the report."""
    nb.cells.append(new_code_cell(REPORT, id="labkit-hygiene-report"))
    km = AsyncKernelManager(kernel_name=CURRENT_ENV, kernel_spec_manager=_CurrentEnvSpecs())
    NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(folder)}}).execute()
    report = nb.cells.pop()
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_notebook_stops_every_server_it_started(path):
    """Executed from top to bottom, a notebook leaves no server running and no link open,
    and its checks say what its edition should say."""
    nb = nbformat.read(path, as_version=4)
    report = execute(nb, path.parent)
    assert report == {"servers": [], "links": 0}, f"{path.name} leaves these running: {report}"
    for cell in nb.cells:
        marks = release.role(cell)
        if marks and marks[1] == "check":
            question, text = marks[0], stdout(cell)
            if EDITIONS[path.parent.name] == "solution":
                assert text.startswith(f"{question} passed: "), text
            else:
                assert text == not_attempted_line(question) + "\n", text


# -- the harness itself, so the tests above cannot pass by seeing nothing --------------------------


def test_the_report_sees_a_server_left_running(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("A notebook that forgets to stop its server.", id="intro"),
        new_code_cell("import labkit\nfrom labkit.apps import create\n"
                      "hello = labkit.serve(create('hello'), name='forgotten')\n"
                      "link = labkit.Link(hello)", id="start"),
    ])
    assert execute(nb, tmp_path) == {"servers": ["forgotten"], "links": 1}
    nb.cells.append(new_code_cell("link.close()\nlabkit.stop_all()", id="stop"))
    assert execute(nb, tmp_path) == {"servers": [], "links": 0}
