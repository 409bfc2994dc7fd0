"""``labkit.check``: run a question's hidden tests against real servers, print one verdict.

    >>> labkit.check("q1.1", fetch_or_none)                 # doctest: +SKIP
    q1.1 passed the public tests: 8 tests, 11 runs against real servers; the grader may run more.

The hidden tests live in ``labkit/grading/hidden/`` (written with
:mod:`labkit.grading.authoring`); the lines are :mod:`labkit.grading.verdicts`.
``check`` prints exactly one line and never raises; a hung answer is stopped.

The tests never run in the student's process: ``check`` asks the examiner
(:mod:`labkit.grading.examiner`, a process of its own) and answers its calls of the
student's function (:mod:`labkit.grading.answering`); the examiner runs :func:`verdict`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging

from ..tracing import Event, Trace
from . import verdicts, wire
from .authoring import TIME_LIMIT_S, AnswerRaised, Fail, Run, _Overrun, describe_error, questions
from .verdicts import Verdict

log = logging.getLogger("labkit")


def check(question: str, answer, *, diagram=None, time_limit: float | None = None) -> None:
    """Run the hidden tests of ``question`` on ``answer`` and print one verdict line.

    ``diagram`` draws the failing run's trace below the verdict: a function such as
    ``labkit.sequence``. ``time_limit`` (seconds per call of the answer) overrides
    the question's. It never raises: whatever the answer does, the verdict says it.

        >>> labkit.check("q1.1", fetch_or_none, diagram=labkit.sequence)      # doctest: +SKIP
    """
    from . import answering

    try:
        reply = answering.connection().check(str(question), answer, time_limit, diagram is not None)
    except KeyboardInterrupt:
        print(verdicts.not_checked(str(question), "not checked: interrupted.").line)
        return
    except Exception as error:  # noqa: BLE001 - no examiner: say so, never raise
        log.exception("check(%r) could not reach the examiner", question)
        print(verdicts.not_checked(str(question), f"could not be checked: the checker could not start "
                                                  f"({describe_error(error)}).").line)
        return
    print(reply["line"])
    if diagram is not None and reply.get("trace"):
        show_diagram(diagram, _merged(reply["trace"], answering.connection()))


def _merged(sent: dict, connection):
    """The failing run's trace: the examiner's events, and those of the clients in this process."""
    start, events = float(sent.get("start", 0.0)), []
    for data in sent.get("events", []):
        fields = wire.unplain(data)
        if isinstance(fields, dict):
            events.append(Event(**{k: v for k, v in fields.items() if k in Event.__dataclass_fields__}))
    mine_start, mine = connection.client_events(sent.get("run"))
    everything = [(start + e.t, e) for e in events]
    names = sent.get("names") if isinstance(sent.get("names"), dict) else {}
    if mine_start is not None:  # this process's clients know the examiner's servers by address only
        everything += [(mine_start + e.t, dataclasses.replace(e, src=names.get(e.src, e.src),
                                                              dst=names.get(e.dst, e.dst))) for e in mine]
    origin = min([start] + ([mine_start] if mine_start is not None else []))
    everything.sort(key=lambda pair: pair[0])
    return Trace([dataclasses.replace(e, t=at - origin) for at, e in everything], start=origin)


def verdict(question: str, answer, *, time_limit: float | None = None, grader: bool = False):
    """(the :class:`Verdict`, the trace of the failing run or None). Never raises.

    The examiner calls this; ``grader`` says whether it is the grader's (its pass line
    then counts the private tests too).
    """
    try:
        return _grade(question, answer, time_limit, grader)
    except KeyboardInterrupt:
        return verdicts.not_checked(question, "not checked: interrupted."), None
    except Exception as error:  # a bug in a hidden test: say so, never raise
        log.exception("check(%r) failed", question)
        return verdicts.not_checked(question, f"could not be checked: the check itself failed with "
                                              f"{describe_error(error)}. Please report this to the course team."), None


def _grade(question_id, answer, time_limit, grader: bool) -> tuple[Verdict, object]:
    known = questions()
    if question_id not in known:
        return verdicts.not_checked(str(question_id), f"is not a question of this workbook; the questions are "
                                                      f"{', '.join(known)}. Check the first argument of labkit.check."), None
    question = known[question_id]
    if answer is None or not callable(answer):
        return verdicts.not_attempted(question.id), None
    problem = _signature_problem(question, answer)
    if problem:
        return verdicts.failed(question.id, problem,
                               f"define it as def {question.function}({', '.join(question.params)}):"), None
    limit = float(time_limit if time_limit is not None else question.time_limit or TIME_LIMIT_S)
    for test in question.tests:
        for seed in test.seeds:
            name = test.name if seed is None else f"{test.name} (seed {seed})"
            name = f"a private test, {name}" if test.private else name
            with Run(answer, seed, limit) as run:
                try:
                    test.run(run)
                except Fail as failure:
                    return verdicts.failed(question.id, f"{name}: {failure.what}", failure.hint or question.hint), run.trace
                except AnswerRaised as raised:
                    error = raised.error
                    if isinstance(error, NotImplementedError):
                        return verdicts.not_attempted(question.id), None
                    hint = next((h for kind, h in test.raise_hints.items() if wire.is_a(error, kind)), question.hint)
                    return verdicts.failed(question.id, f"{name}: your answer raised {describe_error(error)}",
                                           hint), run.trace
                except _Overrun as overrun:
                    return verdicts.failed(question.id, f"stopped after {overrun.limit:g} s: the answer did not "
                                                        f"return", question.hang_hint), run.trace
    private = sum(t.private for t in question.tests)
    return verdicts.passed(question.id, len(question.tests), question.runs, private=private, grader=grader), None


def _signature_problem(question, answer) -> str:
    try:
        signature = inspect.signature(answer)
    except (TypeError, ValueError):
        return ""
    try:
        signature.bind(*question.params)
    except TypeError:
        wanted = len(question.params)
        return (f"{question.function} must take {wanted} argument{'s' if wanted != 1 else ''} "
                f"({', '.join(question.params)}), but yours is {getattr(answer, '__name__', 'it')}{signature}")
    return ""


def show_diagram(diagram, trace) -> None:
    """Display ``diagram(trace)`` below the verdict, in a notebook; say why not if it fails."""
    try:
        figure = diagram(trace)
    except Exception as error:
        print(f"No diagram: {describe_error(error)}.")
        return
    try:
        import IPython
        from IPython.display import display
    except ImportError:
        return
    if IPython.get_ipython() is not None:  # a plain interpreter would print the figure's repr
        display(figure)
