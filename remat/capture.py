"""Joint forward+backward ATen graph -> ``Problem`` (plain data), plus the facts the rewrite needs.

The schedule: forward ops in graph order, then backward ops in the order that the backward graph
runs them when every activation is saved (AOTAutograd's autograd-engine order: each backward op
is emitted with the not-yet-emitted backward ops that it reads). Views, ``getitem`` and symbolic
size ops take no slot; their uses count as uses of the storage they alias.

Memory follows Inductor, not eager: a pointwise result that only feeds fusible consumers
(pointwise ops, reductions, views) of its own phase is fused into them and never allocated. Every
other result is a buffer, live from its op's slot to its last use; graph outputs (forward outputs,
gradients) and the incoming output gradients (tangents) stay live to the end of the step.
Parameters and inputs are resident and cost nothing.

``capture`` is a pipeline of the steps below, each a function over plain data:

1. ``graph_facts``        the joint graph's phases (``split_phases``), the node owning each
                          tensor's memory (``storage_owners``: views alias their base), the
                          resident inputs, the tangents and the outputs' storages (``pinned_storages``)
2. ``build_schedule``     the slot order: forward ops, then backward ops in autograd order;
                          ``kernel_spans``: given Inductor's kernels of the last compile
                          (``remat.kernel_groups``), the first and last slot of each kernel;
                          before any compile, ``predicted_kernel_groups`` predicts those kernels
                          from the graph (Inductor's CPU fusion rules) for the recomputations
                          they inline (the Problem's ``recompute_kernels``) and, for the backward
                          kernels of LayerNorm's row sums, their spans (``row_reduction_kernels``)
3. ``fused_values``       pointwise results that Inductor fuses into their one reader kernel
4. ``effective_readers``  the slot ops that read each storage (``slot_readers``), seen through
                          fused readers: a storage lives until the kernel that inlines its reader
5. ``storage_lifetimes``  live intervals of the buffers whose life no decision changes, and the
                          facts (bytes, created, uses) of each forward value; an op of a kernel
                          makes its result at the kernel's first slot and reads until its last
6. ``fixed_bytes``        bytes live at each slot whatever the plan: those intervals plus the
                          copies of broadcast views that extern kernels read (``broadcast_copies``)
7. ``fold_fused_values``  each value's inputs (``activation_inputs``), with the fused values that
                          backward never reads folded into their readers
8. ``backward_relevant``  the forward values to decide about: read by backward, or by a recompute
9. ``slot_times``         each slot's time as Inductor's kernels run it, and each op's time alone
10. ``make_activation``   the ``Activation`` of one forward value: its recompute time
                          (``recompute_time``) and the module that computes it (``module_path``)

Times come from the roofline of ``remat.cost`` or, given ``costs`` (``remat.profile.MeasuredCosts``),
from measurements: an op that is a kernel of its own costs its measured time; a kernel that inlines
fused pointwise producers (a fused group, in the step or in a recomputation) costs its memory
traffic at the measured bandwidth (``fused_time``); what has no measurement keeps the roofline.

Under dynamic shapes the Problem holds the bytes at the sizes traced (their hints), and
``Captured.symbolic`` the same bytes as polynomials in the size symbols (``symbolic_sizes``, from
the same intervals: ``remat.symbolic``).
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
from torch._prims_common import is_expandable_to

from .cost import DeviceSpec, op_flops, op_time, tensor_bytes
from .kernel_groups import HANDOVERS, KERNEL_STARTS, KernelGroups, with_kernels
from .passes import rng_replay
from .problem import BACKWARD, FORWARD, Activation, Problem, Slot
from .symbolic import SymbolicSizes, shape_env_of, symbolic_bytes

if TYPE_CHECKING:
    from .profile import MeasuredCosts

aten = torch.ops.aten

_EXTRA_VIEWS = {aten._unsafe_view.default, aten.copy_.default}

# Smallest activation worth a copy to host: each copy costs two custom ops, a stream hop and an
# event (about 0.2 ms of host time per copy on an H200, benchmarks/gpu_diag.py), and frees little.
MIN_OFFLOAD_BYTES = 1 << 20


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


def is_view(n: fx.Node) -> bool:
    """Whether ``n`` aliases its input's memory (a view op, or an element of a view's tuple)."""
    t = n.target
    if n.op != "call_function":
        return False
    if t is operator.getitem:
        return is_view(n.args[0]) if isinstance(n.args[0], fx.Node) else False
    return isinstance(t, torch._ops.OpOverload) and (t.is_view or t in _EXTRA_VIEWS)


def _is_multi_output(n: fx.Node) -> bool:
    return n.op == "call_function" and isinstance(n.meta.get("val"), (tuple, list))


def _tags(n: fx.Node) -> set:
    return set(getattr(n.target, "tags", ()) or ())


def is_random(n: fx.Node) -> bool:
    """Whether ``n`` draws fresh random numbers (recomputing it would draw different ones); ops
    that replay a seed the forward drew are not (``remat.passes.rng_replay``)."""
    return rng_replay.draws(n)


def _pointwise(n: fx.Node) -> bool:
    """A pointwise op, as Inductor fuses it (its seeded random prims included)."""
    return torch.Tag.pointwise in _tags(n) or rng_replay.fusible(n)


def _fusible_consumer(n: fx.Node) -> bool:
    return _pointwise(n) or torch.Tag.reduction in _tags(n)


def takes_slot(n: fx.Node) -> bool:
    """Whether ``n`` is an op of the schedule: a tensor (or tuple) op that is not a view."""
    return n.op == "call_function" and not is_view(n) and n.target is not operator.getitem and (
        _is_tensor(n) or _is_multi_output(n)
    )


def compute_node(s: fx.Node) -> fx.Node:
    """The op that computes storage ``s`` (the tuple op for an element of its result)."""
    return s.args[0] if s.target is operator.getitem else s


@dataclass
class Captured:
    """The Problem and the graph facts that the rewrite pass needs."""

    problem: Problem
    forward_nodes: list[str]  # forward ops in order (including views)
    backward_order: list[str]  # backward slot names in order
    folded: list[str] = field(default_factory=list)  # fused forward values recomputed inside their readers
    # under dynamic shapes: the problem's bytes as polynomials in the size symbols (None: static)
    symbolic: SymbolicSizes | None = None


@dataclass
class GraphFacts:
    """The joint graph's nodes by phase, and who owns the memory of each tensor."""

    nodes: list[fx.Node]
    index: dict[fx.Node, int]  # position in the graph
    forward: set[fx.Node]
    backward: set[fx.Node]
    owner: dict[fx.Node, fx.Node | None]  # the storage a node's tensor lives in (None: no tensor)
    resident: set[fx.Node]  # parameters and inputs: cost nothing
    tangents: list[fx.Node]  # incoming output gradients: live through the whole backward
    pinned: set[fx.Node]  # storages of graph outputs: live to the end of the step


@dataclass
class Schedule:
    """The slot order of the step, and the slot at which each op runs."""

    forward: list[fx.Node]
    backward: list[fx.Node]
    slot_of: dict[fx.Node, int]  # slot ops, and the getitems of tuple ops at their op's slot

    @property
    def order(self) -> list[fx.Node]:
        return self.forward + self.backward

    @property
    def num_forward(self) -> int:
        return len(self.forward)

    @property
    def last(self) -> int:
        return len(self.forward) + len(self.backward) - 1


@dataclass
class ActivationFacts:
    """A forward value's bytes and slots: created, last read in forward, read in backward."""

    bytes: int
    created: int
    last_forward_use: int
    backward_uses: list[int]


@dataclass
class Lifetimes:
    """Live intervals (first slot, last slot, tensor) of the buffers whose life the plan does not
    change, and the facts of each forward value that the plan may decide about."""

    intervals: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)
    activations: dict[fx.Node, ActivationFacts] = field(default_factory=dict)
    # forward value -> the slot from which its last backward reader's result holds its buffer
    handovers: dict[fx.Node, int] = field(default_factory=dict)


@dataclass
class Folding:
    """Each forward value's inputs once folded values are replaced by their own inputs."""

    inputs: dict[fx.Node, list[fx.Node]]
    through: dict[fx.Node, list[fx.Node]]  # the folded values that each value recomputes inside it
    folded: set[fx.Node]


