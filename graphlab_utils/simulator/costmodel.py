"""The simulator's cost model: what each step of eager and graphed execution costs.

On the simulator backend nothing runs on a GPU, so times are *modelled*. This module
holds the model and its constants; the constants come from a calibration file
(``graphlab_utils/simulator/data/calibration.json``) written by ``graphlab calibrate`` on a real
GPU. Every figure the course derives from this model says "modelled (calibrated on
<GPU>)".

The model, in the words a lesson would use
------------------------------------------
Two clocks run side by side: the *host* (the Python thread) and the *device* (the GPU's
stream). Each kernel has a device duration::

    kernel_us(bytes, flops) = max(kernel_min_us,
                                  bytes / mem_bandwidth,
                                  flops / matmul_rate)

* Eager execution: each kernel costs the host ``eager_launch_us`` (PyTorch's dispatcher
  plus ``cudaLaunchKernel``) and the device ``kernel_us``. Where the calibration has them,
  matrix products and convolutions cost the host ``eager_matmul_launch_us`` /
  ``eager_conv_launch_us`` instead (cuBLAS and cuDNN do more work per launch), and ops that
  launch no kernel (views) ``eager_view_us``: ``eager_host_us(func)`` picks the figure.
  Likewise the device floor of a matrix product or a convolution is ``matmul_min_us`` /
  ``conv_min_us`` where calibrated (a tiny cuBLAS or cuDNN kernel takes longer than a tiny
  elementwise one): ``kernel_us(bytes, flops, func)``. The device cannot start a
  kernel before the host has launched it, so a pass of many tiny kernels is host-bound:
  about ``n * eager_launch_us``.
* Capture: entering and leaving ``torch.cuda.graph`` costs the host ``capture_base_us``
  (it synchronises, collects garbage and empties the allocator cache) and each recorded op
  ``capture_per_op_us`` (``capture_op_us(func)`` adds a library launch's extra host work);
  nothing runs on the device.
* Instantiate: ``instantiate_base_us + n_nodes * instantiate_per_node_us`` of host time.
* Replay: one ``cudaGraphLaunch`` costs the host ``graph_launch_us``; on the device,
  each kernel node takes ``replay_node_us(kernel_us) = max(kernel_us, graph_node_us)``.
  ``graph_node_us`` is the per-node floor of a replayed graph: the time from one node's
  start to the next one's when the kernels themselves are tiny (what the GPU's front end
  needs to schedule a node). A large kernel hides it; a tiny one is bounded by it. This is
  the choice of the model: ``graph_node_us`` is *not* added to every kernel.
* Upload: the first launch of a freshly instantiated graph (or ``cudaGraphUpload``) first
  uploads it to the device: ``upload_us(n) = upload_base_us + n_nodes * upload_per_node_us``
  of host time, once per executable graph.
* ``cudaGraphExecUpdate``: ``exec_update_base_us + n_nodes * exec_update_per_node_us``
  of host time.
* ``torch.cuda.synchronize()`` with an idle device: ``sync_us`` of host time (otherwise
  the host also waits for the device to drain).

Interface
---------
* ``CostModel``: frozen dataclass of the constants, with ``kernel_us``, ``eager_host_us``,
  ``capture_op_us``, ``replay_node_us``, ``capture_us``, ``instantiate_us``, ``upload_us``,
  ``exec_update_us``.
  Optional constants (``OPTIONAL_CONSTANTS``) may be absent from a calibration file; at 0
  they fall back to the general figure.
* ``load(path=None) -> CostModel``: reads a calibration file (default: the packaged one, or
  the file named by ``$GRAPHLAB_CALIBRATION``);
  cached per path; raises ``CalibrationError`` with one clear sentence if the file is
  missing or malformed.
* ``estimate_op_cost(func, args, kwargs, outputs) -> (bytes_moved, flops)`` for one aten op.
* ``is_kernel_op(func) -> bool``: whether the op launches a kernel on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from graphlab_utils.ops import is_kernel_op
from graphlab_utils.ops import op_name as _op_name

__all__ = [
    "CostModel",
    "CalibrationError",
    "CONSTANT_FIELDS",
    "OPTIONAL_CONSTANTS",
    "DEFAULT_PATH",
    "ENV_VAR",
    "default_path",
    "load",
    "model_from_dict",
    "estimate_op_cost",
    "is_kernel_op",
    "op_class",
]

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "calibration.json"
ENV_VAR = "GRAPHLAB_CALIBRATION"  # another calibration file (benchmarks, what-if runs)


class CalibrationError(ValueError):
    """The calibration file is missing or malformed."""


@dataclass(frozen=True)
class CostModel:
    """Constants of the cost model (times in microseconds) and where they were measured."""

    gpu_name: str
    measured_on: str  # ISO date of the calibration run
    torch_version: str
    cuda_version: str
    eager_launch_us: float  # host time to launch one kernel eagerly (dispatcher + cudaLaunchKernel)
    kernel_min_us: float  # device time of the smallest kernel
    mem_bandwidth_gbs: float  # effective device bandwidth, bytes read + written, GB/s (1e9 B/s)
    matmul_tflops: float  # effective fp32 matmul rate with TF32 off, TFLOP/s (1e12 FLOP/s)
    graph_launch_us: float  # host time of one cudaGraphLaunch (CUDAGraph.replay())
    graph_node_us: float  # device time floor per kernel node during replay (see module doc)
    capture_per_op_us: float  # host time per op recorded during capture
    instantiate_base_us: float
    instantiate_per_node_us: float
    exec_update_base_us: float
    exec_update_per_node_us: float
    sync_us: float  # host time of torch.cuda.synchronize() with an idle device
    source: str = ""  # where the figures come from (a calibration run or a provisional note)
    capture_base_us: float = 0.0  # host time of entering/leaving torch.cuda.graph (sync, gc, empty_cache)
    # Optional refinements of the eager host cost (0 = not calibrated: eager_launch_us applies)
    eager_view_us: float = 0.0  # host time of an eager op that launches no kernel (view, t, ...)
    eager_matmul_launch_us: float = 0.0  # host time to launch a matrix product (cuBLAS)
    eager_conv_launch_us: float = 0.0  # host time to launch a convolution (cuDNN)
    # Optional device-time floors of library kernels (0 = not calibrated: kernel_min_us applies)
    matmul_min_us: float = 0.0  # device time of the smallest matrix product (cuBLAS)
    conv_min_us: float = 0.0  # device time of the smallest convolution (cuDNN)
    # The upload of a fresh executable graph at its first launch (0 = not calibrated: no upload cost)
    upload_base_us: float = 0.0  # host time the first cudaGraphLaunch of an exec adds
    upload_per_node_us: float = 0.0
    gpu_memory_gib: float = 0.0  # the GPU's memory as PyTorch reports it (0 = not recorded: no limit)

    # -- derived costs -------------------------------------------------------------
    def kernel_us(self, bytes_moved: int, flops: float, func: Any = None) -> float:
        """Device time of one kernel moving ``bytes_moved`` bytes and doing ``flops`` FLOPs.

        Pass the op as ``func`` to apply the floor of its library (``matmul_min_us`` for
        matrix products, ``conv_min_us`` for convolutions) instead of ``kernel_min_us``.
        """
        mem_us = float(bytes_moved) / (self.mem_bandwidth_gbs * 1e3)  # GB/s -> bytes per us
        flop_us = float(flops) / (self.matmul_tflops * 1e6)  # TFLOP/s -> FLOPs per us
        floor = self.kernel_min_us
        if func is not None:
            kind = op_class(func)
            if kind == "matmul" and self.matmul_min_us > 0:
                floor = self.matmul_min_us
            elif kind == "conv" and self.conv_min_us > 0:
                floor = self.conv_min_us
        return max(floor, mem_us, flop_us)

    def eager_host_us(self, func: Any) -> float:
        """Host time PyTorch spends on one eager aten op ``func`` (an ``OpOverload``).

        ``eager_view_us`` for ops that launch no kernel, ``eager_matmul_launch_us`` /
        ``eager_conv_launch_us`` for matrix products / convolutions where calibrated,
        ``eager_launch_us`` for every other kernel.
        """
        if not is_kernel_op(func):
            return self.eager_view_us
        kind = op_class(func)
        if kind == "matmul" and self.eager_matmul_launch_us > 0:
            return self.eager_matmul_launch_us
        if kind == "conv" and self.eager_conv_launch_us > 0:
            return self.eager_conv_launch_us
        return self.eager_launch_us

    def capture_op_us(self, func: Any) -> float:
        """Host time of recording one op ``func`` during capture: ``capture_per_op_us``, plus
        the extra host work of a library launch (what ``eager_host_us`` charges a matmul or a
        convolution beyond ``eager_launch_us``); ``eager_view_us`` for ops without a kernel."""
        if not is_kernel_op(func):
            return self.eager_view_us
        return self.capture_per_op_us + max(0.0, self.eager_host_us(func) - self.eager_launch_us)

    def replay_node_us(self, kernel_us: float) -> float:
        """Device time of one kernel node during graph replay."""
        return max(float(kernel_us), self.graph_node_us)

    def instantiate_us(self, n_nodes: int) -> float:
        """Host time of ``CUDAGraph.instantiate()`` (cudaGraphInstantiate) for ``n_nodes`` nodes."""
        return self.instantiate_base_us + max(0, int(n_nodes)) * self.instantiate_per_node_us

    def upload_us(self, n_nodes: int) -> float:
        """Host time the first launch of a fresh executable graph of ``n_nodes`` nodes adds (its upload)."""
        return self.upload_base_us + max(0, int(n_nodes)) * self.upload_per_node_us

    def exec_update_us(self, n_nodes: int) -> float:
        """Host time of one cudaGraphExecUpdate over ``n_nodes`` nodes."""
        return self.exec_update_base_us + max(0, int(n_nodes)) * self.exec_update_per_node_us

    def capture_us(self, n_ops: int) -> float:
        """Host time of one ``with torch.cuda.graph(g):`` block recording ``n_ops`` ops."""
        return self.capture_base_us + max(0, int(n_ops)) * self.capture_per_op_us


_META_FIELDS = ("gpu_name", "measured_on", "torch_version", "cuda_version")
# constants a calibration file may omit, with their defaults
OPTIONAL_CONSTANTS = {
    "capture_base_us": 0.0,
    "eager_view_us": 0.0,
    "eager_matmul_launch_us": 0.0,
    "eager_conv_launch_us": 0.0,
    "matmul_min_us": 0.0,
    "conv_min_us": 0.0,
    "upload_base_us": 0.0,
    "upload_per_node_us": 0.0,
}
CONSTANT_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(CostModel)
    if f.name not in _META_FIELDS and f.name not in ("source", "gpu_memory_gib") and f.name not in OPTIONAL_CONSTANTS
)

# -- loading ---------------------------------------------------------------------------

_cache: dict[Path, CostModel] = {}
_lock = threading.Lock()


def model_from_dict(data: Any, where: str = "calibration data") -> CostModel:
    """Build a ``CostModel`` from the parsed JSON of a calibration file.

    The file holds the metadata at the top level and the constants under ``"constants"``
    (a flat file with the constants at the top level is accepted too).
    """
    if not isinstance(data, dict):
        raise CalibrationError(f"{where} is malformed: expected a JSON object at the top level.")
    consts = data.get("constants", data)
    if not isinstance(consts, dict):
        raise CalibrationError(f"{where} is malformed: 'constants' must be a JSON object.")
    missing = [k for k in _META_FIELDS if not isinstance(data.get(k), str)]
    missing += [k for k in CONSTANT_FIELDS if k not in consts]
    if missing:
        raise CalibrationError(f"{where} is malformed: missing or invalid field(s) {', '.join(missing)}.")
    values: dict[str, Any] = {k: data[k] for k in _META_FIELDS}
    bad = []
    for k in CONSTANT_FIELDS + tuple(OPTIONAL_CONSTANTS):
        v = consts.get(k, OPTIONAL_CONSTANTS.get(k))
        if v is None and k in OPTIONAL_CONSTANTS:
            v = OPTIONAL_CONSTANTS[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad.append(k)
        else:
            values[k] = float(v)
    for k in ("mem_bandwidth_gbs", "matmul_tflops"):
        if k not in bad and values[k] <= 0:
            bad.append(k)
    if bad:
        raise CalibrationError(
            f"{where} is malformed: field(s) {', '.join(bad)} must be finite non-negative numbers"
            " (bandwidth and matmul rate positive)."
        )
    values["source"] = str(data.get("source", ""))
    memory = data.get("gpu_memory_gib", 0.0)
    if not isinstance(memory, bool) and isinstance(memory, (int, float)) and math.isfinite(memory) and memory > 0:
        values["gpu_memory_gib"] = float(memory)
    return CostModel(**values)


def default_path() -> Path:
    """The calibration file ``load()`` reads: ``$GRAPHLAB_CALIBRATION`` when set, else the
    packaged ``graphlab_utils/simulator/data/calibration.json``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().resolve() if env else DEFAULT_PATH


