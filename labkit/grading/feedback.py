"""Feedback for students: per submission a Markdown and an HTML file with each question's
verdict, hint and points. It is made from the records alone, which hold the verdict lines
and nothing of the hidden tests' code.
"""

from __future__ import annotations

import html
import re
from pathlib import Path, PurePath

from .results import Record, _number

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#222}"
          "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4rem .6rem;"
          "text-align:left;vertical-align:top}.passed{color:#1a7f37}.failed{color:#b3261e}.hint{color:#555}")


def by_submission(records) -> dict[str, list[Record]]:
    found: dict[str, list[Record]] = {}
    for r in records:
        found.setdefault(r.submission, []).append(r)
    return found


def _verdict_and_hint(message: str) -> tuple[str, str]:
    verdict, _, hint = str(message).partition(" Hint: ")
    return verdict, hint


def markdown(records: list[Record]) -> str:
    first = records[0]
    score, most = sum(r.points for r in records), sum(r.max_points for r in records)
    lines = [f"# {first.notebook or 'Not graded'}: {_number(score)} of {_number(most)} points", "",
             f"Submission: `{PurePath(first.submission).name}`", ""]
    for r in records:
        verdict, hint = _verdict_and_hint(r.message)
        if r.question is None:
            lines += [verdict, ""]
            continue
        lines += [f"## {r.question}: {_number(r.points)} of {_number(r.max_points)}", "", verdict, ""]
        if hint:
            lines += [f"*Hint:* {hint}", ""]
    return "\n".join(lines)


def page(records: list[Record]) -> str:
    first = records[0]
    score, most = sum(r.points for r in records), sum(r.max_points for r in records)
    title = f"{first.notebook or 'Not graded'}: {_number(score)} of {_number(most)} points"
    rows = []
    for r in records:
        verdict, hint = _verdict_and_hint(r.message)
        kind = "passed" if r.passed else "failed"
        points = f"{_number(r.points)} of {_number(r.max_points)}" if r.question else ""
        rows.append(f"<tr><td>{html.escape(r.question or '')}</td><td class={kind}>{points}</td>"
                    f"<td>{html.escape(verdict)}" + (f"<p class=hint>Hint: {html.escape(hint)}</p>" if hint else "")
                    + "</td></tr>")
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>"
            f"<p>Submission: <code>{html.escape(PurePath(first.submission).name)}</code></p>"
            "<table><tr><th>Question</th><th>Points</th><th>Verdict</th></tr>" + "".join(rows) + "</table></html>\n")


def write(records, folder: Path) -> list[Path]:
    """FOLDER/NAME.md and FOLDER/NAME.html for every submission; the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for submission, mine in by_submission(records).items():
        name = _file_name(submission, used)
        for suffix, text in ((".md", markdown(mine)), (".html", page(mine))):
            path = folder / (name + suffix)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def _file_name(submission: str, used: set) -> str:
    """The submission's stem (with its folder when two share a name), safe as a file name."""
    path = PurePath(submission)
    safe = lambda text: re.sub(r"[^\w.-]+", "_", text) or "submission"
    name = safe(path.stem)
    if name in used:
        name = safe(f"{path.parent.name}-{path.stem}")
    base, n = name, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name
