"""The interview question bank: its schema, its checks, and the grading of an answer.

The questions live as data in ``graphlab_utils/drills/questions.json``: each has an id, the
module it drills ("01".."09"), the question (and the Chinese original where the course's
study guide has one), a kind (``choice``: four options and the correct letter; ``free``:
key points with the phrases that show a good answer makes them), a short model answer, the
deeper "why", and for most a ``claim``: the name of a runnable claim of
:mod:`graphlab_utils.claims` that proves the answer on either backend.

    from graphlab_utils.drills import bank
    q = bank.get("q03_random_branch")
    print(bank.grade(q, "B"))          # "correct (B)."

Free answers are graded by key phrases (English or Chinese): a quick signal of which key
points an answer makes, not a judgement of its prose; the model answer says the rest.
"""
from __future__ import annotations

import difflib
import functools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from graphlab_utils.errors import GraphlabError

__all__ = [
    "DATA_PATH", "LETTERS", "MODULES", "DrillError", "Grade", "KeyPoint", "Question", "bank", "get", "grade",
    "ids", "load", "problems", "select",
]

DATA_PATH = Path(__file__).resolve().parent / "questions.json"
LETTERS = "ABCD"

#: module -> (title, notebook stem)
MODULES = {
    "01": ("Capture, instantiate, launch", "01_capture_instantiate_launch"),
    "02": ("Streams and capture", "02_streams_and_capture"),
    "03": ("Static control flow", "03_static_control_flow"),
    "04": ("Pointer baking", "04_pointer_baking"),
    "05": ("Shape bucketing", "05_shape_bucketing"),
    "06": ("Exec update", "06_exec_update"),
    "07": ("Graph memory", "07_graph_memory"),
    "08": ("Debugging and profiling", "08_debugging_and_profiling"),
    "09": ("Diffusion warm-up", "09_diffusion_warmup"),
    "11": ("Decode engine", "11_decode_engine"),
    "12": ("torch.compile's CUDA graphs and piecewise graphs", "12_compile_and_piecewise"),
    "13": ("Graphs across GPUs", "13_graphs_across_gpus"),
    "14": ("A training step in one graph", "14_training_step"),
}


class DrillError(GraphlabError, ValueError):
    """A question id, module, option or bank file the drills cannot use; the message says why."""


# -- the bank ------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPoint:
    point: str  # what a good answer says, in a few words
    any: tuple  # phrases (English or Chinese); one of them shows the point is made


@dataclass(frozen=True)
class Question:
    id: str
    module: str
    title: str
    kind: str  # "choice" or "free"
    question: str
    answer_text: str
    why: str
    options: tuple = ()
    answer: str | None = None  # the correct letter, for "choice"
    key_points: tuple = ()  # KeyPoint, for "free"
    question_zh: str | None = None
    answer_zh: str | None = None
    question_zh_en: str | None = None  # the English translation of question_zh
    answer_zh_en: str | None = None  # the English translation of answer_zh
    claim: str | None = None  # the name of a claim in graphlab_utils.claims that proves the answer
    source: str = "course"  # "study guide" when it comes from the course's study guide

    @property
    def module_title(self) -> str:
        return MODULES[self.module][0]

    @property
    def lesson(self) -> str:
        return f"notebooks/{MODULES[self.module][1]}.ipynb"

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def correct_option(self) -> str:
        return f"{self.answer}) {self.options[LETTERS.index(self.answer)]}" if self.kind == "choice" else ""


def _question(raw: dict) -> Question:
    return Question(
        id=raw["id"], module=raw["module"], title=raw["title"], kind=raw["kind"],
        question=raw["question"], answer_text=raw["answer_text"], why=raw["why"],
        options=tuple(raw.get("options") or ()), answer=raw.get("answer"),
        key_points=tuple(KeyPoint(k["point"], tuple(k["any"])) for k in raw.get("key_points") or ()),
        question_zh=raw.get("question_zh"), answer_zh=raw.get("answer_zh"),
        question_zh_en=raw.get("question_zh_en"), answer_zh_en=raw.get("answer_zh_en"),
        claim=raw.get("claim"), source=raw.get("source", "course"),
    )


def problems(questions) -> list:
    """What is wrong with a list of questions (an empty list when nothing is)."""
    from graphlab_utils import claims

    found, seen = [], set()
    for q in questions:
        where = f"question {q.id!r}"
        if not re.fullmatch(r"q\d\d_[a-z0-9_]+", q.id):
            found.append(f"{where}: an id looks like q03_random_branch")
        if q.id in seen:
            found.append(f"{where}: the id is used twice")
        seen.add(q.id)
        if q.module not in MODULES:
            found.append(f"{where}: module {q.module!r} is not one of {', '.join(MODULES)}")
        elif not q.id.startswith(f"q{q.module}_"):
            found.append(f"{where}: its id should start with q{q.module}_")
        for name in ("title", "question", "answer_text", "why"):
            if not str(getattr(q, name) or "").strip():
                found.append(f"{where}: {name} is empty")
        for name in ("question_zh", "answer_zh"):
            if getattr(q, name) and not str(getattr(q, f"{name}_en") or "").strip():
                found.append(f"{where}: {name} has no English translation in {name}_en")
        if q.kind == "choice":
            if len(q.options) != 4 or not all(o.strip() for o in q.options):
                found.append(f"{where}: a choice question has four options")
            if q.answer not in LETTERS[: len(q.options)]:
                found.append(f"{where}: answer {q.answer!r} is not one of its option letters")
        elif q.kind == "free":
            if len(q.key_points) < 2:
                found.append(f"{where}: a free question has at least two key points")
            for k in q.key_points:
                if not k.point.strip() or not k.any:
                    found.append(f"{where}: every key point has a description and phrases")
        else:
            found.append(f"{where}: kind {q.kind!r} is neither 'choice' nor 'free'")
        if q.claim is not None and q.claim not in claims.CLAIMS:
            found.append(f"{where}: claim {q.claim!r} is not a claim of graphlab_utils.claims")
    return found


