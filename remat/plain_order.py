"""Plain torch.compile's backward order, predicted before any compile: the order that Inductor's
peak-memory pass keeps.

Plain Inductor (not remat's plans: remat turns the pass off) runs ``reorder_for_peak_memory``
(``torch/_inductor/memory.py``) on the scheduler nodes after fusion: it estimates the peak of
the graph's own order ("graph", the pass's baseline) and of three greedy topological orders
(LPMF, BFS, DFS) with a simple model (the saved values live from the start and are freed after
their last reader; a node allocates its outputs at its step, freed after their last reader; the
graph's outputs, parameters and tangents are never freed) and keeps the lowest estimate, the
graph's own order on a tie. The rule here is that pass on the backward's predicted nodes: each
op that Inductor computes in a kernel of its own (not a view, not a pointwise value it inlines
into its readers), and the copy that Inductor makes of a broadcast view before an extern kernel
reads it (a node of its own: on the quick MLP, LPMF's estimate wins by running both copies of the
expanded loss seed before the matmuls). ``plain_backward_order`` names the order kept and lays
the joint graph's backward out in it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Hashable

import torch
import torch.fx as fx

from .capture import inlined_codes
from .cost import tensor_bytes
from .predicted_kernels import loop_op
from .passes.order_backward import earliest_inputs_first, inputs_first, lay_out
from .joint_graph import GraphFacts, build_schedule, graph_facts, is_fusible_consumer, is_view, kernel_reads

__all__ = ["PassGraph", "PlainOrder", "copies_in_runs", "estimate", "pass_graph", "pass_orders", "plain_backward_order"]


@dataclass(frozen=True)
class PassGraph:
    """The backward as Inductor's peak-memory pass sees it (plain data over hashable node keys):
    its nodes in the graph's order, the bytes each allocates, the buffers each reads (nodes, or
    saved forward values), the saved values' bytes and the nodes whose buffers the graph returns."""

    nodes: list[Hashable]
    size: dict[Hashable, int]
    reads: dict[Hashable, set[Hashable]]
    inputs: dict[Hashable, int]  # saved forward values read by the backward -> bytes (freeable)
    outputs: set[Hashable]  # nodes whose buffer the graph returns: never freed


def _broadcast(x: fx.Node) -> bool:
    """Whether ``x`` is a broadcast (stride-0) view of more than one element."""
    v = x.meta.get("val")
    return is_view(x) and isinstance(v, torch.Tensor) and 0 in v.stride() and v.numel() > 1


def pass_graph(g: GraphFacts, backward: list[fx.Node], fused: set[fx.Node]) -> PassGraph:
    """The ``PassGraph`` of the ``backward`` slot ops (in order): every op but the ``fused`` ones,
    and before each extern op a copy node ``("copy", view, op)`` for each broadcast view it reads."""
    nodes: list[Hashable] = []
    size: dict[Hashable, int] = {}
    reads: dict[Hashable, set[Hashable]] = {}
    made = {n for n in backward if n not in fused}

    def storages(x: fx.Node) -> set[Hashable]:
        o = g.owner.get(x)
        if o is None:
            return set()
        return kernel_reads(o, g.owner, fused) if o in fused else {o}

    for n in backward:
        if n in fused:
            continue
        if not is_fusible_consumer(n):
            for x in dict.fromkeys(i for i in n.all_input_nodes if _broadcast(i)):
                copy = ("copy", x, n)
                nodes.append(copy)
                size[copy], reads[copy] = tensor_bytes(x.meta["val"]), storages(x)
        nodes.append(n)
        size[n] = _allocated(n)
        reads[n] = set().union(*(({("copy", i, n)} if _broadcast(i) and not is_fusible_consumer(n) else storages(i))
                                 for i in n.all_input_nodes)) if n.all_input_nodes else set()
    outs = [o for o in g.nodes[-1].args[0] if isinstance(o, fx.Node)] if g.nodes[-1].op == "output" else []
    inputs = {s: tensor_bytes(s.meta["val"]) for n in nodes for s in reads[n]
              if s not in made and not isinstance(s, tuple) and s in g.forward}
    return PassGraph(nodes, size, {n: {s for s in r if s in made or s in inputs or isinstance(s, tuple)}
                                   for n, r in reads.items()},
                     inputs, {g.owner.get(o) for o in outs} & made)


def _allocated(n: fx.Node) -> int:
    """Bytes op ``n`` allocates: its result's, all of a tuple op's elements, 0 for a view."""
    if is_view(n) or n.target is operator.getitem:
        return 0
    val = n.meta.get("val")
    if isinstance(val, (tuple, list)):
        return sum(tensor_bytes(v) for v in val if isinstance(v, torch.Tensor))
    return tensor_bytes(val) if isinstance(val, torch.Tensor) else 0


def _readers(pg: PassGraph) -> dict[Hashable, list[Hashable]]:
    out: dict[Hashable, list[Hashable]] = {}
    for n in pg.nodes:
        for s in pg.reads[n]:
            out.setdefault(s, []).append(n)
    return out


