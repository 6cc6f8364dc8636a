"""Inductor's kernels as groups of joint-graph ops: what the model learns from the last compile.

A kernel that Inductor generates for several ops (a fused kernel) allocates every buffer that its
ops produce before it runs and frees the buffers that they read only after it, however the same
ops would run one by one. Inductor decides that after the plan; the check of the plan
(``remat.inductor_check.InductorPeaks``) records each graph's kernels, as the names of the FX
nodes that each kernel computes, and the next plan's capture (``remat.capture``) places each group
of ops at once: its buffers from the group's first slot, what it reads until its last.

The names are the joint graph's: the forward and backward graphs that remat hands to Inductor keep
the joint nodes' names, recomputed ops included. Names that Inductor's own passes made (an
``addmm`` from an ``mm`` and an ``add``) match no joint node and are ignored. A kernel's names
are the ops it computes, not those whose buffer it loads, which Inductor's origins also name
when it reads the buffer through a view (``_computed_origins``).

What the simulator (``remat.simulate``) learns from the last compile, written into a Problem as
plain data by ``with_kernels`` (in ``Problem.metadata``) and read back by these functions:

* ``recompute_kernels``: a forward op's name in a backward kernel says that the last plan
  recomputed that value inside the kernel (activation name -> the backward slots of the ops of
  the kernels that name it, and those kernels' ids, ``recompute_kernel_ids``, kernels of
  recomputed ops alone included). A kernel that writes a pointwise value is the only one that
  names it (the others load its buffer); a pointwise value named by several kernels is computed
  inside each, never written (transformers Llama's recomputed RMSNorm input, inlined into the
  kernel that feeds the q/k/v projections and into its backward's). A RECOMPUTE value then lives
  across its kernels, or, read only inside them, is never allocated (``reads_inside``).
* ``handovers``: a kernel may write a result into the buffer of a saved value that dies there
  (the backward's wrapper code says ``buf3 = div_1; del div_1  # reuse``; ``reused_inputs``,
  kept in ``KernelGroups.reused``): activation name -> the slot where the kernel of its last
  backward read starts. The result's bytes count from there, so the value's own end there. The
  capture predicts them before any compile (``remat.capture.predicted_handovers``); the last
  compile's are added to those. ``through``: a value that backward reads only through a consumer
  recomputed inside that kernel is handed over too (activation name -> those consumers, predicted
  by the capture): the recomputation reads it at the index the result writes.

And the order of the slots, for plain torch.compile's kernels: the order in which its code ran
the backward's kernels, extern calls included (``scheduler_order``, kept in
``KernelGroups.backward_order``; ``remat.inductor_check`` records none for remat's plans, whose
order their own recomputations set), in which the capture runs the backward's ops
(``remat.capture.emitted_schedule``): Inductor's scheduler emits a fused kernel at its first op,
after the kernels it reads, and the ops between that it does not read after it, and its
peak-memory pass reorders them (transformers ViT: in the FX graph's order the model of plain
compile's plan peaked 9 % under its code).

And one thing into the slots themselves: the scratch memory that an extern kernel of the last
compile allocated while it ran (a CPU convolution's buffers, measured by
``remat.inductor_check``; ``KernelGroups.scratch``) is added to the fixed bytes of the slot of
the op it ran. On a small convolution it is several times the model's whole peak (a 3x16 conv
net's step: 4.5 KiB modelled, 28 KiB in the code, 14 and 22 KiB of conv scratch). A recomputed
op's scratch (its name is a forward slot's, its call in the backward) is not placed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = [
    "HANDOVERS", "KERNEL_STARTS", "POINTWISE", "THROUGH", "KernelGroups", "RecomputeKernel", "emitted_positions",
    "handovers", "reads_inside", "recompute_kernel_ids", "recompute_kernels", "reused_inputs", "scheduler_groups",
    "scheduler_order", "through", "with_kernels", "with_scratch",
]

# the Problem.metadata keys; ``remat.capture`` predicts handovers before any compile, and the
# last compile's reused inputs are added to them
RECOMPUTE_KERNELS, HANDOVERS, THROUGH = "recompute_kernels", "handovers", "handed_through"
RECOMPUTE_KERNEL_IDS = "recompute_kernel_ids"  # activation name -> the backward kernels (indices) that name it
# written by ``remat.capture``: the activations whose op Inductor lowers to a pointwise loop, the only
# ones that a kernel naming them computes inside it (a reduction's other readers name it too: its
# lowering's pointwise tail, such as a mean's division, is inlined into them, its sum is a buffer)
POINTWISE = "pointwise"
KERNEL_STARTS = "kernel_starts"  # written by ``remat.capture``: slot name -> the first slot of its kernel
# ``buf3 = div_1; del div_1  # reuse``, or through a view: ``buf16 = reinterpret_tensor(mm_12, ...); del mm_12  # reuse``
_REUSE = re.compile(r"^\s*\w+ = (?:reinterpret_tensor\()?(\w+)(?:, [^;]*\))?; del \1\s*# reuse$", re.MULTILINE)


@dataclass(frozen=True)
class KernelGroups:
    """The ops of each generated (non-extern) kernel of one compiled joint graph, per phase."""

    forward: tuple[frozenset[str], ...] = ()
    backward: tuple[frozenset[str], ...] = ()
    reused: frozenset[str] = frozenset()  # backward inputs whose buffer a result took (``reused_inputs``)
    scratch: tuple[tuple[str, int], ...] = ()  # (op name, bytes): an extern kernel's measured scratch
    # plain compile's backward kernels, extern calls included, in the order its code runs them (``scheduler_order``)
    backward_order: tuple[frozenset[str], ...] = ()

    def key(self) -> str:
        """A stable text of the groups, the reused inputs, the scratch and the backward's order, for
        cache keys."""
        phases = (self.forward, self.backward, (self.reused,))
        groups = "|".join(";".join(sorted(",".join(sorted(g)) for g in groups)) for groups in phases)
        order = "|" + ";".join(",".join(sorted(k)) for k in self.backward_order) if self.backward_order else ""
        return groups + "".join(f"|{name}:{nbytes}" for name, nbytes in sorted(self.scratch)) + order


def scheduler_groups(nodes: list) -> tuple[frozenset[str], ...]:
    """The FX node names of each kernel that Inductor generates, from its scheduler ``nodes``
    after fusion: fused and single kernels, not extern kernels (whose origins also name the
    pointwise ops inlined into their inputs). A kernel's names include the ops inlined into it,
    not the op of an extern kernel whose input it lays out (the CNN's first BatchNorm backward
    kernel writes the gradient that ``convolution_backward`` reads in channels-last order and
    names that op: its span then reached past the convolution, keeping what it read alive there)."""
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    extern = {name for s in nodes if isinstance(s, ExternKernelSchedulerNode) for name in _called_ops(s.node)}
    makers = _buffer_makers(nodes)
    groups = []
    for snode in nodes:
        if isinstance(snode, (ExternKernelSchedulerNode, NopKernelSchedulerNode)):
            continue
        names = _generated_ops(snode, extern, makers)
        if len(names) > 1:
            groups.append(names)
    return tuple(groups)


def scheduler_order(nodes: list) -> tuple[frozenset[str], ...]:
    """The FX node names of every kernel in Inductor's scheduler ``nodes`` after fusion, in their
    order, which is the order the code runs them in when Inductor does not reorder them for peak
    memory afterwards (remat's plans turn that off): a generated kernel's names as in
    ``scheduler_groups`` (one name or several), an extern kernel's the op it calls. A kernel whose
    op Inductor's own passes made (``addmm_default`` from an ``mm`` and an ``add``) names no joint
    node. The order is not the FX graph's: the scheduler sorts fused kernels by their first op and
    runs, before each, the kernels it reads (torch 2.13 ``Scheduler.topological_sort_schedule``),
    so a kernel whose ops lie on both sides of another op's chain runs that chain first and the
    ops between that it does not read after it."""
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    extern = {name for s in nodes if isinstance(s, ExternKernelSchedulerNode) for name in _called_ops(s.node)}
    makers = _buffer_makers(nodes)
    return tuple(frozenset(_called_ops(s.node)) if isinstance(s, ExternKernelSchedulerNode)
                 else _generated_ops(s, extern, makers) for s in nodes)


def _generated_ops(snode, extern: set[str], makers: dict) -> frozenset[str]:
    """The FX node names that a generated kernel computes: its nodes' origins but the ops of
    extern kernels (``extern``) and those it loads (``_computed_origins``)."""
    own = {b.get_name() for n in snode.get_nodes() for b in n.get_outputs()}
    names: set[str] = set()
    for n in snode.get_nodes():
        if n.node is not None:
            names |= {o.name for o in _computed_origins(n, own, makers)}
    return frozenset(names - extern)


def _buffer_makers(nodes: list) -> dict:
    """Buffer name -> the FX node whose value Inductor wrote into it (its ``origin_node``; None
    where Inductor did not track one), for the buffers of the scheduler ``nodes``."""
    return {b.get_name(): b.node.get_origin_node() for s in nodes for n in s.get_nodes() for b in n.get_outputs()}


def _computed_origins(node, own: set[str], makers: dict) -> list:
    """The origins of scheduler ``node`` (of a generated kernel whose buffers are ``own``) that it
    computes: those reached from the FX node of its buffer through origins, not past a value that
    the kernel loads from a buffer of another kernel (``makers``), through views that are no origins
    (Inductor's origins leave out some views and tuple elements). Inductor's origins of an op include the
    origins of the views it reads, taken when the view's base was not yet a buffer: a sum that
    loads the buffer of a product through a view names the product (GPT's dropout-backward sum
    named ``mul_60``, which the layer-norm backward kernel writes, and the model ran the
    weight gradients that read that product after the sum). All of them where ``node``'s buffer
    has no FX node."""
    from .views import is_view  # here: the solvers import this module, and must not import torch

    origins = node.node.get_origins()
    root = node.node.get_origin_node()
    if root is None or root not in origins:
        return list(origins)
    loaded = {makers.get(d.name) for d in node.read_writes.reads if d.name not in own}
    found, todo = {root}, [root]
    while todo:
        for i in todo.pop().all_input_nodes:
            if i not in found and i not in loaded and (i in origins or is_view(i)):
                found.add(i)
                todo.append(i)
    return [o for o in origins if o in found]


def emitted_positions(order: tuple[frozenset[str], ...]) -> dict[str, int]:
    """FX node name -> the position in ``order`` (``scheduler_order``) of the first kernel that
    names it: where the code runs it (a pointwise value inlined into several kernels first runs
    in the first)."""
    found: dict[str, int] = {}
    for k, names in enumerate(order):
        for name in names:
            found.setdefault(name, k)
    return found


def _called_ops(kernel) -> set[str]:
    """The names of the graph nodes whose op an extern ``kernel`` calls (its origins of that op)."""
    packet = getattr(getattr(kernel, "op_overload", None), "overloadpacket", None)
    return {o.name for o in kernel.get_origins()
            if packet is not None and getattr(o.target, "overloadpacket", None) == packet}


@dataclass(frozen=True)
class RecomputeKernel:
    """The generated backward kernels that recompute a forward value: the backward slots of the
    model's schedule that their own ops take (ascending, at least one), and the kernels' ids
    (``recompute_kernel_ids``; empty in facts recorded without them)."""

    slots: tuple[int, ...]
    kernels: frozenset[int] = frozenset()

    @property
    def first(self) -> int:
        return self.slots[0]

    @property
    def last(self) -> int:
        return self.slots[-1]


def with_kernels(problem, groups: KernelGroups | None, told: bool = True):
    """``problem`` with what ``groups`` (the last compile's kernels; ``told``: Inductor's, else
    predicted ones) tell the simulator in its metadata: the backward kernels that recomputed its
    activations, and the activations whose buffers a kernel's result took over; and in its slots,
    the extern kernels' scratch (``with_scratch``); unchanged when they tell nothing."""
    if groups is None:
        return problem
    problem = with_scratch(problem, dict(groups.scratch))
    slots, ids = _recomputed_in(problem, groups) if told else _first_recomputed_in(problem, groups)
    facts = {RECOMPUTE_KERNELS: slots, RECOMPUTE_KERNEL_IDS: ids,
             HANDOVERS: {**handovers(problem), **_handed_over(problem, groups)}}
    facts = {k: v for k, v in facts.items() if v}
    return replace(problem, metadata={**problem.metadata, **facts}) if facts else problem


def with_scratch(problem, scratch: dict[str, int]):
    """``problem`` with ``scratch`` (op name -> bytes its extern kernel allocated while it ran)
    added to the fixed bytes of that op's slot; names of no slot are left out."""
    if not any(s.name in scratch for s in problem.slots):
        return problem
    slots = [replace(s, fixed_bytes=s.fixed_bytes + scratch.get(s.name, 0)) for s in problem.slots]
    return replace(problem, slots=slots)


def _backward_kernels(problem, groups: KernelGroups) -> list[tuple[frozenset[str], list[int]]]:
    """Each backward kernel with the backward slots of its ops (ascending; maybe none)."""
    nf = problem.num_forward
    slot_of = {s.name: t for t, s in enumerate(problem.slots) if t >= nf}
    return [(g, sorted(slot_of[n] for n in g if n in slot_of)) for g in groups.backward]


def _recomputed_in(problem, groups: KernelGroups) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(activation -> the slots of the backward kernels that recompute it, activation -> those
    kernels' ids). A value that Inductor lowers to a pointwise loop (``POINTWISE``; every value, in
    a problem that does not say) is computed in every kernel that names it: the slots of all of
    them that hold one, the ids of all (a kernel of recomputed ops alone holds no slot). Another
    is written by one kernel and read by the others: the slots of the first that holds one, no
    ids."""
    names = {a.name for a in problem.activations}
    pointwise = set(problem.metadata.get(POINTWISE, names))
    slots: dict[str, set[int]] = {}
    ids: dict[str, list[int]] = {}
    for k, (group, kernel_slots) in enumerate(_backward_kernels(problem, groups)):
        for name in sorted(group & names):
            if name in pointwise:
                ids.setdefault(name, []).append(k)
            if kernel_slots and (name in pointwise or name not in slots):
                slots.setdefault(name, set()).update(kernel_slots)
    return {name: sorted(s) for name, s in slots.items()}, ids


def _first_recomputed_in(problem, groups: KernelGroups) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(activation -> the slots of the first backward kernel that recomputes it and holds a slot,
    no ids): predicted kernels (``remat.predicted_kernels``) name a value in each kernel that may
    inline it, not only in those that Inductor then computes it in."""
    names = {a.name for a in problem.activations}
    found: dict[str, list[int]] = {}
    for group, slots in _backward_kernels(problem, groups):
        for name in sorted(group & names) if slots else ():
            found.setdefault(name, slots)
    return found, {}


def _handed_over(problem, groups: KernelGroups) -> dict[str, int]:
    """Reused activation -> the first slot of the kernel of its last backward read (that read's
    own slot when no kernel of several ops holds it): where the capture started that kernel
    (``KERNEL_STARTS``: after the ops that make what it reads), else its first op's slot."""
    first = {problem.slots[t].name: slots[0] for _, slots in _backward_kernels(problem, groups) for t in slots}
    first.update(problem.metadata.get(KERNEL_STARTS, {}))
    return {a.name: first.get(problem.slots[a.backward_uses[-1]].name, a.backward_uses[-1])
            for a in problem.activations if a.name in groups.reused and a.backward_uses}


def recompute_kernels(problem) -> dict[str, RecomputeKernel]:
    """The backward kernels that recompute ``problem``'s activations (``with_kernels``), for those
    that a kernel of a backward slot recomputes."""
    found, ids = problem.metadata.get(RECOMPUTE_KERNELS, {}), recompute_kernel_ids(problem)
    return {name: RecomputeKernel(tuple(slots), ids.get(name, frozenset())) for name, slots in found.items()}


def recompute_kernel_ids(problem) -> dict[str, frozenset[int]]:
    """Activation -> the ids of the backward kernels that recompute it (``with_kernels``), kernels
    of recomputed ops alone included."""
    return {name: frozenset(ids) for name, ids in problem.metadata.get(RECOMPUTE_KERNEL_IDS, {}).items()}


def reads_inside(kernel: RecomputeKernel, reader, kernels: Mapping, ids: Mapping, start: float) -> bool:
    """Whether ``reader``, a consumer recomputed from slot ``start`` of the value that ``kernel``
    recomputes (``kernels``, ``ids``: by the same keys as ``reader``), reads that value inside a
    kernel that computes it too, so that the value needs no buffer for it: every kernel that
    recomputes ``reader`` also computes the value, and runs within ``kernel``'s last slot (a
    kernel of recomputed ops alone runs at ``start``). Facts without kernel ids: ``reader``'s
    kernel is ``kernel``."""
    if not kernel.kernels:
        return kernels.get(reader) == kernel
    own = ids.get(reader)
    return bool(own) and own <= kernel.kernels and (reader in kernels or start <= kernel.last)


def reused_inputs(code: str) -> set[str]:
    """Names whose buffer Inductor's wrapper ``code`` hands to a later result as it dies
    (``buf3 = div_1; del div_1  # reuse``, or viewed: ``buf16 = reinterpret_tensor(mm_12, (4, 256,
    512), (131072, 512, 1), 0); del mm_12  # reuse``): the graph inputs among them are saved
    activations that a backward kernel overwrites in place."""
    return set(_REUSE.findall(code))


def handovers(problem) -> dict[str, int]:
    """Activation name -> the slot from which a kernel's result holds its buffer (``with_kernels``)."""
    return dict(problem.metadata.get(HANDOVERS, {}))


def through(problem) -> dict[str, tuple[str, ...]]:
    """Handed-over activation -> its consumers that, recomputed inside the kernel that takes its
    buffer, hand it over (``remat.capture``'s ``_pass_through``)."""
    return {name: tuple(cs) for name, cs in problem.metadata.get(THROUGH, {}).items()}
