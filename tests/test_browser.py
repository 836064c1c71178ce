"""Lesson 10 in a real browser: JupyterLab, headless Chromium, the quiz widgets clicked.

Starts JupyterLab on a free loopback port (root_dir the repository, a random token, the
simulator backend), opens notebooks/10_interview_drills.ipynb in Debian's Chromium driven by
Playwright, runs all cells, answers one question by clicking (an option, then Check) and
checks that the widgets rendered and the feedback appeared. A screenshot is saved under
build/browser/ and its path printed.

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


def test_quiz_widgets_render_and_answer_in_jupyterlab(jupyterlab, capsys):
    from playwright.sync_api import sync_playwright

    base, token, tmp = jupyterlab
    stored = (REPO / NOTEBOOK).read_bytes()
    started = time.monotonic()
    phases = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp / "chromium-profile"), executable_path=_chromium(), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}&reset", wait_until="domcontentloaded")
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return !!k && k.status === 'idle'; }", timeout=60_000)
            phases["JupyterLab loaded"] = time.monotonic() - started
            page.evaluate(
                "() => { window.__graphlabRunAll = undefined;"
                " window.jupyterapp.commands.execute('notebook:run-all-cells').then("
                " ok => { window.__graphlabRunAll = ok; }, err => { window.__graphlabRunAll = 'error: ' + err; }); }")
            page.wait_for_function("() => window.__graphlabRunAll !== undefined", timeout=120_000)
            ran = page.evaluate("() => window.__graphlabRunAll")
            assert ran is True, f"running all cells did not succeed: {ran}"
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
            if (REPO / NOTEBOOK).read_bytes() != stored:  # never leave the browser's run in the repository
                (REPO / NOTEBOOK).write_bytes(stored)
                pytest.fail(f"{NOTEBOOK} was written by JupyterLab during the test (restored)")
    phases["clicked and saved"] = time.monotonic() - started
    with capsys.disabled():
        print(f"\nbrowser test: screenshot saved to {SCREENSHOT.relative_to(REPO)} ("
              + ", ".join(f"{k} at {v:.0f} s" for k, v in phases.items()) + ")")
