"""Order the joint graph's backward ops for a low peak: a pass that runs before capture.

Plain torch.compile's Inductor reorders each compiled graph's kernels for peak memory
(``torch/_inductor/memory.py``, ``reorder_for_peak_memory``). remat turns that reordering off
under its plans (it counts an offloaded value's host bytes as device bytes, and the model would
not know the order it picks), so remat orders the backward itself, on the joint graph, before
capture: the ILP, the simulator and the rewrite then all see one order, and Inductor keeps it.

The candidates are the joint graph's own order (AOTAutograd's, which mimics the autograd engine)
and the three greedy topological orders of the backward ops that Inductor tries: LPMF (least
peak memory first), BFS (ops whose inputs were made earliest first) and DFS (ops that read and
write the fewest bytes first), computed here on the ATen ops with a simple memory model (an op
allocates its result, a storage is freed after its last backward reader), each then with its
tangent-independent ops just before their first reader (``just_in_time``). ``peak_of`` scores
each candidate (the planner passes remat's simulated store-all peak, which knows fusion); the
lowest wins where it saves more than ``MIN_GAIN`` of the graph's own order's peak. A backward
with an op that has side effects keeps its order.
"""

from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Callable

import torch.fx as fx

from ..joint_graph import GraphFacts, is_view, storage_owners
from ..cost import tensor_bytes

# the share of the graph's own order's peak that another order must save to be kept: less is
# within what the model can miss of Inductor's code, and a new order can change its kernels
MIN_GAIN = 0.005

__all__ = ["GREEDY", "MIN_GAIN", "BackwardDag", "Ordered", "backward_dag", "bfs_order", "dfs_order",
           "earliest_inputs_first", "inputs_first", "just_in_time", "lay_out", "lpmf_order", "order_backward"]


@dataclass(frozen=True)
class BackwardDag:
    """The backward ops of a joint graph as a memory-planning DAG (plain data over fx nodes)."""

    ops: list[fx.Node]  # backward ops in graph order
    preds: dict[fx.Node, list[fx.Node]]  # the backward ops each op reads
    succs: dict[fx.Node, list[fx.Node]]  # the backward ops that read each op
    size: dict[fx.Node, int]  # bytes each op allocates (0 for a view or an element of a tuple op)
    reads: dict[fx.Node, set[fx.Node]]  # storages each op reads (through views)
    readers: dict[fx.Node, set[fx.Node]]  # backward ops that read each storage
    nbytes: dict[fx.Node, int]  # bytes of each storage that backward reads
    kept: set[fx.Node]  # storages never freed in the backward: outputs, tangents, parameters, inputs
    # ops that read no tangent, directly or through the backward ops they read (a constant, a view
    # or a product of saved values): run just before their first reader, as AOTAutograd runs them
    deferred: set[fx.Node]
    index: dict[fx.Node, int]  # graph position of each op (ties)


@dataclass(frozen=True)
class Ordered:
    """The order ``order_backward`` kept: its name and the score of every candidate tried."""

    chosen: str
    peaks: dict[str, int]
    floors: dict[str, int] = field(default_factory=dict)  # the floors compared, when they were


def order_backward(joint: fx.GraphModule, backward: set[fx.Node], peak_of: Callable[[], int],
                   floor_of: Callable[[], int] | None = None) -> Ordered:
    """Reorder ``joint``'s ``backward`` ops (in place) to the candidate order whose ``peak_of()``
    (called with ``joint`` in that order) is lowest, when it saves more than ``MIN_GAIN`` of the
    graph's own order's and, given ``floor_of``, its floor is not above the graph's own order's
    (the order that lowers the store-all peak can raise the smallest peak any plan reaches:
    transformers GPT-2's LPMF order, 31.3 MiB measured at "min" where the graph's order reached
    29.3); else, and when the backward has an op with side effects, keep the graph's own order."""
    nodes = list(joint.graph.nodes)
    peaks = {"graph": peak_of()}
    if any(n.is_impure() for n in backward):
        return Ordered("graph", peaks)
    dag = backward_dag(nodes, backward)
    orders = {name: just_in_time(dag, make(dag)) for name, make in GREEDY.items()}
    for name, order in orders.items():
        _place(joint, order)
        peaks[name] = peak_of()
    best = min(peaks, key=peaks.__getitem__)
    chosen = best if peaks[best] < (1 - MIN_GAIN) * peaks["graph"] else "graph"
    own = [n for n in nodes if n.op != "output"]
    floors = {}
    if chosen != "graph" and floor_of is not None:
        _place(joint, own)
        floors["graph"] = floor_of()
        _place(joint, orders[chosen])
        floors[chosen] = floor_of()
        chosen = chosen if floors[chosen] <= floors["graph"] else "graph"
    _place(joint, orders.get(chosen) or own)
    return Ordered(chosen, peaks, floors)