def load(path: str | Path | None = None) -> CostModel:
    """Load the cost model from ``path`` (default: ``default_path()``); cached per file."""
    p = Path(path).expanduser().resolve() if path is not None else default_path()
    with _lock:
        hit = _cache.get(p)
        if hit is not None:
            return hit
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise CalibrationError(f"cannot read the calibration file {p}: {e.strerror or e}.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(
                f"the calibration file {p} is malformed: not valid JSON ({e.msg} at line {e.lineno});"
                " re-create it with `graphlab calibrate --write` on a GPU."
            ) from None
        model = model_from_dict(data, where=f"the calibration file {p}")
        _cache[p] = model
        return model


def _clear_cache() -> None:
    with _lock:
        _cache.clear()


load.cache_clear = _clear_cache  # type: ignore[attr-defined]

# -- which ops launch kernels ----------------------------------------------------------

# Which ops launch a kernel is the course's op taxonomy (graphlab_utils.ops): re-exported here.


def _has_tag(func: Any, tag_name: str) -> bool:
    try:
        import torch

        tag = getattr(torch.Tag, tag_name, None)
        return tag is not None and tag in getattr(func, "tags", ())
    except Exception:
        return False


# -- bytes and FLOPs of one op --------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    try:
        import torch

        return isinstance(x, torch.Tensor)
    except Exception:
        return False


