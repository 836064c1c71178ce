"""The simulator conformance suite: every scenario on the simulator (always), and on a real
GPU both backends side by side, each required to give the outcome a real GPU gives."""
from __future__ import annotations

import json

import pytest
import torch

from graphlab_utils import conformance

NAMES = list(conformance.SCENARIOS)


@pytest.fixture(scope="module")
def sim_results():
    return conformance.run("sim")


@pytest.fixture(scope="module")
def real_results():
    return conformance.run("real")


@pytest.mark.parametrize("name", NAMES)
def test_simulator_gives_the_gpu_outcome(sim_results, name):
    outcome = conformance._public(sim_results[name])
    assert outcome == conformance.SCENARIOS[name].expected, json.dumps(outcome)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_real_gpu_gives_the_expected_outcome(real_results, name):
    outcome = conformance._public(real_results[name])
    assert outcome == conformance.SCENARIOS[name].expected, json.dumps(outcome)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_both_backends_agree(real_results, sim_results, name):
    assert conformance._public(real_results[name]) == conformance._public(sim_results[name])


def test_every_issue_scenario_is_covered():
    numbers = {s.number for s in conformance.SCENARIOS.values()}
    assert numbers >= set(range(1, 16))


def test_table_marks_differences():
    fake = {"sim": {n: dict(s.expected) for n, s in conformance.SCENARIOS.items()}}
    first = NAMES[0]
    fake["sim"][first] = {"something": "else"}
    text = conformance.table(fake)
    assert "DIFFERS" in text and text.count("as expected") == len(NAMES) - 1


def test_unknown_scenario_is_a_clear_error(capsys):
    assert conformance.main(["no_such_scenario"]) == 2
    assert "unknown scenario" in capsys.readouterr().out