def split_phases(nodes: list[fx.Node], forward_nodes: set[fx.Node]) -> tuple[set[fx.Node], set[fx.Node]]:
    """Forward and backward ops. Elements of forward tuple ops are forward values, also those
    that only backward reads (a dropout mask); every other op is backward."""
    fwd = {n for n in forward_nodes if n.op == "call_function"}
    fwd |= {n for n in nodes if n.target is operator.getitem and n.args[0] in fwd}
    bwd = {n for n in nodes if n.op == "call_function" and n not in fwd}
    return fwd, bwd


def storage_owners(nodes: list[fx.Node]) -> dict[fx.Node, fx.Node | None]:
    """The node owning each node's memory: itself for a tensor op or input, its base's owner for
    a view (an element of a split is a view of the split's input), None for non-tensors."""
    owner: dict[fx.Node, fx.Node | None] = {}
    for n in nodes:
        if n.op == "placeholder":
            owner[n] = n if _is_tensor(n) else None
        elif n.op != "call_function":
            owner[n] = None
        elif is_view(n):
            base = n.args[0]
            if n.target is operator.getitem:
                base = base.args[0]
            owner[n] = owner.get(base) if isinstance(base, fx.Node) else None
        elif _is_tensor(n):
            owner[n] = n
        else:
            owner[n] = None  # tuples (multi-output ops), SymInts, None
    return owner


def pinned_storages(joint: fx.GraphModule, num_fwd_outputs: int, owner: dict) -> set[fx.Node]:
    """Storages of the forward outputs and the gradients: they live to the end of the step."""
    from torch._functorch.partitioners import _extract_fwd_bwd_outputs

    fwd_outs, bwd_outs, _, _ = _extract_fwd_bwd_outputs(joint, num_fwd_outputs=num_fwd_outputs)
    pinned = {owner.get(o) for o in list(fwd_outs) + list(bwd_outs) if isinstance(o, fx.Node)}
    pinned.discard(None)
    return pinned


def graph_facts(joint: fx.GraphModule, forward_nodes: set[fx.Node], num_fwd_outputs: int) -> GraphFacts:
    """Steps 1-3: phases, storage owners, resident inputs, tangents and pinned outputs."""
    from torch._functorch.partitioners import _is_tangent

    nodes = list(joint.graph.nodes)
    fwd, bwd = split_phases(nodes, forward_nodes)
    owner = storage_owners(nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    return GraphFacts(
        nodes=nodes, index={n: i for i, n in enumerate(nodes)}, forward=fwd, backward=bwd, owner=owner,
        resident={n for n in placeholders if not _is_tangent(n)},
        tangents=[n for n in placeholders if _is_tangent(n)],
        pinned=pinned_storages(joint, num_fwd_outputs, owner),
    )


def autograd_order(nodes: list[fx.Node], index: dict, bwd: set, tangents: list) -> list[fx.Node]:
    """Backward ops in the order AOTAutograd emits them when every forward value is saved: from
    the first reader of a tangent on, each backward op with the not-yet-emitted ops it reads."""
    first = min((index[u] for t in tangents for u in t.users), default=None)
    if first is None:
        first = min((index[n] for n in bwd), default=len(nodes))
    done: set = set()
    seq: list = []
    for n in nodes[first:]:
        if n in bwd:
            seq.extend(_unemitted_inputs(n, bwd, done, index))
    return seq


def _unemitted_inputs(n: fx.Node, bwd: set, done: set, index: dict) -> list[fx.Node]:
    """``n`` and the backward ops it reads, transitively, that are not in ``done`` (which gains
    them), in graph order."""
    todo, found = [n], []
    while todo:
        v = todo.pop()
        if v in done or v not in bwd:
            continue
        done.add(v)
        found.append(v)
        todo.extend(v.all_input_nodes)
    return sorted(found, key=index.__getitem__)


def build_schedule(g: GraphFacts) -> Schedule:
    """Slots: the forward ops in graph order, then the backward ops in autograd order, each
    ``mm`` that Inductor turns into an ``addmm`` moved to its add (``mms_at_their_adds``); the
    elements of a tuple op share its slot."""
    fwd_order = mms_at_their_adds([n for n in g.nodes if n in g.forward and takes_slot(n)])
    bwd_order = mms_at_their_adds([n for n in autograd_order(g.nodes, g.index, g.backward, g.tangents) if takes_slot(n)])
    slot_of = {n: i for i, n in enumerate(fwd_order + bwd_order)}
    for n in g.nodes:
        if n.target is operator.getitem and n.args[0] in slot_of:
            slot_of[n] = slot_of[n.args[0]]
    return Schedule(fwd_order, bwd_order, slot_of)


def addmm_add(n: fx.Node) -> fx.Node | None:
    """The add that Inductor's post-grad pattern folds ``mm`` ``n`` into (``add(inp, mm(a, b))``
    -> ``addmm(inp, a, b)``), or None. The addmm runs where the add was: the mm's inputs live
    until then, and its result is the add's."""
    if n.target is not aten.mm.default or len(n.users) != 1:
        return None
    add = next(iter(n.users))
    return add if _folded_mm(add) is n else None


def _folded_mm(add: fx.Node) -> fx.Node | None:
    """The mm that ``add`` takes into an addmm: its second argument if that fits
    (``_fits_addmm``), else its first (the order in which Inductor tries its two patterns)."""
    if add.target is not aten.add.Tensor or add.kwargs or len(add.args) != 2:
        return None
    return next((mm for mm, inp in ((add.args[1], add.args[0]), (add.args[0], add.args[1]))
                 if _fits_addmm(mm, inp, add)), None)


def _fits_addmm(mm: Any, inp: Any, add: fx.Node) -> bool:
    """Whether ``add(inp, mm)`` becomes ``addmm``: ``mm`` an mm read only by the add, ``inp`` a
    tensor of the mm's dtype that broadcasts to its shape; not on a GPU when every reader of the
    add is pointwise (Inductor keeps them apart there)."""
    if not (isinstance(mm, fx.Node) and mm.target is aten.mm.default and len(mm.users) == 1):
        return False
    if not (isinstance(inp, fx.Node) and _is_tensor(inp)):
        return False
    val = mm.meta["val"]
    if {i.meta["val"].dtype for i in (inp, *mm.args)} != {val.dtype} or not is_expandable_to(inp.meta["val"].shape, val.shape):
        return False
    gpu = val.device.type not in ("cpu", "meta")
    return not (gpu and all(_pointwise(u) for u in add.users))


def mms_at_their_adds(order: list[fx.Node]) -> list[fx.Node]:
    """``order`` with each ``mm`` that becomes an ``addmm`` (``addmm_add``) just before its add."""
    in_order = set(order)
    moved = {n: add for n in order if (add := addmm_add(n)) is not None and add in in_order}
    before: dict[fx.Node, list[fx.Node]] = {}
    for mm, add in moved.items():
        before.setdefault(add, []).append(mm)
    out = []
    for n in order:
        if n not in moved:
            out.extend(before.get(n, ()))
            out.append(n)
    return out


@dataclass
class KernelSpans:
    """Where Inductor's generated kernels of several ops run in the schedule."""

    ops: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)  # slot op -> its kernel's first, last slot
    after: dict[fx.Node, int] = field(default_factory=dict)  # op run after a kernel it lies in -> the slot after it


def kernel_spans(sched: Schedule, groups: KernelGroups | None, owner: dict) -> KernelSpans:
    """The first and last slot of the generated kernel that runs each slot op, for the ops of a
    kernel that holds two or more slot ops of its phase (``groups``: Inductor's kernels of the
    last compile). The kernel starts at its first op, or after the last op outside it that makes
    what it reads (Inductor runs that op first), and ends at its last op; an op in several kernels
    spans them all. Names of no slot op of the kernel's phase (recomputed forward ops, Inductor's
    own nodes) are left out. Empty without ``groups``."""
    spans = KernelSpans()
    if groups is None:
        return spans
    by_name = {n.name: n for n in sched.order}
    phases = ((groups.forward, range(sched.num_forward)), (groups.backward, range(sched.num_forward, sched.last + 1)))
    for kernels, phase_slots in phases:
        for group in kernels:
            ops = [by_name[x] for x in group if x in by_name and sched.slot_of[by_name[x]] in phase_slots]
            if len(ops) < 2:
                continue
            first = max([min(sched.slot_of[u] for u in ops)] + _outside_producers(ops, sched, owner))
            last = max(sched.slot_of[u] for u in ops)
            for u in ops:
                lo, hi = spans.ops.get(u, (first, last))
                spans.ops[u] = (min(lo, first), max(hi, last))
    spans.after = _run_after_kernels(sched, spans.ops, owner)
    return spans


