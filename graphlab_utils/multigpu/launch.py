"""Run one function on N ranks, one process per rank, and say in one sentence how it ended.

    from graphlab_utils import multigpu
    result = multigpu.launch(step, x, world_size=2, timeout=30)
    result.values        # what ``step(x)`` returned on each rank, in rank order
    print(result)        # "every rank finished", a rank's error, or the hang

Each rank is a fresh process that joins one process group before the function runs; inside
it, ``torch.distributed`` is ready (``dist.get_rank()``, ``dist.all_reduce(...)``) and
``multigpu.device()`` is the rank's device:

* on the simulator: gloo between CPU processes, the simulator installed in each, so that a
  collective inside a capture becomes a graph node (``graphlab_utils.simulator.distributed``);
* on a real backend with two or more GPUs: NCCL, rank r on ``cuda:r``, NVLink multicast off
  (``NCCL_NVLS_ENABLE=0``, and the same for symmetric memory and NVSHMEM). With fewer GPUs the
  ranks run on the simulator: NCCL needs one GPU per rank.

The processes are forked from a server process that imported PyTorch once (multiprocessing's
"forkserver"), so a launch costs a fraction of a second after the first. ``fn`` and its
arguments travel with cloudpickle, so functions and classes of a notebook work; tensors
come back on the CPU.

Bounded in time. The ``timeout`` starts when every rank has joined the group. A rank still
running then (in the lessons: waiting for a collective its peers never run) is stopped, with
every other rank, and the result says so: that is how a hang is shown without stalling a
notebook. Once a rank has raised, the others get ``after_error`` seconds more, since they
most likely wait for it. What the ranks print is printed here afterwards, in rank order.
"""
from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from graphlab_utils import backend
from graphlab_utils.errors import GraphlabError, error_name_in

__all__ = ["Launch", "RankError", "LaunchError", "launch", "default_world_size", "ranks_backend", "device",
           "STARTUP_TIMEOUT_S"]

STARTUP_TIMEOUT_S = 180.0  # the first launch starts the server process, which imports PyTorch
AFTER_ERROR_S = 5.0
PG_TIMEOUT_S = 3600  # the process group's own timeout: longer than any launch, so the launcher's bounds apply
_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
_PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "numpy", "cloudpickle", "graphlab_utils.backend",
            "graphlab_utils.simulator", "graphlab_utils.simulator.mode", "graphlab_utils.multigpu"]


class LaunchError(GraphlabError, RuntimeError):
    """The ranks could not be started or could not join their process group."""


@dataclass(frozen=True)
class RankError:
    """What a rank raised: its type and first line, and the CUDA errors it and its cause name."""

    type: str
    message: str
    cuda_error: str | None = None
    first_type: str | None = None  # the exception it was raised while handling (a failed capture's first error)
    first_cuda_error: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass
class Launch:
    """How a launch ended, rank by rank."""

    world_size: int
    backend: str  # "nccl" or "gloo (simulator)"
    timeout: float
    values: list = field(default_factory=list)  # what fn returned on each rank (None where it did not return)
    finished: list = field(default_factory=list)  # True where fn returned a value
    errors: dict = field(default_factory=dict)  # rank -> RankError
    died: dict = field(default_factory=dict)  # rank -> how its process ended before reporting
    outputs: list = field(default_factory=list)  # what each rank printed
    waiting: dict = field(default_factory=dict)  # rank -> what it waits for, where the simulator knows
    hung: bool = False  # some rank was still running at the deadline: every rank was stopped
    seconds: float = 0.0  # from the moment every rank had joined until every rank was stopped

    @property
    def ok(self) -> bool:
        """Every rank returned a value."""
        return all(self.finished) and not self.hung

    @property
    def running(self) -> list:
        """The ranks that neither returned, raised nor died: stopped at the deadline."""
        return [r for r in range(self.world_size)
                if not self.finished[r] and r not in self.errors and r not in self.died]

    def __str__(self) -> str:
        if self.ok:
            return "every rank finished"
        parts = []
        if self.errors:
            rank = min(self.errors)
            parts.append(f"rank {rank} raised {self.errors[rank]}")
        if self.died:
            rank = min(self.died)
            parts.append(f"rank {rank} {self.died[rank]}")
        if self.hung:
            waited = f"{self.timeout:g} s" if not self.errors else "a few seconds after that error"
            parts.append(f"hang: not every rank finished within {waited}, so the launcher stopped them all")
        return "; ".join(parts)

    def status(self) -> str:
        """One line per rank: returned, raised, died, or stopped while still running."""
        lines = []
        for r in range(self.world_size):
            if self.finished[r]:
                how = "returned"
            elif r in self.errors:
                how = f"raised {self.errors[r]}"
            elif r in self.died:
                how = self.died[r]
            else:
                how = "still running when the launcher stopped it"
                if r in self.waiting:
                    how += f" (simulator: {self.waiting[r]})"
            lines.append(f"rank {r}: {how}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Which backend runs the ranks, and on which device a rank computes
# ---------------------------------------------------------------------------------------
def _gpu_count() -> int:
    import torch

    if not backend.gpu_available():
        return 0
    return int(torch._C._cuda_getDeviceCount())


def ranks_backend() -> str:
    """``"real"`` when this process runs on GPUs and has at least two, else ``"sim"``."""
    session = backend.current()
    return "real" if session.is_real and _gpu_count() >= 2 else "sim"


def default_world_size() -> int:
    """Every GPU when the ranks run on GPUs, 2 on the simulator."""
    return _gpu_count() if ranks_backend() == "real" else 2


def device():
    """The device of this rank (``cuda:r`` on GPUs, the CPU on the simulator); the session's outside a launch."""
    return backend.device()


# ---------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------
_CONTEXT: list = []


def _context():
    if not _CONTEXT:
        try:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
        except ValueError:  # no forkserver on this platform
            ctx = multiprocessing.get_context("spawn")
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def launch(fn: Callable[..., Any], *args: Any, world_size: int | None = None, timeout: float = 60.0,
           after_error: float = AFTER_ERROR_S, echo: bool = True, **kwargs: Any) -> Launch:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` ranks and return how each ended.

    ``timeout`` (seconds) bounds the run from the moment every rank has joined the process
    group; ranks still running then are stopped and ``result.hung`` is True. ``echo`` prints
    what each rank printed, in rank order, once the run is over.
    """
    import cloudpickle

    from graphlab_utils.recipes import error_line

    which = ranks_backend()
    world = int(world_size) if world_size is not None else default_world_size()
    if world < 1:
        raise LaunchError(f"world_size={world_size!r}: launch at least one rank")
    if which == "real" and world > _gpu_count():
        raise LaunchError(f"world_size={world} but this machine has {_gpu_count()} GPUs: NCCL needs one GPU per "
                          "rank, so launch at most that many ranks")
    label = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    try:
        payload = cloudpickle.dumps((fn, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - pickling fails in many ways
        raise LaunchError(f"{label} cannot be sent to the ranks ({error_line(exc)}): pass it tensors, numbers, "
                          "strings and functions, and create anything else inside the function") from None

    result = Launch(world_size=world, backend="nccl" if which == "real" else "gloo (simulator)",
                    timeout=float(timeout), values=[None] * world, finished=[False] * world,
                    outputs=[""] * world)
    ctx = _context()
    workdir = tempfile.mkdtemp(prefix="graphlab-ranks-")
    procs, conns = [], []
    try:
        for rank in range(world):
            parent_end, child_end = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_rank_main, name=f"graphlab rank {rank}",
                               args=(child_end, payload, rank, world, which, workdir))
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        joined = _supervise(result, procs, conns, timeout, after_error, workdir)
    finally:
        for conn in conns:
            try:
                conn.send("exit")
            except (OSError, ValueError, BrokenPipeError):
                pass
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - joined  # every rank stopped and reaped
    if echo:
        for rank, text in enumerate(result.outputs):
            for line in text.rstrip("\n").splitlines() if text.strip() else []:
                print(f"[rank {rank}] {line}")
    return result


def _supervise(result: Launch, procs: list, conns: list, timeout: float, after_error: float, workdir: str) -> float:
    """Collect what the ranks send until each has ended or the deadline; the time every rank had joined."""
    world = len(procs)
    ready = [False] * world
    done = [False] * world  # reported an outcome or died
    by_conn = {id(c): r for r, c in enumerate(conns)}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    started = None
    shortened = False  # the deadline moved closer once a rank raised
    while not all(done):
        now = time.monotonic()
        if started is None and all(ready[r] or done[r] for r in range(world)):
            started = now
            deadline = now + timeout
        if result.errors and started is not None and not shortened:
            deadline, shortened = min(deadline, now + after_error), True
        left = deadline - now
        if left <= 0:
            break
        waiting = [c for r, c in enumerate(conns) if not done[r]]
        for conn in multiprocessing.connection.wait(waiting, timeout=min(left, 0.5)):
            rank = by_conn[id(conn)]
            try:
                kind, body = conn.recv()
            except (EOFError, OSError):
                done[rank] = True
                procs[rank].join(timeout=5)
                result.died[rank] = _death(procs[rank].exitcode, os.path.join(workdir, f"rank{rank}.log"))
                continue
            if kind == "ready":
                ready[rank] = True
            elif kind == "out":
                result.outputs[rank] += body
            elif kind == "waiting":
                result.waiting[rank] = body
            elif kind == "value":
                result.values[rank] = pickle.loads(body)
                result.finished[rank] = True
                done[rank] = True
            elif kind == "raised":
                result.errors[rank] = RankError(**body)
                done[rank] = True
            elif kind == "failed":  # could not start or join the group
                done[rank] = True
                result.died[rank] = body
    if not all(done):
        if started is None:
            for proc in procs:
                proc.kill()
            stuck = [r for r in range(world) if not ready[r] and not done[r]]
            raise LaunchError(f"rank {stuck[0]} did not join the process group within {STARTUP_TIMEOUT_S:g} s: "
                              "the machine may be overloaded; run the cell again")
        result.hung = True
        for rank, proc in enumerate(procs):
            if not done[rank]:
                proc.kill()
    if result.died and not result.errors and started is None:
        rank = min(result.died)
        raise LaunchError(f"rank {rank} could not start: {result.died[rank]}")
    return started if started is not None else time.monotonic()


def _death(exitcode, log_path: str) -> str:
    last = ""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            lines = [line.strip() for line in fh.read()[-4000:].splitlines() if line.strip()]
            last = lines[-1] if lines else ""
    except OSError:
        pass
    how = f"ended with exit code {exitcode}" if exitcode is None or exitcode >= 0 else f"was killed by signal {-exitcode}"
    return f"{how} before it returned" + (f" (its last error line: {last})" if last else "")


# ---------------------------------------------------------------------------------------
# The rank's side
# ---------------------------------------------------------------------------------------
class _Printed(io.TextIOBase):
    """In a rank: what it prints goes to the parent, which prints it after the run in rank order."""

    def __init__(self, send):
        self._send = send

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._send(("out", text))
        return len(text)


def _error_record(exc: BaseException) -> dict:
    from graphlab_utils.recipes import first_line

    context = exc.__context__
    return {"type": type(exc).__name__, "message": first_line(exc), "cuda_error": error_name_in(str(exc)),
            "first_type": type(context).__name__ if context is not None else None,
            "first_cuda_error": error_name_in(str(context)) if context is not None else None}


def _to_cpu(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _rank_main(conn, payload: bytes, rank: int, world: int, which: str, workdir: str) -> None:
    from graphlab_utils.simulator import distributed as sim_distributed

    def send(message) -> None:
        conn.send(message)

    fd = os.open(os.path.join(workdir, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = _Printed(send)
    os.environ[backend.ENV_VAR] = which
    os.environ[sim_distributed.RANK_DIR_ENV] = workdir
    sim_distributed.on_wait(lambda why: send(("waiting", why)))  # a simulated hang says why
    try:
        import datetime

        import torch
        import torch.distributed as dist

        if which == "real":
            os.environ.update(_MULTICAST_OFF)  # NVLink multicast stays off, for NCCL and symmetric memory
            torch.cuda.set_device(rank)
        backend.setup(backend=which, quiet=True)
        # No device_id: NCCL creates its communicator at the first collective, as it does by default.
        dist.init_process_group("nccl" if which == "real" else "gloo", init_method=f"file://{workdir}/store",
                                rank=rank, world_size=world, timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    except BaseException as exc:  # noqa: BLE001
        from graphlab_utils.recipes import error_line

        send(("failed", f"could not join the process group ({error_line(exc)})"))
        os._exit(0)
    send(("ready", None))
    try:
        import cloudpickle

        fn, args, kwargs = pickle.loads(payload)
        value = fn(*args, **kwargs)
        try:
            send(("value", cloudpickle.dumps(_to_cpu(value))))
        except Exception as exc:  # noqa: BLE001
            send(("raised", {"type": "NotTransferable", "message": f"returned a {type(value).__name__}, which "
                             f"cannot be sent back ({type(exc).__name__}): return numbers, strings, tensors or "
                             "containers of them"}))
    except BaseException as exc:  # noqa: BLE001 - the function may raise anything
        send(("raised", _error_record(exc)))
    try:
        sys.stdout.flush()
        conn.recv()  # wait until every rank is done: peers may still wait for this one's collectives
    except (EOFError, OSError):
        pass
    os._exit(0)  # no teardown: destroying a process group is the function's business (lesson 13)
