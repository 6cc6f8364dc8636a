"""Seconds of the slot ops and of recomputations: each slot as Inductor's kernels run it
(``slot_times``), each forward value's recompute price (``recompute_time``), from the roofline of
``remat.cost`` or, given ``MeasuredCosts``, from measurements.

A matmul not measured (``MeasuredCosts``) costs the larger of its roofline and its time in the spec's
table of small matmuls, where it is in it (``table_matmul_time``); so does a convolution, as the
matmul it is (``table_conv_time``).

The rule of a recompute price: a forward value that the forward computes inside its readers'
kernels (fused) is written by the forward only because the plan saves it, so recomputing it
takes that write out of the step: its price is its recomputation in the backward less that
write (``forward_write_time``: a bool's elements at the bool store rate, any other dtype's bytes
at the bandwidth), and never below zero (a Problem's prices are not negative). On this CPU a
dropout mask's replayed draw (~10 ns an element) costs less than its bool store (~12): its price
is zero, memory freed at no cost."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from .cost import DeviceSpec, ElementWork, MatmulTable, hint, op_flops, op_time, tensor_bytes
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


# Inductor's seeded random prims that its code computes per element from the seed and the element's
# index (``remat.passes.rng_replay``): a recomputed dropout mask draws its random numbers again
_REPLAYED_DRAWS = frozenset({"inductor_random", "inductor_randint"})


def random_elements(ops) -> int:
    """Elements of the random draws among ``ops`` that Inductor's code replays from a seed
    (``prims.inductor_random`` / ``inductor_randint``), which the random rate prices
    (``remat.cost.ElementWork``): on a CPU each is a Philox engine of its own, 6x an exp, so
    a recomputed dropout mask costs its draw, not the byte it writes."""
    return sum(_numel(x) for x in ops if _op_name(x) in _REPLAYED_DRAWS)


def bool_elements(storages) -> int:
    """Elements of the bool tensors among ``storages`` (what a kernel reads: ``kernel_reads``)."""
    return sum(_numel(x) for x in storages if _dtype(x) == torch.bool)


def element_work(ops, reads) -> ElementWork:
    """The per-element work of a kernel that computes ``ops`` and reads the storages ``reads``."""
    return ElementWork(transcendental_ops(ops), random_elements(ops), bool_elements(reads))


def _numel(n: fx.Node) -> int:
    """Elements of node ``n``'s tensor (0 for what is not one)."""
    v = fake_value(n)
    return hint(v.numel()) if isinstance(v, torch.Tensor) else 0


def _dtype(n: fx.Node) -> torch.dtype | None:
    """The dtype of node ``n``'s tensor (None for what is not one)."""
    v = fake_value(n)
    return v.dtype if isinstance(v, torch.Tensor) else None


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


def slot_times(sched: Schedule, owner: dict, fused: set[fx.Node], spec: DeviceSpec,
               costs: MeasuredCosts | None = None) -> tuple[dict[fx.Node, float], dict[fx.Node, float]]:
    """Seconds of each slot op as the step runs it, and as a kernel of its own (a recomputation's
    conservative price: its inputs read, its result written). The step follows Inductor's
    kernels: a fused op moves nothing of its own, and the op that materialises a kernel's
    result reads what the whole kernel reads. With ``costs``, an op alone costs its measured
    time, and so does a kernel that is one op; a fused group costs its traffic at the measured
    bandwidth; a matmul not measured costs the larger of its roofline and its time in the spec's
    table (``table_matmul_time``) where it is in it; the roofline prices the rest. Fused backward
    ops, whose time alone nothing uses, are not measured."""
    times: dict[fx.Node, float] = {}
    alone: dict[fx.Node, float] = {}
    for t, n in enumerate(sched.order):
        flops, written = _flops_and_written(n)
        wanted = costs is not None and not (n in fused and t >= sched.num_forward)
        roofline = op_time(flops, sum(tensor_bytes(fake_value(i)) for i in n.all_input_nodes) + written, spec)
        measured = costs.op_time(n) if wanted else None
        if measured is None and (table := table_matmul_time(n, spec)) is not None:
            measured = max(table, roofline)
        alone[n] = measured if measured is not None else roofline
        if n in fused:  # runs inside its reader's kernel: no launch, no traffic of its own
            times[n] = flops / spec.peak_flops
            continue
        reads, inside = kernel_inputs(n, owner, fused)
        moved = sum(tensor_bytes(fake_value(i)) for i in reads) + written
        work = element_work([n, *map(compute_node, inside)], reads) if inside else None
        times[n] = _kernel_time(flops, moved, work, measured, spec, costs)
    return times, alone


