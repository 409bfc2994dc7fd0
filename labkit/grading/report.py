"""Statistics for instructors: over a class's records, per question the pass rate, the
most common failures with counts and the slowest answers, and the distribution of scores
as a picture; an HTML page and the same data as JSON.

Failures are counted by the test that failed (the words before its first colon), so
"q1.1 failed: a service that is down: it returned {...}" and the same test failing with
other values count as one kind; each kind keeps one message as its example.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import re
from pathlib import Path, PurePath

from .feedback import by_submission
from .results import _number, questions_of, write_json

#: How many failure kinds and slowest answers the report lists per question.
TOP = 5


def failure_kind(message: str) -> str:
    """What a failure is counted as: the failed test, or the reason it was not graded."""
    text = str(message).partition(" Hint: ")[0]
    match = re.match(r"(q[\w.]+ failed: [^:]*)", text)
    kind = match[1] if match else text
    return re.sub(r"\d+(\.\d+)?", "N", kind)  # time limits and counts do not make kinds of their own


def statistics(records) -> dict:
    submissions = by_submission(records)
    totals = [sum(r.points for r in rs) for rs in submissions.values()]
    most = max((sum(r.max_points for r in rs) for rs in submissions.values()), default=0.0)
    questions = {}
    for q in questions_of(records):
        mine = [r for r in records if r.question == q]
        failures = collections.Counter(failure_kind(r.message) for r in mine if not r.passed)
        example = {}
        for r in mine:
            if not r.passed:
                example.setdefault(failure_kind(r.message), r.message)
        timed = sorted((r for r in mine if r.seconds is not None), key=lambda r: -r.seconds)
        questions[q] = {
            "submissions": len(mine),
            "passed": sum(r.passed for r in mine),
            "pass_rate": sum(r.passed for r in mine) / len(mine),
            "statuses": dict(collections.Counter(r.status for r in mine)),
            "failures": [{"kind": k, "count": n, "example": example[k]} for k, n in failures.most_common(TOP)],
            "slowest": [{"submission": r.submission, "seconds": round(r.seconds, 2)} for r in timed[:TOP]],
        }
    return {"submissions": len(submissions), "max_points": most, "totals": totals,
            "mean": sum(totals) / len(totals) if totals else 0.0, "questions": questions}


def histogram_png(totals, most: float) -> bytes:
    """The scores' distribution, one bar per possible score, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(6, 2.6), dpi=100)
    axes = figure.subplots()
    counts = collections.Counter(totals)
    scores = sorted(set(counts) | {float(p) for p in range(int(most) + 1)})
    axes.bar([_number(float(s)) for s in scores], [counts.get(s, 0) for s in scores], color="#4c72b0")
    axes.set_xlabel("points")
    axes.set_ylabel("submissions")
    axes.set_title(f"scores of {len(totals)} submissions (out of {_number(float(most))})")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def page(stats: dict) -> str:
    picture = base64.b64encode(histogram_png(stats["totals"], stats["max_points"])).decode()
    parts = [f"<h1>{stats['submissions']} submissions: mean {stats['mean']:.2f} of "
             f"{_number(float(stats['max_points']))} points</h1>",
             f'<img alt="the distribution of scores" src="data:image/png;base64,{picture}">',
             "<table><tr><th>Question</th><th>Passed</th><th>Most common failures</th><th>Slowest answers</th></tr>"]
    for q, s in stats["questions"].items():
        failures = "".join(f"<li>{n}× {html.escape(k)}<br><small>{html.escape(e)}</small></li>"
                           for k, n, e in ((f["kind"], f["count"], f["example"]) for f in s["failures"]))
        slowest = "".join(f"<li>{html.escape(PurePath(x['submission']).name)}: {x['seconds']:.1f} s</li>"
                          for x in s["slowest"])
        parts.append(f"<tr><td>{html.escape(q)}</td><td>{s['passed']} of {s['submissions']} "
                     f"({100 * s['pass_rate']:.0f}%)</td><td><ul>{failures}</ul></td><td><ul>{slowest}</ul></td></tr>")
    parts.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.4rem .6rem;text-align:left;vertical-align:top}"
             "ul{margin:0;padding-left:1.2rem}small{color:#555}")
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>grading report</title><style>{style}</style>"
            + "".join(parts) + "</html>\n")


def write(records, out: Path) -> tuple[Path, Path]:
    """OUT.html and OUT.json."""
    out = Path(out)
    if out.suffix in (".html", ".json"):
        out = out.with_suffix("")
    stats = statistics(records)
    json_path = write_json(out.with_name(out.name + ".json"), stats)
    html_path = out.with_name(out.name + ".html")
    html_path.write_text(page(stats), encoding="utf-8")
    return html_path, json_path
