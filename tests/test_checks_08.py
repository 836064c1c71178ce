"""Lab 08's checks: each passes for the reference and for another correct answer, and fails
with a hint (never a traceback) for wrong ones.

The answers are module-level functions and classes, as a learner writes them in a notebook
cell: check_decode_step runs the function in a fresh process (graphlab_utils.isolation),
which imports this module to find it; a lambda travels by value.
"""

from __future__ import annotations

import os

import pytest
import torch

import graphlab_utils
from graphlab_utils.checks import lesson08 as L


pytestmark = pytest.mark.usefixtures("sim")


def passes(result) -> bool:
    return result.passed and result.text() == f"[PASS] {result.name}: check passed"


def fails_with(result, *words) -> bool:
    text = result.text()
    return (not result.passed) and text.startswith(f"[HINT] {result.name}: not yet.") and all(
        w in text for w in words) and "Traceback" not in text


DEVICE = torch.device("cpu")


# ---------------------------------------------------------------------------------------
# Diagnoses
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mystery", "answer"), [(1, "b"), (1, " (B) "), (2, "d"), (2, "D."), (3, "a"), (3, "[a]")])
def test_right_causes_pass(mystery, answer):
    assert passes(L.check_cause(mystery, answer, quiet=True))


@pytest.mark.parametrize(("mystery", "answer", "word"), [
    (1, "a", "launch-bound"), (1, "c", "nodes"), (1, "d", "count the captures"),
    (2, "a", "copy_"), (2, "b", "clone"), (2, "c", "freed"),
    (3, "b", "warm-up"), (3, "c", "first error"), (3, "d", "side stream"),
])
def test_wrong_causes_fail_with_a_hint(mystery, answer, word):
    assert fails_with(L.check_cause(mystery, answer, quiet=True), word)


def test_non_answers_fail_with_a_hint():
    assert fails_with(L.check_cause(1, ..., quiet=True), "letter")
    assert fails_with(L.check_cause(2, "z", quiet=True), "letter")
    assert fails_with(L.check_cause(4, "a", quiet=True), "mystery 1, 2 or 3")


# ---------------------------------------------------------------------------------------
# Mystery 1: the graph runner
# ---------------------------------------------------------------------------------------
class ReferenceRunner:
    def __init__(self, model):
        self.model, self.graphs = model, {}

    def __call__(self, x):
        key = tuple(x.shape)
        if key not in self.graphs:
            static_in = torch.zeros_like(x)
            L.warm_up(lambda: self.model(static_in))
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_out = self.model(static_in)
            self.graphs[key] = (g, static_in, static_out)
        g, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        g.replay()
        return static_out.clone()


class PooledRunner:
    """Another correct answer: raw capture_begin/capture_end on a side stream, one shared pool."""

    def __init__(self, model):
        self.model, self.cache = model, {}
        self.pool = torch.cuda.graph_pool_handle()

    def _build(self, like):
        static_in = like.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model(static_in)
            g = torch.cuda.CUDAGraph()
            g.capture_begin(pool=self.pool)
            static_out = self.model(static_in)
            g.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        return g, static_in, static_out

    def __call__(self, x):
        key = (tuple(x.shape), x.dtype)
        if key not in self.cache:
            self.cache[key] = self._build(x)
        g, static_in, static_out = self.cache[key]
        static_in.copy_(x)
        g.replay()
        return torch.empty_like(static_out).copy_(static_out)


class AddressKeyedRunner:
    """The mystery itself: a new graph for every request."""

    def __init__(self, model):
        self.model, self.graphs = model, {}

    def __call__(self, x):
        key = (tuple(x.shape), x.data_ptr())
        if key not in self.graphs:
            L.warm_up(lambda: self.model(x))
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = self.model(x)
            self.graphs[key] = (g, out)
        g, out = self.graphs[key]
        g.replay()
        return out.clone()


class NoCloneRunner(ReferenceRunner):
    def __call__(self, x):
        super().__call__(x)
        return self.graphs[tuple(x.shape)][2]


class EagerRunner:
    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        return self.model(x)


