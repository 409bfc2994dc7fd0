"""Grading: checks for exercise cells and the student-edition release.

    check.py     labkit.check(question, answer): hidden tests against real servers, one verdict line
    hidden/      the hidden tests, one module per notebook (nb00.py, nb01.py, ...)
    release.py   python -m labkit release: notebooks/ (student edition) from solutions/

Nothing is imported here, so ``import labkit`` stays fast.
"""
