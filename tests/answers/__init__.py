"""Every exercise's answers: the solutions, read from the solution notebooks, and wrong answers.

``SOLUTIONS`` maps each question to the function its answer cell in ``solutions/`` defines
(see solutions.py). ``WRONG``, gathered from the modules ``nbNN.py`` (one per notebook), lists
(question id, wrong function, [words its verdict must hold]). Convention: every exercise adds
at least two wrong answers here, one of them subtly wrong; tests/test_check.py checks them all
with ``labkit.check``, and tests/test_grade.py sends them through the grader.
"""

import importlib
import pkgutil

from .solutions import all_solutions

SOLUTIONS: dict = all_solutions()
WRONG: list = []
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("nb")):
    WRONG.extend(importlib.import_module(f"{__name__}.{_module}").WRONG)
