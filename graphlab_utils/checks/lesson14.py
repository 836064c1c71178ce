"""Checks of lab 14, a whole training step in one graph.

The lab trains the lesson's model (``graphlab_utils.training``: the MLP classifier, the
Gaussian-cluster data, :class:`~graphlab_utils.training.StaticBatches`) and the learner writes:

* ``GraphedStep(model, loss_fn, optimizer, static_x, static_y, warmup_batches)``, checked by
  :func:`check_graphed_step`: one eager training step per batch of ``warmup_batches`` on a
  side stream, then forward, loss, backward and ``optimizer.step()`` captured as one graph
  that reads ``static_x`` / ``static_y``; calling the object replays it and returns the loss.
  The check trains with it (an AdamW with ``capturable=True`` and a tensor learning rate, a step
  schedule) against eager training, step by step, losses and weights, over :data:`STEPS` replays. A probe model logs every
  Python call of its ``forward`` (inside a capture or not, on which stream, with gradients or
  without, with the optimizer's state created or not), and the optimizer counts its Python
  ``step()`` calls, so the hint names the trap: no warm-up, a warm-up on the default stream or
  without optimizer steps, gradients left in place at the capture (they pile up across
  replays), a step that runs the model or the optimizer eagerly, a sync inside the capture.
* ``set_lr(optimizer, value)``, checked by :func:`check_set_lr`: a hand-written schedule that a
  captured step sees: the value written into each group's learning-rate tensor. The check
  captures a step itself, calls ``set_lr``, replays, and compares with eager steps at the new
  rate, with one parameter group and with two.
* ``amp_training(model, loss_fn, optimizer, scaler, batches, warmup)``, checked by
  :func:`check_amp_training`: float16 AMP training with the forward, loss and scaled backward
  captured and ``scaler.step`` / ``scaler.update`` eager; compared with eager AMP training over
  batches one of which overflows (the scaler must skip it and halve its scale).
* :func:`check_step_speed`: the learner's ``GraphedStep`` at least :data:`MIN_SPEEDUP` times
  faster than an eager step with a plain AdamW, side by side in one run (modelled on the
  simulator).

The checks that run the learner's capture do it in a fresh process (a failed capture damages a
process on a GPU, lesson 02): a learner's class or function defined in the notebook travels
there by value. No check compares against an absolute time.
"""
from __future__ import annotations

import itertools

from graphlab_utils.errors import error_name_in
from graphlab_utils.recipes import describe, error_line, first_line, plural

from .core import check, fail, in_fresh_process, ok, ok_class, ok_faster, ok_function
from .core import device as _device

__all__ = [
    "WARMUP", "STEPS", "MIN_SPEEDUP",
    "check_graphed_step", "check_set_lr", "check_amp_training", "check_step_speed",
]

WARMUP = 3  # warm-up batches handed to the learner's code
STEPS = 6  # replays compared with eager
MIN_SPEEDUP = 2.0  # the whole step as one graph vs an eager step (the lesson's: several times)
_DATA_SEED = 3  # the lab's batches differ from the lesson's


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
def _batches(device, overflow_at=()):
    from graphlab_utils import training

    dataset = training.make_dataset(n=640, seed=_DATA_SEED)  # 10 batches of 64
    loader = training.make_loader(dataset, seed=_DATA_SEED, device=device)
    return training.StaticBatches(loader, device, overflow_at=overflow_at)


def _probe_class():
    import torch
    from torch import nn

    from graphlab_utils import training

    class Probe(nn.Module):
        """The lesson's model, logging every Python call of its forward."""

        def __init__(self, device):
            super().__init__()
            self.net = training.make_model(device, seed=0)
            self.log = []
            self.optimizer = None

        def forward(self, x):
            self.log.append({
                "capturing": bool(torch.cuda.is_current_stream_capturing()),
                "default_stream": torch.cuda.current_stream() == torch.cuda.default_stream(),
                "grads": any(p.grad is not None for p in self.net.parameters()),
                "state": bool(self.optimizer is not None and len(self.optimizer.state)),
                "autocast": torch.is_autocast_enabled(x.device.type),
            })
            return self.net(x)

    return Probe


def _count_steps(optimizer):
    """Count the Python calls of ``optimizer.step()`` (a replay makes none).

    The counter is a method bound to the optimizer, as ``step`` is: a learning-rate scheduler
    built afterwards wraps it like the original.
    """
    import types

    calls = {"eager": 0, "captured": 0}
    original = optimizer.step

    def step(self, *args, **kwargs):
        import torch

        calls["captured" if torch.cuda.is_current_stream_capturing() else "eager"] += 1
        return original(*args, **kwargs)

    optimizer.step = types.MethodType(step, optimizer)
    return calls


