"""Grade where the class submits: ``python -m labkit autograder gradescope|prairielearn``.

    python -m labkit autograder gradescope --notebook 01_client_server --out autograder.zip
    python -m labkit autograder prairielearn --notebook 01_client_server --out pl-grader/

Both carry the workbook (labkit, its requirements, and the one solution notebook the
grader needs; the private tests too, if given) and a script that runs
``python -m labkit grade`` on the submission in the platform's format.

**Gradescope** unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once when
it builds the image (Python 3.11 or newer: choose Ubuntu 24.04 as the base image) and
``run_autograder`` for each submission, which grades ``/autograder/submission`` into
``/autograder/results/results.json``. ``AUTOGRADER_ROOT`` moves ``/autograder`` (a test
here runs the unpacked zip that way).

**PrairieLearn** runs an external grader image with the question's files in ``/grade``:
the folder written here holds a ``Dockerfile`` for that image, ``tests/run.sh`` (the
entrypoint: ``/grade/student`` into ``/grade/results/results.json``) and
``info.json``, the question's settings to merge. ``AUTOGRADER_ROOT`` moves ``/grade``.
"""

from __future__ import annotations

import io
import json
import shlex
import stat
import sys
import zipfile
from pathlib import Path

from ..errors import GradeError
from . import grade as _grade

#: The folder of the workbook inside the zip or image.
WORKBOOK = "workbook"
#: The platforms' time limit for one submission (seconds): Gradescope's default, PrairieLearn's largest.
PLATFORM_TIMEOUT_S = 600
#: The grader's own limit inside it, leaving time to start, and to write the results of a submission it stops.
TIME_LIMIT_S = PLATFORM_TIMEOUT_S - 120

