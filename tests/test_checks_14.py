"""Lab 14's checks: each passes for the reference and for another correct answer, and fails with
a hint that names the trap for wrong ones.

The checks of exercises 1, 3 and 4 run the answer in a fresh process
(graphlab_utils.isolation.run_function): module-level answers travel there by reference (the
fresh process imports this module).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from graphlab_utils import training
from graphlab_utils.checks import lesson14 as L

pytestmark = pytest.mark.usefixtures("sim")


def passes(result) -> bool:
    return result.passed and result.text() == f"[PASS] {result.name}: check passed"


def fails_with(result, *words) -> bool:
    text = result.text()
    return (not result.passed) and text.startswith(f"[HINT] {result.name}: not yet.") and all(
        w in text for w in words) and "Traceback" not in text


def run(check, answer):
    return check(answer, quiet=True)


def _warm_up(model, loss_fn, optimizer, batches, side=True):
    stream = torch.cuda.Stream() if side else torch.cuda.current_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)


# ---------------------------------------------------------------------------------------
# Exercise 1: GraphedStep
# ---------------------------------------------------------------------------------------
class Reference:
    """The lab's solution."""

    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        self.graph, self.static_loss = training.capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                             set_to_none=True)

    def __call__(self):
        self.graph.replay()
        return self.static_loss


class ZeroInsideTheGraph:
    """Correct too: the gradients stay, zeroed by the graph itself; the raw capture API on a
    stream of its own; the loss returned detached."""

    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.graph.capture_begin()
            optimizer.zero_grad(set_to_none=False)  # a memset per gradient, recorded
            loss = loss_fn(model(static_x), static_y)
            loss.backward()
            optimizer.step()
            self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        self.loss = loss.detach()

    def __call__(self):
        self.graph.replay()
        return self.loss


class NoWarmUp(Reference):
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        self.graph, self.static_loss = training.capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                             set_to_none=True)


class DefaultStreamWarmUp(Reference):
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches, side=False)
        self.graph, self.static_loss = training.capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                             set_to_none=True)


class ForwardOnlyWarmUp(Reference):
    """Warms up forward and backward, never the optimizer: its state is created in the capture."""

    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for x, y in warmup_batches:
                loss_fn(model(x), y).backward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph, self.static_loss = training.capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                             set_to_none=True)


class GradientsLeftInPlace(Reference):
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        # the gradients are zeroed once, then added into at every replay
        self.graph, self.static_loss = training.capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                             set_to_none=False)


class EagerOptimizerStep:
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        optimizer.zero_grad(set_to_none=True)
        self.optimizer = optimizer
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(static_x), static_y)
            self.static_loss.backward()

    def __call__(self):
        self.graph.replay()
        self.optimizer.step()
        return self.static_loss


class SyncInTheCapture(Reference):
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(static_x), static_y)
            print("loss", float(self.static_loss))  # a sync: refused during capture
            self.static_loss.backward()
            optimizer.step()


class CapturedOnCopies(Reference):
    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        _warm_up(model, loss_fn, optimizer, warmup_batches)
        x, y = static_x.clone(), static_y.clone()  # the loader never refills these
        self.keep = (x, y)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(x), y)
            self.static_loss.backward()
            optimizer.step()


class EagerEveryCall:
    """Warm-up and capture as the reference, but each call trains eagerly."""

    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        self.inner = Reference(model, loss_fn, optimizer, static_x, static_y, warmup_batches)
        self.args = (model, loss_fn, optimizer, static_x, static_y)

    def __call__(self):
        return training.train_step(*self.args)


def test_graphed_step_reference():
    assert passes(run(L.check_graphed_step, Reference))


def test_graphed_step_zeroing_inside_the_graph_also_passes():
    assert passes(run(L.check_graphed_step, ZeroInsideTheGraph))


@pytest.mark.parametrize("answer, words", [
    (NoWarmUp, ("3 eager warm-up steps", "ran eagerly 0 times")),
    (DefaultStreamWarmUp, ("side stream", "default stream")),
    (ForwardOnlyWarmUp, ("optimizer.step() in every warm-up step", "state")),
    (GradientsLeftInPlace, (".grad tensors when the capture started", "set_to_none=True", "pile up")),
    (EagerOptimizerStep, ("optimizer.step() inside the capture", "ran 0 times inside the capture")),
    (SyncInTheCapture, ("a capture that completes", "cudaErrorStreamCapture", "sync")),
    (CapturedOnCopies, ("equal to eager", "static_x and static_y themselves")),
    (EagerEveryCall, ("a replay", "forward ran from Python")),
], ids=lambda a: a.__name__ if isinstance(a, type) else None)
def test_graphed_step_wrong_answers(answer, words):
    assert fails_with(run(L.check_graphed_step, answer), *words)


def test_graphed_step_not_a_class():
    assert fails_with(run(L.check_graphed_step, 3), "pass the class itself")


def test_graphed_step_stub():
    class Stub:
        def __init__(self, *args):
            raise NotImplementedError("Exercise: capture the step")

    assert fails_with(run(L.check_graphed_step, Stub), "NotImplementedError")


# ---------------------------------------------------------------------------------------
# Exercise 2: set_lr
# ---------------------------------------------------------------------------------------
def set_lr_fill(optimizer, value):
    for group in optimizer.param_groups:
        group["lr"].fill_(value)


def set_lr_copy(optimizer, value):
    for group in optimizer.param_groups:
        group["lr"].copy_(torch.full_like(group["lr"], value))


