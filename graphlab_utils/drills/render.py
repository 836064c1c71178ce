"""What a learner sees of a question: its card, the model answer, its proof, and the quiz widget.

    from graphlab_utils import drills as quiz
    print(quiz.card("q03_random_branch"))          # the question
    print(quiz.grade("q03_random_branch", "B"))    # "correct (B)."
    print(quiz.reveal("q03_random_branch"))        # model answer and why
    quiz.prove("q03_random_branch")                # runs the question's claim, prints its verdicts
    quiz.widget("q03_random_branch")               # in Jupyter: answer, Check, Reveal, Prove it

Text is wrapped to 88 columns, a Chinese character counting two. ``graphlab drill``
(:mod:`graphlab_utils.drills.terminal`) prints the same cards in a terminal.
"""
from __future__ import annotations

import html
import re
import textwrap

from .bank import LETTERS, MODULES, DrillError, Grade, Question, bank, get, grade

__all__ = ["card", "proof_source", "prove", "reveal", "run_proof", "summary", "widget"]


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
        lines.append(_wrap(f"in English: {q.question_zh_en}", width, "  ", "  "))
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
        lines.append(_wrap(f"in English: {q.answer_zh_en}", width, "  ", "  "))
    if q.kind == "free":
        lines.append(_wrap("key points: " + "; ".join(k.point for k in q.key_points), width))
    lines.append(_wrap(f"why: {q.why}", width))
    proof = f'quiz.prove("{q.id}")' if q.claim else "none: it is a fact about a code base or a tool"
    lines.append(f"proof: {proof} | lesson: {q.lesson}")
    return "\n".join(lines)


def summary() -> str:
    """The bank in a few lines: questions, kinds and proofs per module."""
    from graphlab_utils import claims

    qs = bank()
    slow = sum(1 for q in qs if q.claim and claims.get(q.claim).slow)
    head = (f"{len(qs)} questions: {sum(q.kind == 'choice' for q in qs)} multiple choice, "
            f"{sum(q.kind == 'free' for q in qs)} free answer; {sum(bool(q.claim) for q in qs)} with a "
            f"runnable proof ({slow} of them in a child process); "
            f"{sum(q.source == 'study guide' for q in qs)} from the study guide")
    rows = [head, "", f"{'module':8s}{'questions':>10s}{'proofs':>8s}  lesson"]
    for m, (_title, stem) in MODULES.items():
        mq = [q for q in qs if q.module == m]
        rows.append(f"{m:8s}{len(mq):>10d}{sum(bool(q.claim) for q in mq):>8d}  {stem}")
    return "\n".join(rows)


# -- proofs ----------------------------------------------------------------------------------
def run_proof(qid):
    """Run the question's claim on this backend; its ClaimResult (None when it has none)."""
    from graphlab_utils import claims

    q = get(qid)
    return claims.run(q.claim) if q.claim else None


def prove(qid) -> None:
    """Run the question's claim on the current backend and print its verdicts."""
    q = get(qid)
    result = run_proof(q)
    print(result.text() if result is not None else f"{q.id} has no runnable proof: " + reveal(q).splitlines()[-1])


def proof_source(qid) -> str:
    """The code of the claim that proves the question's answer, to read."""
    from graphlab_utils import claims

    q = get(qid)
    if not q.claim:
        raise DrillError(f"{q.id} has no runnable proof: its answer is a fact about a code base or a tool")
    return claims.source(q.claim)


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
        parts.append(f"<p><b>Study guide (中文).</b> {_inline_html(q.answer_zh)}<br>"
                     f"<i>In English:</i> {_inline_html(q.answer_zh_en)}</p>")
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
    zh = (f"<p style='color:#57606a'>原文 (study guide): {_inline_html(q.question_zh)}<br>"
          f"<i>In English:</i> {_inline_html(q.question_zh_en)}</p>" if q.question_zh else "")
    return (f"{_STYLE}<div class='graphlab-quiz-card'><div style='color:#57606a;font-size:90%'>module {q.module} · "
            f"{html.escape(q.module_title)} · {q.id}</div><div style='font-weight:600;margin:2px 0'>"
            f"{_inline_html(q.title)}</div><p>{_inline_html(q.question)}</p>{zh}</div>")


def widget(qid):
    """An ipywidgets quiz for one question: an answer box, Check, Reveal and Prove it.

    Check grades the answer at once (a choice by its letter, a free answer by its key
    points); Reveal shows the model answer and why; Prove it runs the question's claim.
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
    prove_b = w.Button(description="Prove it", disabled=q.claim is None,
                       tooltip="run the proof on this backend" if q.claim else "no runnable proof")
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
