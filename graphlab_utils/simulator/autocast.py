"""``torch.autocast("cuda")`` on the simulator: CUDA's casting rules applied to its CPU tensors.

PyTorch casts inside an autocast region with a kernel per op and device type, registered
under the dispatch key ``AutocastCUDA`` for CUDA tensors and ``AutocastCPU`` for CPU tensors,
with different op lists (``aten/src/ATen/autocast_mode.{h,cpp}``: CUDA runs ``sum``,
``softmax``, ``layer_norm``, ``exp`` or ``pow`` in float32, the CPU does not). The simulator's
tensors are CPU tensors, so ``runtime.py`` mirrors a ``"cuda"`` region onto CPU autocast, and
:func:`enable` registers, for ``AutocastCPU``, CUDA's policy for every op of CUDA's lists and a
pass-through for the ops only the CPU list casts. The kernels follow PyTorch's ``CastPolicy``:

* ``lower_precision_fp``: floating-point arguments (float64 excepted) to the autocast dtype,
  float32 leaf weights that require grad cached for the region while the cache is enabled;
* ``fp32``: to float32; ``fp32_set_opt_dtype``: ``dtype=float32`` unless given, when the first
  argument is eligible; ``fp32_append_dtype``: ``norm`` computed in float32;
* ``promote``: to the widest floating type among the arguments;
* ``binary_cross_entropy`` raises CUDA's error. The CPU's recurrent layer (``mkldnn_rnn_layer``,
  where a GPU runs cuDNN's RNN, which autocast runs in the autocast dtype) computes in float32
  (oneDNN has no half-precision RNN on most CPUs) and returns its outputs in the autocast dtype.

The registrations are made the first time a ``"cuda"`` region is entered and removed by
:func:`disable` (the simulator's uninstall).
"""
from __future__ import annotations

import warnings
import weakref

import torch

__all__ = ["enable", "disable", "clear_cache"]

# CUDA's lists (AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE,
# AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE, AT_FORALL_PROMOTE), as "op" or "op.overload".
LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr", "matmul",
    "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
)
FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm", "native_layer_norm",
    "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim", "cosine_similarity", "poisson_nll_loss",
    "cosine_embedding_loss", "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss",
    "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
    "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm",
    "logsumexp", "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
)
FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "prod.dim_Dimname", "softmax.int", "softmax.Dimname", "log_softmax.int",
    "log_softmax.Dimname", "cumprod", "cumprod.dimname", "cumsum", "cumsum.dimname", "linalg_vector_norm",
    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList", "sum.dim_DimnameList",
)
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put", "tensordot",
           "scatter_add")
BANNED = "binary_cross_entropy"
BCE_BANNED = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
    "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
    "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
    "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
    "safe to autocast.")
RNN_LAYER = "mkldnn_rnn_layer"

_state: dict = {"lib": None}
_cache: dict = {}  # id(weight) -> (weakref to it, its cast): the region's cast of each float32 leaf weight


def _op(name: str):
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base, None)
    return getattr(packet, overload or "default", None) if packet is not None else None


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _cast_one(to_type, t):
    if not (_eligible(t) and t.dtype != to_type):
        return t
    if (to_type == torch.get_autocast_dtype("cpu") and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
            and not t._is_view() and torch.is_autocast_cache_enabled()):
        hit = _cache.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        cast = t.to(to_type)
        _cache[id(t)] = (weakref.ref(t), cast)
        return cast
    return t.to(to_type)


def _cast(to_type, value):
    if isinstance(value, torch.Tensor):
        return _cast_one(to_type, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(to_type, v) for v in value)
    return value


def _widest(args, kwargs):
    to_type = torch.get_autocast_dtype("cpu")
    for value in [*args, *kwargs.values()]:
        for t in (value if isinstance(value, (list, tuple)) else (value,)):
            if _eligible(t) and (to_type == torch.float32 or t.dtype == torch.float32):
                to_type = torch.float32
    return to_type


def _first_tensor(args):
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


_EXCLUDE = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _kernel(op, policy: str, target=None):
    dtype_index = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_EXCLUDE):
            if policy == "lower_precision_fp":
                to_type = torch.get_autocast_dtype("cpu")
                args, kwargs = _cast(to_type, args), {k: _cast(to_type, v) for k, v in kwargs.items()}
            elif policy == "fp32":
                args, kwargs = _cast(torch.float32, args), {k: _cast(torch.float32, v) for k, v in kwargs.items()}
            elif policy == "fp32_set_opt_dtype":
                given = kwargs.get("dtype") is not None or (dtype_index is not None and len(args) > dtype_index
                                                            and args[dtype_index] is not None)
                if _eligible(_first_tensor(args)) and not given:
                    if dtype_index is not None and len(args) > dtype_index:
                        args = (*args[:dtype_index], torch.float32, *args[dtype_index + 1:])
                    else:
                        kwargs = dict(kwargs, dtype=torch.float32)
            elif policy == "fp32_append_dtype":
                first = _first_tensor(args)
                out_type = torch.float32 if _eligible(first) else first.dtype
                return target(*args, **dict(kwargs, dtype=out_type))
            elif policy == "promote":
                to_type = _widest(args, kwargs)
                args, kwargs = _cast(to_type, args), {k: _cast(to_type, v) for k, v in kwargs.items()}
            elif policy == "banned":
                raise RuntimeError(BCE_BANNED)
            elif policy == "rnn":
                to_type = torch.get_autocast_dtype("cpu")
                out = op(*_cast(torch.float32, args), **{k: _cast(torch.float32, v) for k, v in kwargs.items()})
                return (*(o.to(to_type) if _eligible(o) else o for o in out[:3]), *out[3:])
            return op(*args, **kwargs)

    return kernel


def _rules() -> dict:
    rules = {}
    for names, policy in ((LOWER_PRECISION_FP, "lower_precision_fp"), (FP32, "fp32"),
                          (FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"), (PROMOTE, "promote")):
        for name in names:
            rules[name] = policy
    for name in FP32_APPEND_DTYPE:
        rules[name] = "fp32_append_dtype"
    rules[BANNED] = "banned"
    rules[RNN_LAYER] = "rnn"
    return rules


def enable() -> None:
    """Register CUDA's autocast rules for the CPU tensors the simulator uses (once)."""
    if _state["lib"] is not None:
        return
    lib = torch.library.Library("aten", "IMPL")
    rules = _rules()
    # Ops only the CPU list casts: they fall through, as for CUDA autocast (their inner ops are cast).
    passing = [qualified[len("aten::"):] for qualified in torch._C._dispatch_get_all_op_names()
               if qualified.startswith("aten::") and qualified[len("aten::"):] not in rules
               and torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "AutocastCPU")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
        for name in passing:
            lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        for name, policy in rules.items():
            op = _op(name)
            if op is None:
                continue  # an op this version of PyTorch does not have
            target = _op(FP32_APPEND_DTYPE[name]) if policy == "fp32_append_dtype" else None
            lib.impl(name, _kernel(op, policy, target), "AutocastCPU")
    _state["lib"] = lib


def clear_cache() -> None:
    """The end of the outermost autocast region: its cached casts are dropped."""
    _cache.clear()


def disable() -> None:
    """Give the CPU its own autocast rules back."""
    lib, _state["lib"] = _state["lib"], None
    if lib is not None:
        lib._destroy()
    _cache.clear()
