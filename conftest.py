"""Running the suite in parallel, for every test path (tests/, notebooks/, solutions/).

pytest-xdist spreads tests over workers (``-n`` in pyproject.toml) with ``--dist
loadgroup``: one by one, except tests of one group, which share a worker. Each
notebook is a group, since nbval runs its cells in order in one kernel; so is each
module in ``ONE_WORKER``, whose module-scoped fixture (a fresh virtual environment) is
too expensive to build on every worker. The modules that grade (``GRADING``) share one
worker: each grades a class of notebook 01 in its fixture, and three such classes at
once on two cores run past the grader's time limits.
"""

import pytest

#: Test modules whose tests must share one worker.
ONE_WORKER = {"test_binder.py"}
#: Test modules that grade submissions: one worker for all of them.
GRADING = {"test_grade.py", "test_class_grading.py", "test_autograder.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(str(item.path)))
        elif item.path.name in GRADING:
            item.add_marker(pytest.mark.xdist_group("grading"))
