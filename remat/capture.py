"""Joint forward+backward ATen graph -> ``Problem`` (plain data), plus the facts the rewrite needs.

The schedule: forward ops in graph order, then backward ops in the order that the backward graph
runs them when every activation is saved (AOTAutograd's autograd-engine order: each backward op
is emitted with the not-yet-emitted backward ops that it reads). Views, ``getitem`` and symbolic
size ops take no slot; their uses count as uses of the storage they alias.

Memory follows Inductor, not eager: a pointwise result that only feeds fusible consumers
(pointwise ops, reductions, views) of its own phase is fused into them and never allocated. Every
other result is a buffer, live from its op's slot to its last use; graph outputs (forward outputs,
gradients) stay live to the end of the step, and the incoming output gradients (tangents) from the
backward's start to their last read (AOTAutograd hands them to the compiled backward, which frees
them: with a loss computed outside the graph, an output-sized gradient).
Parameters and inputs are resident and cost nothing.

``capture`` is a pipeline of the steps below, each a function over plain data:

1. ``graph_facts``        the joint graph's phases (``split_phases``), the node owning each
                          tensor's memory (``storage_owners``: views alias their base), the
                          resident inputs, the tangents and the outputs' storages
                          (``pinned_storages``); in ``remat.joint_graph``, with step 2
2. ``build_schedule``     the slot order: forward ops, then backward ops in autograd order, or,
                          given plain torch.compile's kernels, in the order its code ran them
                          (``emitted_schedule``; ``recomputed_in_graph_order``: where the
                          recomputations then run), or, given the kernels of one of remat's
                          plans, in the order Inductor runs those kernels (``fused_schedule``);
                          the ops of a kernel that Inductor's passes renamed join it
                          (``with_renamed_ops``);
                          ``kernel_spans``: given Inductor's kernels of the last compile
                          (``remat.kernel_groups``), the first and last slot of each kernel;
                          before any compile, ``remat.predicted_kernels`` predicts those kernels
                          from the graph (Inductor's CPU fusion rules) for the recomputations
                          they inline (the Problem's ``recompute_kernels``, with the backward
                          values a recomputation makes Inductor store:
                          ``realized_by_recomputation``) and, for the backward
                          kernels of LayerNorm's row sums and the pointwise ones that write
                          several buffers, their spans (``spanned_kernels``)
3. ``fused_values``       pointwise results that Inductor fuses into their one reader kernel
4. ``effective_readers``  the slot ops that read each storage (``slot_readers``), seen through
                          fused readers: a storage lives until the kernel that inlines its reader
5. ``storage_lifetimes``  live intervals of the buffers whose life no decision changes, and the
                          facts (bytes, created, uses) of each forward value; an op of a kernel
                          makes its result at the kernel's first slot and reads until its last
6. ``fixed_bytes``        bytes live at each slot whatever the plan: those intervals plus the
                          copies of broadcast views that extern kernels read (``broadcast_copies``)
                          and the copies that Inductor's channels-last layout makes
                          (``remat.layouts``: of the inputs of convolutions, and of the views
                          that extern kernels read and no channels-last strides express)
7. ``fold_fused_values``  each value's inputs (``activation_inputs``), with the fused values that
                          backward never reads folded into their readers
8. ``backward_relevant``  the forward values to decide about: read by backward, or by a recompute
9. ``slot_times``         each slot's time as Inductor's kernels run it, and each op's time
                          alone (``remat.pricing``, with ``recompute_time``)
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
import heapq
import itertools
import operator
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx

from .cost import DeviceSpec, tensor_bytes
from .joint_graph import (
    INDEXING_LOOPS, INLINED_CONSTANTS, Folding, GraphFacts, KernelSpans, Schedule, broadcast_strides, build_schedule,
    compute_node, graph_facts, is_fusible_consumer, is_pointwise, is_random, is_tensor, is_view, kernel_loads,
    kernel_spans, kernel_starts, op_tags, readers_through_views, slot_readers, takes_slot,
)
from .kernel_groups import HANDOVERS, POINTWISE, THROUGH, KernelGroups, emitted_positions, with_kernels
from .layouts import channels_last_copies, channels_last_storages, view_copies
from .predicted_kernels import loop_op, predicted_kernel_groups, slot_buffers, spanned_kernels
from .pricing import recomputable, recompute_time, slot_times
from .problem import BACKWARD, FORWARD, Activation, Problem, Slot
from .symbolic import SymbolicSizes, shape_env_of, symbolic_bytes

if TYPE_CHECKING:
    from .profile import MeasuredCosts

aten = torch.ops.aten


# Smallest activation worth a copy to host: each copy costs two custom ops, a stream hop and an
# event (about 0.2 ms of host time per copy on an H200, benchmarks/gpu_diag.py), and frees little.
MIN_OFFLOAD_BYTES = 1 << 20


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
    # handed-over forward value -> the consumers that hand it over when recomputed inside the taking
    # kernel (``_pass_through``)
    through: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)


def emitted_schedule(sched: Schedule, order: tuple[frozenset[str], ...]) -> Schedule:
    """``sched`` with its backward ops in the order in which the code of a compile ran its kernels
    (``order``: ``KernelGroups.backward_order``, plain compile's; unchanged when empty): each op
    where the first kernel that names it ran (``emitted_positions``). An op that no kernel names (an ``mm``
    and an ``add`` that Inductor replaced by an ``addmm`` of its own) runs just before its first
    reader, or, read by no backward op that has a place (a gradient: GPT's tied embedding's, an
    ``addmm`` that plain compile runs last), just before the next op of the schedule that has one.
    An op whose position that compile's recomputations set runs where the schedule has it, just
    before the next op that has a place (``placed_by_recomputation``; the simulator's "Moved"
    waits it per the plan's decisions). Ties, and an op named before what it reads, keep the
    schedule's own order: a stable topological sort."""
    if not order:
        return sched
    at = emitted_positions(order)
    backward = sched.backward
    waited = placed_by_recomputation(sched, at)
    index, inputs, readers = _backward_edges(backward)
    # (position, 0) where a kernel names the op; (a position, -1): before the ops of that position
    key: dict[fx.Node, tuple[int, int]] = {}
    for u in reversed(backward):  # a reader before what it reads
        known = [key[r][0] for r in readers.get(u, ()) if r in key]
        if u.name in waited:
            continue
        if u.name in at or known:
            key[u] = (at[u.name], 0) if u.name in at else (min(known), -1)
    after = (len(order), -1)
    for u in reversed(backward):  # read by no op that has a place: before the next op that has one
        after = key.setdefault(u, after)
    return _rescheduled(sched, _stable_topological(backward, inputs, readers, lambda u: (key[u], index[u])))


def fused_schedule(sched: Schedule, kernels: tuple[frozenset[str], ...]) -> Schedule:
    """``sched`` with its backward ops in the order in which Inductor runs them when its generated
    backward kernels are ``kernels`` (the last compile's): a kernel runs where its first op that
    writes a buffer (a reduction, or an op that ops outside the kernel read) is, after the ops it
    reads, which run before it; its other ops, inlined into their readers, run with it, and the
    ops between that it does not read run after it (torch 2.13 ``Scheduler.fuse_nodes`` sorts
    fused nodes by their first node, then ``topological_sort_schedule`` visits each node's unmet
    dependencies before it). An op that several kernels name is a pointwise value computed
    inside each (``_computed_origins``): it neither places a kernel nor joins one. Transformers
    Mixtral's router-weight gradient (a row sum of the expert outputs' gradient, scattered back)
    was one kernel, whose scatter the graph runs after the experts' backward: spanning both, it
    kept that gradient and the expert outputs 2 MiB beside the experts' backward, which its code
    had freed. Transformers Llama's two RMSNorm weight gradients, fused where a plan recomputes
    the residual add between them, name the gradient adds that the kernels before them compute
    too: taken as the kernel's own ops, they placed it with the earlier kernel and read one of its
    ops through layer 0's backward, so that no op moved. Its rotary backward kernels' first ops
    are inlined into the one buffer they write, which runs after the value projection's matmuls."""
    backward = sched.backward
    index, inputs, readers = _backward_edges(backward)
    by_name = {u.name: u for u in backward}
    named = Counter(x for group in kernels for x in group)
    start: dict[fx.Node, int] = {}
    for group in kernels:
        ops = [by_name[x] for x in group if x in by_name and named[x] == 1]
        if len(ops) > 1 and not _through_others(ops, inputs, index):
            writers = [index[u] for u in ops if _writes_buffer(u, group)]
            start.update(dict.fromkeys(ops, min(writers or [index[u] for u in ops])))
    # (position, 0) of an op; (a kernel's position, -1) for an op that a kernel there reads: it runs first
    key: dict[fx.Node, tuple[int, int]] = {}
    for u in reversed(backward):  # a reader before what it reads
        own = start.get(u, index[u])
        key[u] = min([(own, 0)] + [(key[r][0], -1) for r in readers.get(u, ()) if key[r][0] < own])
    order = _stable_topological(backward, inputs, readers, lambda u: (key[u], index[u]))
    return sched if order == backward else _rescheduled(sched, order)


def _writes_buffer(u: fx.Node, group: frozenset[str]) -> bool:
    """Whether op ``u`` of a generated kernel (the names ``group``) writes a buffer: a reduction,
    or an op that an op outside the kernel reads (the graph's output included); Inductor inlines
    the others into their readers."""
    return torch.Tag.reduction in op_tags(u) or any(r.name not in group for r in readers_through_views(u))


def with_renamed_ops(groups: KernelGroups, sched: Schedule) -> KernelGroups:
    """``groups`` with, in each backward kernel, the ops that Inductor's own passes renamed: a loop
    op (``loop_op``) that no kernel names and that lies between two ops of one kernel (reads,
    through such ops, what one makes, and another reads it) is computed in that kernel, under the
    name of the node Inductor made for it (transformers Llama's rotary backward: the joint's
    ``slice_scatter``, Inductor's ``slice_scatter_default``; the kernel seemed to read itself
    through it)."""
    backward = sched.backward
    _, inputs, readers = _backward_edges(backward)
    named = {x for group in groups.backward for x in group}
    free = {u for u in backward if u.name not in named and loop_op(u)}
    found = []
    for group in groups.backward:
        ops = [u for u in backward if u.name in group]
        between = _reached(ops, readers, free) & _reached(ops, inputs, free)
        found.append(group | {u.name for u in between})
    return replace(groups, backward=tuple(found)) if any(found[k] != g for k, g in enumerate(groups.backward)) else groups


def _reached(ops: list[fx.Node], edges: dict, free: set[fx.Node]) -> set[fx.Node]:
    """The ops of ``free`` that ``ops`` reach along ``edges`` through ops of ``free`` alone."""
    found: set[fx.Node] = set()
    todo = [v for u in ops for v in edges.get(u, ()) if v in free]
    while todo:
        v = todo.pop()
        if v not in found:
            found.add(v)
            todo.extend(w for w in edges.get(v, ()) if w in free)
    return found


def _through_others(ops: list[fx.Node], inputs: dict, index: dict) -> bool:
    """Whether an op of ``ops`` reads, through ops outside them, another of ``ops``: Inductor
    cannot run them as one kernel here (a kernel of the last compile that this graph's
    recomputations or order split)."""
    inside, first = set(ops), min(index[u] for u in ops)
    todo, seen = [i for u in ops for i in inputs[u] if i not in inside], set()
    while todo:
        v = todo.pop()
        if v in seen or index[v] < first:
            continue
        seen.add(v)
        if any(i in inside for i in inputs[v]):
            return True
        todo.extend(inputs[v])
    return False


def placed_by_recomputation(sched: Schedule, at: dict[str, int]) -> set[str]:
    """The backward ops whose position in a compile's code (``at``: FX node name -> its
    position, ``emitted_positions``) that compile's recomputations set: the ops of a kernel that
    recomputed a forward value (names a forward op), and the ops that ran after such a kernel and
    read what it wrote (that value, or a result of its backward ops). The model's recomputations
    need not be that compile's (transformers GPT-2's plain plan, told plain compile's order with
    these ops in it, peaked 1.098 of the code, without them 1.036; in the check loop, Llama's
    "min": the down projection's weight gradient read a product that a kernel recomputing the
    residual stream wrote, and ran after the SiLU backward kernel; the next plan stored the
    residual stream and its code ran that gradient early)."""
    forward = {u.name for u in sched.forward}
    recomputing = {k for name, k in at.items() if name in forward}
    slots = {u: k for k, u in enumerate(sched.forward + sched.backward)}

    def wrote_earlier(v: fx.Node, p: int) -> bool:
        return at.get(v.name, p) < p and at[v.name] in recomputing

    return {u.name for u in sched.backward if u.name in at and (
        at[u.name] in recomputing or any(wrote_earlier(v, at[u.name]) for v in _slot_inputs(u, slots)))}


def recomputed_in_graph_order(life: Lifetimes, graph_order: list[fx.Node], sched: Schedule, inlined: set[str]) -> None:
    """Give each forward value that backward reads a first backward use no later than the first
    slot, in ``sched`` (the order the code ran), of an op that the FX graph runs at or after its
    first reader: the rewrite recomputes a value just before its first reader in the FX graph
    (``graph_order``), and Inductor runs that recomputation where the graph has it, while fusion
    may run that reader later (transformers-style SwiGLU: an ``addmm`` recomputing the residual
    input runs before the SiLU backward kernel, whose weight gradient reads it after that kernel).
    Not for values that a generated kernel of the last compile names (``inlined``): that kernel
    recomputes them where it runs. A stored value's interval does not change."""
    if graph_order == sched.backward:
        return
    rank = {sched.slot_of[u]: k for k, u in enumerate(graph_order)}
    earliest: dict[int, int] = {}  # slot -> the first slot of its op and of the ops the graph runs after it
    first = sched.last + 1
    for u in reversed(graph_order):
        first = min(first, sched.slot_of[u])
        earliest[sched.slot_of[u]] = first
    for s, facts in life.activations.items():
        if facts.backward_uses and s.name not in inlined:
            bound = earliest[min(facts.backward_uses, key=rank.__getitem__)]
            if bound < facts.backward_uses[0]:
                facts.backward_uses = [bound, *facts.backward_uses]


def _backward_edges(backward: list[fx.Node]) -> tuple[dict, dict, dict]:
    """The backward ops' positions, each op's inputs among them (``_slot_inputs``) and each op's
    readers (in the order of ``backward``)."""
    index = {u: k for k, u in enumerate(backward)}
    inputs = {u: _slot_inputs(u, index) for u in backward}
    readers: dict[fx.Node, list[fx.Node]] = {}
    for u, found in inputs.items():
        for i in found:
            readers.setdefault(i, []).append(u)
    return index, inputs, readers


def _slot_inputs(u: fx.Node, slots: dict[fx.Node, int]) -> list[fx.Node]:
    """The ops among ``slots`` whose results ``u`` reads, itself or through views (a tuple op for
    an element of its result)."""
    found = []
    for i in u.all_input_nodes:
        while not takes_slot(i) and i.op == "call_function" and i.args and isinstance(i.args[0], fx.Node):
            i = i.args[0]
        if i in slots and i not in found:
            found.append(i)
    return found


def _stable_topological(ops: list[fx.Node], inputs: dict, readers: dict, rank: Callable) -> list[fx.Node]:
    """``ops`` (in a topological order) sorted by ``rank``, each after the ops it reads
    (``inputs``; ``readers``, the reverse): the lowest-ranked op whose inputs have run, first."""
    position = {u: k for k, u in enumerate(ops)}
    waiting = {u: len(inputs[u]) for u in ops}
    ready = [(rank(u), position[u]) for u in ops if not waiting[u]]
    heapq.heapify(ready)
    out = []
    while ready:
        u = ops[heapq.heappop(ready)[1]]
        out.append(u)
        for r in readers.get(u, ()):
            waiting[r] -= 1
            if not waiting[r]:
                heapq.heappush(ready, (rank(r), position[r]))
    return out


def _rescheduled(sched: Schedule, backward: list[fx.Node]) -> Schedule:
    """``sched`` with the backward ops in the order ``backward``; a tuple op's elements at its slot."""
    slot_of = {n: i for i, n in enumerate(sched.forward + backward)}
    slot_of.update({n: slot_of[n.args[0]] for n in sched.slot_of if n.target is operator.getitem and n.args[0] in slot_of})
    return Schedule(sched.forward, backward, slot_of)


def predicted_handovers(life: Lifetimes, relevant: set[fx.Node]) -> dict:
    """The Problem metadata that says which activations (``relevant``) a backward result takes over
    as they die (``remat.kernel_groups.HANDOVERS``: name -> the slot its result starts), and
    through which recomputed consumers (``remat.kernel_groups.THROUGH``); empty when none does."""
    found = {s.name: h for s, h in life.handovers.items() if s in relevant}
    through = {s.name: [c.name for c in cs if c in relevant] for s, cs in life.through.items() if s.name in found}
    through = {name: cs for name, cs in through.items() if cs}
    return {**({HANDOVERS: found} if found else {}), **({THROUGH: through} if through else {})}


# When Inductor stores a pointwise result instead of inlining it into each reader (torch 2.13:
# ``ir.StorageBox.should_realize_on_reuse`` and ``has_exceeded_max_reads``, config defaults)
_HEAVY_ON_CPU = frozenset({"exp", "log", "log10", "log1p", "log2", "sigmoid", "tanh"})


_REUSED_READS = 4  # realize_reads_threshold: a result read by several kernels


_READS = {"cpu": 12, "other": 8}  # realize_cpu_acc_reads_threshold, _realize_acc_reads_threshold_default


_BODY_OPS = {"cpu": 50, "other": 30}  # realize_cpu_opcount_threshold, _realize_opcount_threshold_default


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

    def recomputing(self, v: fx.Node, code: Inlined) -> Inlined:
        """This code when the buffer ``v`` it loads is recomputed inline instead, by ``code``."""
        return Inlined((self.reads - {v}) | code.reads, self.heavy or code.heavy, self.ops + code.ops)


def fused_values(g: GraphFacts) -> set[fx.Node]:
    """Pointwise results and constants (``full``) that Inductor never allocates
    (``_materialized``): it inlines them into each fusible kernel (pointwise or reduction) of their
    own phase that reads them, and into the copy that an update of a copy makes of its first input
    (``scatter_add`` of a ``full``: one buffer, ``_copies_into_its_result``)."""
    return set(inlined_codes(g))


def inlined_codes(g: GraphFacts) -> dict[fx.Node, Inlined]:
    """Each of the ``fused_values`` with its ``Inlined`` code."""
    readers = _graph_readers(g)
    inlined: dict[fx.Node, Inlined] = {}
    for s in (n for n in g.nodes if g.owner.get(n) is n and n.op == "call_function"):
        code = inlined_code(s, g, inlined)
        if not _materialized(s, g, readers, code):
            inlined[s] = code
    return inlined


def _graph_readers(g: GraphFacts) -> dict[fx.Node, list[fx.Node]]:
    readers: dict[fx.Node, list[fx.Node]] = {}
    for n in g.nodes:
        for i in n.all_input_nodes:
            readers.setdefault(i, []).append(n)
    return readers


def realized_by_recomputation(g: GraphFacts, codes: dict[fx.Node, Inlined]) -> dict[fx.Node, fx.Node]:
    """Forward buffer -> the first backward value (in graph order) that Inductor inlines into each
    of several kernels (``codes``: ``inlined_codes``) but stores when a plan recomputes that
    buffer: the recomputation's loads replace the buffer's in its code, which then loads more than
    four storages or holds a heavy op (``_materialized``), unless the recomputation is a buffer
    itself (``_recomputed_alone``). The recomputation runs in that value's kernel, whose result
    its other readers then read (the e2e CNN's ReLU recomputed from its BatchNorm: the threshold
    backward ``where_5``, read by both kernels of the BatchNorm backward; a LayerNorm input
    recomputed: the normalised input of its backward)."""
    readers = _graph_readers(g)
    found: dict[fx.Node, fx.Node] = {}
    for w, code in codes.items():
        for v in code.reads if w in g.backward else ():
            if v in found or v not in g.forward or not is_pointwise(v) or not is_tensor(v):
                continue
            mine = inlined_code(v, g, codes)
            if not _recomputed_alone(v, g, readers, mine) and _materialized(w, g, readers, code.recomputing(v, mine)):
                found[v] = w
    return found


def _recomputed_alone(v: fx.Node, g: GraphFacts, readers: dict[fx.Node, list[fx.Node]], code: Inlined) -> bool:
    """Whether forward value ``v``, recomputed in backward by ``code``, is a buffer there: an extern
    kernel reads it (Inductor realizes its inputs), or several ops do and its code is heavy or
    loads more than four storages, or its code is too big to inline."""
    direct = {u for u in readers_through_views(v) if u in g.backward}
    if any(not is_fusible_consumer(u) for u in direct) or code.too_big(v.meta["val"].device.type):
        return True
    return len(direct) > 1 and (code.heavy or len(code.reads) > _REUSED_READS)


def inlined_code(s: fx.Node, g: GraphFacts, inlined: dict[fx.Node, Inlined]) -> Inlined:
    """``s``'s ``Inlined`` code, given those of the results inlined before it."""
    reads, heavy, ops = set(), is_tensor(s) and s.meta["val"].device.type == "cpu" and _op_name(s) in _HEAVY_ON_CPU, 1
    for i in s.all_input_nodes:
        o = g.owner.get(i)
        if o in inlined:
            reads |= inlined[o].reads
            heavy, ops = heavy or inlined[o].heavy, ops + inlined[o].ops
        elif o is not None and o.target not in INLINED_CONSTANTS:
            reads.add(o)
    return Inlined(frozenset(reads), heavy, ops)


def _op_name(n: fx.Node) -> str:
    return getattr(n.target, "_opname", "")


def _materialized(s: fx.Node, g: GraphFacts, readers: dict[fx.Node, list[fx.Node]], code: Inlined) -> bool:
    """Whether storage ``s`` is a buffer: neither pointwise nor a constant (``full``), pinned,
    read by a graph output or by a non-fusible op of its phase (other than as the input that an
    update of a copy copies, ``_copies_into_its_result``), or its code too big to inline
    (``Inlined.too_big``); read by several kernels, when its code has a heavy op (CPU) or loads
    more than four storages, or when backward reads it too (a forward value that a plan may
    store)."""
    if not (is_pointwise(s) or s.target in INLINED_CONSTANTS) or s in g.pinned:
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
            elif not (is_fusible_consumer(u) or _copies_into_its_result(u, v)):
                return None
            else:
                kernels.add(u)
    return kernels, elsewhere


# ops that Inductor lowers as an in-place update of a copy of their first input
# (``scatter_add(x, ...)`` -> ``scatter_add_(clone(x), ...)``, torch 2.13 lowering.py)
_UPDATE_A_COPY = frozenset({
    aten.scatter_add.default, aten.scatter.src, aten.scatter.value, aten.scatter_reduce.two, aten.index_put.default,
    aten._unsafe_index_put.default,
})


def _copies_into_its_result(u: fx.Node, v: fx.Node) -> bool:
    """Whether ``u`` reads ``v`` only as the first input that it copies into its result
    (``_UPDATE_A_COPY``): the copy's kernel computes a pointwise ``v`` inside it."""
    if u.target not in _UPDATE_A_COPY or u.args[0] is not v:
        return False
    others: list[fx.Node] = []
    fx.node.map_arg((u.args[1:], u.kwargs), others.append)
    return v not in others


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
    slices = cat_slices(g)
    inplaced: set[fx.Node] = set(slices)  # a result written into a cat's buffer takes no other
    held: dict[fx.Node, tuple[int, int]] = {}  # cat -> first and last slot of the results in its buffer
    for s in g.nodes:
        if g.owner.get(s) is not s or s in g.resident:
            continue
        val = s.meta["val"]
        if s in g.tangents:  # the compiled backward takes its inputs over: it frees each after its last read
            read = [t for u in readers.get(s, []) if u in sched.slot_of for t in _read_slots(u, sched, kernels)]
            life.intervals.append((sched.num_forward, max(read, default=sched.num_forward), val))
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
        elif s in slices:
            lo, hi = held.get(slices[s], (made, made))
            held[slices[s]] = (min(lo, made), max([hi] + [t for _, t in read_at]))
        elif s not in fused and not _inside_kernel(s, read_at, g, spans):
            lo, hi = held.get(s, (made, made))
            life.intervals.append((min(lo, made), max(hi, _buffer_end(s, g, sched, made, read_at, spans, fused, inplaced)), val))
    # after the backward's own buffers: those are taken first
    _predict_handovers(g, sched, readers, fused, life, kernels, inplaced)
    return life


def cat_slices(g: GraphFacts) -> dict[fx.Node, fx.Node]:
    """Backward result -> the ``cat`` whose buffer it is written into: on the CPU Inductor lowers
    ``cat`` to a ``ConcatKernel``, which makes each input that a generated kernel computes, and
    whose layout no reader has fixed yet, write into its slice of the cat's buffer instead of a
    buffer of its own (torch 2.13 ``ConcatKernel.realize_into``: a ``NonOwningLayout``); other
    inputs are copied there. An input is taken this way when it is a backward op of a kernel
    (pointwise, a reduction, an indexing loop), no output, read only by the cat and by such ops
    (an extern reader fixes its layout). Transformers Mixtral: the SiLU backward writes the gate's
    and the up projection's gradients into their cat."""
    found: dict[fx.Node, fx.Node] = {}
    for c in g.nodes:
        if c.target is not aten.cat.default or c not in g.backward or c.meta["val"].device.type != "cpu":
            continue
        for u in c.args[0]:
            if (isinstance(u, fx.Node) and g.owner.get(u) is u and u in g.backward and u not in g.pinned
                    and u not in found and is_fusible_consumer(u)
                    and all(r is c or is_fusible_consumer(r) for r in readers_through_views(u))):
                found[u] = c
    return found


def _inside_kernel(s: fx.Node, read_at: list, g: GraphFacts, spans: dict[fx.Node, tuple[int, int]]) -> bool:
    """Whether backward value ``s`` is made and read only inside one generated kernel, which then
    never writes it to memory (a result that two ops of the kernel read)."""
    kernel = spans.get(compute_node(s))
    return kernel is not None and s not in g.pinned and bool(read_at) and all(spans.get(u) == kernel for u, _ in read_at)


def _read_slots(u: fx.Node, sched: Schedule, kernels: KernelSpans) -> tuple[int, ...]:
    """The slots at which op ``u`` reads its inputs: its own, and its kernel's last if grouped,
    or the slot after the kernel that ``u`` runs after. A recomputation that ``u`` reads still
    runs at ``u``'s own slot, before that kernel: Inductor orders a pointwise op where a reader
    first needs its buffer, so the kernel comes after what runs before that reader (the small
    SwiGLU's second layer: its residual input, recomputed for the up projection's weight
    gradient, runs before the SiLU-backward kernel, 128 KiB beside it)."""
    if u in kernels.after:
        return (sched.slot_of[u], kernels.after[u])
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
    if not accesses or not is_tensor(taker):
        return False
    want = (tuple(taker.meta["val"].shape), _result_strides(taker, fused), 0)
    return all(a is s or _layout(a) == want for a in accesses)


def _accesses_of(s: fx.Node, taker: fx.Node, fused: set[fx.Node]) -> set:
    """How ``taker`` and the pointwise results inlined into it (not through views) read ``s``:
    ``s`` itself, or the view of ``s`` (a chain of views) that they read."""
    return {i for i in kernel_loads(taker, fused) if i is s or (is_view(i) and _viewed(i) is s)}


def _result_strides(taker: fx.Node, fused: set[fx.Node]) -> tuple:
    """The strides (of the dimensions longer than one) that Inductor gives pointwise ``taker``'s
    result: its loop order voted by the strides of what it loads (torch 2.13
    ``ComputedBuffer.get_fill_order``, ``scheduler.pick_loop_order``: a dimension goes inside
    another when more loads have it smaller, or broadcast the other; a tie keeps the later one
    inside), laid out densely in that order."""
    shape = list(taker.meta["val"].shape)
    loads = [broadcast_strides(i.meta["val"], shape) for i in kernel_loads(taker, fused)]

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


def _predict_handovers(g: GraphFacts, sched: Schedule, readers: dict, fused: set[fx.Node], life: Lifetimes,
                       kernels: KernelSpans, inplaced: set) -> None:
    """Record where the result of each forward value's last backward reader takes its buffer
    (``Lifetimes.handovers``; the simulator's handover, as ``remat.kernel_groups`` reads it from
    the code) and through which recomputed consumers (``_pass_through``). A result takes one
    buffer: of the values that it could take (``_handover_taker``), the first that its kernel
    loads (torch 2.13 ``decide_inplace_update`` walks its reads in load order: transformers
    Llama's SwiGLU backward writes the gate's gradient over the up projection, loaded before the
    gate). A plan that recomputes another consumer of a value breaks its handover (the
    simulator's ``_handover_holds``: SwiGLU's gate and up projection, read again by the product
    recomputed in that kernel)."""
    backward_fused = fused - g.forward
    found = {}
    for s, facts in life.activations.items():
        if facts.backward_uses:
            read_at = [(u, t) for u in readers.get(s, []) if u in g.backward for t in _read_slots(u, sched, kernels)]
            taker = _handover_taker(s, g, read_at, backward_fused, kernels)
            if taker is not None:
                found[s] = taker
    for s in sorted(found, key=lambda s: _load_position(found[s], s, backward_fused)):
        if _writes_in_place(found[s], s, inplaced):
            life.handovers[s] = kernels.ops[found[s]][0] if found[s] in kernels.ops else sched.slot_of[found[s]]
    for s in [s for s in life.activations if s in life.handovers]:
        _pass_through(s, life, fused)


def _handover_taker(s: fx.Node, g: GraphFacts, read_at: list, fused: set[fx.Node],
                    kernels: KernelSpans) -> fx.Node | None:
    """The last backward reader of forward value ``s`` (read at ``read_at``) whose result may take
    its buffer: pointwise, reading ``s`` at the index it writes (``_reads_elementwise``), of its
    size; in a generated kernel, as ``_kernel_taker`` finds it. The backward kernels load the
    forward values they read (saved): ``s`` is read through none (``fused``: the backward's)."""
    end = max(t for _, t in read_at)
    taker = max((u for u, t in read_at if t == end and u not in fused), key=g.index.__getitem__, default=None)
    if taker is None or taker in kernels.after or not _reads_elementwise(taker, s, fused):
        return None
    return _kernel_taker(s, g, read_at, end, kernels.ops, fused) if taker in kernels.ops else taker


def _load_position(taker: fx.Node, s: fx.Node, fused: set[fx.Node]) -> int:
    """Where ``taker``'s kernel first loads ``s`` (itself or a view of it) among its loads."""
    loads = kernel_loads(taker, fused)
    return next((k for k, i in enumerate(loads) if i is s or (is_view(i) and _viewed(i) is s)), len(loads))


def _pass_through(s: fx.Node, life: Lifetimes, fused: set[fx.Node]) -> None:
    """Record that a plan recomputing forward value ``s`` inside the kernel that takes its buffer
    hands over, instead, the buffer of an input ``v`` of ``s`` that ``s`` reads at the index it
    writes (through the fused values it inlines), of ``s``'s size and dtype, that no backward op
    reads from that kernel on and that has no handover of its own: the kernel then reads ``v``
    only at the index it writes, and its result takes ``v``'s buffer (transformers Llama's
    log-softmax backward recomputes ``sub_1 = mm_14 - amax - log`` and writes into ``mm_14``).
    Inductor's rule (torch 2.13 ``decide_inplace_update``) also asks that every other reader of
    ``v`` has run before; the simulator checks that against the plan."""
    h = life.handovers[s]
    for v in kernel_loads(s, fused):  # recomputed, ``s`` inlines the fused values it reads
        facts = life.activations.get(v)
        if facts is None or v in life.handovers or any(t >= h for t in facts.backward_uses):
            continue
        a, b = v.meta["val"], s.meta["val"]
        if is_pointwise(s) and a.dtype == b.dtype and tensor_bytes(a) == tensor_bytes(b) and _reads_elementwise(s, v, fused):
            life.handovers[v] = h
            life.through.setdefault(v, []).append(s)


def _writes_in_place(u: fx.Node, s: fx.Node, inplaced: set) -> bool:
    """Whether Inductor can put pointwise op ``u``'s result in ``s``'s buffer, read last by ``u``
    (same size and dtype; one input a kernel). Records the reuse."""
    if u in inplaced or torch.Tag.pointwise not in op_tags(u) or not is_tensor(u):
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
        if is_fusible_consumer(n):
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
    return list(itertools.accumulate(delta[:num_slots]))


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


def made_from_nothing(s: fx.Node) -> bool:
    """Whether forward value ``s`` is computed from no tensor (an ``iota``, ``arange``, ``full``):
    storing it saves no work, and Inductor, which computes such an index in registers inside the
    kernels that read it, would write it and load it back (transformers GPT-2's causal mask: two
    2 KB int64 ``iota`` vectors stored made layer 1's attention kernel 5 ms slower on the CPU)."""
    c = compute_node(s)
    return c.op == "call_function" and not any(is_tensor(i) for i in c.all_input_nodes)


def fold_fused_values(g: GraphFacts, acts: dict[fx.Node, ActivationFacts], inputs: dict,
                      fused: set[fx.Node]) -> Folding:
    """A fused value that backward never reads (and that draws no random numbers) is no decision
    of its own: Inductor recomputes it inside its reader's kernel, from its own inputs; nor is a
    value made from no tensor at all (``made_from_nothing``: an ``iota`` index vector), which
    backward recomputes wherever it reads it. Replace it, in its readers' inputs, by its inputs,
    and note it among the readers' folded ancestors."""
    folded = {s for s in acts if ((s in fused and not acts[s].backward_uses) or made_from_nothing(s))
              and not is_random(s)}
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
    readers = readers_through_views(s)
    if s.target is operator.getitem or s in g.pinned or len(readers) != 1:
        return ""
    t = readers.pop()
    if t not in relevant or t in fused or torch.Tag.pointwise not in op_tags(t) or not is_tensor(t):
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
    kernels of LayerNorm's row sums and the pointwise ones that write several buffers place their
    ops as one (``spanned_kernels``). What each
    backward op that reads an activation allocates and reads (``slot_buffers``) lets the simulator
    run it after a kernel that recomputes that activation (static sizes only). Training
    dropouts replay their generator state when the planner rewrote them before
    (``rng_replay.replay_in_joint``, in ``remat.planning``)."""
    g = graph_facts(joint, forward_nodes, num_fwd_outputs)
    sched = build_schedule(g)
    graph_order = sched.backward
    if kernel_groups is not None:
        kernel_groups = with_renamed_ops(kernel_groups, sched)
        sched = (emitted_schedule(sched, kernel_groups.backward_order) if kernel_groups.backward_order
                 else fused_schedule(sched, kernel_groups.backward))
    codes = inlined_codes(g)
    fused = set(codes)
    readers = effective_readers(g, slot_readers(g), fused)
    predicted = None if kernel_groups is not None else predicted_kernel_groups(
        g, sched, fused, realized_by_recomputation(g, codes))
    spans = kernel_spans(sched, kernel_groups if predicted is None else spanned_kernels(predicted, g, fused), g.owner)
    life = storage_lifetimes(g, sched, readers, fused, spans)
    if kernel_groups is not None:
        recomputed_in_graph_order(life, graph_order, sched, {n for k in kernel_groups.backward for n in k})
    intervals = life.intervals + broadcast_copies(sched) + channels_last_copies(g, sched, readers)
    intervals += view_copies(g, sched, channels_last_storages(g))
    fixed = fixed_bytes(intervals, sched.last + 1)
    folding = fold_fused_values(g, life.activations, activation_inputs(g, life.activations), fused)
    relevant = backward_relevant(g, life.activations, folding)
    times, alone = slot_times(sched, g.owner, fused, spec, costs)
    slots = [
        Slot(n.name, FORWARD if i < sched.num_forward else BACKWARD, times[n], fixed[i])
        for i, n in enumerate(sched.order)
    ]
    activations = [
        make_activation(s, life.activations[s], folding, recompute_time(s, folding, alone, g.owner, spec, costs, fused),
                        taker_of(s, g, relevant, fused))
        for s in sorted(relevant, key=g.index.__getitem__)
    ]
    symbolic = symbolic_sizes(joint, intervals, sched.last + 1, relevant)
    moved = {} if symbolic else slot_buffers(sched, g.owner, readers, intervals, life.activations)  # sized at hints
    problem = Problem(
        slots=tuple(slots), activations=tuple(activations), host_bandwidth=host_bandwidth, name=name,
        metadata={"device": spec.name, "num_nodes": len(g.nodes), **kernel_starts(spans),
                  POINTWISE: sorted(s.name for s in relevant if is_pointwise(s) or s.target in INDEXING_LOOPS),
                  **predicted_handovers(life, relevant), **moved},
    )
    if predicted is not None:  # the predicted kernels' recomputations, as the code's would tell them
        problem = with_kernels(problem, predicted, told=False)
    return Captured(problem, [n.name for n in g.nodes if n in g.forward], [n.name for n in sched.backward],
                    sorted(f.name for f in folding.folded), symbolic)


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