def _iter_tensors(obj: Any) -> Iterable[Any]:
    if _is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _iter_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _iter_tensors(o)


def _nbytes(t: Any) -> int:
    """Bytes a kernel reads or writes for tensor ``t``: its elements, but never more than its
    storage (an expanded tensor is read once)."""
    try:
        n = int(t.numel()) * int(t.element_size())
    except Exception:
        return 0
    try:
        if t.layout is not None and str(t.layout) == "torch.strided" and 0 in tuple(t.stride()):
            n = min(n, int(t.untyped_storage().nbytes()))
    except Exception:
        pass
    return n


def _numel(t: Any) -> int:
    try:
        return int(t.numel())
    except Exception:
        return 0


def _shape(t: Any) -> tuple:
    try:
        return tuple(int(s) for s in t.shape)
    except Exception:
        return ()


def _prod(xs: Iterable[int]) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _matmul_flops(a: Any, b: Any) -> float:
    """2 * (batch) * M * N * K for ``a @ b`` with broadcasting of batch dims."""
    sa, sb = _shape(a), _shape(b)
    if not sa or not sb:
        return 0.0
    if len(sa) == 1:
        sa = (1,) + sa
    if len(sb) == 1:
        sb = sb + (1,)
    m, k = sa[-2], sa[-1]
    n = sb[-1]
    batch_a, batch_b = sa[:-2], sb[:-2]
    nb = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (nb - len(batch_a)) + batch_a
    batch_b = (1,) * (nb - len(batch_b)) + batch_b
    batch = _prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return 2.0 * batch * m * n * k


