"""The interview drills of lesson 10: the bank's data, the grading, the texts, the widget, the lesson."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from graphlab_utils import claims, drills
from graphlab_utils.authoring import drills_notebook
from graphlab_utils.drills import bank, render

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "10_interview_drills.ipynb"


@pytest.fixture(scope="module")
def sim():
    import graphlab_utils
    from graphlab_utils import simulator

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    simulator.uninstall()


# -- the bank -------------------------------------------------------------------------------
def test_bank_loads_without_problems():
    qs = bank.bank()
    assert len(qs) >= 30
    assert bank.problems(qs) == []
    assert {q.module for q in qs} == set(bank.MODULES) == {*(f"{m:02d}" for m in range(1, 10)), "11", "12", "13", "14"}
    assert len({q.id for q in qs}) == len(qs)


def test_most_questions_name_a_claim_that_exists():
    qs = bank.bank()
    with_claim = [q for q in qs if q.claim]
    assert len(with_claim) >= 0.8 * len(qs)
    assert all(q.claim in claims.CLAIMS for q in with_claim)


@pytest.mark.parametrize(("qid", "english", "chinese"), [
    ("q03_random_branch", "if random() > 0.5", "如果在 Capture 期间有一个 if (random() > 0.5)，Graph 运行的时候会保留这个随机性吗？"),
    ("q01_warmup", "What does warm-up warm", "Warm-up 到底在 Warm-up 什么？"),
    ("q02_other_stream", "another stream", "知道向其他 Stream 提交任务会发生什么（通常会导致 Capture 失败或变成依赖关系）。"),
    ("q05_dynamic_shapes", "batch size", "Graph 对 Input Tensor 的 Shape 也是敏感的（通常）。"),
    ("q06_update_vs_recapture", "cudaGraphExecUpdate", "还是简单粗暴地维护了多个 Graph 实例？"),
    ("q07_cudamalloc", "Can a CUDA graph capture `cudaMalloc`?", "CUDA Graph 能够捕获 cudaMalloc 吗？"),
    ("q08_nsys_graph_trace", "Nsight Systems", "知道如何在 nsys 中展开 Graph 内部的 Kernel 详情"),
    ("q04_defrag", "SGLang", "我们在 SGLang 中使用了 CUDA Graph，但是发现显存池（Mempool）碎片化整理后，推理结果全错了，可能是什么原因？"),
])
def test_the_study_guide_questions_are_there_in_both_languages(qid, english, chinese):
    q = bank.get(qid)
    assert english in q.question
    assert chinese in q.question_zh
    assert q.source == "study guide"


def test_key_answers_say_what_an_interviewer_expects():
    assert "--cuda-graph-trace=node" in bank.get("q08_nsys_graph_trace").answer_text
    defrag = bank.get("q04_defrag")
    assert "old addresses" in defrag.answer_text and "cudaGraphExecUpdate" in defrag.answer_text
    assert defrag.answer_zh == "碎片整理移动了物理内存地址，但 Graph 内部还持有旧的指针地址。必须 Re-capture 或 Update Graph。"
    assert bank.get("q03_random_branch").answer_zh == "不会。它会永远执行录制时走的那条路。"


_HAN = re.compile(r"[\u4e00-\u9fff]")


def test_every_chinese_quote_has_an_english_translation_shown_beside_it():
    # the short quotes inside English text, each with the English that stands beside it
    INLINE_QUOTES = {
        ("q01_capture_runs_nothing", "why"): ("录像", ", a video recording"),
        ("q03_python_loop", "why"): ("一条固定的执行路径", ""),  # right after "one fixed path"
        ("q04_rebind", "why"): ("指针地址固定", ": the pointer addresses are fixed"),
        ("q06_sglang_instances", "why"): ("维护多实例更常见。", " (For stability, keeping several instances is usually more common.)"),
        ("q07_static_allocation", "why"): ("在 Capture 之前就把最大显存申请好", ": allocate the maximum memory before capture"),
    }
    assert "one fixed path (一条固定的执行路径)" in bank.get("q03_python_loop").why
    raw = json.loads(bank.DATA_PATH.read_text(encoding="utf-8"))["questions"]
    quoted = 0
    for q in raw:
        chinese = {k for k, v in q.items() if isinstance(v, str) and _HAN.search(v)}
        for name in chinese - {"question_zh", "answer_zh"}:  # a short quote inside English text
            quote, english = INLINE_QUOTES.pop((q["id"], name))
            assert f"{quote}{english}" in q[name], (q["id"], name)
        for name in chinese & {"question_zh", "answer_zh"}:
            english = q.get(f"{name}_en") or ""
            assert english.strip() and not _HAN.search(english), (q["id"], name)
            quoted += 1
            shown = render.card(q["id"]) if name == "question_zh" else render.reveal(q["id"])
            assert "in English: " + " ".join(english.split()[:4]) in " ".join(shown.split())
    assert quoted >= 20 and not INLINE_QUOTES, INLINE_QUOTES
    q = bank.get("q04_defrag")
    assert "<i>In English:</i> We use CUDA Graphs in SGLang" in render._card_html(q)
    assert "<i>In English:</i> Defragmentation moved" in render._reveal_html(q)


def test_a_chinese_quote_without_its_translation_is_a_problem():
    raw = json.loads(bank.DATA_PATH.read_text(encoding="utf-8"))
    first = next(q for q in raw["questions"] if q.get("answer_zh"))
    raw["questions"] = [dict(first, answer_zh_en="")]
    problems = bank.problems([bank._question(q) for q in raw["questions"]])
    assert problems == [f"question {first['id']!r}: answer_zh has no English translation in answer_zh_en"]


def test_a_broken_bank_is_reported_in_one_sentence(tmp_path):
    raw = json.loads(bank.DATA_PATH.read_text(encoding="utf-8"))
    first = raw["questions"][0]
    raw["questions"] = [first, dict(first), dict(first, id="q01_other", answer="E", claim="no_such_claim")]
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(bank.DrillError) as info:
        bank.load(path)
    text = str(info.value)
    assert "used twice" in text and "'E' is not one of its option letters" in text
    assert "claim 'no_such_claim' is not a claim of graphlab_utils.claims" in text
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(bank.DrillError, match="cannot read the question bank"):
        bank.load(tmp_path / "bad.json")


def test_unknown_id_suggests_a_close_one():
    with pytest.raises(bank.DrillError, match="did you mean q04_defrag"):
        bank.get("q04_defrg")


def test_select_by_module_count_and_seed():
    assert {q.module for q in bank.select(module="04")} == {"04"}
    assert {q.module for q in bank.select(module=[3, "07"])} == {"03", "07"}
    assert len(bank.select(count=5, seed=1)) == 5
    assert [q.id for q in bank.select(seed=11)] == [q.id for q in bank.select(seed=11)]
    assert [q.id for q in bank.select(seed=11)] != [q.id for q in bank.select(seed=12)]
    assert [q.id for q in bank.select(ids=["q04_defrag", "q01_warmup"])] == ["q04_defrag", "q01_warmup"]
    with pytest.raises(bank.DrillError, match="module '10' has no questions"):
        bank.select(module="10")


# -- grading --------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", ["B", "b", " b ", "(B)", "B)", "b.", "option B",
                                    "No: every replay runs the branch that was taken during capture."])
def test_choice_accepts_the_letter_in_any_form_or_the_option(answer):
    g = bank.grade("q03_random_branch", answer)
    assert g.correct and g.score == 1.0 and g.chosen == "B"
    assert str(g) == "correct (B)."


def test_choice_wrong_invalid_and_empty():
    wrong = bank.grade("q03_random_branch", "A")
    assert (wrong.verdict, wrong.score, str(wrong)) == (
        "wrong", 0.0, "not quite: A is not the answer. Try again, or reveal the model answer.")
    assert "B" not in str(wrong)  # Check does not give the answer away; Reveal does
    assert bank.grade("q03_random_branch", "E").verdict == "invalid"
    assert bank.grade("q03_random_branch", "maybe both").verdict == "invalid"
    assert bank.grade("q03_random_branch", "  ").verdict == "empty"
    assert bank.grade("q03_random_branch", None).verdict == "empty"


def test_every_free_model_answer_makes_all_its_key_points():
    for q in bank.bank():
        if q.kind == "free":
            g = bank.grade(q, q.answer_text)
            assert g.correct, (q.id, g.missing)


@pytest.mark.parametrize(("qid", "answer"), [
    ("q04_defrag", "碎片整理移动了物理内存地址，但 Graph 内部还持有旧的指针地址。必须 Re-capture 或 Update Graph。"),
    ("q04_defrag", "Compaction relocated the cache; the graph still uses stale, hard-coded pointers. Recapture it."),
    ("q07_cudamalloc", "不能直接捕获 cudaMalloc；可以用 cudaMallocAsync 变成内存分配节点，但工业界用静态分配，预先分配 KV Cache 内存池。"),
    ("q05_dynamic_shapes", "Capture one graph per bucket of batch sizes, pad each batch up to the next bucket and slice "
                           "the output; fall back to eager above the largest."),
    ("q08_nsys_graph_trace", "Run nsys profile --cuda-graph-trace=node; by default the whole graph launch is one range."),
])
def test_free_answers_in_other_words_or_in_chinese_pass(qid, answer):
    assert bank.grade(qid, answer).correct


def test_free_answers_that_miss_points_are_partial_or_not_yet():
    partial = bank.grade("q04_defrag", "The data moved to new addresses and the graph kept the old pointers.")
    assert partial.verdict == "partial" and partial.score == 0.5
    assert partial.missing == (bank.get("q04_defrag").key_points[2].point,)
    assert str(partial).startswith("partial answer: it makes 2 of 3 key points.\n  missing: fix:")
    wrong = bank.grade("q04_defrag", "The GPU ran out of memory.")
    assert wrong.verdict == "wrong" and wrong.score == 0.0 and len(wrong.missing) == 3
    assert bank.grade("q04_defrag", "").verdict == "empty"


def test_phrases_match_at_the_start_of_words_only():
    # "pad" must not be found inside "scratchpad", nor "no," inside "piano,"
    assert not bank._says("a scratchpad buffer", "pad")
    assert bank._says("we pad the batch", "pad") and bank._says("padding", "pad")
    assert not bank._says("a piano, then", "no,")


def test_reveal_and_card_texts():
    text = render.reveal("q03_random_branch")
    assert text.startswith("answer: B) No: every replay runs the branch")
    assert "study guide (中文): 不会。" in text and 'proof: quiz.prove("q03_random_branch")' in text
    assert "key points:" in render.reveal("q04_defrag")
    assert "none: it is a fact" in render.reveal("q06_sglang_instances")
    c = render.card("q03_random_branch")
    assert c.splitlines()[0] == "[03 · Static control flow] q03_random_branch"
    assert "  B) No: every replay runs the branch that was taken during capture." in c
    assert all(len(line) <= 88 for line in c.splitlines() if not re.search(r"[\u3000-\u9fff]", line))


def test_summary_counts_the_bank():
    first = render.summary().splitlines()[0]
    assert first.startswith(f"{len(bank.bank())} questions: ")


# -- the widget -----------------------------------------------------------------------------
def test_choice_widget_checks_and_reveals():
    w = render.widget("q03_random_branch")
    assert "graphlab-quiz" in w._dom_classes
    w.check(None)
    assert "no answer yet" in w.feedback.value
    w.answer.value = "A"
    w.check(None)
    assert "not quite" in w.feedback.value
    w.answer.value = "B"
    w.check(None)
    assert "correct (B)." in w.feedback.value
    reveal = w.children[4]
    w.reveal(None)
    assert "Model answer." in reveal.value and "<code>if</code>" in reveal.value
    w.reveal(None)
    assert reveal.value == ""
    plain = w._repr_mimebundle_()
    plain = plain[0] if isinstance(plain, tuple) else plain
    assert plain["text/plain"].startswith("[03 · Static control flow] q03_random_branch")


def test_free_widget_lists_missing_points():
    w = render.widget("q04_defrag")
    w.answer.value = "the cache moved to new addresses; the graph holds the old pointers"
    w.check(None)
    assert "partial answer" in w.feedback.value and "<li>missing: fix:" in w.feedback.value


def test_widget_prove_button(sim):
    w = render.widget("q06_content_changed")
    w.prove(None)
    assert "verdict: the proof holds" in w.children[5].value
    assert render.widget("q06_sglang_instances").children[2].children[2].disabled


# -- proofs ----------------------------------------------------------------------------------
def test_prove_prints_and_proof_source_shows_code(sim, capsys):
    render.prove("q03_random_branch")
    out = capsys.readouterr().out
    assert out.startswith("proof: a Python `if random() > 0.5` is decided once, at capture\n")
    assert out.endswith("verdict: the proof holds\n")
    render.prove("q05_above_max")
    assert "has no runnable proof" in capsys.readouterr().out
    source = render.proof_source("q03_device_branch")
    assert source.startswith('@claim("`torch.where` keeps a data-dependent choice inside the graph"')
    assert "def device_select(device):" in source
    with pytest.raises(bank.DrillError):
        render.proof_source("q05_above_max")


# -- the lesson -----------------------------------------------------------------------------
def test_the_lesson_has_a_widget_and_a_proof_for_every_question():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    sources = [c.source for c in nb.cells]
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for q in bank.bank():
        widget_cells = [s for s in sources if s.endswith(f'quiz.widget("{q.id}")')]
        assert len(widget_cells) == 1, q.id
        assert widget_cells[0].startswith("# NBVAL_IGNORE_OUTPUT"), q.id
        if q.claim and not claims.get(q.claim).slow:
            assert f'quiz.prove("{q.id}")' in code, q.id
    slow_run = [q.id for q in bank.bank() if q.claim and claims.get(q.claim).slow
                and f'quiz.prove("{q.id}")' in code]
    assert 1 <= len(slow_run) <= 2  # a child process each: the rest is one click away
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for link in ("00_welcome.ipynb", "../docs/workshop/README.md", "../reports/gpu/README.md",
                 "../labs/10_interview_drills.ipynb"):
        assert link in text


def test_the_lesson_is_generated_from_the_bank_and_says_so(capsys):
    assert drills_notebook.main(["--check", "--notebook", str(NOTEBOOK)]) == 0, capsys.readouterr().out
    first = nbformat.read(NOTEBOOK, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("*A generated notebook.* `graphlab build-lesson10`")


def test_the_check_names_the_cells_that_drifted(tmp_path, capsys):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells[3].source += "\nprint('edited by hand')"
    del nb.cells[5]
    edited = tmp_path / "10.ipynb"
    nbformat.write(nb, edited)
    assert drills_notebook.main(["--check", "--notebook", str(edited)]) == 1
    out = capsys.readouterr().out
    assert f"{edited}: cell 3 differs from what the bank makes" in out
    assert "the bank makes 1 more cell(s) before cell 5" in out
    assert out.rstrip().endswith("it is generated from graphlab_utils/drills/questions.json and never edited by hand")
    assert drills_notebook.main(["--check", "--notebook", str(tmp_path / "missing.ipynb")]) == 1
    assert "missing.ipynb is missing: run `graphlab build-lesson10`" in capsys.readouterr().out


def test_the_package_hands_out_the_learner_functions_and_imports_nothing_until_asked():
    assert drills.grade is bank.grade and drills.prove is render.prove and drills.widget is render.widget
    with pytest.raises(AttributeError):
        drills.no_such_function  # noqa: B018
    proc = subprocess.run([sys.executable, "-c", "import sys, graphlab_utils.drills as d; "
                           "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('graphlab_utils.drills.')))"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
