"""The registry of claims: how a claim is declared, found, run and reported."""
from __future__ import annotations

import pytest

from graphlab_utils import claims


@pytest.fixture(scope="module")
def sim():
    import graphlab_utils
    from graphlab_utils import simulator

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    simulator.uninstall()


def test_every_lesson_has_claims_and_each_claim_knows_its_lesson():
    assert {c.lesson for c in claims.CLAIMS.values()} == {*claims.LESSONS, claims.SUITE}
    for name, c in claims.CLAIMS.items():
        home = "torch_suite" if c.lesson == claims.SUITE else f"lesson{c.lesson}"
        assert c.name == name and c.fn.__module__ == f"graphlab_utils.claims.{home}"
        assert c.statement.strip() and c.expected, name
        assert not any(key.startswith("_") for key in c.expected), name  # "_" keys are figures, not verdicts


def test_a_claim_belongs_in_a_lesson_file_and_has_one_name():
    def stray(device):
        return {}

    with pytest.raises(ValueError, match="belongs in graphlab_utils/claims/lessonNN.py"):
        claims.claim("a statement", {"verdict": True})(stray)
    def loop_unrolled(device):
        return {}

    loop_unrolled.__module__ = "graphlab_utils.claims.lesson03"
    with pytest.raises(ValueError, match="'loop_unrolled' is already registered"):
        claims.claim("a statement", {"verdict": True})(loop_unrolled)


def test_an_unknown_name_suggests_a_close_one():
    with pytest.raises(claims.ClaimError, match="did you mean frozen_python_branch"):
        claims.get("frozen_python_brnch")
    with pytest.raises(claims.ClaimError, match="no claim is called 'zzz'; the claims are listed"):
        claims.run("zzz")


def test_a_claim_that_holds_prints_its_verdicts(sim):
    result = claims.run("loop_unrolled")
    assert result.holds and bool(result)
    assert result.text() == ("proof: a Python loop is unrolled: one node per iteration\n"
                             "  kernel nodes added per loop iteration: 1\n  nodes of a 3-iteration loop: 3\n"
                             "verdict: the proof holds")
    assert "def loop_unrolled(device):" in claims.source("loop_unrolled")


def test_a_claim_that_does_not_hold_says_so(sim, monkeypatch):
    monkeypatch.setitem(claims.CLAIMS, "fake", claims.Claim(
        "fake", "01", "a statement", lambda device: {"verdict": False, "_figure": 3.5}, {"verdict": True}))
    result = claims.run("fake")
    assert not result.holds and result.observed == {"verdict": False}
    assert result.text() == ("proof: a statement\n  verdict: False   (a GPU gives: True)\n"
                             "verdict: the proof does NOT hold here (see the lines marked above)")


def test_a_claim_that_crashes_is_reported_without_a_traceback(sim, monkeypatch):
    def crash(device):
        raise ValueError("boom\nsecond line")

    monkeypatch.setitem(claims.CLAIMS, "crash", claims.Claim("crash", "01", "a statement", crash, {}))
    result = claims.run("crash")
    assert result.error == "ValueError: boom" and not result.holds
    assert "the proof could not run: ValueError: boom" in result.text()


def test_an_isolated_claim_runs_in_a_fresh_process_and_leaves_this_one_usable(sim):
    import torch

    result = claims.run("item_during_capture")
    assert result.holds, result.text()
    assert "the next torch.randn on the device: Offset increment outside graph capture" in result.text()
    torch.randn(4, device=sim.device)  # the failed capture happened in the other process