def set_lr_float(optimizer, value):
    for group in optimizer.param_groups:
        group["lr"] = value


def set_lr_new_tensor(optimizer, value):
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(value, device=group["lr"].device)


def set_lr_new_storage(optimizer, value):
    for group in optimizer.param_groups:
        group["lr"].data = torch.tensor(value, device=group["lr"].device)


def set_lr_first_group(optimizer, value):
    optimizer.param_groups[0]["lr"].fill_(value)


def test_set_lr_correct_answers():
    assert passes(run(L.check_set_lr, set_lr_fill))
    assert passes(run(L.check_set_lr, set_lr_copy))


@pytest.mark.parametrize("answer, words", [
    (set_lr_float, ("a float", "fill_")),
    (set_lr_new_tensor, ("another tensor", "rebinds")),
    (set_lr_new_storage, ("moved to new memory",)),
    (set_lr_first_group, ("2 parameter groups", "param_groups[1]", "every group")),
], ids=lambda a: getattr(a, "__name__", None))
def test_set_lr_wrong_answers(answer, words):
    assert fails_with(run(L.check_set_lr, answer), *words)


# ---------------------------------------------------------------------------------------
# Exercise 3: AMP
# ---------------------------------------------------------------------------------------
def _amp_warm_up(model, loss_fn, optimizer, scaler, stream, warmup, losses):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in itertools.islice(stream, warmup):
            losses.append(training.amp_backward(model, loss_fn, scaler, x, y))
            scaler.step(optimizer)
            scaler.update()
    torch.cuda.current_stream().wait_stream(side)


def amp_reference(model, loss_fn, optimizer, scaler, batches, warmup):
    losses, stream = [], iter(batches)
    _amp_warm_up(model, loss_fn, optimizer, scaler, stream, warmup, losses)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with torch.autocast(batches.x.device.type, dtype=torch.float16):
            loss = loss_fn(model(batches.x), batches.y)
        scaler.scale(loss).backward()
    for _ in stream:
        graph.replay()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach().clone())
    return losses


def amp_with_helper(model, loss_fn, optimizer, scaler, batches, warmup):
    """Correct too: the course's amp_backward inside the capture, float losses."""
    losses, stream = [], iter(batches)
    _amp_warm_up(model, loss_fn, optimizer, scaler, stream, warmup, losses)
    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = training.amp_backward(model, loss_fn, scaler, batches.x, batches.y)
    for _ in stream:
        graph.replay()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss))
    return [float(v) for v in losses]


def amp_scaler_in_the_graph(model, loss_fn, optimizer, scaler, batches, warmup):
    losses, stream = [], iter(batches)
    _amp_warm_up(model, loss_fn, optimizer, scaler, stream, warmup, losses)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = training.amp_backward(model, loss_fn, scaler, batches.x, batches.y)
        scaler.step(optimizer)
        scaler.update()
    return losses


def amp_no_update(model, loss_fn, optimizer, scaler, batches, warmup):
    losses, stream = [], iter(batches)
    for x, y in stream:
        losses.append(training.amp_backward(model, loss_fn, scaler, x, y))
        scaler.step(optimizer)
    return losses


def amp_without_autocast(model, loss_fn, optimizer, scaler, batches, warmup):
    losses, stream = [], iter(batches)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in itertools.islice(stream, warmup):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
    torch.cuda.current_stream().wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = loss_fn(model(batches.x), batches.y)
        scaler.scale(loss).backward()
    for _ in stream:
        graph.replay()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach().clone())
    return losses


def amp_replay_losses_only(model, loss_fn, optimizer, scaler, batches, warmup):
    return amp_reference(model, loss_fn, optimizer, scaler, batches, warmup)[warmup:]


def amp_all_eager(model, loss_fn, optimizer, scaler, batches, warmup):
    losses = []
    for x, y in batches:
        losses.append(training.amp_backward(model, loss_fn, scaler, x, y))
        scaler.step(optimizer)
        scaler.update()
    return losses


def test_amp_correct_answers():
    assert passes(run(L.check_amp_training, amp_reference))
    assert passes(run(L.check_amp_training, amp_with_helper))


@pytest.mark.parametrize("answer, words", [
    (amp_scaler_in_the_graph, ("a capture that completes", "GradScaler")),
    (amp_no_update, ("scaler.update()", "step() has already been called")),
    (amp_without_autocast, ("autocast",)),
    (amp_replay_losses_only, ("a list of 7 losses", "a list of 4")),
    (amp_all_eager, ("one capture", "0 times inside a capture")),
], ids=lambda a: getattr(a, "__name__", None))
def test_amp_wrong_answers(answer, words):
    assert fails_with(run(L.check_amp_training, answer), *words)


# ---------------------------------------------------------------------------------------
# Exercise 4: speed
# ---------------------------------------------------------------------------------------
class RecapturedEveryCall:
    """Right results, but a warm-up step and a new capture at every call."""

    def __init__(self, model, loss_fn, optimizer, static_x, static_y, warmup_batches):
        self.args = (model, loss_fn, optimizer, static_x, static_y)
        Reference(*self.args, warmup_batches)

    def __call__(self):
        return Reference(*self.args, [(self.args[3], self.args[4])])()


def test_speed_reference():
    assert passes(run(L.check_step_speed, Reference))


def test_speed_fails_for_a_slow_step():
    assert fails_with(run(L.check_step_speed, RecapturedEveryCall), f"at least {L.MIN_SPEEDUP}x", "one replay")
