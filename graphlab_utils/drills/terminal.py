"""``graphlab drill``: interview questions in a terminal, with a score and an optional clock.

    graphlab drill                      # 5 questions from every module, in a random order
    graphlab drill --module 04 -n 3     # 3 questions on pointer baking
    graphlab drill --seed 7             # the same drill again: the order follows the seed
    graphlab drill --timed 90 -n 10     # a mock interview: 90 s per question
    graphlab drill --id q04_defrag --prove   # one question, then its proof on this backend
    graphlab drill --list               # every question's id

Answer a choice question with its letter; a free question in a few sentences, ending with an
empty line. An empty answer skips the question; end of input (Ctrl-D) ends the drill. A reply
to a choice question that is not one of its letters is asked again and does not count; a wrong
letter gets one more try (right on the second try earns half a point). After each answer the
drill says how it did, then reveals the model answer and why. At the end it prints the drill's
score.

``--timed SECONDS`` gives each question a time limit. An answer that comes after the limit
counts as late (no points) and the drill says so. The limit is kept by measuring the time
from the question to its answer; in an interactive terminal the drill also says "time is
up" when the limit passes while you are still typing, by waiting on standard input with
``select`` (no threads). ``main()`` takes its input, output and clock as arguments, so
tests can script a whole drill.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass, field

from . import bank, render

__all__ = ["DrillScore", "main"]

PROMPT = "your answer> "
MORE = "...> "


@dataclass
class DrillScore:
    """The drill's score so far: answers by outcome, points, and the questions to review."""

    asked: int = 0
    points: float = 0.0
    counts: dict = field(default_factory=lambda: {"correct": 0, "partial": 0, "wrong": 0, "skipped": 0, "late": 0})
    review: list = field(default_factory=list)

    def record(self, qid: str, outcome: str, points: float) -> None:
        self.asked += 1
        self.points += points
        self.counts[outcome] += 1
        if outcome != "correct":
            self.review.append(f"{qid} ({outcome})")

    def text(self, limit: float | None) -> str:
        if not self.asked:
            return "no question answered: score 0 / 0"
        c = self.counts
        points = f"{self.points:g}"
        lines = [f"score: {points} / {self.asked}  (correct {c['correct']}, partial {c['partial']}, "
                 f"wrong {c['wrong']}, skipped {c['skipped']}, late {c['late']})"]
        if c["late"]:
            lines.append(f"late answers came after the {limit:g} s limit and earn no points")
        if self.review:
            lines.append("to review: " + ", ".join(self.review))
        return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="graphlab drill",
        description="Interview drills on CUDA graphs: questions at random, a score, and an optional clock.")
    p.add_argument("--module", "-m", action="append", metavar="NN",
                   help="only questions of this module (01..09); repeat for several")
    p.add_argument("--count", "-n", type=int, default=5, metavar="N", help="how many questions (default 5)")
    p.add_argument("--all", action="store_true", help="every question of the selected modules")
    p.add_argument("--seed", type=int, help="the order of the questions (a drill with the same seed repeats)")
    p.add_argument("--timed", type=float, metavar="SECONDS", help="time limit per question; later answers count as late")
    p.add_argument("--id", dest="ids", action="append", metavar="ID", help="ask this question (repeatable)")
    p.add_argument("--prove", action="store_true", help="run each question's proof after its answer")
    p.add_argument("--list", action="store_true", help="list the questions and exit")
    return p


def _selectable(stream) -> bool:
    """Whether we can wait on ``stream`` with select: an interactive terminal on a POSIX system."""
    if os.name == "nt":
        return False
    try:
        return bool(stream.isatty()) and stream.fileno() >= 0
    except (AttributeError, ValueError, OSError):
        return False


class _Reader:
    """Reads an answer line by line, saying once when the time limit passes (see the module doc)."""

    def __init__(self, stdin, stdout, clock, deadline):
        self.stdin, self.stdout, self.clock, self.deadline = stdin, stdout, clock, deadline
        self.announced = False
        self.interactive = _selectable(stdin)
        self.wait = self.interactive and deadline is not None

    def readline(self, prompt: str) -> str:
        self.stdout.write(prompt)
        self.stdout.flush()
        if self.wait and not self.announced:
            import select

            remaining = self.deadline - self.clock()
            ready = select.select([self.stdin], [], [], remaining)[0] if remaining > 0 else []
            if not ready:
                self.announced = True
                self.stdout.write("\n(time is up: finish your answer anyway; it will count as late)\n" + prompt)
                self.stdout.flush()
        line = self.stdin.readline()
        if not self.interactive:  # scripted input: echo it, so that the transcript reads like a terminal's
            self.stdout.write(line if line.endswith("\n") else line + "\n")
        return line


def _read_answer(q, reader: _Reader):
    """The answer's text, or None at end of input before any answer."""
    first = reader.readline(PROMPT)
    if first == "":
        return None
    if q.kind == "choice" or not first.strip():
        return first.strip()
    lines = [first.rstrip("\n")]
    while True:
        line = reader.readline(MORE)
        if line == "" or not line.strip():
            break
        lines.append(line.rstrip("\n"))
    return "\n".join(lines).strip()


