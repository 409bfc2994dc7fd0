"""labkit release: the student edition is made from the solution edition, and never drifts."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from labkit.grading import release
from labkit.grading.verdicts import STUB, not_attempted

ROOT = Path(__file__).resolve().parents[1]

# -- a small solution notebook, built here -------------------------------------------------

ANSWER = '''import requests


def fetch_or_none(client, url):
    """The JSON body of GET url, or None."""
    # BEGIN SOLUTION
    try:
        response = client.get(url, timeout=0.5)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.RequestException:
        return None
    # END SOLUTION


print("defined")'''

ANSWER_STUB = '''import requests


def fetch_or_none(client, url):
    """The JSON body of GET url, or None."""
    raise NotImplementedError("write your answer here")


print("defined")'''

NESTED = '''class Totals:
    def order_totals(self, client, base_url, order_ids):
        """Nested deeper: the stub keeps the indentation."""
        ids = list(order_ids)
        # BEGIN SOLUTION
        response = client.post(base_url + "/orders/batch", json={"ids": ids})
        return {o["id"]: 0 for o in response.json()["orders"]}
        # END SOLUTION


order_totals = Totals().order_totals'''

NESTED_STUB = '''class Totals:
    def order_totals(self, client, base_url, order_ids):
        """Nested deeper: the stub keeps the indentation."""
        ids = list(order_ids)
        raise NotImplementedError("write your answer here")


order_totals = Totals().order_totals'''


def answer_cell(question, source, cell_id):
    cell = new_code_cell(source, id=cell_id, execution_count=3,
                         outputs=[new_output("stream", name="stdout", text="defined\n")],
                         metadata={"tags": ["exercise"], "labkit": {"question": question, "role": "answer"}})
    return cell


def check_cell(question, function, cell_id, text=None):
    passed = text or f"{question} passed: 8 hidden tests, 11 runs against real servers.\n"
    return new_code_cell(f'labkit.check("{question}", {function})', id=cell_id, execution_count=4,
                         outputs=[new_output("stream", name="stdout", text=passed)],
                         metadata={"tags": ["check"], "labkit": {"question": question, "role": "check"}})


def solution_notebook():
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [
        new_markdown_cell("# 01 Client and server\n\nZoë's café — non-ASCII stays as it is.", id="intro"),
        new_code_cell("import labkit\nprint(2 + 2)", id="setup", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="4\n"),
                               new_output("execute_result", data={"text/plain": "'ok'"}, execution_count=1)]),
        answer_cell("q1.1", ANSWER, "answer-1"),
        check_cell("q1.1", "fetch_or_none", "check-1"),
        answer_cell("q1.2", NESTED, "answer-2"),
        check_cell("q1.2", "order_totals", "check-2"),
        new_markdown_cell("## Summary", id="summary"),
    ]
    return nb


def write(folder: Path, name: str, nb) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


def run_cli(*argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="python -m labkit")
    release.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["release", *map(str, argv)])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = args.run(args)
    return code, out.getvalue(), err.getvalue()


# -- the committed notebooks ------------------------------------------------------------------


def test_the_committed_student_edition_is_what_release_makes(tmp_path):
    """notebooks/ must be exactly what `python -m labkit release` writes from solutions/."""
    solutions, notebooks = ROOT / "solutions", ROOT / "notebooks"
    fresh = tmp_path / "notebooks"
    written = release.release(solutions, fresh)
    assert sorted(p.name for p in written) == sorted(p.name for p in solutions.glob(release.PATTERN))
    committed = sorted(p.name for p in notebooks.glob(release.PATTERN)) if notebooks.is_dir() else []
    assert committed == sorted(p.name for p in written), "run: python -m labkit release"
    for path in written:
        assert (notebooks / path.name).read_bytes() == path.read_bytes(), (
            f"notebooks/{path.name} differs from its release; run: python -m labkit release")
    assert release.differences(solutions, notebooks) == []


def test_the_command_line_checks_the_committed_notebooks():
    result = subprocess.run([sys.executable, "-m", "labkit", "release", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is up to date" in result.stdout


# -- release on a small notebook -----------------------------------------------------------------


def test_answer_cells_get_the_stub_at_the_same_indentation():
    out = release.student_edition(solution_notebook())
    answers = [c for c in out.cells if release.role(c) and release.role(c)[1] == "answer"]
    assert [c.source for c in answers] == [ANSWER_STUB, NESTED_STUB]
    assert STUB == 'raise NotImplementedError("write your answer here")'
    for cell, index in zip(answers, (2, 4)):
        assert cell.outputs == [] and cell.execution_count is None
        assert cell.metadata == solution_notebook().cells[index].metadata


def test_check_cells_hold_the_stub_verdict():
    out = release.student_edition(solution_notebook())
    checks = [c for c in out.cells if release.role(c) and release.role(c)[1] == "check"]
    assert [c.outputs for c in checks] == [
        [{"output_type": "stream", "name": "stdout", "text": not_attempted(q).line + "\n"}] for q in ("q1.1", "q1.2")]
    assert checks[0].source == 'labkit.check("q1.1", fetch_or_none)'


def test_other_cells_and_the_notebook_are_copied_unchanged():
    solution = solution_notebook()
    before = json.dumps(solution, sort_keys=True)
    out = release.student_edition(solution)
    assert json.dumps(solution, sort_keys=True) == before  # the solution is not touched
    for index in (0, 1, 6):
        assert out.cells[index] == solution.cells[index]
    assert [c.id for c in out.cells] == [c.id for c in solution.cells]
    assert out.metadata == solution.metadata


def test_the_stub_prints_exactly_the_stored_verdict(capsys):
    """Run the released answer and check cells: the output is what release stored."""
    import labkit

    out = release.student_edition(solution_notebook())
    namespace = {"labkit": labkit}
    exec(out.cells[2].source, namespace)
    capsys.readouterr()
    exec(out.cells[3].source, namespace)
    assert capsys.readouterr().out == out.cells[3].outputs[0]["text"]


def test_release_is_byte_for_byte_deterministic(tmp_path):
    write(tmp_path / "solutions", "01_client_server.ipynb", solution_notebook())
    first = release.plan(tmp_path / "solutions")["01_client_server.ipynb"]
    release.release(tmp_path / "solutions", tmp_path / "a")
    release.release(tmp_path / "solutions", tmp_path / "b")
    a = (tmp_path / "a" / "01_client_server.ipynb").read_bytes()
    assert a == (tmp_path / "b" / "01_client_server.ipynb").read_bytes() == first
    assert a.endswith(b"}\n") and "Zoë's café".encode() in a
    # released again from its own output's source, nothing moves
    again = release.render(release.student_edition(nbformat.read(tmp_path / "solutions" / "01_client_server.ipynb",
                                                                    as_version=4)))
    assert again == a
    parsed = json.loads(a)
    assert list(parsed) == sorted(parsed)


def test_the_command_writes_and_checks(tmp_path):
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    write(solutions, "01_client_server.ipynb", solution_notebook())
    write(solutions, "00_start_here.ipynb", new_notebook(cells=[new_markdown_cell("hi", id="hi")]))
    (solutions / "scratch.ipynb").write_text("not a notebook of the workbook")  # not NN_*: ignored

    code, out, _ = run_cli("--solutions", solutions, "--notebooks", notebooks, "--check")
    assert code == 1 and "01_client_server.ipynb is missing" in out and not notebooks.exists()

    code, out, err = run_cli("--solutions", solutions, "--notebooks", notebooks)
    assert (code, err) == (0, "") and "wrote 2 notebooks" in out
    assert sorted(p.name for p in notebooks.iterdir()) == ["00_start_here.ipynb", "01_client_server.ipynb"]
    assert run_cli("--solutions", solutions, "--notebooks", notebooks, "--check")[0] == 0

    stale = notebooks / "01_client_server.ipynb"
    stale.write_bytes(stale.read_bytes().replace(b"write your answer here", b"my answer"))
    orphan = notebooks / "02_peer_to_peer.ipynb"
    orphan.write_bytes((notebooks / "00_start_here.ipynb").read_bytes())
    before = stale.read_bytes()
    code, out, _ = run_cli("--solutions", solutions, "--notebooks", notebooks, "--check")
    assert code == 1
    assert "01_client_server.ipynb differs from its release" in out and "02_peer_to_peer.ipynb has no solutions" in out
    assert stale.read_bytes() == before  # --check writes nothing

    assert run_cli("--solutions", solutions, "--notebooks", notebooks)[0] == 0
    assert not orphan.exists()
    assert run_cli("--solutions", solutions, "--notebooks", notebooks, "--check")[0] == 0


def test_an_empty_solutions_folder_releases_nothing(tmp_path):
    (tmp_path / "solutions").mkdir()
    assert release.release(tmp_path / "solutions", tmp_path / "notebooks") == []
    code, _, err = run_cli("--solutions", tmp_path / "nowhere", "--notebooks", tmp_path / "notebooks")
    assert code == 2 and "no solutions folder" in err


# -- refusals ----------------------------------------------------------------------------------


def without_markers(nb):
    nb.cells[2].source = nb.cells[2].source.replace("    # BEGIN SOLUTION\n", "").replace("    # END SOLUTION\n", "")


def begin_without_end(nb):
    nb.cells[2].source = nb.cells[2].source.replace("    # END SOLUTION\n", "")


def end_before_begin(nb):
    nb.cells[4].source = "# END SOLUTION\n" + nb.cells[4].source


def check_without_answer(nb):
    nb.cells.append(check_cell("q1.3", "next_messages", "check-3"))


def check_before_answer(nb):
    nb.cells[2], nb.cells[3] = nb.cells[3], nb.cells[2]


def answer_without_check(nb):
    del nb.cells[5]


def duplicate_answer(nb):
    nb.cells[4].metadata["labkit"]["question"] = "q1.1"
    nb.cells[5].metadata["labkit"]["question"] = "q1.1-bis"


def duplicate_check(nb):
    nb.cells.append(check_cell("q1.1", "fetch_or_none", "check-again"))


def check_calls_another_question(nb):
    nb.cells[3].source = 'labkit.check("q1.2", fetch_or_none)'


def missing_tag(nb):
    nb.cells[2].metadata["tags"] = []


REFUSALS = [
    (without_markers, "cell 2 (answer of q1.1): an answer cell needs its solution between a line # BEGIN SOLUTION"),
    (begin_without_end, "# BEGIN SOLUTION has no # END SOLUTION after it"),
    (end_before_begin, "line 1: # END SOLUTION without a # BEGIN SOLUTION before it"),
    (check_without_answer, "cell 7 (check of q1.3): no answer cell for q1.3 comes before this check cell"),
    (check_before_answer, "cell 2 (check of q1.1): no answer cell for q1.1 comes before this check cell"),
    (answer_without_check, "cell 4 (answer of q1.2): no check cell for q1.2 follows it"),
    (duplicate_answer, "cell 4 (answer of q1.1): question q1.1 already has an answer cell (cell 2)"),
    (duplicate_check, "cell 7 (check of q1.1): question q1.1 already has a check cell (cell 3)"),
    (check_calls_another_question, 'cell 3 (check of q1.1): a check cell calls labkit.check("q1.1", ...)'),
    (missing_tag, 'cell 2 (answer of q1.1): an answer cell needs the tag "exercise"'),
]


@pytest.mark.parametrize("spoil, message", REFUSALS, ids=[f.__name__ for f, _ in REFUSALS])
def test_release_refuses_a_notebook_that_breaks_the_conventions(tmp_path, spoil, message):
    nb = solution_notebook()
    spoil(nb)
    with pytest.raises(release.ReleaseError) as caught:
        release.student_edition(nb, name="01_client_server.ipynb")
    assert message in str(caught.value)

    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    write(solutions, "00_start_here.ipynb", new_notebook(cells=[new_markdown_cell("hi", id="hi")]))
    write(solutions, "01_client_server.ipynb", nb)
    code, out, err = run_cli("--solutions", solutions, "--notebooks", notebooks)
    assert code == 2 and out == ""
    assert err.startswith("release: ") and "01_client_server.ipynb" in err and message in err
    assert not notebooks.exists()  # nothing written, not even the good notebook


def test_release_refuses_a_question_answered_in_two_notebooks(tmp_path):
    solutions = tmp_path / "solutions"
    write(solutions, "01_client_server.ipynb", solution_notebook())
    write(solutions, "02_peer_to_peer.ipynb", solution_notebook())
    code, _, err = run_cli("--solutions", solutions, "--notebooks", tmp_path / "notebooks")
    assert code == 2
    assert "question q1.1 has answer cells in both 01_client_server.ipynb and 02_peer_to_peer.ipynb" in err


def test_the_student_edition_passes_its_own_conventions():
    out = release.student_edition(solution_notebook())
    assert release.problems(out, edition="student") == []
    assert release.problems(solution_notebook(), edition="student") != []