_MATMUL_AB = {  # op name -> index of the two matrix operands in args
    "mm": (0, 1), "bmm": (0, 1), "matmul": (0, 1), "mv": (0, 1), "dot": (0, 1), "vdot": (0, 1),
    "addmm": (1, 2), "baddbmm": (1, 2), "addbmm": (1, 2), "addmv": (1, 2), "_addmm_activation": (1, 2),
    "_scaled_mm": (0, 1), "_int_mm": (0, 1),
}

_CONV_NAMES = frozenset(
    {
        "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "convolution_overrideable",
        "cudnn_convolution", "_slow_conv2d_forward", "slow_conv3d_forward", "thnn_conv2d",
        "mkldnn_convolution", "_mps_convolution", "_nnpack_spatial_convolution",
        "slow_conv_dilated2d", "slow_conv_dilated3d", "miopen_convolution",
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "cudnn_convolution_transpose",
        "slow_conv_transpose2d", "slow_conv_transpose3d", "convolution_backward",
        "convolution_backward_overrideable",
    }
)


def _conv_flops(name: str, args: tuple, kwargs: dict, outputs: list) -> float:
    if name in ("convolution_backward", "convolution_backward_overrideable"):
        grad_out = _arg(args, kwargs, 0, "grad_output")
        weight = _arg(args, kwargs, 2, "weight")
        # grad_input and grad_weight each cost about one forward convolution
        return 2.0 * 2.0 * _numel(grad_out) * _prod(_shape(weight)[1:])
    inp = _arg(args, kwargs, 0, "input", _arg(args, kwargs, 0, "self"))
    weight = _arg(args, kwargs, 1, "weight")
    w = _shape(weight)
    if len(w) < 2:
        return 0.0
    transposed = "transpose" in name
    if name in ("convolution", "_convolution", "convolution_overrideable"):
        transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    if transposed:
        # weight: (Cin, Cout/groups, k...): each input element meets Cout/groups * k weights
        return 2.0 * _numel(inp) * _prod(w[1:])
    out = outputs[0] if outputs else None
    # weight: (Cout, Cin/groups, kh, kw): 2 * N * Cout * Hout * Wout * Cin/groups * kh * kw
    return 2.0 * _numel(out) * _prod(w[1:])


