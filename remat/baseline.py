"""The "no remat" baseline that a ratio budget refers to: plain ``torch.compile``.

Plain ``torch.compile`` partitions the joint graph with Inductor's default partitioner,
``min_cut_rematerialization_partition``: it saves a min-cut set of forward values and recomputes
the rest (cheap pointwise ops) in the backward. ``plain_compile_plan`` runs that partitioner on a
copy of the joint graph, reads the values its forward graph saves, and turns them into a remat
``Plan`` over the same ``Problem``: STORE for every activation whose storage is saved (a saved
view saves its base's storage), RECOMPUTE for every other one the backward needs. Its simulated
peak (``plain_compile_peak``) is the model's figure for plain ``torch.compile``.

Approximate by construction: plain Inductor also reuses freed buffers and reorders kernels for
peak memory, both of which remat turns off under a plan. What min-cut saves that the ``Problem``
has no activation for (a fused pointwise value that remat folds into its readers) is not in the
plan: its activation inputs are stored instead (``folded_inputs``), and ``plan.info`` lists it
and its bytes. A value that min-cut saves though the joint graph makes it in the backward (a
tangent-independent backward op, which the partition moves into the forward: Whisper's encoder
LayerNorm's normalized input, recomputed by its backward) is no activation either: the plain
Problem (``plain_compile_problem``) holds its bytes from the forward slot where its last forward
input is made to its last backward reader (``saved_backward_values``). Plain Inductor orders its
kernels, the copies that extern kernels read included, by its own peak-memory pass (off under
remat's plans): ``remat.planning.plain_compile_report`` lays the backward out in the order that
pass keeps (``remat.plain_order``) and holds the copies its CPU code writes with the kernels
before them from there (``plain_compile_problem``'s ``copies``: on the quick MLP both 2 MiB copies
of the expanded loss seed, with the bias gradient in the backward's first kernel).
``plain_compile_peak`` simulates the plan on the joint graph as it is ordered.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.fx as fx

from .capture import Captured
from .joint_graph import is_fusible_consumer, is_pointwise, is_view, readers_through_views
from .cost import tensor_bytes
from .plan import Decision, Plan
from .problem import Problem
from .simulate import simulate

__all__ = ["copy_graph", "folded_inputs", "min_cut_saved_values", "plain_compile_peak", "plain_compile_plan",
           "plain_compile_problem", "plan_from_saved", "saved_backward_values", "saved_outputs", "storage_name"]


def copy_graph(joint: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``joint`` that the partitioner may mutate (node names and meta preserved)."""
    graph = fx.Graph()
    out = graph.graph_copy(joint.graph, {})
    graph.output(out)
    return fx.GraphModule(joint, graph)


def min_cut_saved_values(
    joint: fx.GraphModule, num_fwd_outputs: int, static_lifetime_input_indices: list[int] | None = None
) -> list[str]:
    """Names of the joint-graph nodes that Inductor's default partitioner saves for the backward
    (tensors only), read from the outputs of the forward graph it builds from a copy of ``joint``."""
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    fw, _ = min_cut_rematerialization_partition(
        copy_graph(joint), None, compiler="inductor", num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_indices=static_lifetime_input_indices,
    )
    return saved_outputs(fw, num_fwd_outputs)


def saved_outputs(forward: fx.GraphModule, num_fwd_outputs: int) -> list[str]:
    """Names of the tensor values that a partitioned forward graph returns after its
    ``num_fwd_outputs`` user outputs: the values it saves for the backward."""
    (outs,) = [n.args[0] for n in forward.graph.find_nodes(op="output")]
    return [o.name for o in outs[num_fwd_outputs:]
            if isinstance(o, fx.Node) and isinstance(o.meta.get("val"), torch.Tensor)]


def storage_name(joint: fx.GraphModule, name: str) -> str:
    """The node owning the memory of node ``name`` (through views), as remat names storages."""
    n = _node(joint, name)
    while n is not None and is_view(n):
        base = n.args[0]
        n = base.args[0] if n.target is operator.getitem else base
    return n.name if n is not None else name


def _node(joint: fx.GraphModule, name: str) -> fx.Node | None:
    return next((n for n in joint.graph.nodes if n.name == name), None)


def plain_compile_plan(
    joint: fx.GraphModule, captured: Captured, num_fwd_outputs: int,
    static_lifetime_input_indices: list[int] | None = None,
) -> Plan:
    """The plan that plain ``torch.compile``'s min-cut partition amounts to on ``captured``'s
    Problem (see the module docstring). ``joint`` is the graph ``captured`` was made from; it is
    not changed. ``plan.info`` lists what the plan could not represent."""
    saved = min_cut_saved_values(joint, num_fwd_outputs, static_lifetime_input_indices)
    storages = {storage_name(joint, s) for s in saved}
    resident = {n.name for n in joint.graph.find_nodes(op="placeholder")}
    storages |= folded_inputs(joint, captured, storages)
    plan = plan_from_saved(captured, storages - resident)
    plan.info["saved_not_activations_bytes"] = sum(
        tensor_bytes(_node(joint, s).meta["val"]) for s in plan.info["saved_not_activations"])
    return plan


