"""The conformance suite: every claim of graphlab_utils.claims on the simulator (always), and on
a real GPU both backends side by side, each required to give the outcome a real GPU gives.

On the simulator each claim runs as a lesson runs it (``claims.run``: in this process, or in a
fresh one when it ends in a failed capture), so parallel test workers share the claims out; on a
GPU the runner of ``python -m graphlab_utils.authoring.conformance`` runs them all on each backend."""
from __future__ import annotations

import json

import pytest

from graphlab_utils import claims
from graphlab_utils.authoring import conformance

NAMES = list(claims.CLAIMS)


@pytest.fixture(scope="module")
def sim():
    import graphlab_utils
    from graphlab_utils import simulator

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    simulator.uninstall()


@pytest.fixture(scope="module")
def sim_results():
    return conformance.run("sim")


@pytest.fixture(scope="module")
def real_results():
    return conformance.run("real")


@pytest.mark.parametrize("name", NAMES)
def test_simulator_gives_the_gpu_outcome(sim, name):
    result = claims.run(name)
    assert result.holds, result.text()


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_real_gpu_gives_the_expected_outcome(real_results, name):
    outcome = claims.public(real_results[name])
    assert outcome == claims.get(name).expected, json.dumps(outcome, ensure_ascii=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_both_backends_agree(real_results, sim_results, name):
    assert claims.public(real_results[name]) == claims.public(sim_results[name])


def _expected_outcomes() -> dict:
    return {name: dict(c.expected) for name, c in claims.CLAIMS.items()}


def test_table_marks_differences_and_report_says_whether_backends_agree():
    real, sim = _expected_outcomes(), _expected_outcomes()
    real[NAMES[0]] = {"crashed": "RuntimeError: boom"}
    sim[NAMES[1]] = dict(sim[NAMES[1]], _figures={"MiB": 3.5})  # figures are not verdicts
    record = conformance.report({"real": real, "sim": sim})
    first = claims.get(NAMES[0])
    row = (f"| {first.lesson} | {first.statement} (`{NAMES[0]}`) | "
           'DIFFERS: {"crashed": "RuntimeError: boom"} | as expected | NO |')
    assert row in record["table"].splitlines()
    assert record["table"].count("as expected") == 2 * len(NAMES) - 1
    assert (record["all_expected"], record["backends_agree"]) == (False, False)
    agreeing = conformance.report({"real": _expected_outcomes(), "sim": sim})
    assert (agreeing["all_expected"], agreeing["backends_agree"]) == (True, True)
    assert set(record) == {"results", "table", "all_expected", "backends_agree"}  # what tools/gpu/gpu_report.py reads


def test_unknown_claim_is_a_clear_error(capsys):
    assert conformance.main(["no_such_claim"]) == 2
    assert capsys.readouterr().out.startswith("unknown claim(s): no_such_claim; the claims are")


def test_the_command_runs_claims_and_writes_their_outcomes(tmp_path, capsys):
    out = tmp_path / "outcomes.json"
    assert conformance.main(["--backend", "sim", "--json", str(out), "empty_graph_warns", "unjoined_fork_fails"]) == 0
    text = capsys.readouterr().out
    assert "(`empty_graph_warns`) | as expected | yes |" in text and "(`unjoined_fork_fails`) | as expected" in text
    assert text.rstrip().endswith("all claims as expected")
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved == {"sim": {"empty_graph_warns": {"a warning says the graph is empty": True},
                             "unjoined_fork_fails": claims.get("unjoined_fork_fails").expected}}


@pytest.mark.parametrize("name", ["memory_stats_after_graph_destroyed", "registered_states_hold_two_blocks_each",
                                  "reset_keeps_generator_blocks", "freed_input_reused"])
def test_memory_claims_hold_after_graphs_left_in_a_reference_cycle(sim, name):
    """make_graphed_callables leaves its graphs in a cycle: until the collector runs they keep the
    default generator's state (and its two blocks) registered and its pool alive, which claims that
    count blocks or reuse freed memory must not see."""
    import gc

    import torch

    module = torch.nn.Linear(4, 4).to(sim.device)
    graphed = torch.cuda.make_graphed_callables(module, (torch.randn(2, 4, device=sim.device, requires_grad=True),))
    gc.disable()  # keep the cycle alive until the claim runs, as a busy test process may
    try:
        del graphed, module
        result = claims.run(name)
    finally:
        gc.enable()
    assert result.holds, result.text()
