"""Run code in a fresh Python process on the notebook's backend.

On a GPU a failed capture damages the process: PyTorch's CUDA random generator is left in
capture state, and the next `torch.randn(..., device="cuda")` raises "Offset increment
outside graph capture encountered unexpectedly." Lessons and checks therefore run such
captures in a fresh process, on the same backend, and report what happened there:

* ``run_function(fn, *args, timeout=300, **kwargs)``: calls ``fn(*args, **kwargs)`` in a
  fresh process and returns its value; an exception raised there is raised here, as the same
  class with the same message; what the call prints is printed here, in order.
* ``run_code(code)`` (``run_isolated`` is the same function, and ``%%run_isolated`` the same
  in a notebook cell) runs self-contained code (``torch``, ``DEVICE`` and ``gl`` are defined
  for it) and returns an :class:`IsolatedResult`: what it printed and how it ended.
* ``capture_error_site(code)``: which line of ``code`` raised the first error of a failed
  capture (the error that reaches you is raised when the capture ends)::

      site = isolation.capture_error_site(CODE)
      print(site)
      # first error: AcceleratorError (cudaErrorStreamCaptureUnsupported) at line 3: value = total.item()
      # reported:    AcceleratorError (cudaErrorStreamCaptureInvalidated) when the capture ended

How a call travels: ``fn`` and its arguments are pickled with cloudpickle (by value where
they cannot be imported: lambdas, closures, functions and classes of a notebook); the
process is started with multiprocessing's "spawn" method (a new interpreter, which inherits
nothing of this process's CUDA state) and runs ``graphlab_utils.setup()`` on this process's
backend before the call. It sends back over a pipe what it wrote to its standard output,
then the call's value or its exception, and ends at once. Every call gets a process of its
own, so each starts clean and whatever a failed capture damages goes away with it. The process's error output
is kept apart and quoted only when the process dies.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import signal
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from graphlab_utils import backend
from graphlab_utils.errors import GraphlabError, error_name_in

__all__ = [
    "CaptureErrorSite",
    "ChildDied",
    "ChildTimeout",
    "IsolatedResult",
    "IsolationError",
    "NotTransferable",
    "RemoteError",
    "capture_error_site",
    "run_code",
    "run_function",
    "run_isolated",
]

CELL = "<isolated cell>"  # the file name of run_code's code in tracebacks
_CHAIN_LIMIT = 8  # exceptions followed along __context__


# ---------------------------------------------------------------------------------------
# Errors of the mechanism itself (one sentence each)
# ---------------------------------------------------------------------------------------
class IsolationError(GraphlabError, RuntimeError):
    """A call in a fresh process did not come back with a value or an exception of its own."""


class ChildDied(IsolationError):
    """The fresh process ended (a crash, os._exit(), sys.exit()) before the call returned."""


class ChildTimeout(IsolationError, TimeoutError):
    """The call was still running when its time was up; its process was stopped."""


class NotTransferable(IsolationError):
    """The function, its arguments or its value cannot travel between the two processes.

    ``reason`` is the error that stopped it, as ``'Type: first line'``.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class RemoteError(IsolationError):
    """Stands in for an exception of the fresh process that cannot be pickled.

    Each stand-in class bears the original exception's class name (``type(e).__name__``);
    ``remote_type`` is its qualified name, ``cuda_error`` the CUDA error its message names.
    """

    remote_type: str = ""
    cuda_error: str | None = None


_STAND_INS: dict = {}


