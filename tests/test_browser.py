"""The workbook as a student sees it: JupyterLab in a real browser.

Starts JupyterLab from this environment on 127.0.0.1 and drives it with Debian's
Chromium through Playwright. For each notebook in ``PANELS``: open its student edition,
run every cell from the Run menu, then run its experiment panel, move one control, run
it again and read the changed result; no cell may show an error and no widget may fail
to display. A second test drives the tools themselves (a panel and the live diagram)
in a notebook of its own. Screenshots go to tests/artifacts/ for a person to look at.

Needs /usr/bin/chromium (``apt-get install chromium``): skipped without it, except
when the environment variable CI is set, where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/00_start_here.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in CI
    "--disable-background-networking",  # the machine has no network: no calls home
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]
# JupyterLab settings for a quiet, reproducible page: no news or update pop-ups, the
# notebook's own kernel starts without a "Select Kernel" dialog, and no autosave writes
# outputs into the repository's notebook.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "autoStartDefaultKernel": True,
        "windowingMode": "none",  # every cell in the page, so a test can find one by its source
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# What JupyterLab renders for a traceback or anything written to stderr.
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"

# A run from the Run menu is over when no prompt still says [*] (queued or running), or a
# cell failed (the run stops at the first error).
RUN_OVER = """(stderr) => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
    return document.querySelector(stderr) !== null || (prompts.length > 0 && !prompts.some(p => p.includes('*')));
}"""

pytestmark = pytest.mark.slow


def _missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where the browser must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure: .ci/run installs it)")
    pytest.skip(reason)


def _descendants(pid: int) -> list[int]:
    """Every live process whose parent chain leads to ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _http(url: str, method: str = "GET", timeout: float = 5.0):
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def _ready(info_file: Path, token: str) -> str | None:
    """The server's base URL once it has written its info file and answers, else None."""
    try:
        base = json.loads(info_file.read_text())["url"].rstrip("/") + "/"
        _http(f"{base}api/status?token={token}")
    except (OSError, ValueError, KeyError):
        return None
    return base