def estimate(pg: PassGraph, order: list[Hashable]) -> int:
    """The pass's peak estimate of ``order`` (``estimate_peak_memory``): the saved values live from
    step 0, each node's buffer from its step; each freed after its last reader's step (a buffer
    no one reads, after its own), the graph's outputs never."""
    step = {n: t for t, n in enumerate(order)}
    readers = _readers(pg)
    delta = [0] * (len(order) + 1)
    for s, nbytes in pg.inputs.items():
        delta[0] += nbytes
        delta[max(step[r] for r in readers[s]) + 1] -= nbytes
    for n in order:
        delta[step[n]] += pg.size[n]
        if n not in pg.outputs:
            delta[max((step[r] for r in readers.get(n, ())), default=step[n]) + 1] -= pg.size[n]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _preds(pg: PassGraph) -> dict[Hashable, list[Hashable]]:
    made = set(pg.nodes)
    return {n: [s for s in pg.reads[n] if s in made] for n in pg.nodes}


def lpmf(pg: PassGraph) -> list[Hashable]:
    """Inductor's ``topological_sort_lpmf``: among the ready nodes, one whose buffer fits in the
    gap under the peak so far that leaves the least live, else the one that allocates least."""
    preds, readers, index = _preds(pg), _readers(pg), {n: i for i, n in enumerate(pg.nodes)}
    indegree = {n: len(preds[n]) for n in pg.nodes}
    pending = {s: len(readers.get(s, ())) + (s in pg.outputs) for s in [*pg.nodes, *pg.inputs]}
    frees = {n: sum(pg.inputs.get(s, pg.size.get(s, 0)) for s in pg.reads[n] if pending[s] == 1)
             + (pg.size[n] if pending[n] == 0 else 0) for n in pg.nodes}
    live = sum(pg.inputs.values())
    peak = max(live, sum(pg.size[o] for o in pg.outputs))
    ready, order = [n for n in pg.nodes if not indegree[n]], []
    while ready:
        gap = peak - live
        n = min(ready, key=lambda m: (pg.size[m] if pg.size[m] > gap else 0, pg.size[m] - frees[m], index[m]))
        ready.remove(n)
        order.append(n)
        live += pg.size[n]
        peak = max(peak, live)
        live -= frees[n]
        for m in readers.get(n, ()):
            indegree[m] -= 1
            if not indegree[m]:
                ready.append(m)
        for s in pg.reads[n]:
            pending[s] -= 1
            if pending[s] == 1:
                for r in readers[s]:
                    frees[r] += pg.inputs.get(s, pg.size.get(s, 0))
    return order


def bfs(pg: PassGraph) -> list[Hashable]:
    """Inductor's ``topological_sort_bfs``: the ready node whose predecessors ran earliest first."""
    return earliest_inputs_first(pg.nodes, _preds(pg), _readers(pg), {n: i for i, n in enumerate(pg.nodes)})


def dfs(pg: PassGraph) -> list[Hashable]:
    """Inductor's ``topological_sort_dfs``: nodes visited by the bytes they allocate and read
    (saved values and nodes' buffers), smallest first, each after the nodes it reads."""
    preds, index = _preds(pg), {n: i for i, n in enumerate(pg.nodes)}
    weight = {n: pg.size[n] + sum(pg.inputs.get(s, pg.size.get(s, 0)) for s in pg.reads[n]) for n in pg.nodes}

    return inputs_first(pg.nodes, preds, lambda n: (weight[n], index[n]))


def pass_orders(pg: PassGraph) -> dict[str, list[Hashable]]:
    """The pass's candidates in the order it tries them (a tie keeps the earlier)."""
    return {"graph": list(pg.nodes), "lpmf": lpmf(pg), "bfs": bfs(pg), "dfs": dfs(pg)}


@dataclass(frozen=True)
class PlainOrder:
    """The order plain Inductor's pass keeps (its name), every candidate's estimate, and the
    broadcast copies that its CPU code allocates before their readers' slots (``copies_in_runs``)."""

    chosen: str
    estimates: dict[str, int]
    copies: list[tuple[str, str, int]]


def plain_backward_order(joint: fx.GraphModule, forward: set[fx.Node], num_fwd_outputs: int) -> PlainOrder:
    """The order that plain Inductor's peak-memory pass keeps for ``joint``'s backward, laid out
    in place when it is not the graph's own."""
    g = graph_facts(joint, forward, num_fwd_outputs)
    fused = set(inlined_codes(g))
    pg = pass_graph(g, build_schedule(g).backward, fused)
    orders = pass_orders(pg)
    estimates = {name: estimate(pg, order) for name, order in orders.items()}
    chosen = min(estimates, key=estimates.__getitem__)
    if chosen != "graph":
        lay_out(joint, g, [n for n in orders[chosen] if not isinstance(n, tuple)])
    return PlainOrder(chosen, estimates, copies_in_runs(pg, orders[chosen]))


def copies_in_runs(pg: PassGraph, order: list[Hashable]) -> list[tuple[str, str, int]]:
    """(first op, reader, bytes) of each broadcast copy in ``order`` (of ``pg``'s nodes) that
    Inductor's CPU code writes in one function with the generated kernels before it: a run of
    consecutive generated kernels (no extern kernel between) is one C++ function that allocates
    all its buffers as it starts, so the copy lives from the run's first op to its reader (the
    quick MLP under plain compile: the bias gradient's sum and both copies of the expanded seed,
    2 MiB each, in one function)."""
    first, out = None, []
    for n in order:
        if isinstance(n, tuple):
            if first is not None:
                out.append((first.name, n[2].name, pg.size[n]))
        elif loop_op(n):
            first = first or n
        else:
            first = None
    return out