def _attention_flops(args: tuple, kwargs: dict) -> float:
    q = _arg(args, kwargs, 0, "query")
    k = _arg(args, kwargs, 1, "key")
    v = _arg(args, kwargs, 2, "value")
    sq, sk = _shape(q), _shape(k)
    if len(sq) < 2 or len(sk) < 2:
        return 0.0
    bh = _prod(sq[:-2])  # B * H (broadcast over k's leading dims is rare; q's are used)
    length, d = sq[-2], sq[-1]
    s = sk[-2]
    dv = _shape(v)[-1] if len(_shape(v)) >= 1 else d
    # Q @ K^T: 2*B*H*L*S*D, then P @ V: 2*B*H*L*S*Dv; with Dv == D: 4*B*H*L*S*D
    return 2.0 * bh * length * s * (d + dv)


# In-place ops that overwrite ``self`` without reading it.
_WRITE_ONLY_SELF = frozenset(
    {
        "copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_",
        "geometric_", "cauchy_", "log_normal_",
    }
)


def estimate_op_cost(func: Any, args: tuple, kwargs: dict | None, outputs: Any) -> tuple[int, float]:
    """Bytes moved and FLOPs of one aten op (``func`` is a ``torch._ops.OpOverload``).

    Bytes: the sizes of the tensor inputs read plus the tensor outputs written (a tensor
    passed as ``out=`` counts once, as written). FLOPs: PyTorch's ``torch.utils.flop_counter``
    for the ops it knows, else ``2*M*N*K`` for matrix products,
    ``2*N*Cout*Hout*Wout*Cin/groups*kh*kw`` for convolutions, ``4*B*H*L*S*D`` for scaled dot
    product attention, the output's element count for pointwise ops, the input's for
    reductions, 0 for other ops (bytes only). Ops that launch no kernel (see
    ``is_kernel_op``) cost ``(0, 0.0)``. Never raises.
    """
    try:
        if not is_kernel_op(func):
            return 0, 0.0
    except Exception:
        pass
    kwargs = dict(kwargs or {})
    try:
        out_kw = {k: kwargs.pop(k) for k in list(kwargs) if k == "out" or k.startswith("out")}
        outs = list(_iter_tensors(outputs)) if outputs is not None else []
        if not outs:
            outs = list(_iter_tensors(out_kw))
        ins = list(_iter_tensors(args)) + list(_iter_tensors(kwargs))
        if ins and _op_name(func) in _WRITE_ONLY_SELF:
            ins = ins[1:]  # self is overwritten, not read
        bytes_moved = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
    except Exception:
        return 0, 0.0
    try:
        flops = _library_flops(func, tuple(args), kwargs, outputs)
        if flops is None:
            flops = _flops(func, tuple(args), kwargs, outs, ins)
    except Exception:
        flops = 0.0
    if not (isinstance(flops, float) and math.isfinite(flops)) or flops < 0:
        flops = 0.0
    return int(bytes_moved), float(flops)