def lay_out(joint: fx.GraphModule, g: GraphFacts, order: list[fx.Node]) -> None:
    """Move ``g``'s backward ops (in place) to just before the output: ``order``'s, each after the
    backward ops it reads that are not placed yet (inlined values, views, in graph order) and
    with a tuple op's elements right after it, then the rest in graph order."""
    out, done = joint.graph.output_node(), set()

    def place(n: fx.Node) -> None:
        todo, pulled = [n], []
        while todo:
            v = todo.pop()
            if v in done or v not in g.backward:
                continue
            done.add(v)
            pulled.append(v)
            todo.extend(v.all_input_nodes)
        for v in sorted(pulled, key=g.index.__getitem__):
            out.prepend(v)
            for u in v.users:  # a tuple op's elements right after it
                if u.target is operator.getitem and u not in done and u in g.backward:
                    done.add(u)
                    out.prepend(u)

    for n in order:
        place(n)
    for n in g.nodes:
        if n in g.backward and n not in done:
            place(n)
    joint.graph.lint()
    joint.recompile()


def _place(joint: fx.GraphModule, order: list[fx.Node]) -> None:
    """Move ``order``'s nodes, in that order, to just before the graph's output."""
    out = joint.graph.output_node()
    for n in order:
        out.prepend(n)
    joint.graph.lint()
    joint.recompile()


def backward_dag(nodes: list[fx.Node], backward: set[fx.Node]) -> BackwardDag:
    """The DAG of the ``backward`` ops among ``nodes`` (a joint graph's, in order)."""
    owner = storage_owners(nodes)
    ops = [n for n in nodes if n in backward]
    preds = {n: [i for i in dict.fromkeys(n.all_input_nodes) if i in backward] for n in ops}
    succs: dict[fx.Node, list[fx.Node]] = {n: [] for n in ops}
    for n in ops:
        for p in preds[n]:
            succs[p].append(n)
    reads = {n: {owner[i] for i in n.all_input_nodes if owner.get(i) is not None} for n in ops}
    readers: dict[fx.Node, set[fx.Node]] = {}
    for n in ops:
        for s in reads[n]:
            readers.setdefault(s, set()).add(n)
    nbytes = {s: tensor_bytes(s.meta.get("val")) for s in readers}
    return BackwardDag(ops, preds, succs, {n: _allocated(n, owner) for n in ops}, reads, readers, nbytes,
                       _kept(nodes, backward, owner), _deferred(ops, preds), {n: k for k, n in enumerate(ops)})


def _deferred(ops: list[fx.Node], preds: dict[fx.Node, list[fx.Node]]) -> set[fx.Node]:
    """The ops (``ops`` in graph order) that read no tangent, directly or through the ops they read."""
    from torch._functorch.partitioners import _is_tangent

    deferred: set[fx.Node] = set()
    for n in ops:
        if not any(_is_tangent(i) for i in n.all_input_nodes) and all(p in deferred for p in preds[n]):
            deferred.add(n)
    return deferred


def just_in_time(dag: BackwardDag, order: list[fx.Node]) -> list[fx.Node]:
    """``order`` with each deferred op that an op reads moved to just before the first op that
    reads it, directly or through other deferred ops (those in graph order): what AOTAutograd's
    order does with them, and what Inductor does with a constant it inlines into its reader."""
    done: set[fx.Node] = set()
    result: list[fx.Node] = []
    for n in order:
        if n in done or (n in dag.deferred and dag.succs[n]):
            continue
        todo, pulled = [n], []
        while todo:
            v = todo.pop()
            if v in done:
                continue
            done.add(v)
            pulled.append(v)
            todo.extend(p for p in dag.preds[v] if p in dag.deferred)
        result.extend(sorted(pulled, key=dag.index.__getitem__))
    return result


def _allocated(n: fx.Node, owner: dict) -> int:
    """Bytes op ``n`` allocates: its result's, all of a tuple op's elements, 0 for a view."""
    if is_view(n) or n.target is operator.getitem:
        return 0
    val = n.meta.get("val")
    if isinstance(val, (tuple, list)):
        return sum(tensor_bytes(v) for v in val)
    return tensor_bytes(val) if owner.get(n) is n else 0