def _read_choice(q, reader: _Reader, out):
    """A letter, an empty answer or None (end of input); a typo is answered and asked again."""
    while True:
        answer = _read_answer(q, reader)
        if not answer:
            return answer
        result = bank.grade(q, answer)
        if result.verdict != "invalid":
            return answer
        out.write(f"-> {result.text()}\n")


def _answer(q, reader: _Reader, out):
    """``(answer, grade)``: the grade is None for a skip, and both are None at end of input.

    A choice question allows a second try after a wrong letter: right then earns half a
    point; a wrong letter again, or an empty answer, reveals the model answer.
    """
    if q.kind != "choice":
        answer = _read_answer(q, reader)
        return answer, (bank.grade(q, answer) if answer else None)
    answer = _read_choice(q, reader, out)
    if not answer:
        return answer, None
    first = bank.grade(q, answer)
    if first.verdict != "wrong":
        return answer, first
    out.write(f"-> {first.text()}\n(one more try: a letter, or an empty answer to reveal the model answer)\n")
    again = _read_choice(q, reader, out)
    if not again:
        out.write("-> revealed.\n")
        return answer, first
    second = bank.grade(q, again)
    if second.verdict == "correct":
        return again, bank.Grade(q.id, q.kind, "partial", 0.5, chosen=second.chosen,
                                 message=f"correct on the second try ({second.chosen}): half a point.")
    out.write(f"-> not this one either: {second.chosen} is not the answer.\n")
    return again, second


def _quiet_closed_stdout(out) -> None:
    """After a closed pipe, point stdout at the null device so that Python's exit flush is silent."""
    try:
        fd = out.fileno()
    except (AttributeError, ValueError, OSError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _list(out) -> None:
    out.write(f"{'id':28s} {'kind':7s} {'proof':6s} title\n")
    for q in bank.bank():
        out.write(f"{q.id:28s} {q.kind:7s} {'yes' if q.claim else 'no':6s} {q.title}\n")


def main(argv=None, stdin=None, stdout=None, clock=None) -> int:
    """Run a drill; ``stdin``/``stdout`` default to the terminal, ``clock`` to ``time.monotonic``."""
    args = _parser().parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if stdout is None else stdout
    clock = time.monotonic if clock is None else clock
    if args.list:
        try:
            _list(out)
            out.flush()
        except BrokenPipeError:  # `graphlab drill --list | head`: the reader has all it wanted
            _quiet_closed_stdout(out)
        return 0
    if args.timed is not None and args.timed <= 0:
        raise bank.DrillError("--timed takes a positive number of seconds")
    seed = args.seed
    if seed is None and not args.ids:
        seed = random.SystemRandom().randrange(1, 10**6)
    questions = bank.select(module=args.module, count=None if args.all else args.count, seed=seed, ids=args.ids)
    if not questions:
        raise bank.DrillError("no question to ask: give --count 1 or more")
    limit = args.timed

    modules = sorted({q.module for q in questions})
    where = f"module {modules[0]}" if len(modules) == 1 else f"{len(modules)} modules"
    head = f"graphlab drill: {len(questions)} question{'s' if len(questions) != 1 else ''} from {where}"
    if seed is not None and not args.ids:
        head += f" (seed {seed}: --seed {seed} repeats this drill)"
    out.write(head + "\n")
    if limit:
        out.write(f"timed: {limit:g} s per question; an answer after the limit counts as late (no points)\n")
    out.write("Answer a choice with its letter, a free question in a few sentences ending with an empty line.\n"
              "An empty answer skips the question; end of input (Ctrl-D) ends the drill.\n")
    if args.prove:
        import graphlab_utils

        s = graphlab_utils.setup(quiet=True)
        out.write(f"proofs run on the {s.backend} backend; timings {s.timing_label}\n")

    score = DrillScore()
    try:
        for number, q in enumerate(questions, 1):
            out.write(f"\n--- question {number} of {len(questions)} ---\n{render.card(q)}\n")
            out.flush()
            start = clock()
            reader = _Reader(stdin, out, clock, start + limit if limit else None)
            answer, result = _answer(q, reader, out)
            if answer is None:
                out.write("\n(end of input: the drill ends here)\n")
                break
            elapsed = clock() - start
            if result is None:
                score.record(q.id, "skipped", 0.0)
                out.write("skipped.\n")
            else:
                late = limit is not None and elapsed > limit
                outcome = "late" if late else {"correct": "correct", "partial": "partial"}.get(result.verdict, "wrong")
                score.record(q.id, outcome, 0.0 if late else result.score)
                if result.verdict != "wrong" or q.kind != "choice":  # a wrong letter was said at once
                    out.write(f"-> {result.text()}\n")
                if late:
                    out.write(f"late: answered after {elapsed:.0f} s, past the {limit:g} s limit: no points.\n")
                elif limit:
                    out.write(f"answered in {elapsed:.0f} s (limit {limit:g} s).\n")
            out.write(render.reveal(q) + "\n")
            if args.prove and q.claim:
                out.write("running the proof...\n")
                out.flush()
                out.write(render.run_proof(q).text() + "\n")
    except KeyboardInterrupt:
        out.write("\n(interrupted)\n")
        out.write("\n" + score.text(limit) + "\n")
        return 130
    out.write("\n" + score.text(limit) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    from graphlab_utils.cli import main as _cli_main

    raise SystemExit(_cli_main(["drill", *sys.argv[1:]]))
