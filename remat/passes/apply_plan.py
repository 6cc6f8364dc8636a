"""Rewrite: joint graph + Plan -> forward graph and backward graph.

The forward graph saves exactly the STORE (and OFFLOAD) activations, plus the resident inputs and
sizes that backward reads. The backward graph recomputes every RECOMPUTE activation once, just
before the first backward op that needs it, directly or through another recomputation (the
just-in-time placement that ``remat.problem`` models), in dependency order; views of saved values
are re-derived where they are read. A recomputed random value replays the forward's draw (a
dropout mask from the generator state saved before the dropout, Inductor's random prims from
their saved seeds); a backward that would draw fresh numbers is refused (``remat.passes.rng_replay``).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..joint_graph import is_view
from . import offload_ops, rng_replay  # register torch.ops.remat.*, which the rewritten graphs call
from ..errors import PlanError
from ..plan import Decision, Plan
from ..problem import Problem
from ..transfers import Transfers


def saved_nodes(
    joint: fx.GraphModule, forward_nodes: set, plan: Plan, folded: set[str], num_fwd_outputs: int
) -> tuple[list, list]:
    """(saved tensors, saved sizes) that the backward graph needs under ``plan``.

    Walks back from every value that backward reads: the inputs of backward ops and the
    gradients it returns (the joint graph's outputs after the first ``num_fwd_outputs``). A
    forward value that is not saved must be recomputed, which is allowed only for views,
    getitems, tuple ops, RECOMPUTE activations and the fused values that capture folded into
    their readers. A forward output that backward reads is saved unless the plan recomputes it.
    A size that backward reads from forward values alone (``sym_size``) is saved as a size.
    """
    from torch._functorch.partitioners import _is_primal, is_sym_node

    decided = plan.decisions
    saved, seen = [], set()
    backward_ops = [n for n in joint.graph.nodes if n.op == "call_function" and n not in forward_nodes]
    saved_sym = [n for n in backward_ops if _size_of_forward_values(n, forward_nodes)]
    sizes = set(saved_sym)
    todo = [i for n in backward_ops if n not in sizes for i in n.all_input_nodes]
    todo += [g for g in joint.graph.output_node().args[0][num_fwd_outputs:] if isinstance(g, fx.Node)]
    while todo:
        i = todo.pop()
        if i in seen or (i.op == "call_function" and i not in forward_nodes):
            continue
        seen.add(i)
        if i.op == "placeholder":
            if _is_primal(i):
                (saved_sym if is_sym_node(i) else saved).append(i)
            continue
        d = decided.get(i.name)
        if d in (Decision.STORE, Decision.OFFLOAD):
            saved.append(i)
        elif is_sym_node(i):
            saved_sym.append(i)
        elif d is None and not is_view(i) and _is_forward_output(joint, i):
            saved.append(i)  # live anyway: the user holds it (an element of a tuple op's result too)
        elif d is Decision.RECOMPUTE or i.name in folded or is_view(i) or i.target is operator.getitem or not isinstance(
            i.meta.get("val"), torch.Tensor
        ):
            todo += i.all_input_nodes
        else:
            raise PlanError(f"backward reads {i.name!r}, which the plan neither stores nor recomputes")
    order = {n: k for k, n in enumerate(joint.graph.nodes)}
    return sorted(saved, key=order.__getitem__), sorted(saved_sym, key=order.__getitem__)


def _size_of_forward_values(n: fx.Node, forward_nodes: set) -> bool:
    """Whether backward op ``n`` is a size (a SymInt) read from forward values and primals alone,
    such as ``sym_size(view, 0)`` of a view the forward made (under dynamic shapes,
    cross-entropy's backward reads the logits' rows so): the forward computes it and saves the
    size, as torch's default partition does, not the tensor, which the plan need not keep."""
    from torch._functorch.partitioners import _is_primal, is_sym_node

    inputs = n.all_input_nodes
    return is_sym_node(n) and bool(inputs) and all(i in forward_nodes or _is_primal(i) for i in inputs)


def _is_forward_output(joint: fx.GraphModule, n: fx.Node) -> bool:
    """Whether the forward returns ``n`` or a view of it (the caller then holds its storage)."""
    return any(u.op == "output" or (is_view(u) and _is_forward_output(joint, u)) for u in n.users)


def add_offload(fw: fx.GraphModule, bw: fx.GraphModule, plan: Plan, problem: Problem, transfers: Transfers) -> None:
    """Move each OFFLOAD activation to host and back where ``transfers`` schedules it.

    Forward: ``to_host`` right after the value's last forward use (slot ``last_forward_use``),
    ``wait_copy`` and ``free_`` (of the device copy) after slot ``free_after``; the host copy is
    what the forward saves. Backward: ``to_device`` before slot ``prefetch_at``, ``wait_copy`` just
    before the first op that reads the value. Slots are found by name; where a slot's op is not in
    a graph, the next slot that is stands in for it.
    """
    wanted = plan.names(Decision.OFFLOAD)
    if not wanted:
        return
    names = [s.name for s in problem.slots]
    f_nodes = {n.name: n for n in fw.graph.nodes}
    b_nodes = {n.name: n for n in bw.graph.nodes}
    f_order = {n: i for i, n in enumerate(fw.graph.nodes)}
    output = fw.graph.output_node()

    def slot_node(nodes: dict, t: int, stop: int):
        for k in range(t, stop):
            if names[k] in nodes:
                return nodes[names[k]]
        return None

    nf = problem.num_forward
    host_of: dict[str, fx.Node] = {}
    for name in wanted:
        x = f_nodes.get(name)
        if x is None or x not in output.args[0]:
            raise PlanError(f"OFFLOAD {name!r} is not a saved output of the forward graph")
        a = problem.activation(name)
        after = [x] + [u for u in x.users if u is not output]
        lfu = slot_node(f_nodes, a.last_forward_use, a.last_forward_use + 1)
        issue = max(after + ([lfu] if lfu is not None else []), key=f_order.__getitem__)
        free = slot_node(f_nodes, transfers.free_after[name], nf)
        free = issue if free is None or f_order[free] < f_order[issue] else free
        with fw.graph.inserting_after(issue):
            copy = fw.graph.call_function(offload_ops.TO_HOST, (x,), name=f"{name}_to_host")
        copy.meta["val"] = x.meta["val"].to("cpu")
        with fw.graph.inserting_after(copy if free is issue else free):
            done = fw.graph.call_function(offload_ops.WAIT_COPY, (copy,), name=f"{name}_on_host")
        done.meta["val"] = copy.meta["val"]
        with fw.graph.inserting_after(done):
            fw.graph.call_function(offload_ops.FREE, (x, done), name=f"{name}_free")
        host_of[name] = done
    output.update_arg(0, tuple(host_of.get(n.name, n) if isinstance(n, fx.Node) else n for n in output.args[0]))
    fw.recompile()

    b_order = {n: i for i, n in enumerate(bw.graph.nodes)}
    for name in wanted:
        ph = b_nodes.get(name)
        if ph is None or ph.op != "placeholder" or not ph.users:
            raise PlanError(f"OFFLOAD {name!r} is not read by the backward graph")
        val = ph.meta["val"]
        ph.meta["val"] = host_of[name].meta["val"]
        first = min(ph.users, key=b_order.__getitem__)
        start = slot_node(b_nodes, transfers.prefetch_at[name], len(names))
        start = first if start is None or b_order[start] > b_order[first] else start
        with bw.graph.inserting_before(start):
            load = bw.graph.call_function(
                offload_ops.TO_DEVICE, (ph, val.device, list(val.shape), list(val.stride())), name=f"{name}_to_device"
            )
        load.meta["val"] = val
        with bw.graph.inserting_before(first):
            back = bw.graph.call_function(offload_ops.WAIT_COPY, (load,), name=f"{name}_on_device")
        back.meta["val"] = val
        for u in list(ph.users):
            if u is not load and u is not back:
                u.replace_input_with(ph, back)
    bw.recompile()


def apply_plan(
    joint: fx.GraphModule,
    *,
    forward_nodes: set,
    plan: Plan,
    folded: set[str],
    num_fwd_outputs: int,
    static_lifetime_input_nodes,
    problem: Problem,
    transfers: Transfers | None,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Forward and backward GraphModules that realise ``plan`` (both pass ``graph.lint()``)."""
    from torch._functorch import partitioners as P

    saved, saved_sym = saved_nodes(joint, forward_nodes, plan, folded, num_fwd_outputs)
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
    rng_replay.check_backward(bw)
    rng_replay.share_forward_masks(fw)
    if P.has_recomputable_ops(joint) and P.has_recomputable_rng_ops(joint):
        fw, bw = P.functionalize_rng_ops(joint, fw, bw, len(saved_sym))
    bw = P.reordering_to_mimic_autograd_engine(bw)  # each recomputation just before its first need
    if transfers is not None:
        add_offload(fw, bw, plan, problem, transfers)
    fw = P.raise_getitems(fw)
    bw = P.raise_getitems(bw)
    fw = P.thread_graphsafe_rng_from_hops(fw, is_backward=False)
    bw = P.thread_graphsafe_rng_from_hops(bw, is_backward=True)
    fw.graph.lint()
    bw.graph.lint()
    return fw, bw