class FirstInputRunner:
    """Captures on the first request and never copies the next ones in."""

    def __init__(self, model):
        self.model, self.graph = model, None

    def __call__(self, x):
        if self.graph is None:
            self.static_in = x
            L.warm_up(lambda: self.model(self.static_in))
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.model(self.static_in)
        self.graph.replay()
        return self.out.clone()


class SlowRunner(ReferenceRunner):
    """Right results, one capture, but a warm-up pass of the model at every call."""

    def __call__(self, x):
        L.warm_up(lambda: self.model(x), iters=1)
        return super().__call__(x)


def test_runner_reference_passes():
    assert passes(L.check_runner(ReferenceRunner, quiet=True))


def test_runner_other_correct_answer_passes():
    assert passes(L.check_runner(PooledRunner, quiet=True))


@pytest.mark.parametrize(("runner", "words"), [
    (AddressKeyedRunner, ("at most 1 capture", "6 captures", "data_ptr")),
    (NoCloneRunner, ("overwritten", "clone")),
    (EagerRunner, ("6 replays", "0 replays")),
    (FirstInputRunner, ("wrong results", "copy_")),
    (SlowRunner, ("faster than eager", "modelled")),
])
def test_runner_wrong_answers_fail_with_a_hint(runner, words):
    assert fails_with(L.check_runner(runner, quiet=True), *words)


def test_runner_stub_and_non_class():
    class Stub:
        def __init__(self, model):
            pass

        def __call__(self, x):
            raise NotImplementedError("Exercise")

    assert fails_with(L.check_runner(Stub, quiet=True), "NotImplementedError")
    assert fails_with(L.check_runner(None, quiet=True), "the class GraphRunner")


# ---------------------------------------------------------------------------------------
# Mystery 2: the step runner
# ---------------------------------------------------------------------------------------
class ReferenceStepRunner:
    def __init__(self, shape):
        self.static_x = torch.zeros(shape, device=DEVICE)
        self.static_t = torch.zeros((), device=DEVICE)
        self.graph = None

    def __call__(self, x, t):
        self.static_x.copy_(x)
        self.static_t.fill_(t)
        if self.graph is None:
            L.warm_up(lambda: L.denoise_step(self.static_x, self.static_t))
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = L.denoise_step(self.static_x, self.static_t)
        self.graph.replay()
        return self.static_out.clone()


class EagerlyCapturedStepRunner:
    """Another correct answer: captured in __init__, t copied in from a host tensor."""

    def __init__(self, shape):
        self.x = torch.zeros(shape, device=DEVICE)
        self.t = torch.full((1, 1), 0.5, device=DEVICE)
        L.warm_up(lambda: L.denoise_step(self.x, self.t))
        self.g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.g):
            self.out = L.denoise_step(self.x, self.t)

    def __call__(self, x, t):
        self.x.copy_(x)
        self.t.copy_(torch.tensor([[t]]))
        self.g.replay()
        return self.out.clone()


class FrozenStepRunner:
    """The mystery itself."""

    def __init__(self, shape):
        self.static_x = torch.zeros(shape, device=DEVICE)
        self.graph = None

    def __call__(self, x, t):
        self.static_x.copy_(x)
        if self.graph is None:
            L.warm_up(lambda: L.denoise_step(self.static_x, t))
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = L.denoise_step(self.static_x, t)
        self.graph.replay()
        return self.static_out.clone()


class RebindingStepRunner(ReferenceStepRunner):
    def __call__(self, x, t):
        if self.graph is None:
            self.static_x.copy_(x)
        else:
            self.static_x = x.clone()        # rebinding: the graph keeps the first buffer
        self.static_t.fill_(t)
        if self.graph is None:
            L.warm_up(lambda: L.denoise_step(self.static_x, self.static_t))
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = L.denoise_step(self.static_x, self.static_t)
        self.graph.replay()
        return self.static_out.clone()


