"""Lesson 14's training helpers: a small classifier, batches fed through static inputs, and a
whole training step (forward, loss, backward, optimizer step) captured as one CUDA graph.

Lesson 14, its lab and its checks share this module, so they train identical models on
identical batches. Nothing is downloaded: the data and the initial weights are drawn from
fixed seeds on the CPU and then moved to the device, so both backends start from the same
numbers and see the same batches in the same order.

The pieces, in the order a training loop meets them:

* :func:`make_dataset`: a synthetic classification set (Gaussian clusters), on the CPU;
  :func:`make_loader`: a ``DataLoader`` over it, shuffled by a seeded generator, with a fixed
  batch size (``drop_last=True``: a graph is shape-specialised, lesson 05; the last, shorter
  batch would need a graph of its own).
* :class:`StaticBatches`: iterating it copies each batch of a loader into the same two device
  tensors, ``x`` and ``y``, and yields them: the graph's static inputs (lesson 04). It can spoil
  chosen batches (``overflow_at``) for the grad scaler's part of the lesson.
* :func:`make_model`: the MLP classifier, initialised from a seed on the CPU.
* :func:`make_optimizer`: AdamW as a whole-step graph needs it: ``capturable=True`` (its step
  counter and bias corrections live on the device) and the learning rate in a 0-dim device
  tensor (a scheduler fills it in place; a Python float would be baked into the graph).
* :func:`train_step`: one eager training step; :func:`train_eager`: the reference loop, which
  records the loss and the weights after every step.
* :func:`warm_up_steps`: real training steps on a side stream before the capture (PyTorch's
  recipe: they are steps of the training run, so they use real batches).
* :func:`capture_step`: ``optimizer.zero_grad(set_to_none=True)``, then the whole step in one
  ``torch.cuda.graph``; returns ``(graph, static_loss)``.
* :class:`GraphedTrainStep`: warm-up and capture in one object; calling it replays the step
  on whatever the static inputs hold. :func:`train_graphed`: the loop around it.
* :func:`weights`, :func:`same_run`: compare two runs step by step.
* AMP (float16 autocast and ``GradScaler``): :func:`amp_backward`, :func:`train_eager_amp` (the
  reference) and :func:`train_graphed_amp` (forward, loss and scaled backward in the graph,
  ``scaler.step`` and ``scaler.update`` eager; both in the graph with a fused optimizer).
  ``StaticBatches(..., overflow_at=(8,))`` spoils batch 8 so that its float16 gradients overflow.
* :func:`data_parallel_training`: one rank of data-parallel training (``multigpu.launch`` runs it
  on every rank), the gradients' all-reduce captured in the whole step;
  :data:`DDP_CONDITIONS` and :func:`ddp_plan`: what PyTorch's notes require before a backward
  pass with DDP's all-reduce can be captured, checked against a plan.

Every function uses the genuine ``torch.cuda`` names, so it reads the same on a GPU and on the
simulator.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from graphlab_utils.recipes import RTOL, ATOL

__all__ = [
    "FEATURES", "CLASSES", "WIDTH", "DEPTH", "BATCH", "LR",
    "make_dataset", "make_loader", "StaticBatches", "make_model", "make_optimizer",
    "train_step", "train_eager", "warm_up_steps", "capture_step", "GraphedTrainStep", "train_graphed",
    "Run", "weights", "same_run", "quiet_capturable",
    "AMP_DTYPE", "OVERFLOW", "amp_backward", "train_eager_amp", "train_graphed_amp",
    "data_parallel_training", "DDP_CONDITIONS", "DDP_MIN_WARMUP", "NCCL_MIN_CAPTURE", "ddp_plan",
]

FEATURES, CLASSES = 32, 4  # a sample: 32 features, one of 4 classes
WIDTH, DEPTH = 128, 4  # the MLP: 4 hidden Linear+ReLU layers of width 128
BATCH = 64
LR = 1e-2
OVERFLOW = 1e4  # a batch multiplied by this overflows float16 in the backward pass


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def make_dataset(n: int = 2048, seed: int = 0, features: int = FEATURES, classes: int = CLASSES,
                 spread: float = 1.5) -> torch.utils.data.TensorDataset:
    """``n`` samples of ``classes`` Gaussian clusters in ``features`` dimensions (CPU tensors).

    The clusters overlap (``spread``), so a small model keeps learning for a few epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    x = centres[labels] + spread * torch.randn(n, features, generator=gen)
    return torch.utils.data.TensorDataset(x, labels)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int = BATCH, seed: int = 0,
                device: Any = None) -> torch.utils.data.DataLoader:
    """Shuffled batches of ``batch_size`` in an order fixed by ``seed``; the last, shorter batch
    is dropped. Batches come in pinned host memory when ``device`` is a CUDA device, so the copy
    into the static inputs can be asynchronous."""
    pin = device is not None and torch.device(device).type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(seed), pin_memory=pin)