def _kernel_time(flops: int, moved: int, work: ElementWork | None, measured: float | None, spec: DeviceSpec,
                 costs: MeasuredCosts | None) -> float:
    """Seconds of a kernel that moves ``moved`` bytes: a fused group (``work``: its per-element
    work) as ``fused_kernel_time`` prices it; a kernel of one op its ``measured`` time (``costs``'
    or the matmul table's); else, or without a measurement, the roofline."""
    if work is not None:
        fused = fused_kernel_time(flops, moved, work, spec, costs)
        if fused is not None:
            return fused
        return op_time(flops, moved, spec, work)
    if measured is not None:
        return measured
    return op_time(flops, moved, spec)


# matmul ops by the kind of the table's points (``remat.cost.MatmulTable``) and the positions of their two operands
_MATMULS = {"aten.mm.default": ("mm", 0), "aten.addmm.default": ("mm", 1), "aten.bmm.default": ("bmm", 0),
            "aten.baddbmm.default": ("bmm", 1)}


def table_matmul_time(n: fx.Node, spec: DeviceSpec) -> float | None:
    """Seconds of matmul ``n`` (mm, addmm, bmm, baddbmm of float32) by the table of ``spec``
    (``remat.cost.MatmulTable``): its interpolated time (a bmm's: its batch's share of the
    table's batch), an addmm's as its mm's, a convolution's as its im2col matmul's
    (``table_conv_time``); None for other ops, without a table, for a first
    operand that is transposed (a weight gradient's: not in the table) or a shape outside it. An
    operand whose last dims are neither row- nor column-major counts as row-major: right where
    Inductor lays out its producer (then contiguous: the quick Evoformer's "min" forward, bmm 8 x
    (32, 32) @ (32, 32) 14 us), low where it is a view of a buffer whose layout is fixed (a saved
    value: Inductor passes it with its batch stride of 1, and the same bmm took 60-69 us)."""
    table = spec.matmul_table
    if table is not None and str(n.target) == "aten.convolution.default":
        return table_conv_time(n, table)
    kind, first = _MATMULS.get(str(n.target), (None, 0))
    if kind is None or table is None:
        return None
    a, b = (fake_value(x) for x in n.args[first:first + 2])
    if not all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 for x in (a, b)):
        return None
    if _layout(a) != "N":
        return None
    *batch, m, k = (hint(s) for s in a.shape)
    seconds = table.seconds(kind, "N" + _layout(b), m, k, hint(b.shape[-1]))
    if seconds is None:
        return None
    return seconds * batch[0] / table.bmm_batch if batch else seconds


def table_conv_time(n: fx.Node, table: MatmulTable) -> float | None:
    """Seconds of float32 convolution ``n`` as the matmul that it is (im2col): (M, K) @ (K, N) with
    M its batch times its output's positions, K its input channels times its kernel's size and N its
    output channels, timed by ``table`` in row-major chunks of M (a chunk's time times the chunks:
    the table stops at M 4096 and 2^26 FLOPs); None for a transposed or grouped convolution, another
    dtype, or a K or N above the table. On this CPU a convolution of 16 channels runs at the speed of
    its narrow matmul, well under the FLOP rate of large ones: the quick CNN's 16 -> 16 3x3 convolution
    at 32x32, batch 16, 2.71 ms measured, 2.66 by the table, 2.11 by the roofline."""
    x, w = (fake_value(a) for a in n.args[:2])
    transposed, groups = n.args[6], n.args[8]
    out = fake_value(n)
    if transposed or groups != 1 or not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32
                                            for t in (x, w, out)):
        return None
    m = hint(out.shape[0]) * math.prod(hint(s) for s in out.shape[2:])
    k = hint(w.shape[1]) * math.prod(hint(s) for s in w.shape[2:])
    chunk = m
    while chunk >= 1:
        if (seconds := table.seconds("mm", "NN", chunk, k, hint(w.shape[0]))) is not None:
            return seconds * m / chunk
        chunk //= 2
    return None


