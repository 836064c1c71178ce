"""The simulator's twin of NVIDIA's `cuda.bindings.runtime` for the graph functions the course uses.

Same names, same enums, same return convention: every function returns a tuple whose first
element is a `cudaError_t`, followed by the outputs (None in their place on error).
"""
from __future__ import annotations

import enum

from .graphs import HANDLES, Node, SimGraphExec, SimGraphTemplate, write_dot
from .clock import CLOCK, cost_model
from .errors import ERROR_STRINGS, NotSimulatedError, cudaError_t

__all__ = [
    "cudaError_t",
    "cudaGraphNodeType",
    "cudaGraphExecUpdateResult",
    "cudaGraphExecUpdateResultInfo",
    "cudaGraphNode_t",
    "cudaGraph_t",
    "cudaGraphExec_t",
    "cudaGraphExecGetFlags",
    "cudaGraphGetNodes",
    "cudaGraphNodeGetType",
    "cudaGraphDebugDotPrint",
    "cudaGraphExecUpdate",
    "cudaGraphUpload",
    "cudaGetErrorName",
    "cudaGetErrorString",
]


class cudaGraphNodeType(enum.IntEnum):
    cudaGraphNodeTypeKernel = 0
    cudaGraphNodeTypeMemcpy = 1
    cudaGraphNodeTypeMemset = 2
    cudaGraphNodeTypeHost = 3
    cudaGraphNodeTypeGraph = 4
    cudaGraphNodeTypeEmpty = 5
    cudaGraphNodeTypeWaitEvent = 6
    cudaGraphNodeTypeEventRecord = 7
    cudaGraphNodeTypeExtSemaphoreSignal = 8
    cudaGraphNodeTypeExtSemaphoreWait = 9
    cudaGraphNodeTypeMemAlloc = 10
    cudaGraphNodeTypeMemFree = 11
    cudaGraphNodeTypeConditional = 13


class cudaGraphExecUpdateResult(enum.IntEnum):
    cudaGraphExecUpdateSuccess = 0
    cudaGraphExecUpdateError = 1
    cudaGraphExecUpdateErrorTopologyChanged = 2
    cudaGraphExecUpdateErrorNodeTypeChanged = 3
    cudaGraphExecUpdateErrorFunctionChanged = 4
    cudaGraphExecUpdateErrorParametersChanged = 5
    cudaGraphExecUpdateErrorNotSupported = 6
    cudaGraphExecUpdateErrorUnsupportedFunctionChange = 7
    cudaGraphExecUpdateErrorAttributesChanged = 8


_KIND_TO_TYPE = {
    "kernel": cudaGraphNodeType.cudaGraphNodeTypeKernel,
    "memcpy": cudaGraphNodeType.cudaGraphNodeTypeMemcpy,
    "memset": cudaGraphNodeType.cudaGraphNodeTypeMemset,
}


