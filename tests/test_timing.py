"""Unit tests of graphlab_utils.timing with a fake CUDA clock (CPU only)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import graphlab_utils
from graphlab_utils import backend, timing
from graphlab_utils.timing import Timing, format_ms, format_ratio, measure, measure_host, speedup

GPU = "NVIDIA H100 80GB HBM3"


class FakeDevice:
    """A device clock that only moves when the fake workload says so."""

    def __init__(self):
        self.now_ms = 0.0
        self.syncs = 0
        self.events = 0

    def make_event_class(self):
        dev = self

        class FakeEvent:
            def __init__(self, enable_timing=False, **kwargs):
                assert enable_timing, "measure() must ask for timing events"
                self.t = None
                dev.events += 1

            def record(self, stream=None):
                self.t = dev.now_ms

            def synchronize(self):
                dev.syncs += 1

            def elapsed_time(self, end):
                assert self.t is not None and end.t is not None, "both events must be recorded"
                return end.t - self.t

        return FakeEvent

    def synchronize(self, device=None):
        self.syncs += 1


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 'real' backend whose CUDA events read a fake device clock."""
    dev = FakeDevice()
    monkeypatch.setattr(backend, "is_simulated", lambda: False)
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: GPU)
    monkeypatch.setattr(torch.cuda, "Event", dev.make_event_class())
    monkeypatch.setattr(torch.cuda, "synchronize", dev.synchronize)
    return dev


@pytest.fixture
def fake_sim(monkeypatch):
    """A simulator backend: installed simulator, modelled host clock, modelled events."""
    dev = FakeDevice()
    sim = types.ModuleType("graphlab_utils.simulator")
    sim.is_installed = lambda: True
    clock_mod = types.ModuleType("graphlab_utils.simulator.clock")

    class Clock:
        host_ms = 0.0

        def host_now_ms(self):
            return self.host_ms

    clock_mod.CLOCK = Clock()
    sim.clock = clock_mod
    monkeypatch.setitem(sys.modules, "graphlab_utils.simulator", sim)
    monkeypatch.setitem(sys.modules, "graphlab_utils.simulator.clock", clock_mod)
    monkeypatch.setattr(graphlab_utils, "simulator", sim, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "Event", dev.make_event_class())
    monkeypatch.setattr(torch.cuda, "synchronize", dev.synchronize)
    dev.clock = clock_mod.CLOCK
    return dev


def calibrated_gpu():
    return backend.calibration_gpu_name()


# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ms, text",
    [
        (1.2345, "1.23 ms"),
        (12.345, "12.3 ms"),
        (258.3, "258 ms"),
        (5130.0, "5130 ms"),
        (0.47, "0.470 ms"),
        (0.1, "0.100 ms"),
        (0.0999, "99.9 us"),
        (0.0117, "11.7 us"),
        (0.00117, "1.17 us"),
        (0.0, "0 us"),
        (float("nan"), "n/a"),
    ],
)
def test_format_ms(ms, text):
    assert format_ms(ms) == text


@pytest.mark.parametrize(
    "x, text", [(11.04, "11.0x"), (6.4, "6.4x"), (1.0, "1.0x"), (0.5, "0.50x"), (123.4, "123x")]
)
def test_format_ratio(x, text):
    assert format_ratio(x) == text


def test_timing_str_and_units():
    t = Timing(1.2345, [1.2, 1.2345, 1.3], modelled=False, device_name=GPU)
    assert str(t) == f"1.23 ms (measured on {GPU})"
    assert f"{t}" == str(t)
    assert t.us == pytest.approx(1234.5)
    m = Timing(0.0117, [0.0117], modelled=True, device_name=GPU)
    assert str(m) == f"11.7 us (modelled, calibrated on {GPU})"
    assert t.per(10).median_ms == pytest.approx(0.12345)
    assert t.per(10).samples_ms == pytest.approx([0.12, 0.12345, 0.13])


def test_speedup():
    slow = Timing(5.13, [5.13], False, GPU)
    fast = Timing(0.47, [0.47], False, GPU)
    assert speedup(slow, fast) == pytest.approx(5.13 / 0.47)
    assert format_ratio(speedup(slow, fast)) == "10.9x"
    assert speedup(2.0, 1.0) == 2.0


def test_speedup_refuses_mixed_backends():
    with pytest.raises(ValueError, match="measured.*modelled"):
        speedup(Timing(1.0, [1.0], False, GPU), Timing(1.0, [1.0], True, GPU))


# -- measure() with fake CUDA events ----------------------------------------------------------


