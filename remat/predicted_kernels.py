"""Inductor's fusion, predicted before the first compile: which ops of the joint graph
Inductor's CPU scheduler fuses into one kernel (``predicted_kernel_groups``), and the backward
kernels whose spans the first plan models (``spanned_kernels``: LayerNorm's row sums and the
pointwise kernels that write several buffers); the backward reductions that a plan's
recomputations make it fuse (``reductions_fused_by_plan``);
and what a backward op that Inductor's scheduler may run after a kernel allocates and reads
(``slot_buffers``: a reader of a value recomputed inside a kernel runs after it)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from torch._prims_common import is_expandable_to

from .cost import tensor_bytes
from .kernel_groups import KernelGroups
from .simulate import SLOT_BUFFERS
from .joint_graph import (
    GraphFacts, Schedule, broadcast_strides, compute_node, fake_value, is_fusible_consumer, is_pointwise, is_tensor,
    kernel_inputs, kernel_loads, kernel_reads, op_tags, readers_through_views, takes_slot,
)

aten = torch.ops.aten


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


def predicted_kernel_groups(g: GraphFacts, sched: Schedule, fused: set[fx.Node],
                            realized: dict[fx.Node, fx.Node] | None = None) -> KernelGroups:
    """The kernels that Inductor's scheduler would generate for the joint graph's forward and
    backward ops when every forward value is saved, as ``remat.kernel_groups.scheduler_groups``
    names them: each kernel's materialised results and the pointwise results inlined into them
    (``fused``). torch 2.13's rules on the CPU (``Scheduler.fuse_nodes``, ``CppScheduling``):
    two kernels that share a buffer, at most 64 ops apart, fuse when no op between them depends on
    one and feeds the other, and their loops agree (``_loops_fuse``). A pointwise forward value
    that a plan may recompute is named in the backward kernel it would fuse with
    (``_recomputations_joined``), or, where its recomputation makes Inductor store a backward value
    that it inlines today (``realized``: forward value -> that value), in that value's own kernel
    (``_realized_kernels``)."""
    realized = realized or {}
    backward = _fuse_phase(sched.backward, g.owner, fused)
    joined = _recomputations_joined(backward, g, sched, fused, set(realized))
    return KernelGroups(_named_groups(_fuse_phase(sched.forward, g.owner, fused), g.owner, fused),
                        _named_groups(backward, g.owner, fused, joined) + _realized_kernels(realized, g.owner, fused))


def _realized_kernels(realized: dict[fx.Node, fx.Node], owner: dict, fused: set[fx.Node]) -> tuple[frozenset[str], ...]:
    """For each recomputation that makes Inductor store a backward value (``realized``), that
    value's kernel as a group of names: the value, the results inlined into it and the
    recomputation, which its other readers, outside it, then follow (the e2e CNN's threshold
    backward, whose stored result both kernels of its BatchNorm backward read: joined to the
    second, the ReLU's recomputation spanned the first's reductions, which the model then ran
    after it: 1.12 x the code's peak; the quick GPT's residual sums, joined to a dropout backward
    kernel after all their readers: its "min" plan 1.14 x its measured peak, now 1.00)."""
    return tuple(frozenset({v.name, w.name} | {i.name for i in kernel_inputs(w, owner, fused)[1]})
                 for v, w in realized.items())


def _recomputations_joined(kernels: list[_Kernel], g: GraphFacts, sched: Schedule,
                           fused: set[fx.Node], skip: set[fx.Node]) -> dict[int, set[fx.Node]]:
    """Backward kernel (its index in ``kernels``) -> the forward values that Inductor would
    compute inside it if a plan recomputed them: a pointwise forward buffer that backward reads,
    recomputed just before its first backward reader, fuses with the pointwise kernel from there
    on (at most 64 ops later) that shares the most bytes with what it reads and writes, where
    their loops fuse (the MLP's GELU output ``mul_2``, read by its weight gradient, joins GELU's
    backward kernel, which reads the same ``addmm``). Not a kernel before its first reader (the
    tests' Block then predicted its plain partition above storing everything) nor one with a
    reduction: joined to LayerNorm's backward kernels, the quick GPT's first plan at 75 % was
    predicted 2.6 % under its code (exact without). Not the values in ``skip``, nor a kernel
    that depends on another backward op that loads the value (``_best_partner``)."""
    op_slots = sorted(sched.slot_of[n] for n in sched.backward if n not in fused)
    loaders: dict[fx.Node, set[fx.Node]] = {}
    for n in sched.backward:
        for s in kernel_reads(n, g.owner, fused) if n not in fused else ():
            loaders.setdefault(s, set()).add(n)
    joined: dict[int, set[fx.Node]] = {}
    for v in sched.forward:
        if v in fused or v in skip or not is_pointwise(v) or not is_tensor(v):
            continue
        readers = [sched.slot_of[u] for u in readers_through_views(v) if u in g.backward and u in sched.slot_of]
        if not readers:
            continue
        at = bisect.bisect_left(op_slots, min(readers))  # the kernels' op index of its first reader
        alone = _Kernel([v], _loop_ranges(v, fused), False, at, at, set())
        accessed = kernel_reads(v, g.owner, fused) | {v}
        best = _best_partner(alone, kernels, accessed, loaders.get(v, set()), g.owner, fused)
        if best is not None:
            joined.setdefault(best, set()).add(v)
    return joined


def _best_partner(alone: _Kernel, kernels: list[_Kernel], accessed: set[fx.Node], loaders: set[fx.Node],
                  owner: dict, fused: set[fx.Node]) -> int | None:
    """The index of the kernel within fusion distance of ``alone`` that shares the most bytes of
    ``accessed`` (what ``alone`` reads and writes) and whose loops fuse with it, and that depends on
    none of the other backward ops that load the recomputed value (``loaders``: the fusion
    would hold ops on both sides of them, a cycle that ``Scheduler.will_fusion_create_cycle``
    refuses: a BatchNorm-backward's pointwise part after its sums, which load the recomputed ReLU
    too); None if none."""
    best, most = None, 0
    for i, k in enumerate(kernels):
        if k.reduction or k.first < alone.first or k.first - alone.last > _FUSION_DISTANCE:
            continue
        if (loaders - set(k.ops)) & k.ancestors:
            continue
        reads = set().union(*(kernel_reads(n, owner, fused) for n in k.ops))
        shared = sum(tensor_bytes(fake_value(s)) for s in (reads | set(k.ops)) & accessed if is_tensor(s))
        if shared > most and _loops_fuse(alone, k, vertical=alone.ops[0] in reads):
            best, most = i, shared
    return best


def reductions_fused_by_plan(g: GraphFacts, sched: Schedule, fused: set[fx.Node],
                             recomputed: set[fx.Node]) -> dict[fx.Node, frozenset[str]]:
    """Forward value -> the names of the later backward reduction kernel that Inductor computes it
    in under a plan that recomputes ``recomputed``: a value that an earlier reduction kernel
    alone reads (every backward reader of it in that kernel), whose recomputation loads a buffer
    that the later kernel loads too under the plan (through the pointwise values recomputed
    inside each, ``_loads_under``) where they share nothing without them. Inductor fuses two
    such kernels when their loops fuse, near enough and independent (``_can_fuse``), and runs the
    fused kernel where the later one runs, after everything it reads; the earlier one's reads
    wait for it (``remat.simulate``'s "Moved" rule, once the value's kernel is the later one).
    Transformers Llama's RMSNorm weight gradients of two layers, column sums 30 ops apart, both
    recompute their normalised input from the stored residual ``add_4`` when a plan recomputes
    the residual add between them: its first plan at "min" held the first sum's inputs 30 ops
    too briefly, 0.784 of its code's peak."""
    kernels = _fuse_phase(sched.backward, g.owner, fused)
    of = {n: k for k in kernels for n in k.ops}
    ancestors_of = lambda c: of[c].ancestors if c in of else set()  # noqa: E731
    inlined = fused | {v for v in recomputed if is_pointwise(v) and is_tensor(v)}
    reductions = [k for k in kernels if k.reduction]
    joins: dict[fx.Node, frozenset[str]] = {}
    for pos, a in enumerate(reductions):
        mine = {v: kernel_reads(v, g.owner, inlined) for v in _recomputed_reads(a, g, fused, recomputed)}
        for b in reductions[pos + 1:] if mine else ():
            before = _loads_under(a, g.owner, fused) & _loads_under(b, g.owner, fused)
            theirs = _loads_under(b, g.owner, inlined) - before
            sharing = {v for v, loads in mine.items() if loads & theirs}
            if sharing and _can_fuse(a, b, ancestors_of):
                names = frozenset(n.name for n in b.ops)
                joins.update({v: names for v in sharing})
                break
    return joins


def _recomputed_reads(k: _Kernel, g: GraphFacts, fused: set[fx.Node], recomputed: set[fx.Node]) -> set[fx.Node]:
    """The pointwise forward values of ``recomputed`` that kernel ``k`` reads and that no backward op
    outside it reads."""
    inside = set(k.ops) | {i for n in k.ops for i in kernel_inputs(n, g.owner, fused)[1]}
    reads = {s for n in k.ops for s in set().union(*kernel_inputs(n, g.owner, fused))}
    return {v for v in reads & recomputed if is_pointwise(v) and is_tensor(v)
            and all(u in inside for u in readers_through_views(v) if u in g.backward)}


def _loads_under(k: _Kernel, owner: dict, inlined: set[fx.Node]) -> set[fx.Node]:
    """The buffers that kernel ``k`` loads when the values ``inlined`` are computed inside it."""
    return set().union(*(kernel_reads(n, owner, inlined) for n in k.ops))


def spanned_kernels(groups: KernelGroups, g: GraphFacts, fused: set[fx.Node]) -> KernelGroups:
    """The predicted backward kernels of ``groups`` whose ops the capture places as one before
    the first compile (``kernel_spans``): those of LayerNorm's row sums (``row_reduction_kernels``)
    and the pointwise kernels that write several buffers (``multi_output_kernels``)."""
    rows, multi = row_reduction_kernels(groups, g), multi_output_kernels(groups, g, fused)
    return KernelGroups(backward=rows.backward + multi.backward)


def multi_output_kernels(groups: KernelGroups, g: GraphFacts, fused: set[fx.Node]) -> KernelGroups:
    """The predicted backward kernels of ``groups`` whose backward ops are all pointwise and of
    which two or more are buffers (not ``fused``): Inductor allocates every output of such a
    kernel before it runs, beside the inputs that die in it, and an input that two of its ops
    read is taken by neither (transformers Llama's SwiGLU backward writes the gradients of the
    gate and of the up projection while it reads both projections and the incoming gradient:
    six buffers at once, where its ops one by one held five, one of them written over the
    gradient; its "min" plan of 13.6 MB peaked at 16.2 MB in the code). A buffer that only the
    kernel's own ops read is never written (the SiLU's sigmoid)."""
    by_name = {n.name: n for n in g.backward if takes_slot(n)}
    multi = []
    for k in groups.backward:
        ops = [by_name[x] for x in k if x in by_name]
        if all(is_pointwise(n) for n in ops) and sum(n not in fused for n in ops) >= 2:
            multi.append(k)
    return KernelGroups(backward=tuple(multi))


def row_reduction_kernels(groups: KernelGroups, g: GraphFacts) -> KernelGroups:
    """The predicted backward kernels of ``groups`` that hold two reductions over the trailing
    dimensions of their inputs (rows: LayerNorm's backward sums the gradient and its product with
    the normalised input), whose ops the capture places as one (``kernel_spans``): Inductor
    allocates their result as the kernel starts while the gradient they read, dying in it, lives
    to its end (the GPT example's first LayerNorm backward: 1 MiB over the model's peak, and two
    more compiles at 60 %). The other predicted kernels with reductions keep their ops one by one: one row sum
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
    if torch.Tag.reduction not in op_tags(n) or not isinstance(fake_value(n.args[0]), torch.Tensor):
        return False
    dim = fake_value(n.args[0]).dim()
    reduced = _reduced_dims(n, dim)
    return len(reduced) < dim and reduced == set(range(dim - len(reduced), dim))


def _fuse_phase(order: list[fx.Node], owner: dict, fused: set[fx.Node]) -> list[_Kernel]:
    """The kernels of one phase's slot ops ``order``: each loop op alone, then fused pairwise, the
    pairs that share the most bytes first, for up to ten rounds while any pair fuses."""
    nodes = [n for n in order if n not in fused]
    position = {n: i for i, n in enumerate(nodes)}
    ancestors = _scheduler_ancestors(nodes, owner, fused)
    kernels = [_Kernel([n], _loop_ranges(n, fused), torch.Tag.reduction in op_tags(n), position[n], position[n],
                       set(ancestors[n])) for n in nodes if loop_op(n)]
    for _ in range(_FUSION_ROUNDS):
        merged = _fuse_round(kernels, owner, fused, ancestors)
        if len(merged) == len(kernels):
            break
        kernels = merged
    return kernels


def loop_op(n: fx.Node) -> bool:
    """Whether Inductor computes ``n`` in a loop kernel of its own (not an extern kernel)."""
    return is_tensor(n) and (is_fusible_consumer(n) or n.target in _LOOP_OPS)


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
                entry[0] += tensor_bytes(fake_value(s)) if is_tensor(s) else 0
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
    if torch.Tag.reduction in op_tags(n) and isinstance(fake_value(n.args[0]), torch.Tensor):
        shape = list(fake_value(n.args[0]).shape)
        reduced = _reduced_dims(n, len(shape))
        order = [d for d in range(len(shape)) if d not in reduced] + sorted(reduced)
        kept = len(shape) - len(reduced)
    else:
        shape, order, kept = list(n.meta["val"].shape), list(range(n.meta["val"].dim())), n.meta["val"].dim()
    walks = [broadcast_strides(fake_value(i), shape) for i in kernel_loads(n, fused) if _broadcastable(fake_value(i), shape)]
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


def _named_groups(kernels: list[_Kernel], owner: dict, fused: set[fx.Node],
                  joined: dict[int, set[fx.Node]] | None = None) -> tuple[frozenset[str], ...]:
    """Each kernel of several ops as the names of its ops, of the pointwise results inlined into
    them (``scheduler_groups``' naming) and of the recomputations ``joined`` to it."""
    groups = []
    for index, k in enumerate(kernels):
        names = {n.name for n in k.ops} | {i.name for n in k.ops for i in kernel_inputs(n, owner, fused)[1]}
        names |= {v.name for v in (joined or {}).get(index, ())}
        if len(names) > 1:
            groups.append(frozenset(names))
    return tuple(groups)


# ---- what a backward reader of an activation allocates and reads ---------------------------------


def slot_buffers(sched: Schedule, owner: dict, readers: dict[fx.Node, list[fx.Node]],
                 intervals: list[tuple[int, int, Any]], activations: dict[fx.Node, Any]) -> dict:
    """The Problem metadata ``remat.simulate.SLOT_BUFFERS`` for each backward slot op that reads an
    activation (``activations``: forward value -> its facts, with ``backward_uses``), which a plan
    that recomputes that value inside a kernel runs after the kernel: the bytes of its result where
    its buffer starts at its own slot (``intervals``: the fixed buffers' (first slot, last slot,
    tensor)) and that buffer's last slot, and each fixed buffer it reads (``readers``: storage ->
    the slot ops that read it) that ends before the step does: its name, bytes and last slot."""
    span = {id(val): (lo, hi) for lo, hi, val in intervals}
    reads: dict[fx.Node, list[fx.Node]] = {}
    for s, users in readers.items():
        for u in users:
            reads.setdefault(u, []).append(s)
    out = {}
    for u in sorted({sched.order[t] for f in activations.values() for t in f.backward_uses}, key=sched.slot_of.get):
        out[u.name] = [*_made_at(u, sched.slot_of[u], owner, span), [
            [s.name, tensor_bytes(s.meta["val"]), span[id(s.meta["val"])][1]] for s in dict.fromkeys(reads.get(u, ()))
            if s not in activations and id(s.meta.get("val")) in span and span[id(s.meta["val"])][1] < sched.last]]
    return {SLOT_BUFFERS: out} if out else {}


def _made_at(u: fx.Node, t: int, owner: dict, span: dict) -> tuple[int, int]:
    """(bytes, last slot) of ``u``'s own buffer when it starts at slot ``t``, else (0, -1)."""
    val = u.meta.get("val")
    lo, hi = span.get(id(val), (None, -1))
    return (tensor_bytes(val), hi) if owner.get(u) is u and is_tensor(u) and lo == t else (0, -1)