def kernel_starts(spans: KernelSpans) -> dict:
    """The Problem metadata that says where the kernel of each grouped slot op starts
    (``remat.kernel_groups.KERNEL_STARTS``: slot name -> its kernel's first slot); empty without
    kernels."""
    return {KERNEL_STARTS: {u.name: lo for u, (lo, _) in spans.ops.items()}} if spans.ops else {}


# ---- Inductor's fusion, predicted before the first compile ----------------------------------------
# Ops that Inductor lowers to loops of its own (scheduler nodes that fuse) besides pointwise ops and
# reductions; every other op is an extern kernel (mm, bmm, convolution, attention), which fuses with nothing.
_LOOP_OPS = frozenset({
    aten.embedding.default, aten.gather.default, aten.cat.default, aten.index.Tensor, aten._unsafe_index.Tensor,
    aten.index_put.default, aten._unsafe_masked_index_put_accumulate.default, aten.scatter_add.default,
    aten.constant_pad_nd.default, aten.slice_scatter.default, aten.select_scatter.default, aten.full.default,
    aten.scalar_tensor.default, torch.ops.prims.iota.default,
})
_FUSION_DISTANCE = 64  # torch 2.13 ``Scheduler.are_long_distant_nodes``; also ``max_fusion_size``
_FUSION_ROUNDS = 10  # ``Scheduler.fuse_nodes``


@dataclass
class _Kernel:
    """A predicted kernel: its scheduler ops (materialised results, in order), its loop ranges
    (``_loop_ranges`` of its first reduction, else of its first op), the positions of its first and
    last op among the phase's scheduler ops and the ops it depends on (outside it)."""

    ops: list[fx.Node]
    ranges: tuple[tuple[int, ...], tuple[int, ...]]
    reduction: bool
    first: int
    last: int
    ancestors: set[fx.Node]


def predicted_kernel_groups(g: GraphFacts, sched: Schedule, fused: set[fx.Node]) -> KernelGroups:
    """The kernels that Inductor's scheduler would generate for the joint graph's forward and
    backward ops when every forward value is saved, as ``remat.kernel_groups.scheduler_groups``
    names them: each kernel's materialised results and the pointwise results inlined into them
    (``fused``). torch 2.13's rules on the CPU (``Scheduler.fuse_nodes``, ``CppScheduling``):
    two kernels that share a buffer, at most 64 ops apart, fuse when no op between them depends on
    one and feeds the other, and their loops agree (``_loops_fuse``)."""
    phases = (sched.forward, sched.backward)
    return KernelGroups(*(_named_groups(_fuse_phase(ops, g.owner, fused), g.owner, fused) for ops in phases))


def row_reduction_kernels(groups: KernelGroups, g: GraphFacts) -> KernelGroups:
    """The predicted backward kernels of ``groups`` that hold two reductions over the trailing
    dimensions of their inputs (rows: LayerNorm's backward sums the gradient and its product with
    the normalised input), whose ops the capture places as one (``kernel_spans``): Inductor
    allocates their result as the kernel starts while the gradient they read, dying in it, lives
    to its end (the GPT example's first LayerNorm backward: 1 MiB over the model's peak, and two
    more compiles at 60 %). The other predicted kernels keep their ops one by one: one row sum
    (RMSNorm's backward) lets Inductor write the result over that gradient, as the op-by-op model
    predicts (a span would count both: transformers Llama's "min" kept a plan 0.5 MiB higher); a
    BatchNorm backward's (batch and space reduced) is not Inductor's (with its spans the e2e tests'
    CNN's modelled floor rose from 7.4 to 10.5 MB and its plan at 50 % measured 11 % under its
    prediction); with the spans of every backward kernel that CNN took three compiles at 50 % (the
    told-kernels model misses the max-pool backward's index copies)."""
    by_name = {n.name: n for n in g.nodes}
    rows = tuple(k for k in groups.backward if sum(_row_reduction(by_name[x]) for x in k if x in by_name) >= 2)
    return KernelGroups(backward=rows)


def _row_reduction(n: fx.Node) -> bool:
    """Whether ``n`` reduces some trailing dimensions of its input and keeps the leading ones."""
    if torch.Tag.reduction not in _tags(n) or not isinstance(_val(n.args[0]), torch.Tensor):
        return False
    dim = _val(n.args[0]).dim()
    reduced = _reduced_dims(n, dim)
    return len(reduced) < dim and reduced == set(range(dim - len(reduced), dim))


def _fuse_phase(order: list[fx.Node], owner: dict, fused: set[fx.Node]) -> list[_Kernel]:
    """The kernels of one phase's slot ops ``order``: each loop op alone, then fused pairwise, the
    pairs that share the most bytes first, for up to ten rounds while any pair fuses."""
    nodes = [n for n in order if n not in fused]
    position = {n: i for i, n in enumerate(nodes)}
    ancestors = _scheduler_ancestors(nodes, owner, fused)
    kernels = [_Kernel([n], _loop_ranges(n, fused), torch.Tag.reduction in _tags(n), position[n], position[n],
                       set(ancestors[n])) for n in nodes if _loop_op(n)]
    for _ in range(_FUSION_ROUNDS):
        merged = _fuse_round(kernels, owner, fused, ancestors)
        if len(merged) == len(kernels):
            break
        kernels = merged
    return kernels


def _loop_op(n: fx.Node) -> bool:
    """Whether Inductor computes ``n`` in a loop kernel of its own (not an extern kernel)."""
    return _is_tensor(n) and (_fusible_consumer(n) or n.target in _LOOP_OPS)


def _scheduler_ancestors(nodes: list[fx.Node], owner: dict, fused: set[fx.Node]) -> dict[fx.Node, set[fx.Node]]:
    """Each scheduler op's ancestors among ``nodes`` (what its kernel reads, transitively)."""
    inside = set(nodes)
    found: dict[fx.Node, set[fx.Node]] = {}
    for n in nodes:
        direct = {compute_node(s) for s in kernel_reads(n, owner, fused)} & inside
        found[n] = set(direct).union(*(found.get(d, set()) for d in direct))
    return found


def _fuse_round(kernels: list[_Kernel], owner: dict, fused: set[fx.Node],
                ancestors: dict[fx.Node, set[fx.Node]]) -> list[_Kernel]:
    """One round of ``Scheduler.fuse_nodes_once``: the pairs that may fuse, by shared bytes, each
    fused while both are still whole (``ancestors``: each scheduler op's, ``_scheduler_ancestors``)."""
    of = {n: k for k in kernels for n in k.ops}
    pairs = sorted(_candidate_pairs(kernels, owner, fused), key=lambda p: -p[0])
    for _, a, b in pairs:
        a, b = of[a.ops[0]], of[b.ops[0]]
        if a is not b and _can_fuse(a, b, lambda c: of[c].ancestors if c in of else ancestors.get(c, set())):
            merged = _merged(a, b)
            for n in merged.ops:
                of[n] = merged
    return sorted({id(k): k for k in of.values()}.values(), key=lambda k: k.first)


def _candidate_pairs(kernels: list[_Kernel], owner: dict, fused: set[fx.Node]) -> list[tuple[int, _Kernel, _Kernel]]:
    """(shared bytes, earlier kernel, later kernel) for each pair of kernels that access a common
    buffer (one makes what the other reads, or both read it)."""
    accessed: dict[fx.Node, list[_Kernel]] = {}
    for k in kernels:
        for s in set().union(*(kernel_reads(n, owner, fused) | {n} for n in k.ops)):
            accessed.setdefault(s, []).append(k)
    shared: dict[tuple[int, int], list] = {}
    for s, users in accessed.items():
        for i, a in enumerate(users):
            for b in users[i + 1:i + 1 + _FUSION_DISTANCE]:
                entry = shared.setdefault((id(a), id(b)), [0, a, b])
                entry[0] += tensor_bytes(_val(s)) if _is_tensor(s) else 0
    return [tuple(e) for e in shared.values()]


