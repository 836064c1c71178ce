"""Interview drills: the question bank, grading, model answers, proofs and quiz widgets.

The questions live as data in ``graphlab_utils/data/questions.json``: each has an id, the
module it drills ("01".."09"), the question (and the Chinese original where the course's
study guide has one), a kind (``choice``: four options and the correct letter; ``free``:
key points with the phrases that show a good answer makes them), a short model answer, the
deeper "why", and for most a runnable proof: the name of a function of
:mod:`graphlab_utils.quiz_proofs` that shows the answer on either backend.

    from graphlab_utils import quiz
    print(quiz.card("q03_random_branch"))          # the question
    print(quiz.grade("q03_random_branch", "B"))    # "correct (B)."
    print(quiz.reveal("q03_random_branch"))        # model answer and why
    quiz.prove("q03_random_branch")                # runs the proof, prints its verdicts
    quiz.widget("q03_random_branch")               # in Jupyter: answer, Check, Reveal, Prove it

Free answers are graded by key phrases (English or Chinese): a quick signal of which key
points an answer makes, not a judgement of its prose; the model answer says the rest.
``graphlab drill`` (:mod:`graphlab_utils.drill`) asks the same questions in a terminal.
"""
from __future__ import annotations

import difflib
import functools
import html
import json
import random
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .errors import GraphlabError

__all__ = [
    "DATA_PATH", "MODULES", "Grade", "KeyPoint", "Question", "bank", "card", "get", "grade",
    "ids", "load", "prove", "proof_source", "reveal", "run_proof", "select", "summary", "widget",
]

DATA_PATH = Path(__file__).resolve().parent / "data" / "questions.json"
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
}


class QuizError(GraphlabError, ValueError):
    """A question id, module or bank file the quiz cannot use; the message says why."""


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
    proof: str | None = None  # a function name in graphlab_utils.quiz_proofs
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
        proof=raw.get("proof"), source=raw.get("source", "course"),
    )


def problems(questions) -> list:
    """What is wrong with a list of questions (an empty list when nothing is)."""
    from graphlab_utils import quiz_proofs

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
        if q.proof is not None and q.proof not in quiz_proofs.PROOFS:
            found.append(f"{where}: proof {q.proof!r} is not a function of graphlab_utils.quiz_proofs")
    return found