def plan_from_saved(captured: Captured, saved_storages: set[str]) -> Plan:
    """STORE the needed activations in ``saved_storages`` (and those that cannot be recomputed),
    RECOMPUTE the other needed ones; the needed set grows through the inputs of recomputed ones."""
    problem = captured.problem
    decisions: dict[str, Decision] = {}
    forced: list[str] = []
    todo = [a.name for a in problem.activations if a.backward_uses]
    while todo:
        name = todo.pop()
        if name in decisions:
            continue
        a = problem.activation(name)
        if name in saved_storages or not a.recomputable:
            decisions[name] = Decision.STORE
            if name not in saved_storages:
                forced.append(name)
        else:
            decisions[name] = Decision.RECOMPUTE
            todo.extend(a.inputs)
    known = {a.name for a in problem.activations}
    info = {
        "min_cut_saved": sorted(saved_storages),
        "saved_not_activations": sorted(s for s in saved_storages if s not in known),
        "saved_not_needed": sorted(s for s in saved_storages if s in known and s not in decisions),
        "stored_not_saved": sorted(forced),
    }
    return Plan(decisions, solver="plain_compile", status="heuristic", info=info)


def folded_inputs(joint: fx.GraphModule, captured: Captured, storages: set[str]) -> set[str]:
    """The activations that the folded values among ``storages`` are computed from (through other
    folded values and views): min-cut saves such a value (Llama's ``log`` of the log-softmax),
    which the Problem has no activation for; its backward readers recompute it from these, so
    they are stored, as Inductor's code holds the value's inputs or the value itself."""
    known = {a.name for a in captured.problem.activations}
    folded = set(captured.folded)
    found, todo = set(), [_node(joint, s) for s in storages if s in folded and s not in known]
    seen = set()
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        for x in n.all_input_nodes:
            owner = storage_name(joint, x.name)
            if owner in known:
                found.add(owner)
            elif owner in folded:
                todo.append(_node(joint, owner))
    return found


def plain_compile_peak(
    joint: fx.GraphModule, captured: Captured, num_fwd_outputs: int,
    static_lifetime_input_indices: list[int] | None = None,
) -> int:
    """Simulated peak bytes of ``plain_compile_plan`` on ``plain_compile_problem``, with the joint
    graph in the order it has (``remat.planning.plain_compile_report`` predicts plain torch.compile
    in the order plain Inductor keeps, with its copies)."""
    plan = plain_compile_plan(joint, captured, num_fwd_outputs, static_lifetime_input_indices)
    return simulate(plain_compile_problem(joint, captured.problem, plan), plan).peak_bytes


def plain_compile_problem(joint: fx.GraphModule, problem: Problem, plan: Plan,
                          copies: Iterable[tuple[str, str, int]] = ()) -> Problem:
    """``problem`` (captured from ``joint``) with the bytes of the backward values that
    ``plan``'s min-cut saves (``saved_backward_values``) added to the slots that hold them, and
    those of the broadcast ``copies`` (first op, reader, bytes: ``remat.plain_order.copies_in_runs``)
    from their first op's slot to their reader's (whose own slot counts them already)."""
    extra = [0] * len(problem.slots)
    slot = {s.name: i for i, s in enumerate(problem.slots)}
    held = [(slot[a], slot[b] - 1, nbytes) for a, b, nbytes in copies if a in slot and b in slot]
    for first, last, nbytes in saved_backward_values(joint, problem, plan.info.get("min_cut_saved", ())) + held:
        for t in range(first, last + 1):
            extra[t] += nbytes
    if not any(extra):
        return problem
    slots = tuple(replace(s, fixed_bytes=s.fixed_bytes + e) for s, e in zip(problem.slots, extra))
    return replace(problem, slots=slots)


def saved_backward_values(joint: fx.GraphModule, problem: Problem, saved: Iterable[str]) -> list[tuple[int, int, int]]:
    """(first slot, last slot, bytes) of each of the ``saved`` storages that ``problem``'s schedule
    runs in the backward: min-cut moves a backward op that reads no tangent into the forward and
    saves it (Whisper's encoder LayerNorm backward's ``(add_16 - mean) * rsqrt``); plain's forward
    computes it with its last forward input, and its backward holds it to its last reader (to
    its own slot only, when the Problem allocates it there: a reader is no fusible consumer)."""
    slot = {s.name: i for i, s in enumerate(problem.slots)}
    out = []
    for name in sorted(saved):
        n = _node(joint, name)
        if slot.get(name, -1) < problem.num_forward or n is None or not isinstance(n.meta.get("val"), torch.Tensor):
            continue
        readers = readers_through_views(n)
        last = max((slot[r.name] for r in readers if r.name in slot), default=slot[name])
        if not (is_pointwise(n) and all(is_fusible_consumer(r) for r in readers)):
            last = slot[name] - 1  # a buffer of the Problem's from its slot on
        out.append((_last_forward_input(joint, n, slot, problem.num_forward), last, int(tensor_bytes(n.meta["val"]))))
    return out


def _last_forward_input(joint: fx.GraphModule, n: fx.Node, slot: dict[str, int], num_forward: int) -> int:
    """The latest forward slot that backward op ``n`` reads, itself or through the backward ops
    it reads (which min-cut moves into the forward with it)."""
    latest, todo, seen = 0, [n], {n}
    while todo:
        for x in todo.pop().all_input_nodes:
            owner = _node(joint, storage_name(joint, x.name))
            if owner is None or owner in seen:
                continue
            seen.add(owner)
            t = slot.get(owner.name)
            if t is not None and t < num_forward:
                latest = max(latest, t)
            elif t is not None:
                todo.append(owner)
    return latest
