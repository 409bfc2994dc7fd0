"""Grading: checks for exercise cells, the student-edition release, and the grader.

    checker.py   labkit.check(question, answer): asks the examiner, prints one verdict line
    answering.py the student's side: starts the examiner, runs each call of the answer it asks for
    examiner.py  a process of its own that runs the hidden tests, so no answer can reach them
    wire.py      the small protocol between the two: JSON lines, values, exceptions
    authoring.py the API hidden tests are written with (Question, Run, Fail, AnswerRaised, show)
    verdicts.py  what a check decides, and the line it prints (imports nothing)
    hidden/      the hidden tests, one module per notebook (nb00.py, nb01.py, ...)
    release.py   python -m labkit release: notebooks/ (student edition) from solutions/
    grade.py     python -m labkit grade: score submitted notebooks through nbval
    guard.py     runs first in a graded kernel: undoes a submission's patches of labkit
    sandbox.py   runs a graded kernel, and its examiner, as throwaway users (root only)
    probe.py     pytest plugin: nbval's per-cell results for the grader
    results.py   what grading writes: records, tables, Gradescope/PrairieLearn results, gradebooks, merges
    feedback.py  a feedback file per submission (Markdown and HTML)
    report.py    statistics over a class (HTML with a picture, and JSON)
    autograder.py python -m labkit autograder: a Gradescope zip or a PrairieLearn external grader

README.md in this folder: how to release, collect, grade and read the results, and how
to add an exercise.

Nothing is imported here, so ``import labkit`` stays fast.
"""