def _kept(nodes: list[fx.Node], backward: set[fx.Node], owner: dict) -> set[fx.Node]:
    """Storages that the backward never frees: the graph's outputs, and the inputs that are not
    forward values (parameters, inputs, tangents)."""
    outputs = nodes[-1].args[0] if nodes and nodes[-1].op == "output" else ()
    kept = {owner.get(o) for o in outputs if isinstance(o, fx.Node)}
    kept |= {n for n in nodes if n.op == "placeholder"}
    kept.discard(None)
    return kept


def lpmf_order(dag: BackwardDag) -> list[fx.Node]:
    """Least peak memory first (Inductor's ``topological_sort_lpmf``): among the ready ops, one
    that fits under the peak so far and leaves the least live, else the one that allocates least."""
    indegree = {n: len(dag.preds[n]) for n in dag.ops}
    ready = {n for n in dag.ops if not indegree[n]}
    pending = {s: len(r) + (s in dag.kept) for s, r in dag.readers.items()}
    frees = {n: sum(dag.nbytes[s] for s in dag.reads[n] if pending[s] == 1) for n in dag.ops}
    live = sum(dag.nbytes[s] for s in dag.readers if s not in dag.kept and s not in dag.size)
    peak, order, done = live, [], set()
    while ready:
        gap = peak - live
        n = min(ready, key=lambda m: (dag.size[m] if dag.size[m] > gap else 0, dag.size[m] - frees[m], dag.index[m]))
        ready.remove(n)
        order.append(n)
        done.add(n)
        live += dag.size[n]
        peak = max(peak, live)
        live -= frees[n] + (dag.size[n] if n not in dag.readers and n not in dag.kept else 0)
        for s in dag.reads[n]:
            pending[s] -= 1
            if pending[s] == 1:
                for r in dag.readers[s] - done:
                    frees[r] += dag.nbytes[s]
        for m in dag.succs[n]:
            indegree[m] -= 1
            if not indegree[m]:
                ready.add(m)
    return order


def bfs_order(dag: BackwardDag) -> list[fx.Node]:
    """Inductor's ``topological_sort_bfs``: the ready op whose inputs ran earliest first."""
    return earliest_inputs_first(dag.ops, dag.preds, dag.succs, dag.index)


def earliest_inputs_first(nodes: Iterable[Hashable], preds: Mapping[Hashable, Iterable[Hashable]],
                          readers: Mapping[Hashable, Iterable[Hashable]],
                          index: Mapping[Hashable, int]) -> list[Hashable]:
    """``nodes`` in the walk of Inductor's ``topological_sort_bfs``: the ready node (its ``preds``
    run) whose predecessors ran earliest first, ties by ``index`` (unique per node)."""
    indegree = {n: len(preds[n]) for n in nodes}
    position: dict = {}

    def entry(n: Hashable) -> tuple:
        return sorted({position[p] for p in preds[n]}), index[n], n

    heap = [entry(n) for n in nodes if not indegree[n]]
    heapq.heapify(heap)
    order = []
    while heap:
        n = heapq.heappop(heap)[2]
        position[n] = len(order)
        order.append(n)
        for m in readers.get(n, ()):
            indegree[m] -= 1
            if not indegree[m]:
                heapq.heappush(heap, entry(m))
    return order


def dfs_order(dag: BackwardDag) -> list[fx.Node]:
    """Inductor's ``topological_sort_dfs``: ops visited by the bytes they read and write,
    smallest first, each after the ops it reads (visited the same way)."""
    weight = {n: dag.size[n] + sum(dag.nbytes[s] for s in dag.reads[n]) for n in dag.ops}
    return inputs_first(dag.ops, dag.preds, lambda n: (weight[n], dag.index[n]))


def inputs_first(nodes: Iterable[Hashable], preds: Mapping[Hashable, Iterable[Hashable]],
                 key: Callable[[Hashable], Any]) -> list[Hashable]:
    """``nodes`` visited smallest ``key`` first, each after what it reads (``preds``, visited the
    same way, depth first): the walk of Inductor's ``topological_sort_dfs``."""
    seen: set = set()
    order: list = []
    for root in sorted(nodes, key=key):
        stack = [(root, iter(sorted(preds[root], key=key)))] if root not in seen else []
        seen.add(root)
        while stack:
            n, todo = stack[-1]
            p = next((p for p in todo if p not in seen), None)
            if p is None:
                order.append(n)
                stack.pop()
                continue
            seen.add(p)
            stack.append((p, iter(sorted(preds[p], key=key))))
    return order


# the greedy topological orders that Inductor's ``reorder_for_peak_memory`` tries, by name
GREEDY = {"lpmf": lpmf_order, "bfs": bfs_order, "dfs": dfs_order}
