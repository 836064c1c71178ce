"""The course in a real browser: JupyterLab, headless Chromium, a learner's clicks and keys.

Starts JupyterLab on a free loopback port (root_dir the repository, a random token, the
simulator backend) and drives Debian's Chromium with Playwright:
- lesson 10: runs all cells, answers one quiz question by clicking (an option, then Check) and
  checks that the widgets rendered and the feedback appeared;
- lab 04: runs all cells, types a wrong decode step into exercise 1 and runs its check (the hint),
  then types a right one (the pass line).
Screenshots are saved under build/browser/ (CI keeps that folder) and their paths printed.

Skipped when Chromium (/usr/bin/chromium, or $GRAPHLAB_CHROMIUM) or the Python package
`playwright` is missing. Playwright drives the system's Chromium: `playwright install` is
never needed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/10_interview_drills.ipynb"
OUT_DIR = REPO / "build" / "browser"
SCREENSHOT = OUT_DIR / "10_interview_drills.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
BROKEN_WIDGET_TEXTS = ["Error displaying widget", "Loading widget...", "A Jupyter widget could not be displayed",
                       "widget state could not be found", "Failed to load model class", "model not found"]
QUESTION = "q03_random_branch"


def _chromium() -> str | None:
    candidate = os.environ.get("GRAPHLAB_CHROMIUM") or "/usr/bin/chromium"
    if os.path.exists(candidate):
        return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path) -> None:
    """JupyterLab user settings for a test: every cell in the DOM, no news or update checks, and no
    autosave (the notebook run in the browser must never be written back to the repository)."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture
def jupyterlab(tmp_path):
    if _chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium): browser test skipped")
    pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed: browser test skipped")
    port, token = _free_port(), secrets.token_hex(16)
    _write_settings(tmp_path / "settings")
    env = dict(os.environ, GRAPHLAB_BACKEND="sim", JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={REPO}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    log = open(OUT_DIR / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start: " + (OUT_DIR / "jupyterlab.log").read_text()[-2000:])
            time.sleep(0.5)
        yield base, token, tmp_path
    finally:
        server.terminate()  # the server shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the group of the server this test started
            server.wait(timeout=10)
        log.close()


def _open(page, base: str, token: str, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab and wait until its kernel is idle."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.status === 'idle'; }", timeout=60_000)


def _run(page, command: str, cell: int | None = None, timeout_ms: int = 120_000) -> None:
    """Run a notebook command (on code cell ``cell`` of the open notebook, if given) and wait for it."""
    page.evaluate(
        "([command, cell]) => { window.__graphlabRun = undefined;"
        " if (cell !== null) { window.jupyterapp.shell.currentWidget.content.activeCellIndex = cell; }"
        " window.jupyterapp.commands.execute(command).then("
        " ok => { window.__graphlabRun = ok; }, err => { window.__graphlabRun = 'error: ' + err; }); }",
        [command, cell])
    page.wait_for_function("() => window.__graphlabRun !== undefined", timeout=timeout_ms)
    ran = page.evaluate("() => window.__graphlabRun")
    assert ran is True, f"{command} did not succeed: {ran}"


def _type_into(page, cell: int, source: str) -> None:
    """Replace the text of cell ``cell`` as a learner does: click into it, select all, type."""
    editor = page.locator(".jp-Notebook .jp-Cell").nth(cell).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(source)


def _browser(p, tmp: Path):
    return p.chromium.launch_persistent_context(
        user_data_dir=str(tmp / "chromium-profile"), executable_path=_chromium(), headless=True,
        args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000})


def _restore(notebook: str, stored: bytes) -> None:
    """Never leave the browser's run in the repository."""
    if (REPO / notebook).read_bytes() != stored:
        (REPO / notebook).write_bytes(stored)
        pytest.fail(f"{notebook} was written by JupyterLab during the test (restored)")


def test_quiz_widgets_render_and_answer_in_jupyterlab(jupyterlab, capsys):
    from playwright.sync_api import sync_playwright

    base, token, tmp = jupyterlab
    stored = (REPO / NOTEBOOK).read_bytes()
    started = time.monotonic()
    phases = {}
    with sync_playwright() as p:
        context = _browser(p, tmp)
        try:
            page = context.new_page()
            _open(page, base, token, NOTEBOOK)
            phases["JupyterLab loaded"] = time.monotonic() - started
            _run(page, "notebook:run-all-cells")
            phases["all cells run"] = time.monotonic() - started

            quizzes = page.locator(".graphlab-quiz")
            from graphlab_utils.drills import bank

            assert quizzes.count() == len(bank.bank()), "every question's widget is drawn"
            body = page.locator("body").inner_text()
            for text in BROKEN_WIDGET_TEXTS:
                assert text not in body, f"the page shows {text!r}"

            box = quizzes.filter(has_text=QUESTION)
            box.scroll_into_view_if_needed()
            box.locator("label", has_text="B) No: every replay runs the branch").click()
            box.get_by_role("button", name="Check").click()
            verdict = box.locator(".graphlab-quiz-verdict")
            verdict.wait_for(timeout=20_000)
            assert verdict.inner_text().strip() == "correct (B)."
            box.get_by_role("button", name="Reveal").click()
            box.locator(".graphlab-quiz-model-answer").wait_for(timeout=20_000)
            assert "Model answer." in box.inner_text()

            box.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT))
            box.screenshot(path=str(OUT_DIR / "10_interview_drills_widget.png"))
            long_options = quizzes.filter(has_text="q02_item_in_capture")  # options that wrap
            long_options.scroll_into_view_if_needed()
            long_options.screenshot(path=str(OUT_DIR / "10_interview_drills_long_options.png"))
        finally:
            context.close()
            _restore(NOTEBOOK, stored)
    phases["clicked and saved"] = time.monotonic() - started
    with capsys.disabled():
        print(f"\nbrowser test: screenshot saved to {SCREENSHOT.relative_to(REPO)} ("
              + ", ".join(f"{k} at {v:.0f} s" for k, v in phases.items()) + ")")


