"""`graphlab drill`: scripted sessions with injected input, output and clock."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphlab_utils import cli
from graphlab_utils.drills import bank, terminal

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """Returns the given times in turn, then keeps returning the last one."""

    def __init__(self, *times):
        self.times, self.calls = list(times), 0

    def __call__(self):
        self.calls += 1
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def run(argv, answers="", clock=None):
    out = io.StringIO()
    code = terminal.main(argv, stdin=io.StringIO(answers), stdout=out, clock=clock or FakeClock(0.0))
    return code, out.getvalue()


FREE_PARTIAL = "The data moved to new addresses and the graph kept the old pointers.\n\n"


def test_a_scripted_session_scores_each_kind_of_answer():
    ids = ["q03_random_branch", "q04_defrag", "q06_content_changed", "q01_warmup", "q02_unjoined_fork"]
    answers = "B\n" + FREE_PARTIAL + "A\n\n" + "\n" + "b\n"  # A is wrong; the empty retry reveals
    code, out = run(sum((["--id", i] for i in ids), []), answers)
    assert code == 0
    assert out.count("--- question ") == 5
    assert "-> correct (B)." in out
    assert "-> partial answer: it makes 2 of 3 key points." in out
    assert "-> not quite: A is not the answer." in out
    assert "skipped." in out
    # every question is followed by its model answer and why
    assert out.count("model answer: ") == 5 and out.count("\nwhy: ") == 5
    assert out.rstrip().endswith(
        "score: 2.5 / 5  (correct 2, partial 1, wrong 1, skipped 1, late 0)\n"
        "to review: q04_defrag (partial), q06_content_changed (wrong), q01_warmup (skipped)")


def test_a_wrong_letter_gets_one_more_try_before_the_reveal():
    code, out = run(["--id", "q03_random_branch"], "A\nB\n")
    assert code == 0
    first, _, rest = out.partition("-> not quite: A is not the answer.")
    assert "model answer: " not in first and "(one more try:" in rest
    assert rest.index("your answer> B\n-> correct on the second try (B): half a point.") < rest.index("model answer: ")
    assert out.rstrip().endswith("score: 0.5 / 1  (correct 0, partial 1, wrong 0, skipped 0, late 0)\n"
                                 "to review: q03_random_branch (partial)")
    _, out = run(["--id", "q03_random_branch"], "A\nC\n")
    assert "-> not this one either: C is not the answer." in out and out.count("model answer: ") == 1
    assert "score: 0 / 1  (correct 0, partial 0, wrong 1," in out


def test_a_reply_that_is_not_a_letter_is_asked_again_and_not_counted():
    code, out = run(["--id", "q03_random_branch"], "Z\nB\n")
    assert code == 0
    assert "your answer> Z\n-> 'Z' is not one of the options A-D: answer with a letter.\nyour answer> B\n" in out
    assert "-> correct (B)." in out and "not quite" not in out
    assert "score: 1 / 1  (correct 1, partial 0, wrong 0, skipped 0, late 0)" in out
    # a typo during the second try is asked again too
    _, out = run(["--id", "q03_random_branch"], "A\nZ\nB\n")
    assert "correct on the second try (B)" in out


def test_list_into_a_pipe_that_is_already_closed_is_quiet():
    """`graphlab drill --list | head`: the reader leaves early; no BrokenPipeError is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "graphlab_utils", "drill", "--list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_scripted_answers_are_echoed_after_the_prompt():
    _, out = run(["--id", "q03_random_branch"], "B\n")
    assert "your answer> B\n-> correct (B)." in out


def test_a_free_answer_spans_lines_until_an_empty_line():
    _, out = run(["--id", "q04_defrag"], "The pool moved the cache to new addresses;\n"
                                          "the graph holds the old pointers,\nso re-capture it.\n\n")
    assert "-> good answer: it makes all 3 key points." in out
    assert "score: 1 / 1" in out


def test_timed_answers_after_the_limit_are_late_and_earn_nothing():
    clock = FakeClock(0.0, 30.0, 100.0, 250.0)  # asked at 0 and 100, answered at 30 and 250
    code, out = run(["--id", "q06_content_changed", "--id", "q04_rebind", "--timed", "90"], "B\nB\n", clock)
    assert code == 0
    assert "timed: 90 s per question; an answer after the limit counts as late (no points)" in out
    assert "answered in 30 s (limit 90 s)." in out
    assert "late: answered after 150 s, past the 90 s limit: no points." in out
    assert "score: 1 / 2  (correct 1, partial 0, wrong 0, skipped 0, late 1)" in out
    assert "late answers came after the 90 s limit and earn no points" in out
    assert clock.calls == 4  # the clock is read when a question is asked and when it is answered