class StaticBatches:
    """A data loader that feeds a graph: every batch is copied into the same two device tensors.

    ``for x, y in StaticBatches(loader, device)`` yields ``self.x`` and ``self.y`` every time,
    refilled with ``copy_`` from the loader's next batch: the addresses a captured step reads
    never change, only what they hold (lesson 04). The loader must give batches of one shape.
    ``overflow_at`` names steps (counted from 1) whose batch is multiplied by :data:`OVERFLOW`
    once copied in: their float16 gradients overflow, and a grad scaler skips those steps.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: Any, overflow_at: Iterable[int] = ()):
        sample_x, sample_y = loader.dataset[0]
        batch = loader.batch_size
        if batch is None or not loader.drop_last:
            raise ValueError("StaticBatches needs a loader with a fixed batch_size and drop_last=True: "
                             "a captured step only takes batches of the shape it was captured for")
        self.loader = loader
        self.overflow_at = frozenset(int(step) for step in overflow_at)
        self.x = torch.zeros(batch, *sample_x.shape, dtype=sample_x.dtype, device=device)
        self.y = torch.zeros(batch, *sample_y.shape, dtype=sample_y.dtype, device=device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, (xb, yb) in enumerate(self.loader, start=1):
            self.x.copy_(xb, non_blocking=True)
            self.y.copy_(yb, non_blocking=True)
            if step in self.overflow_at:
                self.x.mul_(OVERFLOW)
            yield self.x, self.y


# ---------------------------------------------------------------------------------------
# Model and optimizer
# ---------------------------------------------------------------------------------------
def make_model(device: Any, seed: int = 0, features: int = FEATURES, width: int = WIDTH,
               depth: int = DEPTH, classes: int = CLASSES) -> nn.Sequential:
    """An MLP classifier: ``depth`` hidden Linear+ReLU layers of ``width``, then a Linear to the
    class logits. The weights are drawn on the CPU from ``seed`` (PyTorch's default ranges for
    ``Linear``, from a generator of their own), then moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    n_in = features
    with torch.random.fork_rng(devices=[]):  # Linear's own initialisation leaves the global generator as it was
        for n_out in [width] * depth + [classes]:
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
            n_in = n_out
    model = nn.Sequential(*layers[:-1])  # no ReLU after the logits
    with torch.no_grad():
        for linear in (m for m in model if isinstance(m, nn.Linear)):
            bound = 1.0 / linear.in_features ** 0.5
            linear.weight.uniform_(-bound, bound, generator=gen)
            linear.bias.uniform_(-bound, bound, generator=gen)
    return model.to(device)


def make_optimizer(model: nn.Module, lr: float = LR, *, capturable: bool = True,
                   tensor_lr: bool = True) -> torch.optim.AdamW:
    """AdamW for a whole-step graph: ``capturable=True`` and the learning rate in a 0-dim tensor
    on the parameters' device (PyTorch takes a tensor rate only with ``capturable=True`` or
    ``fused=True``). ``tensor_lr=False`` gives a Python float rate, baked into a graph at capture."""
    device = next(model.parameters()).device
    rate = torch.tensor(float(lr), device=device) if tensor_lr else float(lr)
    return torch.optim.AdamW(model.parameters(), lr=rate, capturable=capturable)