def _capture_error_hint(exc: BaseException, where: str) -> None:
    """A failed capture's hint: the sync, the missing warm-up, or the error as it is."""
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__context__
    text = " ".join(str(e) for e in chain)
    names = {error_name_in(str(e)) for e in chain} - {None}
    if "CUBLAS_STATUS_NOT_INITIALIZED" in text:
        fail(f"{where}: a capture that completes", error_line(chain[-1]),
             "the capture ran the first matrix product of the process: warm up first, with full eager "
             "training steps on a side stream, so that libraries are set up before the capture (lesson 01)")
    if names & {"cudaErrorStreamCaptureUnsupported", "cudaErrorStreamCaptureInvalidated"}:
        first = chain[-1]
        name = error_name_in(str(first))
        fail(f"{where}: a capture that completes",
             f"{type(first).__name__}" + (f" ({name})" if name else "") + f": {first_line(first)}",
             "something inside the capture waited for the GPU (a sync: .item(), float(loss), print(loss), "
             ".cpu(), a GradScaler's step for a typical optimizer). Nothing runs during a capture, so there "
             "is no value to wait for: keep it out of the graph and read values after a replay (lesson 02)")
    raise exc


# ---------------------------------------------------------------------------------------
# Exercise 1: the whole step in one graph
# ---------------------------------------------------------------------------------------
@check("graphed training step")
def check_graphed_step(GraphedStep):
    """``GraphedStep(model, loss_fn, optimizer, static_x, static_y, warmup_batches)``; calling it
    trains one step on what the static inputs hold and returns the loss."""
    ok_class(GraphedStep, "a class GraphedStep(model, loss_fn, optimizer, static_x, static_y, warmup_batches)")
    in_fresh_process(_verify_graphed_step, GraphedStep)