def op_class(func: Any) -> str:
    """``"matmul"``, ``"conv"``, ``"attention"`` or ``"other"``: the library family of an op."""
    name = _op_name(func)
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    if base in _MATMUL_AB or base == "linear":
        return "matmul"
    if base in _CONV_NAMES:
        return "conv"
    if "scaled_dot_product" in base or base in ("_flash_attention_forward", "_efficient_attention_forward"):
        return "attention"
    return "other"


def _library_flops(func: Any, args: tuple, kwargs: dict, outputs: Any) -> float | None:
    """PyTorch's own count (``torch.utils.flop_counter``, the formulas of ``FlopCounterMode``) for the
    ops it knows: matrix products, convolutions forward and backward, the GPU's attention kernels;
    None for the others, which the formulas below count."""
    from torch.utils.flop_counter import flop_registry

    count = flop_registry.get(getattr(func, "_overloadpacket", None))
    if count is None:
        return None
    return float(count(*args, **kwargs, out_val=outputs))


def _flops(func: Any, args: tuple, kwargs: dict, outs: list, ins: list) -> float:
    # What flop_counter does not count: mv, dot, matmul and linear when they reach the dispatcher,
    # convolutions by other names, the CPU's attention kernel, pointwise ops and reductions.
    name = _op_name(func)
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    if base in _MATMUL_AB:
        i, j = _MATMUL_AB[base]
        a, b = _arg(args, kwargs, i, "mat1"), _arg(args, kwargs, j, "mat2")
        if base in ("dot", "vdot"):
            return 2.0 * _numel(a)
        return _matmul_flops(a, b)
    if base == "linear":
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        sw = _shape(w)
        if not sw:
            return 0.0
        n_out = sw[0] if len(sw) == 2 else 1
        return 2.0 * _numel(x) * n_out
    if base in _CONV_NAMES:
        return _conv_flops(base, args, kwargs, outs)
    if "scaled_dot_product" in base or base in ("_flash_attention_forward", "_efficient_attention_forward"):
        if "backward" in base:
            return 2.5 * _attention_flops(args[1:] if len(args) > 3 else args, kwargs)
        return _attention_flops(args, kwargs)
    if _has_tag(func, "pointwise"):
        return float(_numel(outs[0])) if outs else 0.0
    if _has_tag(func, "reduction") or base in (
        "sum", "mean", "amax", "amin", "max", "min", "prod", "norm", "linalg_vector_norm",
        "_softmax", "_log_softmax", "softmax", "log_softmax", "var", "std", "var_mean",
        "native_layer_norm", "native_group_norm", "native_batch_norm", "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training", "argmax", "argmin", "cumsum", "logsumexp",
    ):
        return float(max((_numel(t) for t in ins), default=0))
    return 0.0