def _can_fuse(a: _Kernel, b: _Kernel, ancestors_of: Callable[[fx.Node], set[fx.Node]]) -> bool:
    """Whether kernels ``a`` and ``b`` fuse: near each other, not too many ops, no op outside both
    between them (``ancestors_of``: an op's ancestors, its kernel's once fused), and their loops
    agree (vertically when one reads the other)."""
    if a.first > b.first:
        a, b = b, a
    if max(abs(a.first - b.last), abs(b.first - a.last)) > _FUSION_DISTANCE:
        return False
    if len(a.ops) + len(b.ops) > _FUSION_DISTANCE or _creates_cycle(a, b, ancestors_of) or _creates_cycle(b, a, ancestors_of):
        return False
    if any(n in b.ancestors for n in a.ops):
        return _loops_fuse(a, b, vertical=True)
    if any(n in a.ancestors for n in b.ops):
        return _loops_fuse(b, a, vertical=True)
    return _loops_fuse(a, b, vertical=False)


def _creates_cycle(a: _Kernel, b: _Kernel, ancestors_of: Callable[[fx.Node], set[fx.Node]]) -> bool:
    """Whether an op outside ``a`` and ``b`` (an extern kernel among them) reads what ``a``
    makes and feeds ``b`` (``Scheduler.will_fusion_create_cycle``)."""
    inside = set(a.ops) | set(b.ops)
    return any(set(a.ops) & ancestors_of(c) for c in b.ancestors - inside)


def _loops_fuse(first: _Kernel, second: _Kernel, vertical: bool) -> bool:
    """``CppScheduling.can_fuse_vertical`` / ``can_fuse_horizontal`` on the kernels' loop ranges:
    the same loops, a pointwise loop over a reduction's whole range, the same element count where one
    loop is flat, or (``second`` reading ``first``) a common outer loop."""
    (v1, r1), (v2, r2) = first.ranges, second.ranges
    same = (v1 == v2 and r1 == r2) or (r1 == () and v1 == v2 + r2)
    flat = r1 == r2 == () and math.prod(v1) == math.prod(v2) and (len(v1) == 1 or len(v2) == 1)
    if not vertical:
        return same or flat
    if (same or flat) and not first.reduction:
        return True
    depth = min(len(v1), len(v2))
    return depth >= 1 and v1[:depth] == v2[:depth]


def _merged(a: _Kernel, b: _Kernel) -> _Kernel:
    ops = sorted(set(a.ops) | set(b.ops), key=lambda n: (a.ops + b.ops).index(n))
    first_reduction = next((k for k in sorted((a, b), key=lambda k: k.first) if k.reduction), None)
    ranges = (first_reduction or min(a, b, key=lambda k: k.first)).ranges
    return _Kernel(ops, ranges, a.reduction or b.reduction, min(a.first, b.first), max(a.last, b.last),
                   (a.ancestors | b.ancestors) - set(ops))