def _reference_run(device, steps=STEPS):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    model = training.make_model(device, seed=0)
    optimizer = training.make_optimizer(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    stream = iter(_batches(device))
    run = training.Run([], [])
    training.quiet_capturable(optimizer)
    for x, y in itertools.islice(stream, WARMUP):
        run.losses.append(training.train_step(model, F.cross_entropy, optimizer, x, y).clone())
        run.weights.append(training.weights(model))
    for x, y in itertools.islice(stream, steps):
        run.losses.append(training.train_step(model, F.cross_entropy, optimizer, x, y).clone())
        scheduler.step()
        run.weights.append(training.weights(model))
    return run


def _verify_graphed_step(GraphedStep):
    """In the check's fresh process: build, inspect the probe's log, train against eager."""
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    device = _device()
    reference = _reference_run(device)
    probe = _probe_class()(device)
    optimizer = training.make_optimizer(probe.net)
    training.quiet_capturable(optimizer)
    probe.optimizer = optimizer
    steps_called = _count_steps(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    batches = _batches(device)
    stream = iter(batches)
    warmup = itertools.islice(stream, WARMUP)
    where = "GraphedStep(...)"
    try:
        step = GraphedStep(probe, F.cross_entropy, optimizer, batches.x, batches.y, warmup)
    except Exception as exc:  # noqa: BLE001 - a failed capture gets its own hint
        if not [e for e in probe.log if not e["capturing"]]:
            fail(f"{where}: {WARMUP} eager warm-up steps, then a capture",
                 f"{error_line(exc)}, with no warm-up before it",
                 "warm up first: one full eager training step (zero_grad, forward, loss, backward, "
                 "optimizer.step) per batch of warmup_batches, on a side stream; then capture (lesson 14, section 7)")
        _capture_error_hint(exc, where)

    eager_calls = [e for e in probe.log if not e["capturing"]]
    captured = [e for e in probe.log if e["capturing"]]
    ok(len(eager_calls) == WARMUP,
       f"{where}: {WARMUP} eager warm-up steps, one per batch of warmup_batches",
       f"the model ran eagerly {plural(len(eager_calls), 'time')} before the capture",
       "iterate over warmup_batches and run one full training step per batch: they are the run's first "
       "steps, on real data, and they create the optimizer's state before the capture (lesson 14, section 7)")
    ok(not any(e["default_stream"] for e in eager_calls),
       f"{where}: the warm-up on a side stream",
       "the warm-up ran on the default stream",
       "PyTorch's recipe: side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream()); "
       "the steps inside `with torch.cuda.stream(side):`; then torch.cuda.current_stream().wait_stream(side) "
       "(lesson 01)")
    ok(steps_called["eager"] >= WARMUP,
       f"{where}: optimizer.step() in every warm-up step",
       f"optimizer.step() ran {plural(steps_called['eager'], 'time')} in the warm-up",
       "the warm-up runs full steps: AdamW creates its state (moments, step count) at its first step(); "
       "created inside the capture, every replay would create it again (lesson 14, section 7)")
    ok(len(captured) == 1,
       f"{where}: one capture of the step",
       f"the model ran {plural(len(captured), 'time')} inside a capture",
       "capture once, in __init__: `with torch.cuda.graph(g):` around forward, loss, backward and "
       "optimizer.step(), reading static_x and static_y")
    ok(steps_called["captured"] == 1,
       f"{where}: optimizer.step() inside the capture",
       f"optimizer.step() ran {plural(steps_called['captured'], 'time')} inside the capture",
       "the whole step goes into the graph, the optimizer's update included: call optimizer.step() after "
       "loss.backward(), inside the capture")
    grads_at_capture = captured[0]["grads"]

    run = training.Run([], [])
    for i in range(STEPS):
        next(stream)  # the next batch, copied into static_x / static_y
        log_at, eager_steps = len(probe.log), steps_called["eager"]
        loss = step()
        what = f"call {i + 1} of the step"
        ok(len(probe.log) == log_at,
           f"{what}: a replay, which runs no Python code of the model",
           "the model's forward ran from Python",
           "__call__ only replays the graph (self.graph.replay()) and returns the static loss: no forward, "
           "no capture")
        ok(steps_called["eager"] == eager_steps,
           f"{what}: a replay, the optimizer's update inside it",
           "optimizer.step() ran eagerly",
           "the graph already holds optimizer.step(): __call__ replays it and nothing more")
        ok(isinstance(loss, torch.Tensor) and loss.numel() == 1,
           f"{what}: the loss, a tensor of one element",
           describe(loss),
           "return the static loss the capture produced (self.static_loss)")
        run.losses.append(loss.detach().clone())
        scheduler.step()
        run.weights.append(training.weights(probe))

    replays = training.Run(reference.losses[WARMUP:], reference.weights[WARMUP:])
    same = training.same_run(replays, run)
    if same["weights equal"]:
        return
    moved = any(not torch.equal(a, b) for a, b in zip(run.weights, run.weights[1:]))
    step_no = WARMUP + (same["first difference"] or 1)
    expected = f"losses and weights equal to eager training at every step ({STEPS} replays)"
    seen = f"they differ from step {step_no} on (the {WARMUP} warm-up steps were eager)"
    if not moved:
        fail(expected, seen + "; the weights did not change between replays",
             "the replay must update the weights: capture optimizer.step() after loss.backward(), on the "
             "optimizer you were given")
    if grads_at_capture:
        fail(expected, seen + "; the parameters had .grad tensors when the capture started",
             "call optimizer.zero_grad(set_to_none=True) right before the capture: with .grad tensors in "
             "place, the captured backward adds into them, and the gradients pile up replay after replay; "
             "set to None, the backward creates them in the graph's pool and overwrites them (lesson 14, section 4)")
    fail(expected, seen,
         "capture on static_x and static_y themselves (not copies: the loader refills those tensors), "
         "warm up with one full step per warm-up batch, and return the loss the capture produced")


# ---------------------------------------------------------------------------------------
# Exercise 2: a learning rate the graph sees
# ---------------------------------------------------------------------------------------
def _lr_twins(device, groups: int):
    """Two identical runs (model, AdamW with tensor learning rates): one to capture, one eager."""
    import torch

    from graphlab_utils import training

    runs = []
    for _ in range(2):
        model = training.make_model(device, seed=0)
        params = list(model.parameters())
        if groups == 1:
            param_groups = [{"params": params, "lr": torch.tensor(0.01, device=device)}]
        else:
            half = len(params) // 2
            param_groups = [{"params": params[:half], "lr": torch.tensor(0.01, device=device)},
                            {"params": params[half:], "lr": torch.tensor(0.005, device=device)}]
        optimizer = torch.optim.AdamW(param_groups, capturable=True)
        training.quiet_capturable(optimizer)
        runs.append((model, optimizer))
    return runs


@check("learning rate seen by the graph")
def check_set_lr(set_lr):
    """``set_lr(optimizer, value)``: every group's learning rate becomes ``value``, and a captured
    step uses it at its next replay."""
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    ok_function(set_lr, "a function set_lr(optimizer, value)")
    device = _device()
    for groups in (1, 2):
        (model, optimizer), (twin, twin_optimizer) = _lr_twins(device, groups)
        batches, twin_batches = _batches(device), _batches(device)
        stream, twin_stream = iter(batches), iter(twin_batches)
        step = training.GraphedTrainStep(model, F.cross_entropy, optimizer, batches.x, batches.y,
                                         itertools.islice(stream, WARMUP))
        for x, y in itertools.islice(twin_stream, WARMUP):
            training.train_step(twin, F.cross_entropy, twin_optimizer, x, y)
        where = f"{plural(groups, 'parameter group')}"
        for value in (0.004, 0.0005):
            tensors = [g["lr"] for g in optimizer.param_groups]
            addresses = [t.data_ptr() for t in tensors]
            set_lr(optimizer, value)
            for i, (group, tensor, address) in enumerate(zip(optimizer.param_groups, tensors, addresses)):
                now = group["lr"]
                name = f"{where}, after set_lr(optimizer, {value}): param_groups[{i}]['lr']"
                ok(isinstance(now, torch.Tensor),
                   f"{name}: still the tensor the graph reads",
                   f"a {type(now).__name__}",
                   "the captured step reads the learning rate from that tensor's memory at every replay; a float "
                   "put in its place is never seen (and a float from the start would be baked at capture). Write "
                   "the value into the tensor: group['lr'].fill_(value)")
                ok(now is tensor and now.data_ptr() == address,
                   f"{name}: still the tensor the graph reads",
                   "another tensor" if now is not tensor else "the same tensor object, moved to new memory",
                   "assigning a new tensor rebinds the dictionary entry, and the graph keeps reading the old one "
                   "(lesson 04): write into the existing tensor, group['lr'].fill_(value)")
                ok(abs(float(now) - value) <= 1e-9 + 1e-6 * value,
                   f"{name}: {value}",
                   f"{float(now):.6g}",
                   "set every group's rate to the value given")
            for group in twin_optimizer.param_groups:
                group["lr"].fill_(value)
            next(stream)
            x, y = next(twin_stream)
            step()
            training.train_step(twin, F.cross_entropy, twin_optimizer, x, y)
            ok(torch.allclose(training.weights(model), training.weights(twin), rtol=1e-4, atol=1e-6),
               f"{where}: the replay after set_lr(optimizer, {value}) steps as eager does at that rate",
               "other weights",
               "write the value into each group's learning-rate tensor in place, and change nothing else")


# ---------------------------------------------------------------------------------------
# Exercise 3: AMP with a captured backward
# ---------------------------------------------------------------------------------------
AMP_OVERFLOW_AT = 5  # the batch whose float16 gradients overflow (a replay)
AMP_BATCHES = 7


@check("AMP with a captured backward")
def check_amp_training(amp_training):
    """``amp_training(model, loss_fn, optimizer, scaler, batches, warmup)`` -> one loss per batch."""
    ok_function(amp_training, "a function amp_training(model, loss_fn, optimizer, scaler, batches, warmup)")
    in_fresh_process(_verify_amp_training, amp_training)


class _FirstBatches:
    """The first ``n`` batches of a StaticBatches, with its static tensors."""

    def __init__(self, batches, n):
        self.batches, self.n = batches, n
        self.x, self.y = batches.x, batches.y

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.n)


def _verify_amp_training(amp_training):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    device = _device()
    model = training.make_model(device, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type)
    start_scale = scaler.get_scale()
    reference = training.train_eager_amp(model, F.cross_entropy, optimizer, scaler,
                                         _FirstBatches(_batches(device, (AMP_OVERFLOW_AT,)), AMP_BATCHES))
    reference_scale = scaler.get_scale()

    probe = _probe_class()(device)
    optimizer = torch.optim.AdamW(probe.net.parameters(), lr=0.01)
    probe.optimizer = optimizer
    scaler = torch.amp.GradScaler(device.type)
    batches = _FirstBatches(_batches(device, (AMP_OVERFLOW_AT,)), AMP_BATCHES)
    where = "amp_training(...)"
    try:
        losses = amp_training(probe, F.cross_entropy, optimizer, scaler, batches, WARMUP)
    except RuntimeError as exc:
        if "step() has already been called since the last update()" in str(exc):
            fail(f"{where}: scaler.step(optimizer), then scaler.update(), at every step",
                 error_line(exc),
                 "call scaler.update() after each scaler.step(optimizer): it adjusts the scale (halved after an "
                 "overflow, grown after a run of good steps) and readies the scaler for the next step")
        _capture_error_hint(exc, where)

    captured = [e for e in probe.log if e["capturing"]]
    eager_calls = [e for e in probe.log if not e["capturing"]]
    ok(len(captured) == 1,
       f"{where}: one capture of forward, loss and scaled backward",
       f"the model ran {plural(len(captured), 'time')} inside a capture",
       "capture once, after the warm-up: `with torch.cuda.graph(g):` around the forward and loss (under "
       "autocast) and scaler.scale(loss).backward()")
    ok(len(eager_calls) == WARMUP,
       f"{where}: {WARMUP} eager warm-up steps, then replays only",
       f"the model ran eagerly {plural(len(eager_calls), 'time')}",
       f"warm up with the first {WARMUP} batches (full AMP steps, on a side stream), capture, then replay the "
       "graph for every other batch: the model's forward never runs from Python again")
    ok(all(e["autocast"] for e in probe.log),
       f"{where}: forward and loss under autocast, in the warm-up and in the capture",
       "the model ran without autocast",
       "wrap forward and loss in `with torch.autocast(device_type, dtype=torch.float16):` (device_type: "
       "x.device.type)")
    ok(isinstance(losses, (list, tuple)) and len(losses) == AMP_BATCHES,
       f"{where}: a list of {AMP_BATCHES} losses, one per batch",
       describe(losses) if not isinstance(losses, (list, tuple)) else f"a list of {len(losses)}",
       "append each step's loss (warm-up steps included); clone the static loss after each replay")
    try:
        run = training.Run([torch.as_tensor(float(v)) for v in losses], [])
    except (TypeError, ValueError, RuntimeError):
        fail(f"{where}: a list of losses (tensors of one element or numbers)",
             f"a list of {describe(losses[0])}", "append loss.detach().clone() (or float(loss)) per step")
    expected = training.Run([torch.as_tensor(float(v)) for v in reference.losses], [])
    same = training.same_run(expected, run)
    scale = scaler.get_scale()
    ok(scale == reference_scale,
       f"{where}: the scale halved by the overflow at step {AMP_OVERFLOW_AT}: {start_scale:g} -> {reference_scale:g}",
       f"{start_scale:g} -> {scale:g}",
       "run scaler.step(optimizer) and scaler.update() after every replay: the scaler finds the overflow, "
       "skips that step and halves the scale; the captured backward reads the scale tensor, so it sees the "
       "new value")
    ok(same["losses equal"],
       f"{where}: the losses of eager AMP training at every step",
       f"they differ from step {same['first difference']} on",
       "the graph holds forward, loss and the scaled backward (zero the gradients to None before capturing); "
       "after each replay run scaler.step(optimizer) and scaler.update(), eagerly, and keep a clone of the loss")
    ok(torch.allclose(training.weights(probe), training.weights(model), rtol=1e-4, atol=1e-6),
       f"{where}: the weights of eager AMP training after {AMP_BATCHES} steps",
       "other weights",
       "every step: replay, then scaler.step(optimizer) and scaler.update()")


# ---------------------------------------------------------------------------------------
# Exercise 4: speed
# ---------------------------------------------------------------------------------------
@check("training step speed")
def check_step_speed(GraphedStep):
    """The learner's GraphedStep at least MIN_SPEEDUP times faster than an eager step."""
    ok_class(GraphedStep, "the class GraphedStep")
    in_fresh_process(_verify_step_speed, GraphedStep)


def _verify_step_speed(GraphedStep):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import timing, training

    device = _device()
    batches = _batches(device)
    x, y = next(iter(batches))
    eager_model = training.make_model(device, seed=0)
    eager_optimizer = torch.optim.AdamW(eager_model.parameters(), lr=0.01)  # eager at its best
    model = training.make_model(device, seed=0)
    optimizer = training.make_optimizer(model)
    training.quiet_capturable(optimizer)
    try:
        step = GraphedStep(model, F.cross_entropy, optimizer, x, y, [(x, y)] * WARMUP)
    except Exception as exc:  # noqa: BLE001
        _capture_error_hint(exc, "GraphedStep(...)")
    graphed = timing.measure(step, warmup=2, repeat=5)
    eager = timing.measure(lambda: training.train_step(eager_model, F.cross_entropy, eager_optimizer, x, y),
                           warmup=2, repeat=5)
    ok_faster(graphed, eager, MIN_SPEEDUP, f"a graphed step at least {MIN_SPEEDUP}x faster than an eager one",
              "a call should be one replay and nothing more: no capture, no synchronize, no eager forward or "
              "optimizer step, no .item() per call")