def _layout(t: torch.Tensor) -> str:
    """"T" for a matrix (the last two dims) stored column-major (a transposed view), else "N"."""
    rows, cols = (hint(s) for s in t.shape[-2:])
    row_stride, col_stride = (hint(s) for s in t.stride()[-2:])
    return "T" if cols > 1 and col_stride != 1 and (row_stride == 1 or rows == 1) else "N"


def recomputable(c: fx.Node) -> bool:
    """Whether op ``c`` may run again in the backward: not random, not impure, not forced into
    the forward or marked must-save by the partitioner's tags."""
    from torch._functorch.partitioners import _must_be_in_forward

    return not (
        is_random(c) or c.is_impure(impure_random=False) or _must_be_in_forward(c)
        or c.meta.get("recompute") is not None and "MUST_SAVE" in str(c.meta.get("recompute"))
    )


def recompute_time(s: fx.Node, folding: Folding, alone: dict[fx.Node, float], owner: dict, spec: DeviceSpec,
                   costs: MeasuredCosts | None = None, fused: set[fx.Node] | None = None) -> float:
    """Price of recomputing forward value ``s`` (the module's rule): ``backward_time`` less
    ``forward_write_time`` (``fused``: the ops that Inductor computes inside their readers'
    kernels; None: no write is credited), never below zero."""
    saved = forward_write_time(s, fused, spec, costs)
    return max(0.0, backward_time(s, folding, alone, owner, spec, costs) - saved)


def backward_time(s: fx.Node, folding: Folding, alone: dict[fx.Node, float], owner: dict, spec: DeviceSpec,
                  costs: MeasuredCosts | None = None) -> float:
    """Seconds to recompute forward value ``s`` in the backward. A value with folded values
    (``folding.through``) is one fused kernel, as Inductor runs it: what it reads through them and
    its result's bytes written, and its per-element work (``element_work``: transcendental ops,
    replayed random draws, bool tensors read), priced by ``fused_kernel_time`` (its ops alone
    where ``costs`` has no rates). A value without is its op alone (``alone``); on the roofline
    at least its per-element work at the spec's rates."""
    c, through = compute_node(s), folding.through[s]
    if through:
        chain = [c, *map(compute_node, through)]
        flops, written = _flops_and_written(c)
        reads = kernel_reads(c, owner, set(through))
        moved = sum(tensor_bytes(fake_value(i)) for i in reads) + written
        price = fused_kernel_time(flops, moved, element_work(chain, reads), spec, costs)
        if price is not None:
            return price
        return sum(alone[x] for x in chain)
    if costs is None:
        return max(alone[c], op_time(0, 0, spec, element_work([c], kernel_reads(c, owner, set()))))
    return alone[c]


def forward_write_time(s: fx.Node, fused: set[fx.Node] | None, spec: DeviceSpec,
                       costs: MeasuredCosts | None = None) -> float:
    """Seconds the forward spends writing ``s`` only because a plan saves it: 0 unless the forward
    computes ``s`` inside its readers' kernels (in ``fused``), where no other forward kernel reads
    it from memory; then a bool's elements at the bool store rate (Inductor's CPU code stores a
    bool through ``VecMask``, ~12 ns an element), any other tensor's bytes (and a bool's where
    that rate is unknown) at the bandwidth, measured where ``costs`` has them."""
    if fused is None or s not in fused:
        return 0.0
    rates = costs.element_rates if costs is not None else spec.element_rates()
    if _dtype(s) == torch.bool and rates.bool_store > 0:
        return _numel(s) / rates.bool_store
    bandwidth = (costs.bandwidth if costs is not None else None) or spec.bandwidth
    return tensor_bytes(fake_value(s)) / bandwidth


def fused_kernel_time(flops: int, moved: int, work: ElementWork, spec: DeviceSpec,
                      costs: MeasuredCosts | None) -> float | None:
    """Seconds of one kernel that moves ``moved`` bytes (its reads from memory and its result) and
    does the per-element ``work``. With ``costs``, the longer of its traffic at the measured
    bandwidth and its work at the measured rates (``MeasuredCosts.fused_time``), plus a launch
    (None where ``costs`` has no rates); on the roofline, ``op_time`` of the kernel (``flops``:
    its op's, for a reduction at the end of the chain)."""
    if costs is None:
        return op_time(flops, moved, spec, work)
    traffic = costs.fused_time(moved, work)
    return None if traffic is None else traffic + spec.launch_overhead