@contextlib.contextmanager
def jupyterlab(root: Path, home: Path, timeout: float = 120.0):
    """Run JupyterLab on 127.0.0.1 over ``root``; yield its base URL and token.

    Its runtime, config, data and settings folders live under ``home``, so nothing
    of the user's own Jupyter setup leaks in and nothing is written outside it.
    On exit every kernel is shut down, then the server, and any process it left
    behind is killed.
    """
    token = secrets.token_hex(24)
    runtime = home / "runtime"
    settings = home / "lab-settings"
    for folder in (runtime, settings, home / "config", home / "data", home / "workspaces"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",  # the OS picks a free port; we read it back below
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.allow_root=True",
        # checkpoints (written when a notebook is opened) go to the temp folder, not the repo
        f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",
    ]
    log_path = home / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=root)
    base = None
    try:
        deadline = time.monotonic() + timeout
        while base is None:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab not ready after {timeout:.0f} s:\n{log_path.read_text()}")
            base = _ready(runtime / f"jpserver-{server.pid}.json", token)
            if base is None:
                time.sleep(0.2)
        yield base, token
    finally:
        helpers = _descendants(server.pid)
        if base is not None and server.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for kernel in _http(f"{base}api/kernels?token={token}") or []:
                    _http(f"{base}api/kernels/{kernel['id']}?token={token}", method="DELETE", timeout=30)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        for pid in helpers + _descendants(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _bring_into_view(page, locator, tries: int = 10) -> None:
    """Scroll ``locator`` to the middle of the window and wait until it stays there.

    JupyterLab renders a long notebook lazily and measures cells as they appear, so
    one scroll can land short while the cells above it grow: scroll until it holds.
    """
    height = page.viewport_size["height"]
    last = None
    for _ in range(tries):
        locator.evaluate("element => element.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(300)
        box = locator.bounding_box()
        if box and last and abs(box["y"] - last["y"]) < 1 and 0.1 * height <= box["y"] <= 0.8 * height:
            return  # in the middle of the window, and it stayed there
        last = box


@dataclass(frozen=True)
class Panel:
    """The experiment panel (``labkit.experiment``) a notebook's browser test drives.

    ``title`` is the panel's title; ``control`` the label of the control to move; ``move``
    is how: arrow-right presses on a slider (an int, negative for arrow-left) or the option
    to pick in a dropdown (a str). ``column`` names the results column read after the run
    before the move and the run after it, and ``change`` says how it must change: "up",
    "down" or "differs".
    """

    title: str
    control: str
    move: int | str
    column: str
    change: str

    def __post_init__(self):
        assert self.change in ("up", "down", "differs"), self.change


#: One entry per notebook: its experiment panel in the browser (each helper line is one notebook).
PANELS: dict[str, Panel] = {
    # 00
    "00_start_here": Panel("Calls through a lossy link", "latency ms", 1, "seconds", "up"),
    # 01
    "01_client_server": Panel("N+1 requests against a batch", "latency ms", 5, "N+1 s", "up"),
    # 02
    "02_peer_to_peer": Panel("Spread news through lossy links", "drop", 5, "messages lost", "up"),
    # 03
    "03_broker": Panel("Placing jobs on stale load reports", "report every", 5, "longest_queue", "up"),
    # 04
    "04_microservices": Panel("Checkouts per second", "payment latency ms", 5, "checkouts/s", "down"),
    # 05
    "05_discovery": Panel("A fast-failing instance: sinkhole and ejection", "policy", "least outstanding", "failed %", "up"),
    # 06
    "06_authentication": Panel("Token expiry and clock skew", "skew s", 5, "first accepted s", "up"),
    # 07
    "07_error_handling": Panel("A slow dependency and a thread pool", "dependency ms", -8, "fee median ms", "down"),
    # 08
    "08_concurrency": Panel("Throughput against concurrency", "latency ms", 5, "W ms", "up"),
    # 09
    "09_comparing_styles": Panel("One style, one fault", "style", "peer-to-peer", "answered %", "up"),
}


def _reading(table, column: str) -> list[str]:
    """The ``column`` of every row of an experiment's results table, as shown."""
    heads = [head.strip() for head in table.locator("thead th").all_inner_texts()]
    assert column in heads, f"the results have no column {column!r}; they have {heads}"
    index = heads.index(column)
    return [row.locator("td").nth(index).inner_text().strip() for row in table.locator("tbody tr").all()]


def _changed(before: str, after: str, change: str) -> bool:
    if change == "differs":
        return before != after
    return float(after) > float(before) if change == "up" else float(after) < float(before)


def _run_menu(page, item: str, timeout_ms: float) -> None:
    """Choose ``item`` in the Run menu and wait until no cell is queued or running."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(rf"^{re.escape(item)}")).first.click()
    page.wait_for_function(RUN_OVER, arg=STDERR, timeout=timeout_ms)
    errors = [text for text in page.locator(STDERR).all_inner_texts() if text.strip()]
    if errors:
        pytest.fail("cells wrote errors in the browser:\n" + "\n---\n".join(errors))


def run_and_drive(base: str, token: str, notebook: str, panel: Panel, profile: Path, screenshot: Path,
                  timeout_s: float = 600.0) -> dict:
    """Run ``notebook`` top to bottom in JupyterLab, driving ``panel`` on the way.

    The notebook's last cell stops its servers, so the panel is driven while they run:
    every cell above the panel's, the panel's, then Run, move the control, Run again,
    then the panel's cell and all below. Returns the column's value before and after the
    move and whether the page said "Error displaying widget"; saves a screenshot.
    """
    from playwright.sync_api import sync_playwright

    timeout_ms = timeout_s * 1000
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.set_default_timeout(timeout_ms)
            page.goto(f"{base}lab/tree/{notebook}?token={token}")
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for()

            source = page.locator(".jp-CodeCell").filter(
                has=page.locator(".jp-InputArea", has_text="labkit.experiment(")).filter(
                has=page.locator(".jp-InputArea", has_text=panel.title))
            source.first.wait_for(state="attached", timeout=60_000)  # JupyterLab attaches long notebooks' cells late
            assert source.count() == 1, f"{source.count()} cells make a panel titled {panel.title!r}"
            _bring_into_view(page, source)
            source.locator(".jp-InputPrompt").click()
            _run_menu(page, "Run All Above Selected Cell", timeout_ms)
            _run_menu(page, "Run Selected Cell and Do not Advance", timeout_ms)

            box = page.locator(".labkit-experiment", has_text=panel.title).first
            box.wait_for(state="visible")
            _bring_into_view(page, box)
            table = box.locator(".labkit-results")
            rows = box.locator(".labkit-results tbody tr")
            run = box.locator("button", has_text=re.compile(r"^\s*Run\s*$")).first

            def run_once() -> str:
                before = rows.count()
                run.click()
                deadline = time.monotonic() + timeout_s
                while rows.count() <= before:
                    failed = box.locator("text=the run failed")
                    assert not failed.count(), failed.first.inner_text()
                    assert time.monotonic() < deadline, f"the panel {panel.title!r} did not finish a run"
                    page.wait_for_timeout(200)
                return _reading(table, panel.column)[-1]

            first = run_once()
            setting = _reading(table, panel.control.replace(" ", "_"))[-1]
            if isinstance(panel.move, str):
                box.locator(".widget-dropdown", has_text=panel.control).locator("select").select_option(panel.move)
            else:
                handle = box.locator(".widget-slider", has_text=panel.control).locator(
                    ".ui-slider-handle, [role=slider]").first
                handle.focus()
                for _ in range(abs(panel.move)):
                    page.keyboard.press("ArrowRight" if panel.move > 0 else "ArrowLeft")
            # The front end sends a control's new value when the kernel has answered its last
            # message, and the Run click can overtake it: the run's row records the value the
            # kernel used, so run until it shows the move (a person clicking at once sees the same).
            for _ in range(5):
                page.wait_for_timeout(500)
                second = run_once()
                if _reading(table, panel.control.replace(" ", "_"))[-1] != setting:
                    break
            else:
                pytest.fail(f"the kernel never saw {panel.control!r} move from {setting}")
            _bring_into_view(page, box)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))

            source.locator(".jp-InputPrompt").click()
            _run_menu(page, "Run Selected Cell and All Below", timeout_ms)
            return {"before": first, "after": second,
                    "widget_error": "Error displaying widget" in page.locator("body").inner_text()}
        except BaseException:  # pytest.fail too: keep a picture of what went wrong
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-failed.png")))
            raise
        finally:
            context.close()


@pytest.mark.parametrize("name", sorted(PANELS))
def test_a_student_drives_the_notebooks_experiment_in_a_browser(name, tmp_path):
    """JupyterLab runs the student edition top to bottom; moving a control changes the panel's result."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: install Debian's or Ubuntu's browser with `apt-get install chromium`")
    if importlib.util.find_spec("playwright") is None:
        _missing("playwright is not installed: pip install -r requirements-test.txt")
    notebook, panel = f"notebooks/{name}.ipynb", PANELS[name]
    before = (ROOT / notebook).read_bytes()
    with jupyterlab(ROOT, tmp_path / "jupyter") as (base, token):
        seen = run_and_drive(base, token, notebook, panel, tmp_path / "chromium-profile",
                             ARTIFACTS / f"browser-{name}.png")
    assert (ROOT / notebook).read_bytes() == before, f"the browser session changed {notebook}"
    assert not seen["widget_error"], "the page says 'Error displaying widget': the widget front end failed"
    assert _changed(seen["before"], seen["after"], panel.change), (
        f"moving {panel.control!r} by {panel.move!r} should make {panel.column!r} go {panel.change}: "
        f"{seen['before']} -> {seen['after']}")


# -- the hands-on tools: an experiment panel and the live diagram, in the browser ----------------

TOOLS_NOTEBOOK = [
    """import threading, time
import labkit
from labkit.apps import create

hello = labkit.serve(create("hello"), name="hello")
link = labkit.Link(hello, seed=1)
alice = labkit.Client("alice", timeout=2)
labkit.trace.clear()""",
    """def calls(latency_ms, n):
    link.latency_ms = latency_ms
    start = time.perf_counter()
    for _ in range(n):
        alice.get(link.url + "/hello")
    return {"seconds": round(time.perf_counter() - start, 2)}

panel = labkit.experiment(calls, {"latency_ms": (0, 100, 50, 0), "n": [2, 4]}, title="calls")
panel""",
    """live = labkit.live_sequence(labkit.trace, title="alice and hello", interval=0.1, window_s=2)
live""",
    """traffic = threading.Event()

def talk():
    while not traffic.wait(0.1):
        alice.get(hello.url + "/hello?name=ada")

threading.Thread(target=talk, daemon=True).start()""",
    """import pathlib
from flask import Flask

clearing = Flask("clearing")

@clearing.get("/clear")
def clear():
    labkit.trace.clear()  # the live diagram starts again, from the time of the clear
    return "cleared"

clearer = labkit.serve(clearing, name="clearer")
pathlib.Path("clear-url").write_text(clearer.url)""",
]


def test_the_tools_work_in_jupyterlab_in_a_browser(tmp_path):
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: install Debian's or Ubuntu's browser with `apt-get install chromium`")
    import nbformat
    from playwright.sync_api import sync_playwright

    root = tmp_path / "book"
    root.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in TOOLS_NOTEBOOK],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), root / "tools.ipynb")
    screenshot = ARTIFACTS / "browser-tools.png"
    with jupyterlab(root, tmp_path / "jupyter") as (base, token), sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1400})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{base}lab/tree/tools.ipynb?token={token}")
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for()
            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            # The live diagram: traffic shows within a second, a hover names the message, a lane can be hidden.
            diagram = page.locator(".labkit-live")
            diagram.wait_for()
            exchanges = page.locator(".labkit-live-exchange")
            exchanges.first.wait_for(timeout=15_000)
            started = time.monotonic()
            before = exchanges.count()
            page.wait_for_function(f"document.querySelectorAll('.labkit-live-exchange').length > {before}",
                                   timeout=3_000)
            assert time.monotonic() - started < 1.5, "new traffic took more than a second to show"
            _bring_into_view(page, diagram)
            exchanges.last.locator(".labkit-live-arrow").first.hover(force=True)
            tip = page.locator(".labkit-live-tip")
            tip.wait_for(state="visible")
            assert "GET /hello" in tip.inner_text() and "status   200" in tip.inner_text(), tip.inner_text()
            page.locator(".labkit-live-filter[data-lane='hello']").uncheck()
            page.wait_for_function("""() => [...document.querySelectorAll('.labkit-live-exchange')]
                .filter(g => g.dataset.service === 'hello').every(g => g.style.display === 'none')""")
            page.locator(".labkit-live-filter[data-lane='hello']").check()

            # After the trace is cleared, new traffic is drawn where it can be seen, not scrolled away.
            clear_url = root / "clear-url"
            deadline = time.monotonic() + 30
            while not clear_url.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(4)  # the diagram has scrolled well past its 2 s window by now
            held = "Number(document.querySelector('[data-exchanges]').dataset.exchanges)"
            before = page.evaluate(held)
            assert before > 20, before
            with urllib.request.urlopen(clear_url.read_text() + "/clear", timeout=5) as cleared:
                assert cleared.read() == b"cleared"
            page.wait_for_function(f"{held} < {before // 2}", timeout=3_000)  # the diagram started again
            page.wait_for_function("""() => {
                const box = document.querySelector('.labkit-live-svg').getBoundingClientRect();
                return [...document.querySelectorAll('.labkit-live-exchange')].some(g => {
                    if (g.dataset.service !== 'hello') return false;
                    const r = g.getBoundingClientRect();
                    return r.height > 0 && r.top >= box.top && r.bottom <= box.bottom;
                });
            }""", timeout=1_500)

            # The experiment panel: move a control, press Run, the result changes in place.
            table = page.locator(".labkit-results")
            run = page.locator("button", has_text=re.compile(r"^\s*Run\s*$")).first
            _bring_into_view(page, run)
            run.click()
            table.wait_for()
            page.wait_for_function("document.querySelectorAll('.labkit-results tbody tr').length === 1")
            slider = page.locator(".widget-slider .ui-slider-handle, .widget-slider [role=slider]").first
            slider.focus()
            page.keyboard.press("ArrowRight")  # latency 0 -> 50 ms
            run.click()
            page.wait_for_function("document.querySelectorAll('.labkit-results tbody tr').length === 2")
            rows = [row.inner_text() for row in page.locator(".labkit-results tbody tr").all()]
            first, second = (row.split() for row in rows)
            assert first[0] == "0" and second[0] == "50", rows
            assert float(second[-1]) > float(first[-1]) + 0.15, rows  # two calls, 100 ms more each
            errors = [text for text in page.locator(STDERR).all_inner_texts() if text.strip()]
            assert not errors, errors
            assert "Error displaying widget" not in page.locator("body").inner_text()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        except BaseException:
            with contextlib.suppress(Exception):
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-tools-failed.png"))
            raise
        finally:
            context.close()