def load(path=None) -> tuple:
    """Read and check a question bank file (the course's by default)."""
    path = Path(path) if path is not None else DATA_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        questions = tuple(_question(raw) for raw in data["questions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DrillError(f"cannot read the question bank {path}: {type(exc).__name__}: {exc}") from exc
    found = problems(questions)
    if found:
        raise DrillError(f"the question bank {path} has {len(found)} problem(s): " + "; ".join(found[:5]))
    return questions


@functools.lru_cache(maxsize=None)
def bank() -> tuple:
    """The course's questions, in module order."""
    return load()


def ids(module=None) -> list:
    return [q.id for q in select(module=module)]


def get(qid) -> Question:
    """The question with id ``qid`` (a Question passes through)."""
    if isinstance(qid, Question):
        return qid
    for q in bank():
        if q.id == qid:
            return q
    near = difflib.get_close_matches(str(qid), [q.id for q in bank()], n=3)
    hint = f": did you mean {', '.join(near)}?" if near else "; `graphlab drill --list` lists them"
    raise DrillError(f"no question has the id {qid!r}{hint}")


def _modules(module) -> list:
    if module is None:
        return list(MODULES)
    wanted = [module] if isinstance(module, (str, int)) else list(module)
    out = []
    for m in wanted:
        m = f"{int(m):02d}" if str(m).strip().isdigit() else str(m).strip()
        if m not in MODULES:
            raise DrillError(f"module {m!r} has no questions: use one of {', '.join(MODULES)}")
        out.append(m)
    return out


def select(module=None, count=None, seed=None, ids=None) -> list:
    """Questions to ask: by id, or from the given module(s); shuffled by ``seed`` when given."""
    if ids:
        return [get(i) for i in ids]
    modules = _modules(module)
    chosen = [q for q in bank() if q.module in modules]
    if seed is not None:
        chosen = random.Random(seed).sample(chosen, len(chosen))
    if count is not None:
        chosen = chosen[: max(0, int(count))]
    return chosen


# -- grading ---------------------------------------------------------------------------------
def _normal(text: str) -> str:
    text = str(text or "").lower().replace("`", "").replace("’", "'")
    return re.sub(r"\s+", " ", text).strip()


def _says(answer: str, phrase: str) -> bool:
    phrase = _normal(phrase)
    if not phrase:
        return False
    start = r"(?<![a-z0-9])" if re.match(r"[a-z0-9]", phrase) else ""
    return re.search(start + re.escape(phrase), answer) is not None


@dataclass(frozen=True)
class Grade:
    qid: str
    kind: str
    verdict: str  # "correct", "partial", "wrong", "empty" or "invalid"
    score: float  # 1, 0.5 or 0
    chosen: str | None = None  # the letter, for "choice"
    made: tuple = ()  # key points made, for "free"
    missing: tuple = ()  # key points missing, for "free"
    message: str = ""

    @property
    def correct(self) -> bool:
        return self.verdict == "correct"

    def text(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message


def _choice_letter(q: Question, answer: str) -> str | None:
    text = _normal(answer)
    m = re.fullmatch(r"(?:option )?\(?([a-z])\)?[.)]?", text)
    if m:
        return m.group(1).upper()
    for letter, option in zip(LETTERS, q.options):
        if text in (_normal(option), _normal(f"{letter}) {option}")):
            return letter
    return None


def grade(qid, answer) -> Grade:
    """Grade an answer: a letter (or the option's text) for a choice question, prose for a free one."""
    q = get(qid)
    answer = "" if answer is None else str(answer)
    if q.kind == "choice":
        if not answer.strip():
            return Grade(q.id, q.kind, "empty", 0.0, message="no answer yet: choose an option.")
        letter = _choice_letter(q, answer)
        if letter is None or letter not in q.letters:
            shown = answer.strip() if len(answer.strip()) <= 20 else answer.strip()[:17] + "..."
            return Grade(q.id, q.kind, "invalid", 0.0, message=(
                f"{shown!r} is not one of the options {q.letters[0]}-{q.letters[-1]}: answer with a letter."))
        if letter == q.answer:
            return Grade(q.id, q.kind, "correct", 1.0, chosen=letter, message=f"correct ({letter}).")
        return Grade(q.id, q.kind, "wrong", 0.0, chosen=letter, message=(
            f"not quite: {letter} is not the answer. Try again, or reveal the model answer."))
    text = _normal(answer)
    if not text:
        return Grade(q.id, q.kind, "empty", 0.0, missing=tuple(k.point for k in q.key_points),
                     message="no answer yet: write a few sentences, as you would say them.")
    made = tuple(k.point for k in q.key_points if any(_says(text, p) for p in k.any))
    missing = tuple(k.point for k in q.key_points if k.point not in made)
    total = len(q.key_points)
    if not missing:
        return Grade(q.id, q.kind, "correct", 1.0, made=made, missing=missing,
                     message=f"good answer: it makes all {total} key points.")
    listed = "".join(f"\n  missing: {m}" for m in missing)
    if 2 * len(made) >= total:
        return Grade(q.id, q.kind, "partial", 0.5, made=made, missing=missing,
                     message=f"partial answer: it makes {len(made)} of {total} key points.{listed}")
    return Grade(q.id, q.kind, "wrong", 0.0, made=made, missing=missing,
                 message=f"not yet: it makes {len(made)} of {total} key points.{listed}")
