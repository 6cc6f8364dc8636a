"""Seconds of the slot ops and of recomputations: each slot as Inductor's kernels run it
(``slot_times``), each forward value's recompute price (``recompute_time``), from the roofline of
``remat.cost`` or, given ``MeasuredCosts``, from measurements."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from .cost import DeviceSpec, op_flops, op_time, tensor_bytes
from .joint_graph import Folding, Schedule, compute_node, fake_value, is_random, kernel_inputs, kernel_reads, op_tags

if TYPE_CHECKING:
    from .profile import MeasuredCosts

aten = torch.ops.aten


# Pointwise ops that are compute-bound on a CPU (a vectorised polynomial per element: 0.3-0.7 G
# elements/s at one thread, 8-20x slower than a multiply), as ATen names them. The other pointwise
# ops (add, mul, where, rsqrt, ...) run inside a fused kernel at the speed of its memory traffic.
_TRANSCENDENTAL = frozenset({
    "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sigmoid", "tanh", "erf", "erfc", "erfinv",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh", "pow",
    "gelu", "gelu_backward", "silu", "mish", "softplus", "elu", "logit", "lgamma", "digamma",
})


def transcendental_ops(ops) -> int:
    """Element ops of the transcendental pointwise ops among ``ops`` (one an element of each
    result, ``op_flops``): the work of a fused chain that the elementwise rate prices
    (``MeasuredCosts.fused_time``, ``op_time``); its arithmetic is priced by the chain's traffic."""
    return sum(_flops_and_written(x)[0] for x in ops
               if torch.Tag.pointwise in op_tags(x) and _op_name(x) in _TRANSCENDENTAL)


def _op_name(n: fx.Node) -> str:
    """The ATen name of op ``n`` without namespace and overload ("exp" for aten.exp.default)."""
    packet = getattr(n.target, "overloadpacket", None)
    return getattr(packet, "__name__", "").removesuffix("_")


def _flops_and_written(n: fx.Node) -> tuple[int, int]:
    """FLOPs of op ``n`` and the bytes of its result(s)."""
    args = torch.utils._pytree.tree_map(fake_value, n.args)
    kwargs = torch.utils._pytree.tree_map(fake_value, n.kwargs)
    out = n.meta.get("val")
    written = sum(tensor_bytes(o) for o in (out if isinstance(out, (tuple, list)) else [out]))
    return op_flops(n.target, args, kwargs, out), written


def read_bytes(n: fx.Node, owner: dict, fused: set[fx.Node]) -> int:
    """Bytes that the kernel computing ``n`` reads from memory (``kernel_reads``)."""
    return sum(tensor_bytes(fake_value(i)) for i in kernel_reads(n, owner, fused))


def slot_times(sched: Schedule, owner: dict, fused: set[fx.Node], spec: DeviceSpec,
               costs: MeasuredCosts | None = None) -> tuple[dict[fx.Node, float], dict[fx.Node, float]]:
    """Seconds of each slot op as the step runs it, and as a kernel of its own (a recomputation's
    conservative price: its inputs read, its result written). The step follows Inductor's
    kernels: a fused op moves nothing of its own, and the op that materialises a kernel's
    result reads what the whole kernel reads. With ``costs``, an op alone costs its measured
    time, and so does a kernel that is one op; a fused group costs its traffic at the measured
    bandwidth; the roofline prices the rest. Fused backward ops, whose time alone nothing
    uses, are not measured."""
    times: dict[fx.Node, float] = {}
    alone: dict[fx.Node, float] = {}
    for t, n in enumerate(sched.order):
        flops, written = _flops_and_written(n)
        wanted = costs is not None and not (n in fused and t >= sched.num_forward)
        measured = costs.op_time(n) if wanted else None
        if measured is not None:
            alone[n] = measured
        else:
            alone[n] = op_time(flops, sum(tensor_bytes(fake_value(i)) for i in n.all_input_nodes) + written, spec)
        if n in fused:  # runs inside its reader's kernel: no launch, no traffic of its own
            times[n] = flops / spec.peak_flops
            continue
        moved = read_bytes(n, owner, fused) + written
        inside = kernel_inputs(n, owner, fused)[1]
        group = transcendental_ops([n, *map(compute_node, inside)]) if inside else None
        times[n] = _kernel_time(flops, moved, group, measured, spec, costs)
    return times, alone


def _kernel_time(flops: int, moved: int, group: int | None, measured: float | None, spec: DeviceSpec,
                 costs: MeasuredCosts | None) -> float:
    """Seconds of a kernel that moves ``moved`` bytes: a fused group (``group``: its
    transcendental element ops, ``transcendental_ops``) as ``fused_kernel_time`` prices it; with
    ``costs``, the op's ``measured`` time for a kernel of one op; else, or without a measurement,
    the roofline."""
    if group is not None:
        fused = fused_kernel_time(flops, moved, group, spec, costs)
        if fused is not None:
            return fused
    elif costs is not None and measured is not None:
        return measured
    return op_time(flops, moved, spec, group or 0)


def recomputable(c: fx.Node) -> bool:
    """Whether op ``c`` may run again in the backward: not random, not impure, not forced into
    the forward or marked must-save by the partitioner's tags."""
    from torch._functorch.partitioners import _must_be_in_forward

    return not (
        is_random(c) or c.is_impure(impure_random=False) or _must_be_in_forward(c)
        or c.meta.get("recompute") is not None and "MUST_SAVE" in str(c.meta.get("recompute"))
    )


def recompute_time(s: fx.Node, folding: Folding, alone: dict[fx.Node, float], owner: dict, spec: DeviceSpec,
                   costs: MeasuredCosts | None = None) -> float:
    """Seconds to recompute forward value ``s``. A value with folded values (``folding.through``)
    is one fused kernel, as Inductor runs it: what it reads through them and its result written,
    and its transcendental element ops (``transcendental_ops``), priced by ``fused_kernel_time``
    (its ops alone where ``costs`` has no rates). A value without is its op alone (``alone``); on
    the roofline at least its transcendental element ops at the spec's elementwise rate (a
    profiled spec has one)."""
    c, through = compute_node(s), folding.through[s]
    if through:
        chain = [c, *map(compute_node, through)]
        flops, written = _flops_and_written(c)
        moved = read_bytes(c, owner, set(through)) + written
        fused = fused_kernel_time(flops, moved, transcendental_ops(chain), spec, costs)
        if fused is not None:
            return fused
        return sum(alone[x] for x in chain)
    if costs is None:
        return max(alone[c], op_time(0, 0, spec, transcendental_ops([c])))
    return alone[c]


def fused_kernel_time(flops: int, moved: int, work: int, spec: DeviceSpec, costs: MeasuredCosts | None) -> float | None:
    """Seconds of one kernel that computes a fused chain: ``moved`` bytes (its reads from memory
    and its result) and ``work`` transcendental element ops. With ``costs``, the longer of its traffic
    at the measured bandwidth and its element ops at the measured elementwise rate, plus a launch
    (None where ``costs`` has no rates); on the roofline, ``op_time`` of the kernel (``flops``:
    its op's, for a reduction at the end of the chain)."""
    if costs is None:
        return op_time(flops, moved, spec, work)
    traffic = costs.fused_time(moved, work)
    return None if traffic is None else traffic + spec.launch_overhead
