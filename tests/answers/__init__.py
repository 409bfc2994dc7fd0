"""Every exercise's answers, one module per notebook (``nbNN.py``).

Each module holds ``SOLUTIONS`` (question id -> the solution edition's function) and
``WRONG`` (a list of (question id, wrong function, [words its verdict must hold])).
Convention: every exercise adds its solution and at least two wrong answers here (one
subtly wrong); tests/test_check.py checks them all with ``labkit.check``, and
tests/test_grade.py sends them through the grader.
"""

import importlib
import pkgutil

SOLUTIONS: dict = {}
WRONG: list = []
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    _answers = importlib.import_module(f"{__name__}.{_module}")
    SOLUTIONS.update(_answers.SOLUTIONS)
    WRONG.extend(_answers.WRONG)
