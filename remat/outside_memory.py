"""Memory that a step allocates outside remat's graphs while one of them runs.

remat's cap counts what a step allocates above what was resident before it; a graph's plan sees the
graph only. What the data-parallel wrappers of torch 2.13 add, found from their objects, without
running a step (``outside_memory``, called while Dynamo compiles a graph, with the module that
runs it on the call stack):

- DDP: nothing. Its reducer's gradient buckets (and, under ``gradient_as_bucket_view``, the
  gradients themselves) are allocated when DDP is built, and once more, replacing them, when it
  rebuilds the buckets in the forward of its second step (in the order the gradients came ready in
  the first); from then on they are resident before every step, and the all-reduce works in place.
  (A profiler that starts before the second step sees that rebuild's allocation but not the free of
  the buckets it replaces, which it never saw allocated: +0.26 MiB on the 2-rank MLP at "50%", all of
  its parameters' bytes; the third step measured 2.19 MiB, as without DDP.)
- FSDP2 (``fully_shard`` per block, each block compiled first): a block's parameters are
  all-gathered by its pre-forward hook and freed after its forward, gathered again before its
  backward while the next group's all-gather is prefetched; after a group's backward its gradients
  are reduce-scattered from a buffer of their padded unsharded size, which FSDP2 keeps until the
  next group's reduce-scatter is issued; the sharded gradients accumulate over the backward.
  While a block's graph runs: its own gathered parameters, the largest other group's (prefetch),
  the largest other group's reduce-scatter buffer, and every group's sharded gradients (``fsdp2``).
  The sum is the backward's; the forward holds less (its own parameters only): a safe figure.
  Blocks of one class and parameter shapes, each compiled, run one compiled graph, once per block
  per step (``fsdp2_runs``; ``OutsideMemory.runs``): each run keeps its saved bytes until its
  backward: the planner counts what the other runs hold (``Compilation.runs``, ``Problem.other_runs``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["OutsideMemory", "fsdp2", "fsdp2_runs", "outside_memory"]


@dataclass(frozen=True)
class OutsideMemory:
    """Bytes outside the graphs while one runs, by part (``(what, bytes)``); ``source`` names who
    allocates them ("FSDP2", "outside_bytes option") or is "" when nothing is."""

    parts: tuple[tuple[str, int], ...] = ()
    source: str = ""
    runs: int = 1  # times per step the graph being compiled runs, where known (``fsdp2_runs``)

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.parts)

    def describe(self) -> str:
        """e.g. "0.30 MiB FSDP2 buffers (gathered parameters 0.10 MiB, ...)"; "" when nothing."""
        from .errors import fmt_bytes

        if not self.nbytes:
            return ""
        parts = ", ".join(f"{what} {fmt_bytes(n)}" for what, n in self.parts if n)
        return f"{fmt_bytes(self.nbytes)} {self.source} buffers ({parts})"


NOTHING = OutsideMemory()


def outside_memory(depth: int = 256) -> OutsideMemory:
    """What the module being run allocates outside its graphs: the innermost FSDP2 module on the
    call stack (``fsdp2``), else nothing (DDP's buckets are resident before the step)."""
    module = _innermost_fsdp_module(sys._getframe(1), depth)
    return fsdp2(module) if module is not None else NOTHING


def _innermost_fsdp_module(frame: Any, depth: int) -> Any:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    for _ in range(depth):
        if frame is None:
            return None
        me = frame.f_locals.get("self")
        if isinstance(me, FSDPModule):
            return me
        frame = frame.f_back
    return None


def fsdp2(module: Any) -> OutsideMemory:
    """The buffers FSDP2 holds while ``module`` (a ``fully_shard``-ed module) runs its graph, from
    its parameter groups and those of every FSDP2 module of its root (see the module docstring)."""
    state = module._get_fsdp_state()
    own = list(state._fsdp_param_groups)
    everyone = [g for s in (state._state_ctx.all_states or [state]) for g in s._fsdp_param_groups]
    others = [g for g in everyone if all(g is not o for o in own)]
    parts = (
        ("gathered parameters", sum(_gathered_bytes(g) for g in own)),
        ("prefetched parameters", max((_gathered_bytes(g) for g in others), default=0)),
        ("reduce-scatter buffer", max((_reduce_scatter_bytes(g) for g in others), default=0)),
        ("sharded gradients", sum(_sharded_grad_bytes(g) for g in everyone)),
    )
    return OutsideMemory(parts, "FSDP2", fsdp2_runs(module))


def fsdp2_runs(module: Any) -> int:
    """How many FSDP2 modules of ``module``'s root run the same compiled code as it does: those
    compiled with torch.compile whose original module has its class and its parameters' shapes
    and dtypes (the blocks of a model compiled block by block, which Dynamo compiles once, for
    the first block to run, and reuses for every block whose guards pass)."""
    state = module._get_fsdp_state()
    own = _block_signature(module, state)
    if own is None:
        return 1
    everyone = state._state_ctx.all_states or [state]
    return max(1, sum(_block_signature(m, s) == own for s in everyone for m in s._modules))


def _block_signature(module: Any, state: Any) -> tuple | None:
    """(class of the compiled module's original, its parameters' (shape, dtype)); None when
    ``module`` is not a torch.compile'd module."""
    original = getattr(module, "_orig_mod", None)
    if original is None:
        return None
    params = tuple((tuple(p._orig_size), p.sharded_param.dtype) for g in state._fsdp_param_groups for p in g.fsdp_params)
    return type(original), params


def _gathered_bytes(group: Any) -> int:
    """A group's parameters all-gathered: padded unsharded size, in the dtype they are gathered in."""
    return sum(_padded_unsharded_numel(p) * _itemsize(p.param_dtype or p.orig_dtype) for p in group.fsdp_params)


def _reduce_scatter_bytes(group: Any) -> int:
    """A group's unsharded gradients in the reduce-scatter's input: padded, in the reduce dtype."""
    return sum(_padded_unsharded_numel(p) * _itemsize(p.reduce_dtype or p.param_dtype or p.orig_dtype)
               for p in group.fsdp_params)


def _sharded_grad_bytes(group: Any) -> int:
    return sum(p.padded_sharded_param_size.numel() * _itemsize(p.orig_dtype) for p in group.fsdp_params)


def _padded_unsharded_numel(param: Any) -> int:
    return param.padded_sharded_param_size.numel() * param.mesh_info.shard_mesh_size


def _itemsize(dtype: Any) -> int:
    return dtype.itemsize
