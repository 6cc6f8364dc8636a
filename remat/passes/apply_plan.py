"""Rewrite: joint graph + Plan -> forward graph and backward graph.

The forward graph saves exactly the STORE (and OFFLOAD) activations, plus the resident inputs and
sizes that backward reads. The backward graph recomputes every RECOMPUTE activation once, just
before the first backward op that needs it, directly or through another recomputation (the
just-in-time placement that ``remat.problem`` models), in dependency order; views of saved values
are re-derived where they are read.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..capture import is_view
from ..errors import PlanError
from ..plan import Decision, Plan


def saved_nodes(joint: fx.GraphModule, forward_nodes: set, plan: Plan, folded: set[str]) -> tuple[list, list]:
    """(saved tensors, saved sizes) that the backward graph needs under ``plan``.

    Walks back from every backward op: a forward value that is not saved must be recomputed,
    which is allowed only for views, getitems, tuple ops, RECOMPUTE activations and the fused
    values that capture folded into their readers.
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
            elif d is Decision.RECOMPUTE or i.name in folded or is_view(i) or i.target is operator.getitem or not isinstance(
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


def add_offload(fw: fx.GraphModule, bw: fx.GraphModule, plan: Plan, num_fwd_outputs: int, static_inputs) -> None:
    """Copy each OFFLOAD activation to host after its last forward use and back before its first
    backward use, with torch's activation-offloading pass. On CUDA the copies run on a side stream
    into pinned host memory, the forward waits for them at its end and the backward prefetches each
    value early to overlap compute; elsewhere they are plain synchronous ``device_put`` copies."""
    from torch._functorch import config as functorch_config
    from torch._functorch._activation_offloading.activation_offloading import enable_activation_offloading

    wanted = set(plan.names(Decision.OFFLOAD))
    if not wanted:
        return
    on_cuda = False
    for n in fw.graph.nodes:
        if n.name in wanted:
            n.meta["should_offload"] = True
            on_cuda |= n.meta["val"].device.type == "cuda"
    with functorch_config.patch(
        activation_offload_separate_stream=on_cuda,
        activation_offload_sink_wait=on_cuda,
        activation_reload_prefetch=on_cuda,
    ):
        enable_activation_offloading(fw, bw, num_fwd_outputs, static_inputs)
    done = {n.name for n in fw.graph.nodes if n.meta.get("saved_for_offloading")}
    if wanted - done:
        raise PlanError(f"torch's offloading pass refused {sorted(wanted - done)} (views, getitems, non-contiguous)")


def apply_plan(
    joint: fx.GraphModule,
    *,
    forward_nodes: set,
    plan: Plan,
    folded: set[str],
    num_fwd_outputs: int,
    static_lifetime_input_nodes,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Forward and backward GraphModules that realise ``plan`` (both pass ``graph.lint()``)."""
    from torch._functorch import partitioners as P

    saved, saved_sym = saved_nodes(joint, forward_nodes, plan, folded)
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
    bw = P.reordering_to_mimic_autograd_engine(bw)  # each recomputation just before its first need
    add_offload(fw, bw, plan, num_fwd_outputs, static_lifetime_input_nodes)
    fw = P.raise_getitems(fw)
    bw = P.raise_getitems(bw)
    fw = P.thread_graphsafe_rng_from_hops(fw, is_backward=False)
    bw = P.thread_graphsafe_rng_from_hops(bw, is_backward=True)
    fw.graph.lint()
    bw.graph.lint()
    return fw, bw