LAB = "labs/04_pointer_baking.ipynb"
# Exercise 1 of lab 04 as a learner may first write it: attention over the whole cache, unmasked.
UNMASKED_STEP = """def decode_step(x, pos, k_cache, v_cache, W):
    q, k, v = x @ W["q"], x @ W["k"], x @ W["v"]
    k_cache.index_copy_(0, pos, k)
    v_cache.index_copy_(0, pos, v)
    scores = (q @ k_cache.T) / math.sqrt(D)
    return (scores.softmax(-1) @ v_cache) @ W["o"]
"""
MASKED_STEP = UNMASKED_STEP.replace(
    "    return (scores",
    "    visible = torch.arange(k_cache.shape[0], device=x.device) <= pos\n"
    "    scores = scores.masked_fill(~visible, float(\"-inf\"))\n"
    "    return (scores")


def test_a_lab_exercise_answered_wrong_then_right_in_jupyterlab(jupyterlab, capsys):
    from playwright.sync_api import sync_playwright

    base, token, tmp = jupyterlab
    stored = (REPO / LAB).read_bytes()
    cells = json.loads(stored)["cells"]
    exercise = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("def decode_step("))
    check = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("result_1 = check_decode_step("))
    shots = [OUT_DIR / "lab04_exercise1_hint.png", OUT_DIR / "lab04_exercise1_pass.png"]
    with sync_playwright() as p:
        context = _browser(p, tmp)
        try:
            page = context.new_page()
            _open(page, base, token, LAB)
            _run(page, "notebook:run-all-cells")  # the unsolved lab runs through, one hint per exercise
            output = page.locator(".jp-Notebook .jp-Cell").nth(check).locator(".jp-OutputArea")
            assert "the exercise stub still raises NotImplementedError" in output.inner_text()
            for source, shot, expected in ((UNMASKED_STEP, shots[0], "not yet."),
                                           (MASKED_STEP, shots[1], "check passed")):
                _type_into(page, exercise, source)
                _run(page, "notebook:run-cell", exercise)
                _run(page, "notebook:run-cell", check)
                output.get_by_text(expected).wait_for(timeout=30_000)
                output.scroll_into_view_if_needed()
                page.screenshot(path=str(shot))
                text = output.inner_text()
                if source is UNMASKED_STEP:
                    assert "[HINT] decode step over a static cache: not yet." in text
                    assert "attends over all 32 rows of the cache" in text and "masked_fill" in text
                else:
                    assert text.strip() == "[PASS] decode step over a static cache: check passed"
        finally:
            context.close()
            _restore(LAB, stored)
    with capsys.disabled():
        print("\nbrowser test: lab 04 answered wrong, then right; screenshots "
              + ", ".join(str(s.relative_to(REPO)) for s in shots))