# ---------------------------------------------------------------------------------------
# Eager training
# ---------------------------------------------------------------------------------------
def train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One eager step: zero the gradients (to None), forward, loss, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def weights(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` in one flat tensor (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


@dataclass
class Run:
    """What a training run recorded after each step: the loss and the weights."""

    losses: list  # one 0-dim tensor per step
    weights: list  # one flat weight tensor per step (empty when not recorded)

    def loss_values(self) -> list:
        return [float(v) for v in self.losses]


def quiet_capturable(optimizer) -> None:
    """Silence the warning a capturable optimizer gives once when it steps outside a capture
    (it could be faster with ``capturable=False``): the course steps such optimizers eagerly on
    purpose, in warm-ups and eager references."""
    optimizer._warned_capturable_if_run_uncaptured = True


def train_eager(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                batches: Iterable, scheduler: Any = None, record_weights: bool = True) -> Run:
    """The reference: one eager :func:`train_step` per batch (and ``scheduler.step()`` after it)."""
    quiet_capturable(optimizer)
    run = Run([], [])
    for x, y in batches:
        run.losses.append(train_step(model, loss_fn, optimizer, x, y).clone())
        if scheduler is not None:
            scheduler.step()
        if record_weights:
            run.weights.append(weights(model))
    return run


# ---------------------------------------------------------------------------------------
# The whole step in one graph
# ---------------------------------------------------------------------------------------
def warm_up_steps(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                  batches: Iterable, scheduler: Any = None, run: Run | None = None) -> Run:
    """Real training steps on a side stream, one per batch of ``batches``, then the current
    stream waits for them. The optimizer's state (``exp_avg``, ``exp_avg_sq``, ``step``) is
    created here, before the capture, along with every other lazy initialisation."""
    quiet_capturable(optimizer)
    run = run if run is not None else Run([], [])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches:
            run.losses.append(train_step(model, loss_fn, optimizer, x, y).clone())
            if scheduler is not None:
                scheduler.step()
            run.weights.append(weights(model))
    torch.cuda.current_stream().wait_stream(side)
    return run


def capture_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 static_x: torch.Tensor, static_y: torch.Tensor, pool: Any = None,
                 set_to_none: bool = True) -> tuple:
    """Capture forward, loss, backward and optimizer step reading ``static_x`` / ``static_y``.

    The gradients are set to None first, so the captured backward allocates them from the
    graph's private pool and every replay writes them afresh (no ``zero_grad`` in the loop).
    ``set_to_none=False`` keeps the existing ``.grad`` tensors instead: lesson 14's trap, where
    the captured backward adds into them at every replay.
    Returns ``(graph, static_loss)``; each replay trains one step and overwrites ``static_loss``.
    """
    optimizer.zero_grad(set_to_none=set_to_none)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_loss = loss_fn(model(static_x), static_y)
        static_loss.backward()
        optimizer.step()
    return graph, static_loss


class GraphedTrainStep:
    """A training step captured whole: warm up on ``warmup_batches``, capture, replay per call.

    ``warmup_batches`` yields ``(static_x, static_y)`` refilled with real batches (the first
    batches of a :class:`StaticBatches` loop): warm-up steps are real steps of the run, and
    ``self.warmup_run`` keeps their losses and weights. Calling the object trains one step on
    what ``static_x`` / ``static_y`` hold now and returns the static loss tensor, which the
    next call overwrites (clone it to keep it).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 static_x: torch.Tensor, static_y: torch.Tensor, warmup_batches: Iterable,
                 scheduler: Any = None, set_to_none: bool = True):
        self.model, self.optimizer = model, optimizer
        self.warmup_run = warm_up_steps(model, loss_fn, optimizer, warmup_batches, scheduler)
        self.graph, self.static_loss = capture_step(model, loss_fn, optimizer, static_x, static_y,
                                                    set_to_none=set_to_none)

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.static_loss


def train_graphed(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                  batches: StaticBatches, scheduler: Any = None, warmup: int = 3,
                  set_to_none: bool = True) -> Run:
    """Train on every batch of ``batches``: the first ``warmup`` eagerly on a side stream, then
    one replay of the captured step per batch (``scheduler.step()`` after each, eagerly).

    Lesson 14, section 3 writes this loop out; ``warmup=0`` and ``set_to_none=False`` are the
    traps of its sections 4 and 7.
    """
    stream = iter(batches)
    step = GraphedTrainStep(model, loss_fn, optimizer, batches.x, batches.y,
                            itertools.islice(stream, warmup), scheduler, set_to_none)
    run = step.warmup_run
    for _ in stream:  # each iteration has copied the next batch into batches.x / batches.y
        run.losses.append(step().detach().clone())
        if scheduler is not None:
            scheduler.step()
        run.weights.append(weights(model))
    return run


def same_run(a: Run, b: Run, rtol: float = RTOL, atol: float = ATOL) -> dict:
    """Compare two runs step by step.

    Returns ``{"steps": n, "losses equal": bool, "weights equal": bool, "first difference": k}``
    where ``k`` is the first step (counted from 1) whose loss or weights differ, or None.
    """
    def same(u, v):  # a NaN loss (an overflowing float16 step) equals a NaN loss
        return u.shape == v.shape and bool(torch.allclose(u.float(), v.float(), rtol=rtol, atol=atol, equal_nan=True))

    steps = min(len(a.losses), len(b.losses))
    losses = [same(a.losses[i], b.losses[i]) for i in range(steps)]
    kept = min(len(a.weights), len(b.weights), steps)
    weights_ = [same(a.weights[i], b.weights[i]) for i in range(kept)]
    first = next((i + 1 for i in range(steps) if not losses[i] or (i < kept and not weights_[i])), None)
    complete = len(a.losses) == len(b.losses)
    return {"steps": steps, "losses equal": complete and all(losses),
            "weights equal": complete and kept == steps and all(weights_), "first difference": first}


# ---------------------------------------------------------------------------------------
# AMP: float16 autocast and the grad scaler
# ---------------------------------------------------------------------------------------
AMP_DTYPE = torch.float16


def amp_backward(model: nn.Module, loss_fn: Callable, scaler: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradients to None, forward and loss under float16 autocast, backward of the scaled loss.

    Returns the loss (unscaled); the optimizer step is ``scaler.step(optimizer)``, then
    ``scaler.update()``.
    """
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=AMP_DTYPE):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    return loss.detach()


def train_eager_amp(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scaler: Any,
                    batches: Iterable) -> Run:
    """The AMP reference: per batch, :func:`amp_backward`, ``scaler.step``, ``scaler.update``."""
    quiet_capturable(optimizer)
    run = Run([], [])
    for x, y in batches:
        run.losses.append(amp_backward(model, loss_fn, scaler, x, y).clone())
        scaler.step(optimizer)
        scaler.update()
        run.weights.append(weights(model))
    return run


def train_graphed_amp(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scaler: Any,
                      batches: StaticBatches, warmup: int = 3, capture_scaler: bool = False) -> Run:
    """AMP training with a graph: the first ``warmup`` steps eagerly on a side stream, then per batch
    one replay of the captured forward, loss and scaled backward, and ``scaler.step(optimizer)``
    and ``scaler.update()`` run eagerly after it (PyTorch's rule for typical optimizers).

    ``capture_scaler=True`` captures ``scaler.step`` and ``scaler.update`` too, which only a fused
    optimizer (``fused=True``) allows: it takes the scale and the inf flag as device tensors.
    """
    quiet_capturable(optimizer)
    stream = iter(batches)
    run = Run([], [])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in itertools.islice(stream, warmup):
            run.losses.append(amp_backward(model, loss_fn, scaler, x, y).clone())
            scaler.step(optimizer)
            scaler.update()
            run.weights.append(weights(model))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        with torch.autocast(batches.x.device.type, dtype=AMP_DTYPE):
            static_loss = loss_fn(model(batches.x), batches.y)
        scaler.scale(static_loss).backward()
        if capture_scaler:
            scaler.step(optimizer)
            scaler.update()
    for _ in stream:
        graph.replay()
        if not capture_scaler:
            scaler.step(optimizer)
            scaler.update()
        run.losses.append(static_loss.detach().clone())
        run.weights.append(weights(model))
    return run


# ---------------------------------------------------------------------------------------
# Data parallel: the gradients' all-reduce inside the captured step
# ---------------------------------------------------------------------------------------
def data_parallel_training(steps: int = 5, warmup: int = 3, samples: int = 512):
    """One rank of data-parallel training, run by ``multigpu.launch`` on every rank.

    Every rank starts from the same weights, reads the same batches and keeps its share of the
    rows of each; the whole step (forward, loss, backward, one all-reduce that averages the
    gradients over the ranks, SGD with momentum) is warmed up on a side stream with the first
    ``warmup`` batches, then, after a barrier, captured on that stream and replayed for
    ``steps`` batches. Returns the rank's losses (one per step) and its final weights.
    """
    import torch.distributed as dist

    from graphlab_utils import multigpu

    rank, world = dist.get_rank(), dist.get_world_size()
    device = multigpu.device()
    model = make_model(device, seed=0)  # the same start on every rank
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = StaticBatches(make_loader(make_dataset(n=samples), device=device), device)
    mine = slice(rank, None, world)  # this rank's rows of every batch
    static_x, static_y = batches.x[mine].clone(), batches.y[mine].clone()

    def step():
        loss = F.cross_entropy(model(static_x), static_y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)  # the sum over the ranks: the collective DDP issues, in buckets
        flat /= world
        for g, average in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(average.view_as(g))
        optimizer.step()
        return loss.detach()

    losses, stream = [], iter(batches)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # real steps; the first collective creates the communicator
        for x, y in itertools.islice(stream, warmup):
            static_x.copy_(x[mine])
            static_y.copy_(y[mine])
            optimizer.zero_grad(set_to_none=True)
            losses.append(step().clone())
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    dist.barrier()  # every rank has warmed up before any rank captures
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        static_loss = step()
    for x, y in itertools.islice(stream, steps):
        static_x.copy_(x[mine])
        static_y.copy_(y[mine])
        graph.replay()  # forward, backward, all-reduce, step
        losses.append(static_loss.clone())
    return torch.stack(losses), weights(model)


# ---------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------
NCCL_MIN_CAPTURE = (2, 9, 6)  # the first NCCL whose collectives a CUDA graph may capture
DDP_MIN_WARMUP = 11  # DDP times its first 10 iterations with CUDA events (runtime statistics)

DDP_CONDITIONS = (
    ("NCCL 2.9.6 or later",
     "older NCCL cannot be captured: graph only the parts without collectives "
     "(make_graphed_callables, before wrapping the model in DDP) and let the all-reduce run eagerly"),
    ("NCCL_ASYNC_ERROR_HANDLING=0 before init_process_group",
     "the process group's watchdog thread queries each collective's CUDA event, and a query "
     "during a capture can break it"),
    ("DDP constructed inside `with torch.cuda.stream(side):`",
     "DDP's set-up work (its parameter broadcast, its gradient buckets) is then issued on the "
     "side stream that the warm-up uses, as PyTorch's notes require"),
    (f"at least {DDP_MIN_WARMUP} eager DDP iterations before the capture",
     "DDP rebuilds its gradient buckets after the first iteration and times iterations 1 to 10 "
     "with CUDA events; both must be over before the capture"),
)


def ddp_plan(nccl_version: tuple | None, env: dict | None = None, built_on_side_stream: bool = False,
             warmup_iterations: int = 0) -> list:
    """PyTorch's conditions for capturing a whole backward pass under DDP, checked for one process.

    Returns one ``(condition, met, why)`` per entry of :data:`DDP_CONDITIONS`. ``nccl_version``
    is ``torch.cuda.nccl.version()`` on a GPU (None where there is no NCCL); ``env`` defaults to
    ``os.environ``.
    """
    env = os.environ if env is None else env
    met = (
        nccl_version is not None and tuple(nccl_version) >= NCCL_MIN_CAPTURE,
        env.get("NCCL_ASYNC_ERROR_HANDLING") == "0",
        bool(built_on_side_stream),
        int(warmup_iterations) >= DDP_MIN_WARMUP,
    )
    return [(cond, ok, why) for (cond, why), ok in zip(DDP_CONDITIONS, met)]
