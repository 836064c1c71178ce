"""The graphlab command: dispatch, and errors as one sentence without a traceback."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from graphlab_utils import cli
from graphlab_utils.errors import GraphlabError


def fake_calibrate(monkeypatch, main):
    module = types.ModuleType("graphlab_utils.authoring.calibrate")
    module.main = main
    monkeypatch.setitem(sys.modules, "graphlab_utils.authoring.calibrate", module)


def test_calibrate_gets_the_remaining_arguments(monkeypatch):
    seen = []
    fake_calibrate(monkeypatch, lambda argv: seen.append(argv) or 0)
    assert cli.main(["calibrate", "--out", "x.json", "--help"]) == 0
    assert seen == [["--out", "x.json", "--help"]]


def test_package_error_is_one_sentence_with_exit_2(monkeypatch, capsys):
    def fail(argv):
        raise GraphlabError("the calibration file is malformed:\n  field 'x' is missing")

    fake_calibrate(monkeypatch, fail)
    assert cli.main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert err == "graphlab calibrate: the calibration file is malformed: field 'x' is missing.\n"


def test_unexpected_error_is_one_sentence_with_exit_1(monkeypatch, capsys):
    def crash(argv):
        raise KeyError("boom")

    fake_calibrate(monkeypatch, crash)
    assert cli.main(["calibrate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("graphlab calibrate: unexpected KeyError: 'boom'")


def test_debug_shows_the_traceback(monkeypatch):
    fake_calibrate(monkeypatch, lambda argv: 1 / 0)
    monkeypatch.setenv("GRAPHLAB_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["calibrate"])


def test_missing_sub_command_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphlab_utils.authoring.calibrate", None)
    assert cli.main(["calibrate"]) == 2
    assert "not available in this version of graphlab_utils" in capsys.readouterr().err


def test_help_and_usage(capsys):
    assert cli.main(["--help"]) == 0
    assert "build-labs" in capsys.readouterr().out
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "graphlab_utils", "build-labs", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: graphlab build-labs" in result.stdout


def test_build_lesson10_check_passes_on_the_repository(capsys):
    """`make test` runs it: lesson 10's generated notebook and solution match their sources."""
    assert cli.main(["build-lesson10", "--check"]) == 0
    out = capsys.readouterr().out
    assert "notebooks/10_interview_drills.ipynb is up to date" in out
    assert "solutions/10_interview_drills.ipynb is up to date" in out