# ---------------------------------------------------------------------------------------
# run_function: the one way to run something in a fresh process
# ---------------------------------------------------------------------------------------
def run_function(fn: Callable[..., Any], *args: Any, timeout: float = 300, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in a fresh process on this backend and return its value.

    An exception raised there is raised here: the same class with the same message when it
    can be pickled (its ``__context__`` chain rebuilt, the fresh process's traceback added as
    a note), else a :class:`RemoteError` of the same class name. What the call prints reaches
    this process's ``sys.stdout`` as it is printed. A process that dies or outlives
    ``timeout`` seconds raises :class:`ChildDied` or :class:`ChildTimeout`.
    """
    return _call(fn, args, kwargs, timeout=timeout, write=_write_stdout)


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _call(fn, args, kwargs, *, timeout: float, write: Callable[[str], Any], label: str | None = None):
    """run_function's machinery; ``write`` receives the child's output, ``label`` names the call."""
    import multiprocessing

    import cloudpickle

    from graphlab_utils.recipes import error_line

    which = backend.current().backend
    label = label or _name_of(fn)
    try:
        payload = cloudpickle.dumps((fn, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - pickling fails in many ways
        raise NotTransferable(
            f"{label} cannot be sent to a fresh process ({error_line(exc)}): pass it tensors, numbers, "
            "strings and functions, and create anything else inside the function", error_line(exc)
        ) from None

    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    handle, log_path = tempfile.mkstemp(prefix="graphlab-child-", suffix=".log")
    os.close(handle)
    proc = ctx.Process(target=_child_main, args=(sender, payload, which, log_path), name=f"graphlab: {label}")
    outcome = None
    try:
        proc.start()
        sender.close()
        outcome = _receive(receiver, proc, timeout, write)
    finally:
        receiver.close()
        _stop(proc, patient=outcome is not None and outcome[0] not in ("timeout", "died"))
        last_error = _last_line(log_path)
        os.unlink(log_path)
    return _settle(outcome, label, timeout, proc.exitcode, last_error)


def _receive(receiver, proc, timeout: float, write) -> tuple:
    """Pass the child's output to ``write`` until its outcome arrives, it dies, or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not receiver.poll(left):
            proc.kill()
            return ("timeout", None)
        try:
            kind, body = receiver.recv()
        except EOFError:
            return ("died", None)
        if kind == "out":
            write(body)
        else:
            return (kind, body)


def _stop(proc, patient: bool) -> None:
    """Reap the child: a child that reported lets its interpreter close; any other is killed."""
    if proc.pid is None:
        return
    if patient:
        proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
    proc.join()


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read()[-4000:].splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _settle(outcome: tuple, label: str, timeout: float, exitcode, last_error: str):
    """The value of the call, or the exception that says how it ended."""
    kind, body = outcome
    if kind == "value":
        try:
            return pickle.loads(body)
        except Exception as exc:  # noqa: BLE001
            from graphlab_utils.recipes import error_line

            raise NotTransferable(
                f"{label} returned a value this process cannot rebuild ({error_line(exc)}): return "
                "tensors, numbers, strings or containers of them", error_line(exc)
            ) from None
    if kind == "raised":
        raise _unpack(body)
    if kind == "timeout":
        raise ChildTimeout(
            f"{label} was still running after {timeout:g} s in its fresh process, which was stopped: "
            "look for a loop or a wait that never ends, or pass a larger timeout="
        )
    if kind == "exit":
        raise ChildDied(
            f"{label} called sys.exit({body}) in its fresh process before it returned: return a value "
            "or raise an exception instead"
        )
    if kind == "unloadable":
        raise NotTransferable(
            f"{label} could not be rebuilt in the fresh process ({body}): define what it uses in the "
            "notebook, or in a module that a new Python process can import", body
        )
    if kind == "unsendable":
        raise NotTransferable(
            f"{label} returned {body}, which cannot be sent back from its fresh process: return "
            "tensors, numbers, strings or containers of them", f"it returned {body}"
        )
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"ended with exit code {exitcode}"
    said = f" (its last error line: {last_error})" if last_error else ""
    raise ChildDied(
        f"the fresh process running {label} {how} before it returned{said}: a crash in native code, "
        "os._exit() or a lack of memory stops a process this way; what it printed shows how far it got"
    )


# ---------------------------------------------------------------------------------------
# Exceptions across the pipe
# ---------------------------------------------------------------------------------------
def _pack(exc: BaseException) -> dict:
    """In the child: the exception and its __context__ chain, each pickled if it can be."""
    import cloudpickle

    links = []
    e = exc
    while e is not None and len(links) < _CHAIN_LIMIT:
        try:
            message = str(e)
        except Exception:  # noqa: BLE001 - a broken __str__
            message = ""
        link = {"type": type(e).__name__, "qualified": f"{type(e).__module__}.{type(e).__qualname__}",
                "message": message, "cuda_error": error_name_in(message),
                "caused": e.__cause__ is not None and e.__cause__ is e.__context__,
                "data": None, "state": None}
        try:
            link["data"] = cloudpickle.dumps(e)
        except Exception:  # noqa: BLE001
            pass
        try:  # for classes whose __init__ does not take their own args back
            link["state"] = cloudpickle.dumps((type(e), e.args, dict(vars(e))))
        except Exception:  # noqa: BLE001
            pass
        links.append(link)
        e = e.__context__
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        frames = [(f.filename, f.lineno, f.name, f.line or "") for f in traceback.extract_tb(exc.__traceback__)]
    except Exception:  # noqa: BLE001
        text, frames = "", []
    return {"chain": links, "traceback": text, "frames": frames}


def _rebuild(link: dict) -> BaseException:
    if link["data"] is not None:
        try:
            exc = pickle.loads(link["data"])
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - e.g. an __init__ with other arguments than args
            pass
    if link["state"] is not None:
        try:
            cls, args, state = pickle.loads(link["state"])
            exc = cls.__new__(cls, *args)
            exc.args = args
            exc.__dict__.update(state)
            return exc
        except Exception:  # noqa: BLE001
            pass
    name = link["type"]
    cls = _STAND_INS.get(name)
    if cls is None:
        cls = _STAND_INS[name] = type(name, (RemoteError,), {"__module__": __name__})
    first = link["message"].splitlines()[0] if link["message"] else ""
    exc = cls(f"{first} ({link['qualified']} raised in the fresh process; it cannot be pickled, "
              "so this stand-in carries its class name and message)")
    exc.remote_type, exc.cuda_error = link["qualified"], link["cuda_error"]
    return exc


def _unpack(body: dict) -> BaseException:
    """In the parent: the exception of the child, its chain linked as it was there."""
    chain = body["chain"]
    built = [_rebuild(link) for link in chain]
    for exc, older, link in zip(built, built[1:], chain):
        exc.__context__ = older
        if link["caused"]:
            exc.__cause__ = older
    top = built[0]
    try:  # where it was raised, for a hint that names the learner's line (checks.core.error_idea)
        top.remote_frames = body.get("frames", [])
    except AttributeError:  # an exception class with __slots__
        pass
    if body["traceback"] and hasattr(top, "add_note"):
        top.add_note("Raised in a fresh process (graphlab_utils.isolation); its traceback there:\n"
                     + body["traceback"].rstrip())
    return top


# ---------------------------------------------------------------------------------------
# The child's side
# ---------------------------------------------------------------------------------------
class _StdoutPump:
    """In the child: whatever reaches file descriptor 1 (print, native code) goes to the parent."""

    def __init__(self, send):
        self._send = send
        self._read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        self._thread = threading.Thread(target=self._pump, name="graphlab stdout", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = os.read(self._read_end, 1 << 16)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                self._send(("out", text))
            if not chunk:
                break
        os.close(self._read_end)

    def close(self) -> None:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the last write end closes: the pump reads the end of the pipe
        os.close(devnull)
        self._thread.join(timeout=10)


def _child_main(conn, payload: bytes, which: str, log_path: str) -> None:
    """The fresh process: set up the backend, call the function, send back how it went."""
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            conn.send(message)

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    pump = _StdoutPump(send)
    try:
        outcome = _child_call(payload, which)
    finally:
        pump.close()
    send(outcome)
    conn.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(0)  # everything is sent: the interpreter's teardown (a second or more with torch) would only slow each call


def _child_call(payload: bytes, which: str) -> tuple:
    os.environ[backend.ENV_VAR] = which  # what this process starts in turn runs on it too
    try:
        backend.setup(backend=which, quiet=True)
    except BaseException as exc:  # noqa: BLE001
        return ("raised", _pack(exc))
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001
        return ("unloadable", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    try:
        value = fn(*args, **kwargs)
    except SystemExit as exc:
        return ("exit", repr(exc.code) if exc.code is not None else "")
    except BaseException as exc:  # noqa: BLE001 - the call may raise anything
        return ("raised", _pack(exc))
    import cloudpickle

    try:
        return ("value", cloudpickle.dumps(value))
    except Exception:  # noqa: BLE001
        return ("unsendable", f"a {type(value).__name__}")


# ---------------------------------------------------------------------------------------
# run_code: self-contained code, and how it ended
# ---------------------------------------------------------------------------------------
@dataclass
class IsolatedResult:
    ok: bool
    error_type: str | None
    cuda_error: str | None
    first_line: str | None
    cause: dict | None  # the exception that was being handled when this one was raised
    stdout: str
    chain: list = field(default_factory=list)  # every exception along __context__, the raised one first

    def summary(self) -> str:
        """One line that reads the same on a GPU and on the simulator."""
        if self.ok:
            return "ran without error"
        where = f" ({self.cuda_error})" if self.cuda_error else ""
        line = f"raised {self.error_type}{where}: {self.first_line}"
        if self.cause:
            c_where = f" ({self.cause['cuda_error']})" if self.cause.get("cuda_error") else ""
            line += f"\n  while handling {self.cause['type']}{c_where}: {self.cause['first_line']}"
        return line


def _run_cell(code: str) -> list:
    """In the fresh process: run ``code``; the exceptions it raised, each with its line in ``code``."""
    import torch

    import graphlab_utils as gl

    namespace = {"__name__": "__isolated__", "torch": torch, "DEVICE": backend.device(), "gl": gl}
    try:
        exec(compile(code, CELL, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - what the code raised is the report
        chain = []
        e = exc
        while e is not None and len(chain) < _CHAIN_LIMIT:
            text = str(e)
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == CELL]
            chain.append({"type": type(e).__name__, "cuda_error": error_name_in(text),
                          "first_line": text.splitlines()[0] if text else "",
                          "line": frames[-1].lineno if frames else 0})
            e = e.__context__
        return chain
    finally:
        sys.stdout.flush()
    return []


def run_code(code: str, timeout: float = 300) -> IsolatedResult:
    """Run ``code`` in a fresh process on this backend; what it printed and how it ended.

    ``code`` is self-contained (a new interpreter runs it): ``torch``, ``DEVICE`` and ``gl``
    are defined for it. Its output is returned in ``stdout``, not printed.
    """
    printed: list = []
    chain = _call(_run_cell, (textwrap.dedent(code),), {}, timeout=timeout, write=printed.append,
                  label="the isolated code")
    stdout = "".join(printed)
    if not chain:
        return IsolatedResult(True, None, None, None, None, stdout)
    first = chain[0]
    cause = chain[1] if len(chain) > 1 else None
    return IsolatedResult(False, first["type"], first["cuda_error"], first["first_line"], cause, stdout, chain)


run_isolated = run_code  # the name lessons call it by


# ---------------------------------------------------------------------------------------
# capture_error_site: the line of a capture's first error
# ---------------------------------------------------------------------------------------
@dataclass
class CaptureErrorSite:
    """Where a capture failed: the first error of the chain, its line, and what was reported."""

    ok: bool  # the code ran without error
    first_type: str | None = None
    first_cuda_error: str | None = None
    first_message: str | None = None
    line: int = 0  # line of the code (1-based) that raised the first error; 0 if unknown
    source: str = ""  # that line, stripped
    reported_type: str | None = None  # the exception that reached the caller
    reported_cuda_error: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return "ran without error"
        where = f" ({self.first_cuda_error})" if self.first_cuda_error else ""
        at = f" at line {self.line}: {self.source}" if self.line else ""
        text = f"first error: {self.first_type}{where}{at}"
        if (self.reported_type, self.reported_cuda_error) != (self.first_type, self.first_cuda_error):
            r_where = f" ({self.reported_cuda_error})" if self.reported_cuda_error else ""
            text += f"\nreported:    {self.reported_type}{r_where} when the capture ended"
        return text


def capture_error_site(code: str, timeout: float = 300) -> CaptureErrorSite:
    """Run ``code`` in a fresh process and say which of its lines raised the first error.

    A failed capture's error names the CUDA error but not the call that caused it: the
    exception that reaches you is ``cudaErrorStreamCaptureInvalidated``, raised when the
    capture ends, and the first error (the sync that broke the capture) is its ``__context__``.
    This follows that chain down to the first error and quotes its line of ``code``.
    """
    code = textwrap.dedent(code)
    result = run_code(code, timeout=timeout)
    if result.ok:
        return CaptureErrorSite(ok=True)
    first, reported = result.chain[-1], result.chain[0]
    lines = code.splitlines()
    number = int(first.get("line") or 0)
    source = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    return CaptureErrorSite(
        ok=False,
        first_type=first["type"],
        first_cuda_error=first["cuda_error"],
        first_message=first["first_line"],
        line=number,
        source=source,
        reported_type=reported["type"],
        reported_cuda_error=reported["cuda_error"],
    )


# ---------------------------------------------------------------------------------------
# %%run_isolated
# ---------------------------------------------------------------------------------------
def _run_isolated_magic(line: str, cell: str):
    result = run_code(cell)
    if result.stdout.strip():
        print(result.stdout.rstrip())
    print(result.summary())
    return None


def load_ipython_extension(ipython) -> None:
    """`%load_ext graphlab_utils.isolation` (setup() does this for you)."""
    ipython.register_magic_function(_run_isolated_magic, magic_kind="cell", magic_name="run_isolated")


def register_magic() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None:
        return False
    load_ipython_extension(ip)
    return True