def test_measure_uses_events_after_warmup_and_takes_the_median(fake_gpu):
    durations = iter([100.0, 100.0, 100.0] + [3.0, 1.0, 2.0, 50.0, 2.5])  # 3 warm-up calls first
    calls = []

    def fn():
        calls.append(1)
        fake_gpu.now_ms += next(durations)

    t = measure(fn, warmup=3, repeat=5)
    assert len(calls) == 8
    assert t.samples_ms == [3.0, 1.0, 2.0, 50.0, 2.5]  # warm-up calls are not timed
    assert t.median_ms == 2.5  # the outlier does not move the median
    assert t.modelled is False
    assert t.device_name == GPU
    assert str(t) == f"2.50 ms (measured on {GPU})"
    assert fake_gpu.events == 10  # a start and an end event per timed call
    assert fake_gpu.syncs >= 6  # after the warm-up and after each timed call


def test_measure_defaults(fake_gpu):
    n = []

    def fn():
        n.append(1)
        fake_gpu.now_ms += 1.0

    t = measure(fn)
    assert len(n) == 23 and len(t.samples_ms) == 20 and t.median_ms == 1.0


def test_measure_rejects_zero_repeat(fake_gpu):
    with pytest.raises(ValueError):
        measure(lambda: None, repeat=0)


def test_measure_without_gpu_or_simulator_says_what_to_do(monkeypatch):
    monkeypatch.setattr(backend, "is_simulated", lambda: False)
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="setup"):
        measure(lambda: None)


def test_label_measured(fake_gpu):
    assert timing.label() == f"measured on {GPU}"
    assert timing.is_modelled() is False


# -- the simulator path ------------------------------------------------------------------------


def test_measure_on_simulator_is_modelled(fake_sim):
    def fn():
        fake_sim.now_ms += 0.47

    t = measure(fn, warmup=1, repeat=3)
    assert t.modelled is True
    assert t.median_ms == pytest.approx(0.47)
    assert t.device_name == calibrated_gpu()
    assert str(t) == f"0.470 ms (modelled, calibrated on {calibrated_gpu()})"


def test_label_modelled(fake_sim):
    assert timing.is_modelled() is True
    assert timing.label() == f"modelled (calibrated on {calibrated_gpu()})"


def test_measure_host_on_simulator_reads_the_modelled_clock(fake_sim):
    def capture():
        fake_sim.clock.host_ms += 27.0

    t = measure_host(capture)
    assert t.modelled is True
    assert t.samples_ms == [27.0]
    assert fake_sim.syncs == 2  # sync=True: before and after


def test_measure_host_repeat_and_no_sync(fake_sim):
    steps = iter([5.0, 3.0, 1.0, 2.0])

    def fn():
        fake_sim.clock.host_ms += next(steps)

    t = measure_host(fn, warmup=1, repeat=3, sync=False)
    assert t.samples_ms == [3.0, 1.0, 2.0] and t.median_ms == 2.0
    assert fake_sim.syncs == 0


def test_measure_host_sync_before_only(fake_sim):
    # the CPU cost of a launch call: the device idle at the start, the clock stopped at return
    def fn():
        fake_sim.clock.host_ms += 4.0

    t = measure_host(fn, repeat=3, sync="before")
    assert t.samples_ms == [4.0, 4.0, 4.0]
    assert fake_sim.syncs == 3
    with pytest.raises(ValueError, match="sync must be True, False or 'before'"):
        measure_host(fn, sync="after")


def test_measure_host_on_gpu_uses_perf_counter(fake_gpu, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def fn():
        now[0] += 0.003  # 3 ms

    t = measure_host(fn, repeat=3)
    assert t.modelled is False
    assert t.median_ms == pytest.approx(3.0)
    assert str(t) == f"3.00 ms (measured on {GPU})"


def test_real_simulator_clock_is_compatible():
    """When the simulator package exists, its clock offers what measure_host reads."""
    clock = pytest.importorskip("graphlab_utils.simulator.clock")
    if not hasattr(clock, "CLOCK"):
        pytest.skip("the simulator's clock has no CLOCK yet")
    assert isinstance(clock.CLOCK.host_now_ms(), float)


def test_stored_outputs_name_the_timing_once_per_line():
    """A line of figures says how they were timed once, at its end, not after every figure."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    crowded = []
    for path in sorted([*root.glob("notebooks/*.ipynb"), *root.glob("solutions/*.ipynb")]):
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
                crowded += [f"{path.name} cell {i}: {line}" for line in text.splitlines()
                            if line.count("calibrated on") + line.count("measured on") > 1 or "(modelled (" in line]
    assert not crowded, "\n".join(crowded)
