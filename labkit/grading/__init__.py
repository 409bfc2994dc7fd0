"""Grading: checks for exercise cells, the student-edition release, and the grader.

    checker.py   labkit.check(question, answer): hidden tests against real servers, one verdict line
    authoring.py the API hidden tests are written with (Question, Run, Fail, AnswerRaised, show)
    verdicts.py  what a check decides, and the line it prints (imports nothing)
    hidden/      the hidden tests, one module per notebook (nb00.py, nb01.py, ...)
    release.py   python -m labkit release: notebooks/ (student edition) from solutions/
    grade.py     python -m labkit grade: score submitted notebooks through nbval
    guard.py     runs first in a graded kernel, so a submission cannot fake its verdicts
    probe.py     pytest plugin: nbval's per-cell results for the grader

README.md in this folder: how to release, collect, grade and read the results, and how
to add an exercise.

Nothing is imported here, so ``import labkit`` stays fast.
"""