def test_the_seed_fixes_the_order_and_the_module_filters():
    def asked(argv):
        _, out = run(argv, "\n" * 10)
        return [line.split()[-1] for line in out.splitlines() if line.startswith("[")]

    first = asked(["--seed", "5", "-n", "4"])
    assert len(first) == 4 and first == asked(["--seed", "5", "-n", "4"])
    assert first != asked(["--seed", "6", "-n", "4"])
    by_module = asked(["--module", "04", "--all", "--seed", "1"])
    assert sorted(by_module) == sorted(bank.ids(module="04"))
    _, out = run(["--seed", "5", "-n", "2"], "\n\n")
    assert "(seed 5: --seed 5 repeats this drill)" in out


def test_without_a_seed_the_drill_names_the_one_it_drew():
    _, out = run(["-n", "1"], "\n")
    assert "repeats this drill)" in out.splitlines()[0]


def test_end_of_input_ends_the_drill_with_the_score_so_far():
    _, out = run(["--id", "q03_random_branch", "--id", "q04_rebind"], "B\n")
    assert "(end of input: the drill ends here)" in out
    assert out.rstrip().endswith("score: 1 / 1  (correct 1, partial 0, wrong 0, skipped 0, late 0)")
    _, out = run(["--id", "q03_random_branch"], "")
    assert out.rstrip().endswith("no question answered: score 0 / 0")


def test_list_and_errors():
    code, out = run(["--list"])
    assert code == 0 and all(q.id in out for q in bank.bank())
    with pytest.raises(bank.DrillError, match="positive number of seconds"):
        run(["--timed", "0"])
    with pytest.raises(bank.DrillError, match="no question to ask"):
        run(["--count", "0"])


def test_the_graphlab_command_dispatches_and_reports_errors_in_one_sentence(capsys):
    assert cli.main(["drill", "--list"]) == 0
    assert "q04_defrag" in capsys.readouterr().out
    assert cli.main(["drill", "--module", "99"]) == 2
    err = capsys.readouterr().err
    from graphlab_utils.drills import bank

    assert err == f"graphlab drill: module '99' has no questions: use one of {', '.join(sorted(bank.MODULES))}.\n"


def test_prove_runs_each_proof_after_its_answer():
    from graphlab_utils import simulator

    try:
        code, out = run(["--id", "q06_content_changed", "--prove"], "B\n")
    finally:
        if simulator.is_installed():
            simulator.uninstall()
    assert code == 0
    assert "proofs run on the " in out
    assert "running the proof...\nproof: new content at the same address needs no update" in out
    assert "verdict: the proof holds" in out


def test_in_a_terminal_the_drill_says_when_the_time_is_up():
    """With a terminal on stdin the reader waits with select(); here the answer is typed
    already and the scripted clock is past the limit, so it says so before reading."""
    pytest.importorskip("pty")
    import pty

    master, slave = pty.openpty()
    try:
        os.write(master, b"B\n")
        with os.fdopen(slave, "r", closefd=False) as tty_in:
            out = io.StringIO()
            terminal.main(["--id", "q06_content_changed", "--timed", "60"], stdin=tty_in, stdout=out,
                       clock=FakeClock(0.0, 75.0))
        text = out.getvalue()
        assert "(time is up: finish your answer anyway; it will count as late)" in text
        assert "late: answered after 75 s, past the 60 s limit: no points." in text
        os.write(master, b"B\n")
        with os.fdopen(slave, "r", closefd=False) as tty_in:
            out = io.StringIO()
            terminal.main(["--id", "q06_content_changed", "--timed", "60"], stdin=tty_in, stdout=out,
                       clock=FakeClock(0.0, 5.0))
        assert "time is up" not in out.getvalue() and "answered in 5 s (limit 60 s)." in out.getvalue()
    finally:
        os.close(master)
        os.close(slave)


def test_the_command_runs_in_a_subprocess_with_piped_answers():
    env = dict(os.environ, GRAPHLAB_BACKEND="sim")
    proc = subprocess.run([sys.executable, "-m", "graphlab_utils", "drill", "--seed", "3", "-n", "2"],
                          input="B\n\n\n", capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- question ") == 2
    assert "\nscore: " in proc.stdout and "Traceback" not in proc.stderr
