"""Rewrite: joint graph + Plan -> forward graph and backward graph.

The forward graph saves exactly the STORE (and OFFLOAD) activations, plus the resident inputs and
sizes that backward reads. The backward graph recomputes every RECOMPUTE activation once, just
before the backward slot where the plan's semantics place it (``Problem.recompute_slot``), in
dependency order; views of saved values are re-derived where they are read.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..capture import is_view
from ..errors import PlanError
from ..plan import Decision, Plan
from ..problem import Problem


def saved_nodes(joint: fx.GraphModule, forward_nodes: set, plan: Plan) -> tuple[list, list]:
    """(saved tensors, saved sizes) that the backward graph needs under ``plan``.

    Walks back from every backward op: a forward value that is not saved must be recomputed,
    which is allowed only for views, getitems, tuple ops and RECOMPUTE activations.
    """
    from torch._functorch.partitioners import _is_primal, is_sym_node

    decided = plan.decisions
    saved, saved_sym, seen = [], [], set()
    todo = [n for n in joint.graph.nodes if n.op == "call_function" and n not in forward_nodes]
    todo += [n for n in joint.graph.nodes if n.op == "output"]
    while todo:
        n = todo.pop()
        for i in n.all_input_nodes:
            if i in seen or (i.op == "call_function" and i not in forward_nodes):
                continue
            seen.add(i)
            if i.op == "placeholder":
                if _is_primal(i):
                    (saved_sym if is_sym_node(i) else saved).append(i)
                continue
            if n.op == "output" and i in forward_nodes:
                continue  # forward outputs: produced by the forward graph, not read by backward
            d = decided.get(i.name)
            if d in (Decision.STORE, Decision.OFFLOAD):
                saved.append(i)
            elif is_sym_node(i):
                saved_sym.append(i)
            elif d is Decision.RECOMPUTE or is_view(i) or i.target is operator.getitem or not isinstance(
                i.meta.get("val"), torch.Tensor
            ):
                todo.append(i)
            elif _is_forward_output(joint, i):
                saved.append(i)  # live anyway: the user holds it
            else:
                raise PlanError(f"backward reads {i.name!r}, which the plan neither stores nor recomputes")
    order = {n: k for k, n in enumerate(joint.graph.nodes)}
    return sorted(saved, key=order.__getitem__), sorted(saved_sym, key=order.__getitem__)


def _is_forward_output(joint: fx.GraphModule, n: fx.Node) -> bool:
    return any(u.op == "output" for u in n.users)


def place_recomputation(bw: fx.GraphModule, problem: Problem, plan: Plan, backward_order: list[str]) -> fx.GraphModule:
    """Order the backward graph: each backward slot's op after the recomputations placed there."""
    at: dict[str, list[str]] = {}
    slots = problem.slots
    for name in plan.names(Decision.RECOMPUTE):
        at.setdefault(slots[problem.recompute_slot(name)].name, []).append(name)
    by_name = {n.name: n for n in bw.graph.nodes}
    order = {n: k for k, n in enumerate(bw.graph.nodes)}
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in bw.graph.find_nodes(op="placeholder"):
        env[n] = new.node_copy(n, lambda x: env[x])

    def insert(node: fx.Node) -> None:
        todo, found = [node], []
        while todo:
            v = todo.pop()
            if v in env or v in found:
                continue
            found.append(v)
            todo.extend(v.all_input_nodes)
        for v in sorted(found, key=order.__getitem__):
            env[v] = new.node_copy(v, lambda x: env[x])

    for slot_name in backward_order:
        for r in at.get(slot_name, ()):
            if r in by_name:
                insert(by_name[r])
        if slot_name in by_name:
            insert(by_name[slot_name])
    for n in bw.graph.nodes:
        insert(n)
    new.lint()
    return fx.GraphModule(bw, new)


def apply_plan(
    joint: fx.GraphModule,
    *,
    forward_nodes: set,
    problem: Problem,
    plan: Plan,
    backward_order: list[str],
    num_fwd_outputs: int,
    static_lifetime_input_nodes,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Forward and backward GraphModules that realise ``plan`` (both pass ``graph.lint()``)."""
    from torch._functorch import partitioners as P

    saved, saved_sym = saved_nodes(joint, forward_nodes, plan)
    fw, bw = P._extract_fwd_bwd_modules(
        joint,
        saved,
        saved_sym_nodes=saved_sym,
        num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_nodes=static_lifetime_input_nodes,
    )
    # The extraction copies every op whose inputs are available, random ones included, and DCE
    # keeps unused random ops under fallback_random: drop them, or backward would re-draw.
    bw.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure(impure_random=False))
    bw.recompile()
    if P.has_recomputable_ops(joint) and P.has_recomputable_rng_ops(joint):
        fw, bw = P.functionalize_rng_ops(joint, fw, bw, len(saved_sym))
    bw = place_recomputation(bw, problem, plan, backward_order)
    fw = P.raise_getitems(fw)
    bw = P.raise_getitems(bw)
    fw = P.thread_graphsafe_rng_from_hops(fw, is_backward=False)
    bw = P.thread_graphsafe_rng_from_hops(bw, is_backward=True)
    fw.graph.lint()
    bw.graph.lint()
    return fw, bw
