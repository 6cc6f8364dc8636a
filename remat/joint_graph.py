"""The joint graph's facts and the slot order: which ops take a slot, which node owns each
tensor's memory, the phases, the schedule (forward in graph order, backward in autograd order) and
where the kernels of the last compile run in it (``kernel_spans``)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch._prims_common import is_expandable_to

from .kernel_groups import KERNEL_STARTS, KernelGroups
from .passes import rng_replay
from .views import is_view

aten = torch.ops.aten


def is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


def _is_multi_output(n: fx.Node) -> bool:
    return n.op == "call_function" and isinstance(n.meta.get("val"), (tuple, list))


def op_tags(n: fx.Node) -> set:
    return set(getattr(n.target, "tags", ()) or ())


def is_random(n: fx.Node) -> bool:
    """Whether ``n`` draws fresh random numbers (recomputing it would draw different ones); ops
    that replay a seed the forward drew are not (``remat.passes.rng_replay``)."""
    return rng_replay.draws(n)


def is_pointwise(n: fx.Node) -> bool:
    """A pointwise op, as Inductor fuses it (its seeded random prims included)."""
    return torch.Tag.pointwise in op_tags(n) or rng_replay.fusible(n)


# ops that Inductor lowers to a pointwise loop of indirect loads (torch 2.13 lowering.py ``gather``,
# ``embedding``, ``index_impl``, ``constant_pad_nd``, ``slice_scatter``, ``select_scatter``): the pointwise
# results they read are inlined
INDEXING_LOOPS = frozenset({
    aten.gather.default, aten.embedding.default, aten.index.Tensor, aten._unsafe_index.Tensor,
    aten.constant_pad_nd.default, aten.slice_scatter.default, aten.select_scatter.default,
})


def is_fusible_consumer(n: fx.Node) -> bool:
    """An op whose kernel inlines the pointwise results it reads: pointwise, a reduction, or an
    indexing loop (``INDEXING_LOOPS``)."""
    return is_pointwise(n) or torch.Tag.reduction in op_tags(n) or n.target in INDEXING_LOOPS


def takes_slot(n: fx.Node) -> bool:
    """Whether ``n`` is an op of the schedule: a tensor (or tuple) op that is not a view."""
    return n.op == "call_function" and not is_view(n) and n.target is not operator.getitem and (
        is_tensor(n) or _is_multi_output(n)
    )


def compute_node(s: fx.Node) -> fx.Node:
    """The op that computes storage ``s`` (the tuple op for an element of its result)."""
    return s.args[0] if s.target is operator.getitem else s


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
            owner[n] = n if is_tensor(n) else None
        elif n.op != "call_function":
            owner[n] = None
        elif is_view(n):
            base = n.args[0]
            if n.target is operator.getitem:
                base = base.args[0]
            owner[n] = owner.get(base) if isinstance(base, fx.Node) else None
        elif is_tensor(n):
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
    if not (isinstance(inp, fx.Node) and is_tensor(inp)):
        return False
    val = mm.meta["val"]
    if {i.meta["val"].dtype for i in (inp, *mm.args)} != {val.dtype} or not is_expandable_to(inp.meta["val"].shape, val.shape):
        return False
    gpu = val.device.type not in ("cpu", "meta")
    return not (gpu and all(is_pointwise(u) for u in add.users))


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


def readers_through_views(s: fx.Node) -> set[fx.Node]:
    """The ops that read ``s``, itself or through a chain of views of it (the views left out)."""
    return {r for u in s.users for r in (readers_through_views(u) if is_view(u) else {u})}


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


def fake_value(x: Any) -> Any:
    return x.meta.get("val") if isinstance(x, fx.Node) else x


def kernel_reads(n: fx.Node, owner: dict, fused: set[fx.Node]) -> set[fx.Node]:
    """Storages that the kernel computing ``n`` reads from memory: fused producers are computed
    inside it, so it reads their inputs instead."""
    return kernel_inputs(n, owner, fused)[0]


def kernel_inputs(n: fx.Node, owner: dict, fused: set[fx.Node]) -> tuple[set[fx.Node], set[fx.Node]]:
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


INLINED_CONSTANTS = {aten.full.default, aten.scalar_tensor.default}  # inlined as values: no load


def kernel_loads(taker: fx.Node, fused: set[fx.Node]) -> list[fx.Node]:
    """The tensors that ``taker``'s kernel loads: its inputs, and those of the pointwise results
    inlined into it (not through views), each once, in the order its loop body loads them
    (depth first, arguments left to right, as Inductor records a body's reads)."""
    found: list[fx.Node] = []
    stack, seen = [iter(taker.all_input_nodes)], set()
    while stack:
        i = next(stack[-1], None)
        if i is None:
            stack.pop()
        elif i in fused and not is_view(i):
            if i not in seen:
                seen.add(i)
                stack.append(iter(i.all_input_nodes))
        elif is_tensor(i) and i not in found and i.target not in INLINED_CONSTANTS:
            found.append(i)
    return found


def broadcast_strides(v: torch.Tensor, shape: list) -> list:
    """The strides at which a load of tensor ``v`` walks a loop over ``shape`` (broadcast: 0)."""
    lead = len(shape) - v.dim()
    return [0 if d < lead or v.shape[d - lead] == 1 else v.stride()[d - lead] for d in range(len(shape))]