def load(path=None) -> tuple:
    """Read and check a question bank file (the course's by default)."""
    path = Path(path) if path is not None else DATA_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        questions = tuple(_question(raw) for raw in data["questions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuizError(f"cannot read the question bank {path}: {type(exc).__name__}: {exc}") from exc
    found = problems(questions)
    if found:
        raise QuizError(f"the question bank {path} has {len(found)} problem(s): " + "; ".join(found[:5]))
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
    hint = f": did you mean {', '.join(near)}?" if near else f"; `graphlab drill --list` lists them"
    raise QuizError(f"no question has the id {qid!r}{hint}")


def _modules(module) -> list:
    if module is None:
        return list(MODULES)
    wanted = [module] if isinstance(module, (str, int)) else list(module)
    out = []
    for m in wanted:
        m = f"{int(m):02d}" if str(m).strip().isdigit() else str(m).strip()
        if m not in MODULES:
            raise QuizError(f"module {m!r} has no questions: use one of {', '.join(MODULES)}")
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


# -- text ------------------------------------------------------------------------------------
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


_CLOSING = ")]}.,;:!?）】」』。，、；：！？"


def _fill_cjk(par: str, width: int, indent: str, hanging: str) -> str:
    """Greedy fill for text with Chinese: each Chinese character is a two-column word."""
    tokens = re.findall(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]|[^\s\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]+|\s+", par)
    lines, line, used = [], indent, len(indent)
    for tok in tokens:
        w = 2 * len(tok) if _CJK.match(tok) else len(tok)
        if tok.isspace():
            if used + 1 <= width:
                line, used = line + " ", used + 1
            continue
        if used + w > width and line.strip() and tok[0] not in _CLOSING:
            lines.append(line.rstrip())
            line, used = hanging, len(hanging)
        line, used = line + tok, used + w
    lines.append(line.rstrip())
    return "\n".join(lines)


def _wrap(text: str, width: int, indent: str = "", hanging: str | None = None) -> str:
    """Fill each paragraph to ``width`` columns (a Chinese character counts two)."""
    hanging = indent if hanging is None else hanging
    return "\n".join(
        _fill_cjk(par, width, indent, hanging) if _CJK.search(par) else
        textwrap.fill(par, width=width, initial_indent=indent, subsequent_indent=hanging,
                      break_long_words=False, break_on_hyphens=False)
        for par in text.split("\n"))


def card(qid, width: int = 88) -> str:
    """The question as text: heading, question, the study guide's original, options."""
    q = get(qid)
    lines = [f"[{q.module} · {q.module_title}] {q.id}", q.title, _wrap(q.question, width)]
    if q.question_zh:
        lines.append(_wrap(f"原文 (study guide): {q.question_zh}", width))
    if q.kind == "choice":
        lines += [_wrap(f"{letter}) {option}", width, "  ", "     ") for letter, option in zip(LETTERS, q.options)]
    else:
        lines.append("(answer in a few sentences, in English or Chinese)")
    return "\n".join(lines)


def reveal(qid, width: int = 88) -> str:
    """The model answer, the deeper why, and where to see it proved."""
    q = get(qid)
    lines = []
    if q.kind == "choice":
        lines.append(_wrap(f"answer: {q.correct_option}", width))
    lines.append(_wrap(f"model answer: {q.answer_text}", width))
    if q.answer_zh:
        lines.append(_wrap(f"study guide (中文): {q.answer_zh}", width))
    if q.kind == "free":
        lines.append(_wrap("key points: " + "; ".join(k.point for k in q.key_points), width))
    lines.append(_wrap(f"why: {q.why}", width))
    proof = f'quiz.prove("{q.id}")' if q.proof else "none: it is a fact about a code base or a tool"
    lines.append(f"proof: {proof} | lesson: {q.lesson}")
    return "\n".join(lines)


def summary() -> str:
    """The bank in a few lines: questions, kinds and proofs per module."""
    from graphlab_utils import quiz_proofs

    qs = bank()
    slow = sum(1 for q in qs if q.proof and quiz_proofs.PROOFS[q.proof].slow)
    head = (f"{len(qs)} questions: {sum(q.kind == 'choice' for q in qs)} multiple choice, "
            f"{sum(q.kind == 'free' for q in qs)} free answer; {sum(bool(q.proof) for q in qs)} with a "
            f"runnable proof ({slow} of them in a child process); "
            f"{sum(q.source == 'study guide' for q in qs)} from the study guide")
    rows = [head, "", f"{'module':8s}{'questions':>10s}{'proofs':>8s}  lesson"]
    for m, (title, stem) in MODULES.items():
        mq = [q for q in qs if q.module == m]
        rows.append(f"{m:8s}{len(mq):>10d}{sum(bool(q.proof) for q in mq):>8d}  {stem}")
    return "\n".join(rows)


# -- proofs ----------------------------------------------------------------------------------
def run_proof(qid):
    """Run the question's proof; return its ProofResult (None when it has no proof)."""
    from graphlab_utils import quiz_proofs

    q = get(qid)
    return quiz_proofs.run(q.proof) if q.proof else None


def prove(qid) -> None:
    """Run the question's proof on the current backend and print its verdicts."""
    q = get(qid)
    result = run_proof(q)
    print(result.text() if result is not None else f"{q.id} has no runnable proof: " + reveal(q).splitlines()[-1])


def proof_source(qid) -> str:
    """The code of the question's proof, to read."""
    from graphlab_utils import quiz_proofs

    q = get(qid)
    if not q.proof:
        raise QuizError(f"{q.id} has no runnable proof")
    return quiz_proofs.source(q.proof)


# -- the widget ------------------------------------------------------------------------------
def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


_COLOURS = {"correct": "#1a7f37", "partial": "#9a6700", "wrong": "#cf222e", "empty": "#57606a", "invalid": "#57606a"}


def _grade_html(g: Grade) -> str:
    first, *rest = g.message.split("\n")
    items = "".join(f"<li>{_inline_html(r.strip())}</li>" for r in rest)
    return (f'<div class="graphlab-quiz-verdict" style="color:{_COLOURS[g.verdict]};font-weight:600">'
            f"{_inline_html(first)}</div>" + (f"<ul style='margin:2px 0'>{items}</ul>" if items else ""))


def _reveal_html(q: Question) -> str:
    parts = []
    if q.kind == "choice":
        parts.append(f"<p><b>Answer:</b> {_inline_html(q.correct_option)}</p>")
    parts.append(f"<p><b>Model answer.</b> {_inline_html(q.answer_text)}</p>")
    if q.answer_zh:
        parts.append(f"<p><b>Study guide (中文).</b> {_inline_html(q.answer_zh)}</p>")
    if q.kind == "free":
        parts.append("<p><b>Key points.</b> " + "; ".join(_inline_html(k.point) for k in q.key_points) + "</p>")
    parts.append(f"<p><b>Why.</b> {_inline_html(q.why)}</p>")
    return '<div class="graphlab-quiz-model-answer" style="border-left:3px solid #8c959f;padding-left:8px">' + "".join(parts) + "</div>"


# Radio labels are one fixed-height line in ipywidgets' stylesheet; let long options wrap.
_STYLE = ("<style>.graphlab-quiz .widget-radio-box label, .graphlab-quiz .jupyter-widget-radio-box label "
          "{display: flex; flex-direction: row-reverse; justify-content: flex-end; align-items: flex-start; "
          "height: auto; line-height: 1.35; white-space: normal; margin: 2px 0 4px 0;} "
          ".graphlab-quiz .widget-radio-box label input, .graphlab-quiz .jupyter-widget-radio-box label input "
          "{flex: none; float: none; height: 1.35em; margin: 0 6px 0 1px;}</style>")


def _card_html(q: Question) -> str:
    zh = f"<p style='color:#57606a'>原文 (study guide): {_inline_html(q.question_zh)}</p>" if q.question_zh else ""
    return (f"{_STYLE}<div class='graphlab-quiz-card'><div style='color:#57606a;font-size:90%'>module {q.module} · "
            f"{html.escape(q.module_title)} · {q.id}</div><div style='font-weight:600;margin:2px 0'>"
            f"{_inline_html(q.title)}</div><p>{_inline_html(q.question)}</p>{zh}</div>")


def widget(qid):
    """An ipywidgets quiz for one question: an answer box, Check, Reveal and Prove it.

    Check grades the answer at once (a choice by its letter, a free answer by its key
    points); Reveal shows the model answer and why; Prove it runs the question's proof.
    """
    import ipywidgets as w

    q = get(qid)

    class QuizWidget(w.VBox):
        def _repr_mimebundle_(self, **kwargs):  # a readable text form where widgets do not render
            data = super()._repr_mimebundle_(**kwargs)
            plain = card(q) + "\n(an interactive quiz: run the notebook in Jupyter to answer it)"
            if isinstance(data, tuple):
                data[0]["text/plain"] = plain
            elif isinstance(data, dict):
                data["text/plain"] = plain
            return data

    if q.kind == "choice":
        answer = w.RadioButtons(options=[(f"{letter}) {opt.replace('`', '')}", letter)  # labels are plain text
                                         for letter, opt in zip(LETTERS, q.options)],
                                value=None, layout=w.Layout(width="auto"))
    else:
        answer = w.Textarea(placeholder="Your answer, as you would say it in the interview (English or Chinese)",
                            layout=w.Layout(width="95%", height="7em"))
    check_b = w.Button(description="Check", button_style="primary", tooltip="grade my answer")
    reveal_b = w.Button(description="Reveal", tooltip="show the model answer and why")
    prove_b = w.Button(description="Prove it", disabled=q.proof is None,
                       tooltip="run the proof on this backend" if q.proof else "no runnable proof")
    feedback, revealed, proof_box = w.HTML(), w.HTML(), w.HTML()
    for item, name in ((feedback, "feedback"), (revealed, "reveal"), (proof_box, "proof"),
                       (answer, "answer"), (check_b, "check"), (reveal_b, "reveal-button"), (prove_b, "prove")):
        item.add_class(f"graphlab-quiz-{name}")

    def on_check(_):
        feedback.value = _grade_html(grade(q, answer.value))

    def on_reveal(_):
        revealed.value = "" if revealed.value else _reveal_html(q)
        reveal_b.description = "Hide" if revealed.value else "Reveal"

    def on_prove(_):
        prove_b.disabled = True
        proof_box.value = "<i>running the proof...</i>"
        try:
            result = run_proof(q)
            proof_box.value = f"<pre class='graphlab-quiz-proof-text'>{html.escape(result.text())}</pre>"
        finally:
            prove_b.disabled = False

    check_b.on_click(on_check)
    reveal_b.on_click(on_reveal)
    prove_b.on_click(on_prove)
    box = QuizWidget([w.HTML(_card_html(q)), answer, w.HBox([check_b, reveal_b, prove_b]), feedback, revealed, proof_box],
                     layout=w.Layout(border="1px solid #d0d7de", padding="6px 10px", margin="4px 0"))
    box.add_class("graphlab-quiz")
    box.question, box.answer, box.feedback = q, answer, feedback  # for tests and for scripting
    box.check, box.reveal, box.prove = on_check, on_reveal, on_prove
    return box