_GRADE = ('"$python" -m labkit grade "$submission" --notebook {notebook} --format {format} '
          '--out "$results/results.json" --solutions "$workbook/solutions" --jobs 1 '
          f'--time-limit {TIME_LIMIT_S}{{private}}')

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
cd "$(dirname "$0")/{workbook}"
apt-get update -q
apt-get install -y -q python3 python3-venv python3-pip >/dev/null
python3 -c 'import sys; assert sys.version_info >= (3, 11), "labkit needs Python 3.11 or newer: choose Ubuntu 24.04 as the base image"'
python3 -m venv "${{AUTOGRADER_ROOT:-/autograder}}/venv"
"${{AUTOGRADER_ROOT:-/autograder}}/venv/bin/pip" install -q -r requirements.txt
"""

#: The script a platform runs per submission: grade it, and write a result even if the grader cannot run.
RUN = """#!/usr/bin/env bash
# {purpose}
set -uo pipefail
root="${{AUTOGRADER_ROOT:-{root}}}"
workbook="{workbook}"
python="${{LABKIT_PYTHON:-{python}}}"
submission="$root/{submission}"
results="$root/results"
mkdir -p "$results"
cd "$workbook"
{grade} || printf '%s\\n' '{fallback}' > "$results/results.json"
"""

_CANNOT = "the grader could not run; please tell the course team"

DOCKERFILE = """# The external grader image: build it, push it, and name it in the question's info.json.
FROM python:3.12-slim
COPY {workbook} /{workbook}
RUN python -m venv /{workbook}/.venv && cd /{workbook} && /{workbook}/.venv/bin/pip install -q -r requirements.txt
"""


def workbook_files(notebook: str, *, solutions: Path, private_tests: Path | None = None) -> dict[str, bytes]:
    """The files the grader needs, by their path inside the workbook folder."""
    root = Path(__file__).resolve().parents[2]
    source = Path(solutions) / f"{notebook}.ipynb"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in Path(solutions).glob("[0-9][0-9]_*.ipynb"))) or "none"
        raise GradeError(f"no solution notebook {source}; the notebooks are: {known}")
    files = {f"solutions/{source.name}": source.read_bytes()}
    for name in ("requirements.txt", "pyproject.toml", "README.md"):
        files[name] = (root / name).read_bytes()
    for path in sorted((root / "labkit").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc",):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    if private_tests is not None:
        tests = sorted(Path(private_tests).glob("*.py"))
        if not tests:
            raise GradeError(f"--private-tests {private_tests}: no Python modules (*.py) there")
        files.update({f"private/{p.name}": p.read_bytes() for p in tests})
    return files


def _grade_command(notebook: str, form: str, private: bool) -> str:
    return _GRADE.format(notebook=shlex.quote(notebook), format=form,
                         private=' --private-tests "$workbook/private"' if private else "")


def gradescope_zip(notebook: str, out: Path, *, solutions: Path, private_tests: Path | None = None) -> Path:
    files = workbook_files(notebook, solutions=solutions, private_tests=private_tests)
    run = RUN.format(purpose=f"Gradescope runs this for each submission: it grades {notebook}.",
                     root="/autograder", workbook=f"$root/source/{WORKBOOK}", python="$root/venv/bin/python",
                     submission="submission", grade=_grade_command(notebook, "gradescope", bool(private_tests)),
                     fallback=json.dumps({"score": 0, "output": _CANNOT}))
    scripts = {"setup.sh": SETUP_SH.format(workbook=WORKBOOK), "run_autograder": run}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in scripts.items():  # at the zip's root, executable, as Gradescope requires
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            archive.writestr(info, text)
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(f"{WORKBOOK}/{name}", date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return out


def prairielearn_folder(notebook: str, out: Path, *, solutions: Path, private_tests: Path | None = None) -> Path:
    out = Path(out)
    files = workbook_files(notebook, solutions=solutions, private_tests=private_tests)
    for name, data in files.items():
        path = out / WORKBOOK / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out / "Dockerfile").write_text(DOCKERFILE.format(workbook=WORKBOOK), encoding="utf-8")
    run = out / "tests" / "run.sh"
    run.parent.mkdir(parents=True, exist_ok=True)
    run.write_text(RUN.format(purpose=f"PrairieLearn's entrypoint for this question: it grades {notebook}.",
                              root="/grade", workbook=f"${{LABKIT_WORKBOOK:-/{WORKBOOK}}}",
                              python=f"/{WORKBOOK}/.venv/bin/python", submission="student",
                              grade=_grade_command(notebook, "prairielearn", bool(private_tests)),
                              fallback=json.dumps({"gradable": False, "score": 0, "message": _CANNOT})), encoding="utf-8")
    run.chmod(0o755)
    info = {"gradingMethod": "External",
            "externalGradingOptions": {"enabled": True, "image": "YOUR-REGISTRY/labkit-grader",
                                       "entrypoint": "/grade/tests/run.sh", "timeout": PLATFORM_TIMEOUT_S}}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def add_parser(commands) -> None:
    parser = commands.add_parser("autograder", help="build a Gradescope autograder or a PrairieLearn external grader",
                                 description=__doc__.splitlines()[0])
    parser.add_argument("platform", choices=["gradescope", "prairielearn"])
    parser.add_argument("--notebook", required=True, help="the notebook it grades, such as 01_client_server")
    parser.add_argument("--out", type=Path, required=True,
                        help="the zip to write (gradescope), or the folder (prairielearn)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="folder of the solution notebooks (default: solutions, here or beside labkit)")
    parser.add_argument("--private-tests", type=Path, default=None, metavar="DIR",
                        help="a folder of extra hidden tests to grade with (never given to students)")
    parser.set_defaults(run=main)


def main(args) -> int:
    solutions = args.solutions or _grade.default_solutions()
    build = gradescope_zip if args.platform == "gradescope" else prairielearn_folder
    try:
        out = build(args.notebook, args.out, solutions=solutions, private_tests=args.private_tests)
    except GradeError as error:
        print(f"autograder: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
