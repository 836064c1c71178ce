"""A tensor-parallel MLP block: the decode step that lesson 13 captures on every rank.

The MLP of a transformer layer, ``y = W2 gelu(W1 x + b1) + b2``, split over N ranks the way
Megatron-LM, vLLM and SGLang split it:

* **column parallel** first: ``W1`` (``d_ff x d_model``) is cut by rows, its output features.
  Rank r holds rows ``r*d_ff/N ... (r+1)*d_ff/N - 1`` and that slice of ``b1``, and computes
  that slice of the hidden layer from the whole input: no communication;
* **row parallel** next: ``W2`` (``d_model x d_ff``) is cut by columns, its input features,
  the same slice. Rank r multiplies its hidden slice and gets a *partial sum* of the output;
* one **all-reduce** (sum) adds the partial sums on every rank, then ``b2`` is added once.

One collective per block, at its end. Every rank builds the same full weights from one seed
and keeps its shard, so the reference is the unsplit block in one process.
"""
from __future__ import annotations

from typing import Any

import torch

from graphlab_utils.recipes import seeded_randn

__all__ = ["D_MODEL", "D_FF", "weights", "shard", "reference", "TPMLP", "decode_input", "split_size"]

D_MODEL, D_FF = 64, 256  # d_ff splits evenly over 1, 2, 4 or 8 ranks


def weights(d_model: int = D_MODEL, d_ff: int = D_FF, seed: int = 0) -> dict:
    """The full block's weights on the CPU, the same on every rank (one seeded generator)."""
    gen = torch.Generator().manual_seed(seed)
    scale1, scale2 = d_model ** -0.5, d_ff ** -0.5
    return {
        "w1": torch.randn(d_ff, d_model, generator=gen) * scale1,
        "b1": torch.randn(d_ff, generator=gen) * 0.1,
        "w2": torch.randn(d_model, d_ff, generator=gen) * scale2,
        "b2": torch.randn(d_model, generator=gen) * 0.1,
    }


def split_size(d_ff: int, world_size: int) -> int:
    """How many hidden features each rank holds; the block needs ``d_ff`` divisible by the ranks."""
    if d_ff % world_size:
        raise ValueError(f"d_ff={d_ff} does not split over {world_size} ranks: pick a d_ff divisible by {world_size}")
    return d_ff // world_size


def shard(full: dict, rank: int, world_size: int, device: Any = None) -> dict:
    """Rank ``rank``'s part: rows of ``w1`` and ``b1`` (column parallel), columns of ``w2`` (row parallel), all of ``b2``."""
    part = split_size(full["w1"].shape[0], world_size)
    rows = slice(rank * part, (rank + 1) * part)
    out = {"w1": full["w1"][rows], "b1": full["b1"][rows], "w2": full["w2"][:, rows], "b2": full["b2"]}
    return {k: v.contiguous().to(device) if device is not None else v.contiguous() for k, v in out.items()}


def reference(x: torch.Tensor, full: dict) -> torch.Tensor:
    """The unsplit block, in one process: what every rank's result must equal."""
    w = {k: v.to(x.device) for k, v in full.items()}
    return torch.nn.functional.gelu(x @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"]


class TPMLP(torch.nn.Module):
    """This rank's shard of the block; ``forward`` ends with the all-reduce of the partial sums."""

    def __init__(self, part: dict, group=None):
        super().__init__()
        for name, value in part.items():
            self.register_buffer(name, value)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        hidden = torch.nn.functional.gelu(x @ self.w1.T + self.b1)  # column parallel: this rank's slice
        partial = hidden @ self.w2.T  # row parallel: a partial sum of the output
        dist.all_reduce(partial, group=self.group)  # every rank now holds the sum
        return partial + self.b2  # the bias once, after the sum


def decode_input(step: int, batch: int, d_model: int = D_MODEL, device: Any = None) -> torch.Tensor:
    """The hidden states of decode step ``step``: the same numbers on every rank and backend."""
    return seeded_randn(1000 + step, batch, d_model, device=device if device is not None else torch.device("cpu"))
