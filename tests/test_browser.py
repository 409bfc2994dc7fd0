"""The workbook as a student sees it: JupyterLab in a real browser.

Starts JupyterLab from this environment on 127.0.0.1, opens
notebooks/00_start_here.ipynb in Debian's Chromium driven by Playwright, runs every
cell from the Run menu, and checks that the control panel's slider renders (the
widget front end and the kernel agree) and that no cell shows an error. A
screenshot goes to tests/artifacts/browser-00_start_here.png for a person to look at.

Needs /usr/bin/chromium (``apt-get install chromium``): skipped without it, except
when the environment variable CI is set, where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
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
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# What JupyterLab renders for a traceback or anything written to stderr.
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"

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


def run_all_and_screenshot(base: str, token: str, notebook: str, profile: Path, screenshot: Path,
                           timeout_s: float = 300.0) -> dict:
    """Open ``notebook`` in JupyterLab, run every cell from the Run menu, wait for a slider.

    Returns what the page showed: the text of every error output and whether the
    page said "Error displaying widget". Saves a full-window screenshot.
    """
    from playwright.sync_api import sync_playwright

    timeout_ms = timeout_s * 1000
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(timeout_ms)
            page.goto(f"{base}lab/tree/{notebook}?token={token}")
            # The notebook is open and its kernel is ready when the status bar says Idle.
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for()

            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            # Run All is over when no prompt still says [*] and either the last code cell
            # has a number or a cell failed (Run All stops at the first error).
            page.wait_for_function(
                """(stderr) => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                        .map(p => p.textContent.trim());
                    if (prompts.length === 0 || prompts.some(p => p.includes('*'))) return false;
                    return /\\[\\d+\\]/.test(prompts[prompts.length - 1])
                        || document.querySelector(stderr) !== null;
                }""",
                arg=STDERR,
                timeout=timeout_ms,
            )
            errors = [text for text in page.locator(STDERR).all_inner_texts() if text.strip()]
            if errors:
                pytest.fail("cells wrote errors in the browser:\n" + "\n---\n".join(errors))
            slider = page.locator(".jupyter-widgets .widget-slider, .jupyter-widgets.widget-slider").first
            slider.wait_for(state="visible")
            _bring_into_view(page, slider)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            body = page.locator("body").inner_text()
            return {
                "widget_error": "Error displaying widget" in body,
                "sliders": page.locator(".widget-slider").count(),
            }
        except BaseException:  # pytest.fail too: keep a picture of what went wrong
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-failed.png")))
            raise
        finally:
            context.close()


def test_start_here_runs_in_jupyterlab_in_a_browser(tmp_path):
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: install Debian's or Ubuntu's browser with `apt-get install chromium`")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _missing("playwright is not installed: pip install -r requirements-test.txt")
    assert (ROOT / NOTEBOOK).exists(), f"{NOTEBOOK} is missing from the repository"

    before = (ROOT / NOTEBOOK).read_bytes()
    with jupyterlab(ROOT, tmp_path / "jupyter") as (base, token):
        seen = run_all_and_screenshot(base, token, NOTEBOOK, tmp_path / "chromium-profile",
                                      ARTIFACTS / "browser-00_start_here.png")

    assert (ROOT / NOTEBOOK).read_bytes() == before, f"the browser session changed {NOTEBOOK}"

    assert not seen["widget_error"], "the page says 'Error displaying widget': the widget front end failed"
    assert seen["sliders"] >= 1, "no slider rendered"


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