class cudaGraphNode_t:
    """A node handle: which graph, which node."""

    def __init__(self, graph: SimGraphTemplate, index: int):
        self._graph, self._index = graph, index

    def __int__(self) -> int:
        return self._graph.handle + 0x10 + self._index

    def getPtr(self) -> int:
        return int(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, cudaGraphNode_t) and int(other) == int(self)

    def __hash__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<cudaGraphNode_t {int(self):#x}>"

    @property
    def node(self) -> Node:
        return self._graph.nodes[self._index]


class _Handle:
    """An opaque handle as cuda-python wraps one: built from the raw pointer, read back with int()."""

    def __init__(self, init_value=0, _ptr=None):
        self._ptr = int(init_value)

    def __int__(self) -> int:
        return self._ptr

    def getPtr(self) -> int:
        return self._ptr

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and int(other) == self._ptr

    def __hash__(self) -> int:
        return self._ptr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ptr:#x}>"


class cudaGraph_t(_Handle):
    """``cudaGraph_t(init_value=graph.raw_cuda_graph())``."""


class cudaGraphExec_t(_Handle):
    """``cudaGraphExec_t(init_value=graph.raw_cuda_graph_exec())``."""


class cudaGraphExecUpdateResultInfo:
    def __init__(self, result: cudaGraphExecUpdateResult, error_node=None, error_from_node=None):
        self.result = result
        self.errorNode = error_node
        self.errorFromNode = error_from_node

    def __repr__(self) -> str:
        return f"<cudaGraphExecUpdateResultInfo result={self.result.name}>"


def _lookup(handle, kind):
    obj = HANDLES.get(int(handle)) if not isinstance(handle, kind) else handle
    return obj if isinstance(obj, kind) else None


def cudaGraphExecGetFlags(graphExec):
    """The flags the graph was instantiated with (PyTorch instantiates with none)."""
    exe = _lookup(graphExec, SimGraphExec)
    if exe is None:
        return (cudaError_t.cudaErrorInvalidValue, None)
    return (cudaError_t.cudaSuccess, exe.flags)


def cudaGraphUpload(graphExec, stream=0):
    """Upload an executable graph without launching it, so that its first launch costs what later ones do."""
    exe = _lookup(graphExec, SimGraphExec)
    if exe is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    exe.upload()
    return (cudaError_t.cudaSuccess,)


def cudaGraphGetNodes(graph, numNodes: int = 0):
    g = _lookup(graph, SimGraphTemplate)
    if g is None:
        return (cudaError_t.cudaErrorInvalidValue, None, None)
    count = len(g.nodes)
    if not numNodes:
        return (cudaError_t.cudaSuccess, [], count)
    return (cudaError_t.cudaSuccess, [cudaGraphNode_t(g, i) for i in range(min(numNodes, count))], min(numNodes, count))


def cudaGraphNodeGetType(node):
    if not isinstance(node, cudaGraphNode_t):
        return (cudaError_t.cudaErrorInvalidValue, None)
    return (cudaError_t.cudaSuccess, _KIND_TO_TYPE[node.node.kind])


def cudaGraphDebugDotPrint(graph, path, flags: int = 0):
    g = _lookup(graph, SimGraphTemplate)
    if g is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    write_dot(g.nodes, path)
    return (cudaError_t.cudaSuccess,)


def cudaGraphExecUpdate(hGraphExec, hGraph):
    """Give an instantiated graph the nodes' parameters of another graph of the same topology.

    As in CUDA: node count, node types and edges must match; a kernel node may change its
    parameters (addresses, scalars), its launch shape and its kernel.
    """
    exe = _lookup(hGraphExec, SimGraphExec)
    g = _lookup(hGraph, SimGraphTemplate)
    if exe is None or g is None:
        return (cudaError_t.cudaErrorInvalidValue, None)
    CLOCK.host_work(cost_model().exec_update_us(len(g.nodes)))
    failure = None
    if len(exe.nodes) != len(g.nodes):
        failure = cudaGraphExecUpdateResult.cudaGraphExecUpdateErrorTopologyChanged
    else:
        for old, new in zip(exe.nodes, g.nodes):
            if old.kind != new.kind:
                failure = cudaGraphExecUpdateResult.cudaGraphExecUpdateErrorNodeTypeChanged
            elif sorted(old.deps) != sorted(new.deps):
                failure = cudaGraphExecUpdateResult.cudaGraphExecUpdateErrorTopologyChanged
            if failure is not None:
                break
    if failure is not None:
        # cuda-python returns None in place of the result info when the call fails.
        return (cudaError_t.cudaErrorGraphExecUpdateFailure, None)
    exe.adopt_parameters(g)
    return (cudaError_t.cudaSuccess, cudaGraphExecUpdateResultInfo(cudaGraphExecUpdateResult.cudaGraphExecUpdateSuccess))


def cudaGetErrorName(error):
    return (cudaError_t.cudaSuccess, cudaError_t(int(error)).name.encode())


def cudaGetErrorString(error):
    return (cudaError_t.cudaSuccess, ERROR_STRINGS.get(cudaError_t(int(error)), "unknown error").encode())


class NotSimulatedAttributeError(NotSimulatedError, AttributeError):
    """A runtime function the twin does not have."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotSimulatedAttributeError(
        f"[graphlab simulator] cudart.{name} is not simulated: the twin has {', '.join(__all__)}; "
        "run this on a GPU for the rest of NVIDIA's runtime.")
