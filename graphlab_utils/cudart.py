"""`graphlab_utils.cudart`: the CUDA runtime functions PyTorch does not expose.

On a GPU this is NVIDIA's own `cuda.bindings.runtime` (cuda-python); on the simulator it is
the simulator's twin with the same names, enums and `(err, ...)` return tuples. Lessons
write `from graphlab_utils import cudart` and then `cudart.cudaGraphExecUpdate(...)`.
"""
from __future__ import annotations

_MISSING = (
    "NVIDIA's cuda-python bindings are not installed: run `pip install -e .[gpu]` "
    "(lessons 06-08 call cudaGraphExecUpdate, cudaGraphGetNodes and cudaGraphDebugDotPrint through them)."
)


def runtime():
    """The module behind `graphlab_utils.cudart` for the backend in use."""
    from graphlab_utils import backend

    if backend.is_simulated():
        from graphlab_utils.simulator import cudart as twin

        return twin
    try:
        from cuda.bindings import runtime as real
    except ImportError:
        try:
            from cuda import cudart as real  # cuda-python before 12.6 named it so
        except ImportError:
            raise ImportError(_MISSING) from None
    return real


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(runtime(), name)


def check(result):
    """Unwrap an `(err, *outputs)` tuple: raise with the error's name if err is not cudaSuccess."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise RuntimeError(f"CUDA runtime call failed with {name} ({int(err)})")
    return rest[0] if len(rest) == 1 else tuple(rest) if rest else None