class GraphPerTStepRunner:
    """Right results, but a graph for every value of t."""

    def __init__(self, shape):
        self.static_x = torch.zeros(shape, device=DEVICE)
        self.graphs = {}

    def __call__(self, x, t):
        self.static_x.copy_(x)
        if t not in self.graphs:
            L.warm_up(lambda: L.denoise_step(self.static_x, t))
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = L.denoise_step(self.static_x, t)
            self.graphs[t] = (g, out)
        g, out = self.graphs[t]
        g.replay()
        return out.clone()


def test_step_runner_reference_passes():
    assert passes(L.check_step_runner(ReferenceStepRunner, quiet=True))


def test_step_runner_other_correct_answer_passes():
    assert passes(L.check_step_runner(EagerlyCapturedStepRunner, quiet=True))


@pytest.mark.parametrize(("runner", "words"), [
    (FrozenStepRunner, ("only t changed", "baked", "fill_")),
    (RebindingStepRunner, ("only x changed", "copy_")),
    (GraphPerTStepRunner, ("1 capture", "5 captures", "device tensor")),
])
def test_step_runner_wrong_answers_fail_with_a_hint(runner, words):
    assert fails_with(L.check_step_runner(runner, quiet=True), *words)


# ---------------------------------------------------------------------------------------
# Mystery 3: the decode step (checked in a fresh process)
# ---------------------------------------------------------------------------------------
def decode_with_flag(h, w):
    h = torch.relu(h @ w)
    finite = torch.isfinite(h).all()
    return torch.softmax(h, dim=-1), finite


def scrub(h):
    return torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)


def decode_scrubbed(h, w):
    """Another correct answer: no flag, non-finite values replaced on the device."""
    return torch.softmax(scrub(torch.relu(h @ w)), dim=-1)


def check_finite(h):
    if not torch.isfinite(h).all():
        raise FloatingPointError("non-finite activations")
    return h


def decode_guarded(h, w):
    h = torch.relu(h @ w)
    h = check_finite(h)
    return torch.softmax(h, dim=-1)


def decode_cpu_guard(h, w):
    h = torch.relu(h @ w)
    assert bool(torch.isfinite(h).all().cpu())
    return torch.softmax(h, dim=-1)


def decode_no_relu(h, w):
    return torch.softmax(h @ w, dim=-1)


def test_decode_reference_passes():
    assert passes(L.check_decode_step(decode_with_flag, quiet=True))


def test_decode_other_correct_answer_passes():
    assert passes(L.check_decode_step(decode_scrubbed, quiet=True))


@pytest.mark.parametrize(("fn", "words"), [
    (decode_guarded, ("capture that succeeds", "cudaErrorStreamCaptureUnsupported", "if tensor:")),
    (decode_cpu_guard, ("capture that succeeds", "RuntimeError", "device")),
    (decode_no_relu, ("softmax(relu(h @ w)", "different values")),
])
def test_decode_wrong_answers_fail_with_a_hint(fn, words):
    assert fails_with(L.check_decode_step(fn, quiet=True), *words)


def test_decode_stub():
    def stub(h, w):
        raise NotImplementedError("Exercise")

    assert fails_with(L.check_decode_step(stub, quiet=True), "NotImplementedError")


def test_decode_lambda_is_captured_in_a_fresh_process(capsys):
    guarded = lambda h, w: (  # noqa: E731
        print("ran in", os.getpid()) or torch.softmax(torch.relu(h @ w) if torch.isfinite(h).all() else h, dim=-1))
    assert fails_with(L.check_decode_step(guarded, quiet=True), "the capture failed (cudaErrorStreamCaptureUnsupported)",
                      "if tensor:")
    pids = {int(line.split()[-1]) for line in capsys.readouterr().out.splitlines()}
    assert len(pids) == 1 and os.getpid() not in pids


def test_an_error_in_code_the_check_ran_in_a_fresh_process_names_its_line():
    """The decode step's check runs the learner's step in a fresh process: the hint still quotes its line."""
    def decode_step(h, w):
        logits = h @ w
        return logits.softmax(-1) * temprature  # noqa: F821 - the learner's typo

    r = L.check_decode_step(decode_step, quiet=True)
    assert r.seen == "NameError: name 'temprature' is not defined"
    assert "of decode_step(): `return logits.softmax(-1) * temprature" in r.idea