def _loop_ranges(n: fx.Node, fused: set[fx.Node]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the pointwise loop sizes, the reduction loop sizes) of op ``n``'s kernel as Inductor
    simplifies them (``_simplify_loops``): dimensions of size one dropped, and two neighbours merged
    where every load and the write walk them as one."""
    if torch.Tag.reduction in _tags(n) and isinstance(_val(n.args[0]), torch.Tensor):
        shape = list(_val(n.args[0]).shape)
        reduced = _reduced_dims(n, len(shape))
        order = [d for d in range(len(shape)) if d not in reduced] + sorted(reduced)
        kept = len(shape) - len(reduced)
    else:
        shape, order, kept = list(n.meta["val"].shape), list(range(n.meta["val"].dim())), n.meta["val"].dim()
    walks = [_broadcast_strides(_val(i), shape) for i in _loads(n, fused) if _broadcastable(_val(i), shape)]
    walks.append(_dense_strides(shape))
    return _merged_loops(shape, order[:kept], walks), _merged_loops(shape, order[kept:], walks)


def _reduced_dims(n: fx.Node, dim: int) -> set[int]:
    dims = n.args[1] if len(n.args) > 1 and n.args[1] is not None else n.kwargs.get("dim")
    if dims is None or dims == []:
        return set(range(dim))
    return {d % dim for d in ([dims] if isinstance(dims, int) else dims)}


def _broadcastable(v: Any, shape: list) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() <= len(shape) and is_expandable_to(v.shape, shape)


def _dense_strides(shape: list) -> list[int]:
    strides, step = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        strides[d], step = step, step * shape[d]
    return strides


def _merged_loops(shape: list, dims: list[int], walks: list[list[int]]) -> tuple[int, ...]:
    """The sizes of loops ``dims`` (outer first) of ``shape`` once size-one loops are dropped and
    neighbours that every walk (strides) steps through as one are merged."""
    loops: list[tuple[int, list[int]]] = []  # (size, the walks' strides of its innermost dimension)
    for d in (d for d in dims if shape[d] != 1):
        strides = [w[d] for w in walks]
        if loops and all(so == si * shape[d] for so, si in zip(loops[-1][1], strides)):
            loops[-1] = (loops[-1][0] * shape[d], strides)
        else:
            loops.append((shape[d], strides))
    return tuple(size for size, _ in loops)


def _named_groups(kernels: list[_Kernel], owner: dict, fused: set[fx.Node]) -> tuple[frozenset[str], ...]:
    """Each kernel of several ops as the names of its ops and of the pointwise results inlined into
    them (``scheduler_groups``' naming)."""
    groups = []
    for k in kernels:
        names = {n.name for n in k.ops} | {i.name for n in k.ops for i in _kernel_inputs(n, owner, fused)[1]}
        if len(names) > 1:
            groups.append(frozenset(names))
    return tuple(groups)


def _pointwise_forward_reader(s: fx.Node, g: GraphFacts) -> bool:
    """Whether a pointwise forward op reads ``s`` (through views): a plan may recompute it into the
    backward kernel where ``s`` dies, which then reads ``s`` twice and takes nothing."""
    return any(c in g.forward and _pointwise(c) for c in _readers_through_views(s))


def _readers_through_views(s: fx.Node) -> set[fx.Node]:
    """The ops that read ``s``, itself or through a chain of views of it (the views left out)."""
    return {r for u in s.users for r in (_readers_through_views(u) if is_view(u) else {u})}


def predicted_handovers(life: Lifetimes, relevant: set[fx.Node]) -> dict:
    """The Problem metadata that says which activations (``relevant``) a backward result takes over
    as they die (``remat.kernel_groups.HANDOVERS``: name -> the slot its result starts); empty
    when none does."""
    found = {s.name: h for s, h in life.handovers.items() if s in relevant}
    return {HANDOVERS: found} if found else {}


def _run_after_kernels(sched: Schedule, ops: dict[fx.Node, tuple[int, int]], owner: dict) -> dict[fx.Node, int]:
    """Backward slot ops outside every kernel that lie inside a kernel's span and read what it
    makes (or what such an op makes): Inductor runs them after that kernel, so they act at the
    slot after its last (the kernel's inputs that die in it are gone by then)."""
    after: dict[fx.Node, int] = {}
    for u in sched.order[sched.num_forward:]:
        if u in ops:
            continue
        t = sched.slot_of[u]
        makers = {compute_node(owner[i]) for i in u.all_input_nodes if owner.get(i) is not None}
        ends = [min(ops[m][1] + 1, sched.last) for m in makers if m in ops and ops[m][0] <= t <= ops[m][1]]
        ends += [after[m] for m in makers if after.get(m, -1) >= t]
        if ends:
            after[u] = max(ends)
    return after


def _outside_producers(ops: list[fx.Node], sched: Schedule, owner: dict) -> list[int]:
    """Slots of the ops outside ``ops`` that make the storages ``ops`` read."""
    inside = set(ops)
    makers = {compute_node(owner[i]) for u in ops for i in u.all_input_nodes if owner.get(i) is not None}
    return [sched.slot_of[m] for m in makers - inside if m in sched.slot_of]


def slot_readers(g: GraphFacts) -> dict[fx.Node, list[fx.Node]]:
    """The slot ops that read each storage (directly or through views), in graph order."""
    uses: dict[fx.Node, list[fx.Node]] = {}
    for n in g.nodes:
        if not takes_slot(n):
            continue
        for i in n.all_input_nodes:
            o = g.owner.get(i)
            if o is not None:
                uses.setdefault(o, []).append(n)
    return uses


# When Inductor stores a pointwise result instead of inlining it into each reader (torch 2.13:
# ``ir.StorageBox.should_realize_on_reuse`` and ``has_exceeded_max_reads``, config defaults)
_HEAVY_ON_CPU = frozenset({"exp", "log", "log10", "log1p", "log2", "sigmoid", "tanh"})
_REUSED_READS = 4  # realize_reads_threshold: a result read by several kernels
_READS = {"cpu": 12, "other": 8}  # realize_cpu_acc_reads_threshold, _realize_acc_reads_threshold_default
_BODY_OPS = {"cpu": 50, "other": 30}  # realize_cpu_opcount_threshold, _realize_opcount_threshold_default
_CONSTANTS = {aten.full.default, aten.scalar_tensor.default}  # inlined as values: no load


@dataclass(frozen=True)
class Inlined:
    """What a pointwise result's code computes when Inductor inlines it into a reader: the
    storages it loads (through the results inlined into it), whether a heavy op is among its ops
    on the CPU, and its number of ops (each FX op and each load counts one: a proxy of
    Inductor's loop-body op count)."""

    reads: frozenset
    heavy: bool
    ops: int

    def too_big(self, device: str) -> bool:
        """Stored whatever its readers (``has_exceeded_max_reads``)."""
        kind = "cpu" if device == "cpu" else "other"
        return len(self.reads) > _READS[kind] or self.ops + len(self.reads) > _BODY_OPS[kind]


def fused_values(g: GraphFacts) -> set[fx.Node]:
    """Pointwise results that Inductor never allocates (``_materialized``): it inlines them into
    each fusible kernel (pointwise or reduction) of their own phase that reads them."""
    readers: dict[fx.Node, list[fx.Node]] = {}
    for n in g.nodes:
        for i in n.all_input_nodes:
            readers.setdefault(i, []).append(n)
    inlined: dict[fx.Node, Inlined] = {}
    for s in (n for n in g.nodes if g.owner.get(n) is n and n.op == "call_function"):
        code = inlined_code(s, g, inlined)
        if not _materialized(s, g, readers, code):
            inlined[s] = code
    return set(inlined)


def inlined_code(s: fx.Node, g: GraphFacts, inlined: dict[fx.Node, Inlined]) -> Inlined:
    """``s``'s ``Inlined`` code, given those of the results inlined before it."""
    reads, heavy, ops = set(), _is_tensor(s) and s.meta["val"].device.type == "cpu" and _op_name(s) in _HEAVY_ON_CPU, 1
    for i in s.all_input_nodes:
        o = g.owner.get(i)
        if o in inlined:
            reads |= inlined[o].reads
            heavy, ops = heavy or inlined[o].heavy, ops + inlined[o].ops
        elif o is not None and o.target not in _CONSTANTS:
            reads.add(o)
    return Inlined(frozenset(reads), heavy, ops)


def _op_name(n: fx.Node) -> str:
    return getattr(n.target, "_opname", "")


def _materialized(s: fx.Node, g: GraphFacts, readers: dict[fx.Node, list[fx.Node]], code: Inlined) -> bool:
    """Whether storage ``s`` is a buffer: not pointwise, pinned, read by a graph output or by a
    non-fusible op of its phase, or its code too big to inline (``Inlined.too_big``); read by
    several kernels, when its code has a heavy op (CPU) or loads more than four storages, or
    when backward reads it too (a forward value that a plan may store)."""
    if not _pointwise(s) or s in g.pinned:
        return True
    found = _phase_readers(s, g, readers)
    if found is None or code.too_big(s.meta["val"].device.type):
        return True
    kernels, read_elsewhere = found
    if len(kernels) <= 1:
        return False
    return read_elsewhere or code.heavy or len(code.reads) > _REUSED_READS


def _phase_readers(s: fx.Node, g: GraphFacts, readers: dict[fx.Node, list[fx.Node]]) -> tuple[set, bool] | None:
    """The fusible ops of ``s``'s phase that read it (through views) and whether an op of the
    other phase reads it; None when an output or a non-fusible op of its phase reads it."""
    phase_nodes = g.forward if s in g.forward else g.backward
    stack, kernels, elsewhere = [s], set(), False
    while stack:
        v = stack.pop()
        for u in readers.get(v, ()):
            if u.op == "output":
                return None
            if u not in phase_nodes:
                elsewhere = True
            elif is_view(u):
                stack.append(u)
            elif not _fusible_consumer(u):
                return None
            else:
                kernels.add(u)
    return kernels, elsewhere


def effective_readers(g: GraphFacts, uses: dict, fused: set[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """The slot ops that read each storage, plus, for each fused reader, the ops of the fused
    reader's phase that read it: the storage stays live until the kernel that inlines it runs."""
    effective: dict[fx.Node, list[fx.Node]] = {}
    for o in reversed(g.nodes):
        out = []
        for u in uses.get(o, ()):
            out.append(u)
            if u in fused:
                out.extend(w for w in effective.get(u, ()) if (w in g.forward) == (u in g.forward))
        effective[o] = out
    return effective


def storage_lifetimes(g: GraphFacts, sched: Schedule, readers: dict, fused: set[fx.Node],
                      kernels: KernelSpans | None = None) -> Lifetimes:
    """Live intervals of tangents, pinned outputs and backward buffers, and the facts of every
    other forward value (its buffer, unless fused, is live from creation to last forward use).
    With ``kernels`` (``kernel_spans``), an op of a generated kernel makes its result at the
    kernel's first slot, keeps it until at least the kernel's last slot and reads its inputs until
    then."""
    kernels = kernels or KernelSpans()
    spans, after = kernels.ops, kernels.after
    life = Lifetimes()
    inplaced: set[fx.Node] = set()
    for s in g.nodes:
        if g.owner.get(s) is not s or s in g.resident:
            continue
        val = s.meta["val"]
        if s in g.tangents:  # the autograd engine holds grad outputs until the backward returns
            life.intervals.append((sched.num_forward, sched.last, val))
            continue
        created = sched.slot_of.get(s)
        if created is None:
            continue
        made = after.get(compute_node(s), min(created, spans.get(compute_node(s), (created,))[0]))
        read_at = [(u, t) for u in readers.get(s, []) if u in sched.slot_of for t in _read_slots(u, sched, kernels)]
        if compute_node(s) in spans:  # the kernel writes it while it runs
            read_at.append((compute_node(s), spans[compute_node(s)][1]))
        if s in g.forward:
            _forward_lifetime(s, g, sched, made, read_at, fused, life, kernels, inplaced)
        elif s not in fused and not _inside_kernel(s, read_at, g, spans):
            life.intervals.append((made, _buffer_end(s, g, sched, made, read_at, spans, fused, inplaced), val))
    for s, facts in life.activations.items():  # after the backward's own buffers: those are taken first
        if facts.backward_uses:
            read_at = [(u, t) for u in readers.get(s, []) if u in g.backward for t in _read_slots(u, sched, kernels)]
            _predict_handover(s, g, sched, read_at, fused, life, kernels, inplaced)
    return life


def _inside_kernel(s: fx.Node, read_at: list, g: GraphFacts, spans: dict[fx.Node, tuple[int, int]]) -> bool:
    """Whether backward value ``s`` is made and read only inside one generated kernel, which then
    never writes it to memory (a result that two ops of the kernel read)."""
    kernel = spans.get(compute_node(s))
    return kernel is not None and s not in g.pinned and bool(read_at) and all(spans.get(u) == kernel for u, _ in read_at)


def _read_slots(u: fx.Node, sched: Schedule, kernels: KernelSpans) -> tuple[int, ...]:
    """The slots at which op ``u`` reads its inputs: its own, and its kernel's last if grouped
    (or only that kernel's last when ``u`` runs after it)."""
    if u in kernels.after:
        return (kernels.after[u],)
    return (sched.slot_of[u], kernels.ops[u][1]) if u in kernels.ops else (sched.slot_of[u],)


def _buffer_end(s: fx.Node, g: GraphFacts, sched: Schedule, created: int, read_at: list,
                spans: dict[fx.Node, tuple[int, int]], fused: set[fx.Node], inplaced: set) -> int:
    """Last slot of backward buffer ``s``: the step's end if pinned, else its last read, or
    earlier where a result takes its buffer (``_in_place_end``)."""
    if s in g.pinned:
        return sched.last
    end = max([t for _, t in read_at] + [created])
    return _in_place_end(s, g, sched, created, end, read_at, spans, fused, inplaced)


def _in_place_end(s: fx.Node, g: GraphFacts, sched: Schedule, created: int, end: int, read_at: list,
                  spans: dict[fx.Node, tuple[int, int]], fused: set[fx.Node], inplaced: set) -> int:
    """``end``, the last read of ``s`` (made at ``created``), or earlier when Inductor writes the
    pointwise result of its last reader into its buffer (read at the index it writes,
    ``_reads_elementwise``): the slot before that reader's, or, for a
    reader in a generated kernel of several ops (``_kernel_taker``), the slot before the kernel's
    first, where the result's buffer starts."""
    if end == created:
        return end
    if sched.order[end] not in spans:
        last = sched.order[end]
        return end - 1 if _reads_elementwise(last, s, fused) and _writes_in_place(last, s, inplaced) else end
    taker = _kernel_taker(s, g, read_at, end, spans, fused)
    if taker is not None and _writes_in_place(taker, s, inplaced):
        return max(created, spans[taker][0] - 1)
    return end


def _kernel_taker(s: fx.Node, g: GraphFacts, read_at: list, end: int, spans: dict[fx.Node, tuple[int, int]],
                  fused: set[fx.Node]) -> fx.Node | None:
    """The op of a generated kernel ending at ``end`` that may write its result in place of
    ``s``: the last op of that kernel that reads ``s`` and is not inlined into another, when the
    kernel's other such ops are its ancestors (Inductor's ``decide_inplace_update``: the input's
    only remaining user once ancestors are discounted, in a kernel other than its maker's), and
    when it reads ``s`` through a view, the only such op (``single_index_in_fused_node``: a
    reduction that reads the view indexes it otherwise; the Evoformer's softmax backward does not
    take its bmm's buffer)."""
    readers = {u for u, t in read_at if t == end and u not in fused}
    if not readers:
        return None
    taker = max(readers, key=g.index.__getitem__)
    kernel = spans.get(taker)
    if kernel is None or kernel[1] != end or spans.get(compute_node(s)) == kernel:
        return None
    floor = min(g.index[u] for u in readers)
    if not _reads_elementwise(taker, s, fused) or not readers - {taker} <= _ancestors(taker, floor, g.index):
        return None
    if readers != {taker} and any(a is not s for a in _accesses_of(s, taker, fused)):
        return None  # read through a view by other ops of the kernel too (a reduction): not one index
    return taker


def _reads_elementwise(taker: fx.Node, s: fx.Node, fused: set[fx.Node]) -> bool:
    """Whether ``taker`` reads ``s`` only at the index it writes (Inductor's ``can_inplace``: the
    read's index is the write's): itself or through pointwise results inlined into it, or through
    a view of ``s`` laid out as ``taker``'s result (``_result_strides``): a reshape of a contiguous
    buffer, or a transpose that the result follows. A view of another layout blocks."""
    accesses = _accesses_of(s, taker, fused)
    if not accesses or not _is_tensor(taker):
        return False
    want = (tuple(taker.meta["val"].shape), _result_strides(taker, fused), 0)
    return all(a is s or _layout(a) == want for a in accesses)


def _accesses_of(s: fx.Node, taker: fx.Node, fused: set[fx.Node]) -> set:
    """How ``taker`` and the pointwise results inlined into it (not through views) read ``s``:
    ``s`` itself, or the view of ``s`` (a chain of views) that they read."""
    return {i for i in _loads(taker, fused) if i is s or (is_view(i) and _viewed(i) is s)}


def _loads(taker: fx.Node, fused: set[fx.Node]) -> list[fx.Node]:
    """The tensors that ``taker``'s kernel loads: its inputs, and those of the pointwise results
    inlined into it (not through views), each once."""
    found: list[fx.Node] = []
    stack, seen = [taker], set()
    while stack:
        for i in stack.pop().all_input_nodes:
            if i in fused and not is_view(i):
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
            elif _is_tensor(i) and i not in found and i.target not in _CONSTANTS:
                found.append(i)
    return found


def _result_strides(taker: fx.Node, fused: set[fx.Node]) -> tuple:
    """The strides (of the dimensions longer than one) that Inductor gives pointwise ``taker``'s
    result: its loop order voted by the strides of what it loads (torch 2.13
    ``ComputedBuffer.get_fill_order``, ``scheduler.pick_loop_order``: a dimension goes inside
    another when more loads have it smaller, or broadcast the other; a tie keeps the later one
    inside), laid out densely in that order."""
    shape = list(taker.meta["val"].shape)
    loads = [_broadcast_strides(i.meta["val"], shape) for i in _loads(taker, fused)]

    def inner_first(a: int, b: int) -> int:
        if shape[a] == 1 or shape[b] == 1:
            return (shape[a] == 1) - (shape[b] == 1)
        a_first = sum(sb == 0 or abs(sa) < abs(sb) for sa, sb in ((r[a], r[b]) for r in loads))
        b_first = sum(sa == 0 or abs(sb) < abs(sa) for sa, sb in ((r[a], r[b]) for r in loads))
        return -1 if a_first > b_first else 1 if b_first > a_first else (b > a) - (b < a)

    order = sorted(reversed(range(len(shape))), key=functools.cmp_to_key(inner_first)) if loads else []
    strides, step = [0] * len(shape), 1
    for d in order or reversed(range(len(shape))):
        strides[d], step = step, step * shape[d]
    return tuple(st for sz, st in zip(shape, strides) if sz != 1)


def _broadcast_strides(v: torch.Tensor, shape: list) -> list:
    """The strides at which a load of tensor ``v`` walks a loop over ``shape`` (broadcast: 0)."""
    lead = len(shape) - v.dim()
    return [0 if d < lead or v.shape[d - lead] == 1 else v.stride()[d - lead] for d in range(len(shape))]


def _viewed(v: fx.Node) -> fx.Node:
    """The node that a chain of views ends at."""
    while is_view(v) and isinstance(v.args[0], fx.Node):
        v = v.args[0].args[0] if v.target is operator.getitem and is_view(v.args[0]) else v.args[0]
    return v


def _layout(n: fx.Node) -> tuple:
    """The shape, the strides of the dimensions longer than one, and the storage offset of ``n``'s tensor."""
    v = n.meta["val"]
    return tuple(v.shape), tuple(st for sz, st in zip(v.shape, v.stride()) if sz != 1), v.storage_offset()


def _ancestors(n: fx.Node, floor: int, index: dict[fx.Node, int]) -> set[fx.Node]:
    """The nodes that ``n`` reads, transitively, at graph positions from ``floor`` on."""
    found: set[fx.Node] = set()
    stack = [n]
    while stack:
        for i in stack.pop().all_input_nodes:
            if i not in found and index[i] >= floor:
                found.add(i)
                stack.append(i)
    return found


def _forward_lifetime(s: fx.Node, g: GraphFacts, sched: Schedule, made: int, read_at: list,
                      fused: set[fx.Node], life: Lifetimes, kernels: KernelSpans, inplaced: set) -> None:
    """Record forward storage ``s``, allocated at slot ``made`` (its kernel's start, at or before
    its op's slot) and read at ``read_at`` (op, slot): pinned, live to the end; otherwise a
    decision (an activation) whose forward part is live unless fused. A value that no backward op
    reads ends where its last forward reader writes its result in its buffer (``_in_place_end``:
    a log-softmax over the logits); saved for a recomputation, it lives on from there."""
    created = sched.slot_of[s]
    lfu = max([t for u, t in read_at if u in g.forward] + [created])
    if s in g.pinned:
        life.intervals.append((made, sched.last, s.meta["val"]))
        return
    b_uses = sorted({t for u, t in read_at if u in g.backward})
    if s not in fused:
        if not b_uses:
            lfu = _in_place_end(s, g, sched, created, lfu, read_at, kernels.ops, fused, inplaced)
        life.intervals.append((made, lfu, s.meta["val"]))
    life.activations[s] = ActivationFacts(tensor_bytes(s.meta["val"]), created, lfu, b_uses)


def _predict_handover(s: fx.Node, g: GraphFacts, sched: Schedule, read_at: list, fused: set[fx.Node],
                      life: Lifetimes, kernels: KernelSpans, inplaced: set) -> None:
    """Record where the result of forward value ``s``'s last backward reader takes its buffer
    (``Lifetimes.handovers``; the simulator's handover, as ``remat.kernel_groups`` reads it from
    the code): that reader is pointwise, reads ``s`` at the index it writes (``_reads_elementwise``)
    and has its size; in a generated kernel, its result's buffer starts where the kernel starts.
    Not when a pointwise forward op reads ``s`` (``_pointwise_forward_reader``: recomputed, it
    would read ``s`` in that kernel too: SwiGLU's gate under its SiLU, its up projection under the
    product); the last compile's code tells those (``remat.kernel_groups.reused_inputs``)."""
    if _pointwise_forward_reader(s, g):
        return
    end = max(t for _, t in read_at)
    taker = max((u for u, t in read_at if t == end and u not in fused), key=g.index.__getitem__, default=None)
    if taker is None or taker in kernels.after or not _reads_elementwise(taker, s, fused):
        return
    if taker in kernels.ops:
        taker = _kernel_taker(s, g, read_at, end, kernels.ops, fused)
    if taker is not None and _writes_in_place(taker, s, inplaced):
        life.handovers[s] = kernels.ops[taker][0] if taker in kernels.ops else sched.slot_of[taker]


def _writes_in_place(u: fx.Node, s: fx.Node, inplaced: set) -> bool:
    """Whether Inductor can put pointwise op ``u``'s result in ``s``'s buffer, read last by ``u``
    (same size and dtype; one input a kernel). Records the reuse."""
    if u in inplaced or torch.Tag.pointwise not in _tags(u) or not _is_tensor(u):
        return False
    a, b = u.meta["val"], s.meta["val"]
    if a.dtype != b.dtype or tensor_bytes(a) != tensor_bytes(b):
        return False
    inplaced.add(u)
    return True


def broadcast_copies(sched: Schedule) -> list[tuple[int, int, torch.Tensor]]:
    """One-slot intervals of the broadcast (stride-0) views that non-fusible ops read: an extern
    kernel cannot read one, so Inductor materialises it first."""
    out = []
    for t, n in enumerate(sched.order):
        if _fusible_consumer(n):
            continue
        for i in n.all_input_nodes:
            v = i.meta.get("val")
            if is_view(i) and isinstance(v, torch.Tensor) and 0 in v.stride() and v.numel() > 1:
                out.append((t, t, v))
    return out


def fixed_bytes(intervals: list[tuple[int, int, torch.Tensor]], num_slots: int,
                size_of: Callable[[torch.Tensor], Any] = tensor_bytes) -> list:
    """Bytes live at each slot from ``intervals`` (first slot, last slot, tensor), both ends in;
    a tensor's bytes are ``size_of`` it (ints at the hints, or ``remat.symbolic.symbolic_bytes``)."""
    delta = [0] * (num_slots + 1)
    for a, b, val in intervals:
        nbytes = size_of(val)
        if nbytes != 0 and a <= b:
            delta[a] += nbytes
            delta[b + 1] -= nbytes
    fixed, acc = [], 0
    for t in range(num_slots):
        acc += delta[t]
        fixed.append(acc)
    return fixed


def activation_inputs(g: GraphFacts, acts: dict[fx.Node, ActivationFacts]) -> dict[fx.Node, list[fx.Node]]:
    """For each forward value, the forward values that its op reads (through views), in order."""
    inputs = {}
    for s in acts:
        out = []
        for i in compute_node(s).all_input_nodes:
            o = g.owner.get(i)
            if o in acts and o is not s and o not in out:
                out.append(o)
        inputs[s] = out
    return inputs


def fold_fused_values(g: GraphFacts, acts: dict[fx.Node, ActivationFacts], inputs: dict,
                      fused: set[fx.Node]) -> Folding:
    """A fused value that backward never reads (and that draws no random numbers) is no decision
    of its own: Inductor recomputes it inside its reader's kernel, from its own inputs. Replace
    it, in its readers' inputs, by its inputs, and note it among the readers' folded ancestors."""
    folded = {s for s in acts if s in fused and not acts[s].backward_uses and not is_random(s)}
    resolved_inputs, through = {}, {}
    for s in sorted(acts, key=g.index.__getitem__):
        resolved, anc = [], []
        for i in inputs[s]:
            if i in folded:
                anc += [i] + through[i]
                resolved += [j for j in resolved_inputs[i] if j not in resolved]
            elif i not in resolved:
                resolved.append(i)
        resolved_inputs[s], through[s] = resolved, list(dict.fromkeys(anc))
    return Folding(resolved_inputs, through, folded)


def backward_relevant(g: GraphFacts, acts: dict[fx.Node, ActivationFacts], folding: Folding) -> set[fx.Node]:
    """The forward values to decide about: those backward reads and, transitively, the inputs
    that recomputing them reads; folded values excepted."""
    relevant = {s for s in acts if acts[s].backward_uses}
    for s in sorted(acts, key=g.index.__getitem__, reverse=True):
        if s in relevant:
            relevant.update(folding.inputs[s])
    return relevant - folding.folded


def _val(x: Any) -> Any:
    return x.meta.get("val") if isinstance(x, fx.Node) else x


def kernel_reads(n: fx.Node, owner: dict, fused: set[fx.Node]) -> set[fx.Node]:
    """Storages that the kernel computing ``n`` reads from memory: fused producers are computed
    inside it, so it reads their inputs instead."""
    return _kernel_inputs(n, owner, fused)[0]


def _kernel_inputs(n: fx.Node, owner: dict, fused: set[fx.Node]) -> tuple[set[fx.Node], set[fx.Node]]:
    """(storages that the kernel computing ``n`` reads from memory, fused producers that it
    computes inside)."""
    out, inside, todo = set(), set(), list(n.all_input_nodes)
    while todo:
        o = owner.get(todo.pop())
        if o is None or o in out or o in inside:
            continue
        if o in fused:
            inside.add(o)
            todo.extend(o.all_input_nodes)
        else:
            out.add(o)
    return out, inside


def pointwise_flops(ops) -> int:
    """Element ops of the pointwise ops among ``ops`` (one FLOP an element, ``op_flops``): what
    a fused chain computes, which ``MeasuredCosts.fused_time`` prices at the elementwise rate."""
    return sum(_flops_and_written(x)[0] for x in ops if torch.Tag.pointwise in _tags(x))


def _flops_and_written(n: fx.Node) -> tuple[int, int]:
    """FLOPs of op ``n`` and the bytes of its result(s)."""
    args = torch.utils._pytree.tree_map(_val, n.args)
    kwargs = torch.utils._pytree.tree_map(_val, n.kwargs)
    out = n.meta.get("val")
    written = sum(tensor_bytes(o) for o in (out if isinstance(out, (tuple, list)) else [out]))
    return op_flops(n.target, args, kwargs, out), written


def read_bytes(n: fx.Node, owner: dict, fused: set[fx.Node]) -> int:
    """Bytes that the kernel computing ``n`` reads from memory (``kernel_reads``)."""
    return sum(tensor_bytes(_val(i)) for i in kernel_reads(n, owner, fused))


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
            alone[n] = op_time(flops, sum(tensor_bytes(_val(i)) for i in n.all_input_nodes) + written, spec)
        if n in fused:  # runs inside its reader's kernel: no launch, no traffic of its own
            times[n] = flops / spec.peak_flops
            continue
        moved = read_bytes(n, owner, fused) + written
        inside = _kernel_inputs(n, owner, fused)[1]
        group = pointwise_flops([n, *map(compute_node, inside)]) if inside else None
        times[n] = _kernel_time(flops, moved, group, measured, spec, costs)
    return times, alone


def _kernel_time(flops: int, moved: int, group: int | None, measured: float | None, spec: DeviceSpec,
                 costs: MeasuredCosts | None) -> float:
    """Seconds of a kernel that moves ``moved`` bytes: with ``costs``, for a fused group (``group``:
    its pointwise element ops) the longer of its traffic at the measured bandwidth and its element
    ops at the measured rate, and a launch; the op's ``measured`` time for a kernel of one op;
    else, or without a measurement, the roofline (a fused group's element ops at the spec's
    elementwise rate, when it has one, included)."""
    if costs is not None:
        if group is not None:
            traffic = costs.fused_time(moved, group)
            if traffic is not None:
                return traffic + spec.launch_overhead
        elif measured is not None:
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
    """Seconds to recompute forward value ``s``: its op alone plus each folded value computed
    inside it, priced alone. With ``costs``, a value with folded values is one fused kernel: what
    it reads through them and its result at the measured bandwidth, or its pointwise element ops
    at the measured elementwise rate, whichever is longer, plus a launch. On the roofline, an op
    alone takes at least its element ops at the spec's elementwise rate (a profiled spec has one)."""
    c, through = compute_node(s), folding.through[s]
    chain = [c, *map(compute_node, through)]
    if costs is not None and through:
        moved = read_bytes(c, owner, set(through)) + _flops_and_written(c)[1]
        traffic = costs.fused_time(moved, pointwise_flops(chain))
        if traffic is not None:
            return traffic + spec.launch_overhead
    if costs is None:
        return sum(max(alone[x], op_time(0, 0, spec, pointwise_flops([x]))) for x in chain)
    return sum(alone[x] for x in chain)


_DYNAMO_ROOT = re.compile(r"^[LG]\[(['\"])[^'\"]*\1\]\.?")  # L['self']. / G['model'].


def module_path(n: fx.Node) -> str:
    """The path of the innermost module whose forward ran ``n``, from its ``nn_module_stack``
    (``fwd_nn_module_stack`` on a backward node) without Dynamo's root: "blocks.3.attn"; ""
    for an op of the root module's own forward or of no module (the loss), and for graphs that
    Dynamo did not trace. A node that a graph pass made (Inductor's pattern replacements, such as
    its softmax, carry neither the stack nor a ``stack_trace``) takes its nearest input's module."""
    todo, seen = [n], {n}
    while todo:
        v = todo.pop(0)
        stack = v.meta.get("nn_module_stack") or v.meta.get("fwd_nn_module_stack")
        if stack:
            return _DYNAMO_ROOT.sub("", str(list(stack.values())[-1][0]), count=1)
        if v.meta.get("stack_trace"):  # traced from the user's code outside any module
            continue
        todo += [i for i in v.all_input_nodes if i not in seen]
        seen.update(v.all_input_nodes)
    return ""


def taker_of(s: fx.Node, g: GraphFacts, relevant: set[fx.Node], fused: set[fx.Node]) -> str:
    """The activation that Inductor writes into forward value ``s``'s buffer where both are
    recomputed (``Activation.taken_by``; torch 2.13 ``decide_inplace_update``): ``s``'s only
    reader in the whole step, through views or not, a pointwise op of its bytes and dtype that
    reads it at the index it writes (``_reads_elementwise``) and writes a buffer of its own (not
    inlined into its readers' kernels); "" if none. ``s`` is no tuple element (a multi-output
    layout is never taken) and no graph output."""
    readers = _readers_through_views(s)
    if s.target is operator.getitem or s in g.pinned or len(readers) != 1:
        return ""
    t = readers.pop()
    if t not in relevant or t in fused or torch.Tag.pointwise not in _tags(t) or not _is_tensor(t):
        return ""
    a, b = t.meta["val"], s.meta["val"]
    same = a.dtype == b.dtype and tensor_bytes(a) == tensor_bytes(b)
    return t.name if same and _reads_elementwise(t, s, fused) else ""


def make_activation(s: fx.Node, facts: ActivationFacts, folding: Folding, compute_time: float,
                    taken_by: str = "") -> Activation:
    """The Activation of forward value ``s``, which takes ``compute_time`` to recompute
    (``recompute_time``) and whose buffer ``taken_by`` takes (``taker_of``); offloadable if
    contiguous, no tuple element, and worth two copies."""
    c, val = compute_node(s), s.meta["val"]
    return Activation(
        name=s.name,
        op=str(getattr(c.target, "__name__", c.target)),
        bytes=facts.bytes,
        compute_time=compute_time,
        created=facts.created,
        last_forward_use=facts.last_forward_use,
        backward_uses=tuple(facts.backward_uses),
        inputs=tuple(i.name for i in folding.inputs[s]),
        recomputable=recomputable(c),
        offloadable=facts.bytes >= MIN_OFFLOAD_BYTES and s.target is not operator.getitem and val.is_contiguous(),
        shape=tuple(int(x) if isinstance(x, int) else -1 for x in val.shape),
        dtype=str(val.dtype).replace("torch.", ""),
        module=module_path(c) or module_path(s),
        taken_by=taken_by,
    )


def capture(
    joint: fx.GraphModule,
    *,
    forward_nodes: set[fx.Node],
    num_fwd_outputs: int,
    spec: DeviceSpec,
    host_bandwidth: float = 0.0,
    name: str = "graph",
    costs: MeasuredCosts | None = None,
    kernel_groups: KernelGroups | None = None,
) -> Captured:
    """Build the Problem of a joint graph whose forward ops are ``forward_nodes``; op times from
    ``costs`` where measured, else from the roofline of ``spec``; with ``kernel_groups`` (the
    kernels Inductor generated for this graph last time), each kernel's ops allocate and free
    as one; without them, the kernels predicted from the graph (``predicted_kernel_groups``) tell
    the simulator which recomputations run inside a backward kernel, and the predicted backward
    kernels of LayerNorm's row sums place their ops as one (``row_reduction_kernels``). Training
    dropouts replay their generator state when the planner rewrote them before
    (``rng_replay.replay_in_joint``, in ``remat.planning``)."""
    g = graph_facts(joint, forward_nodes, num_fwd_outputs)
    sched = build_schedule(g)
    fused = fused_values(g)
    readers = effective_readers(g, slot_readers(g), fused)
    predicted = predicted_kernel_groups(g, sched, fused) if kernel_groups is None else None
    spans = kernel_spans(sched, kernel_groups if predicted is None else row_reduction_kernels(predicted, g), g.owner)
    life = storage_lifetimes(g, sched, readers, fused, spans)
    intervals = life.intervals + broadcast_copies(sched)
    fixed = fixed_bytes(intervals, sched.last + 1)
    folding = fold_fused_values(g, life.activations, activation_inputs(g, life.activations), fused)
    relevant = backward_relevant(g, life.activations, folding)
    times, alone = slot_times(sched, g.owner, fused, spec, costs)
    slots = [
        Slot(n.name, FORWARD if i < sched.num_forward else BACKWARD, times[n], fixed[i])
        for i, n in enumerate(sched.order)
    ]
    activations = [
        make_activation(s, life.activations[s], folding, recompute_time(s, folding, alone, g.owner, spec, costs),
                        taker_of(s, g, relevant, fused))
        for s in sorted(relevant, key=g.index.__getitem__)
    ]
    problem = Problem(
        slots=tuple(slots), activations=tuple(activations), host_bandwidth=host_bandwidth, name=name,
        metadata={"device": spec.name, "num_nodes": len(g.nodes), **kernel_starts(spans),
                  **predicted_handovers(life, relevant)},
    )
    if predicted is not None:  # the predicted kernels' recomputations, as the code's would tell them
        problem = with_kernels(problem, predicted)
    return Captured(problem, [n.name for n in g.nodes if n in g.forward], [n.name for n in sched.backward],
                    sorted(f.name for f in folding.folded), symbolic_sizes(joint, intervals, sched.last + 1, relevant))


def symbolic_sizes(joint: fx.GraphModule, intervals: list, num_slots: int, relevant: set[fx.Node]) -> SymbolicSizes | None:
    """The bytes of each activation (``relevant``) and each slot's fixed bytes (from ``intervals``)
    as polynomials in the size symbols; None when every size of the graph is static, or when a
    size has no hint (data-dependent): the Problem's ints are then all there is."""
    env = shape_env_of(joint)
    if env is None:
        return None
    sizes = SymbolicSizes.of(
        env, {s.name: symbolic_bytes(s.meta["val"]) for s in relevant},
        fixed_bytes(intervals, num_slots, size_of=symbolic_bytes))
    return sizes if sizes.hinted else None
