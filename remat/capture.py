"""Joint forward+backward ATen graph -> ``Problem`` (plain data), plus the facts the rewrite needs.

The schedule: forward ops in graph order, then backward ops in the order that the backward graph
runs them when every activation is saved (AOTAutograd's autograd-engine order: each backward op
is emitted with the not-yet-emitted backward ops that it reads). Views, ``getitem`` and symbolic
size ops take no slot; their uses count as uses of the storage they alias.

Memory follows Inductor, not eager: a pointwise result that only feeds fusible consumers
(pointwise ops, reductions, views) of its own phase is fused into them and never allocated. Every
other result is a buffer, live from its op's slot to its last use; graph outputs (forward outputs,
gradients) and the incoming output gradients (tangents) stay live to the end of the step. Parameters and inputs are resident and cost nothing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from .cost import DeviceSpec, op_flops, op_time, tensor_bytes
from .problem import BACKWARD, FORWARD, Activation, Problem, Slot

aten = torch.ops.aten

_EXTRA_VIEWS = {aten._unsafe_view.default, aten.copy_.default}
_RANDOM = {"prims.inductor_random.default", "prims.inductor_seeds.default", "prims.inductor_lookup_seed.default"}


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


# Smallest activation worth a copy to host: each copy costs two custom ops, a stream hop and an
# event (about 0.2 ms of host time per copy on an H200, benchmarks/gpu_diag.py), and frees little.
MIN_OFFLOAD_BYTES = 1 << 20


def is_view(n: fx.Node) -> bool:
    t = n.target
    if n.op != "call_function":
        return False
    if t is operator.getitem:
        return is_view(n.args[0]) if isinstance(n.args[0], fx.Node) else False
    return isinstance(t, torch._ops.OpOverload) and (t.is_view or t in _EXTRA_VIEWS)


def _is_multi_output(n: fx.Node) -> bool:
    return n.op == "call_function" and isinstance(n.meta.get("val"), (tuple, list))


def _tags(n: fx.Node) -> set:
    return set(getattr(n.target, "tags", ()) or ())


def is_random(n: fx.Node) -> bool:
    return str(n.target) in _RANDOM or torch.Tag.nondeterministic_seeded in _tags(n)


def _fusible_consumer(n: fx.Node) -> bool:
    tags = _tags(n)
    return torch.Tag.pointwise in tags or torch.Tag.reduction in tags


@dataclass
class Captured:
    """The Problem and the graph facts that the rewrite pass needs."""

    problem: Problem
    forward_nodes: list[str]  # forward ops in order (including views)
    backward_order: list[str]  # backward slot names in order
    folded: list[str] = field(default_factory=list)  # fused forward values recomputed inside their readers


def capture(
    joint: fx.GraphModule,
    *,
    forward_nodes: set[fx.Node],
    num_fwd_outputs: int,
    spec: DeviceSpec,
    host_bandwidth: float = 0.0,
    name: str = "graph",
) -> Captured:
    """Build the Problem of a joint graph whose forward ops are ``forward_nodes``."""
    from torch._functorch.partitioners import (
        _extract_fwd_bwd_outputs,
        _is_tangent,
        _must_be_in_forward,
    )

    nodes = list(joint.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    fwd = {n for n in forward_nodes if n.op == "call_function"}
    # outputs of forward tuple ops that only backward reads (a dropout mask) are forward values
    fwd |= {n for n in nodes if n.target is operator.getitem and n.args[0] in fwd}
    bwd = {n for n in nodes if n.op == "call_function" and n not in fwd}

    # ---- storages: every tensor node maps to the node owning its memory ----------------
    owner: dict[fx.Node, fx.Node | None] = {}
    for n in nodes:
        if n.op == "placeholder":
            owner[n] = n if _is_tensor(n) else None
        elif n.op != "call_function":
            owner[n] = None
        elif is_view(n):
            base = n.args[0]
            if n.target is operator.getitem:  # element of split/unbind: a view of its input
                base = base.args[0]
            owner[n] = owner.get(base) if isinstance(base, fx.Node) else None
        elif _is_tensor(n):
            owner[n] = n
        else:
            owner[n] = None  # tuples (multi-output ops), SymInts, None
    resident = {n for n in nodes if n.op == "placeholder" and not _is_tangent(n)}
    tangents = [n for n in nodes if n.op == "placeholder" and _is_tangent(n)]

    def real(n: fx.Node) -> bool:  # nodes that take a slot
        return n.op == "call_function" and not is_view(n) and n.target is not operator.getitem and (
            _is_tensor(n) or _is_multi_output(n)
        )

    def compute_node(s: fx.Node) -> fx.Node:  # the op that computes storage s
        if s.target is operator.getitem:
            return s.args[0]
        return s

    # ---- schedule ---------------------------------------------------------------------
    fwd_order = [n for n in nodes if n in fwd and real(n)]
    bwd_seq = _autograd_order(nodes, index, bwd, tangents)
    bwd_order = [n for n in bwd_seq if real(n)]
    slot_of: dict[fx.Node, int] = {}
    for i, n in enumerate(fwd_order + bwd_order):
        slot_of[n] = i
    for n in nodes:  # getitems live at their op's slot
        if n.target is operator.getitem and n.args[0] in slot_of:
            slot_of[n] = slot_of[n.args[0]]
    nf, ns = len(fwd_order), len(fwd_order) + len(bwd_order)
    last = ns - 1

    # ---- uses: the slots that read each storage ------------------------------------------
    fwd_outs, bwd_outs, _, _ = _extract_fwd_bwd_outputs(joint, num_fwd_outputs=num_fwd_outputs)
    pinned = {owner.get(o) for o in list(fwd_outs) + list(bwd_outs) if isinstance(o, fx.Node)}
    pinned.discard(None)
    uses: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        if n.op != "call_function" or not real(n):
            continue
        for i in n.all_input_nodes:
            o = owner.get(i)
            if o is not None:
                uses.setdefault(o, []).append(n)
    # Fusion: a pointwise result read by a single fusible op of its own phase is never allocated;
    # Inductor inlines it into its reader, so what it reads stays live until the reader runs.
    readers: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        for i in n.all_input_nodes:
            readers.setdefault(i, []).append(n)

    def materialized(s: fx.Node) -> bool:
        if s.op != "call_function" or torch.Tag.pointwise not in _tags(s) or s in pinned:
            return True
        phase_nodes = fwd if s in fwd else bwd
        stack, kernels = [s], set()
        while stack:
            v = stack.pop()
            for u in readers.get(v, ()):
                if u.op == "output":
                    return True
                if u not in phase_nodes:
                    continue
                if is_view(u):
                    stack.append(u)
                elif not _fusible_consumer(u):
                    return True
                else:
                    kernels.add(u)
        return len(kernels) > 1  # read by several kernels: counted as a buffer

    fused = {n: not materialized(n) for n in nodes if owner.get(n) is n and n.op == "call_function"}
    effective: dict[fx.Node, list[fx.Node]] = {}  # slots' nodes that read a storage, through fused readers
    for o in reversed(nodes):
        out = []
        for u in uses.get(o, ()):
            out.append(u)
            if fused.get(u):
                out.extend(w for w in effective.get(u, ()) if (w in fwd) == (u in fwd))
        effective[o] = out

    # ---- fixed bytes and activations ------------------------------------------------------
    delta = [0] * (ns + 1)

    def live(a: int, b: int, nbytes: int) -> None:
        if nbytes and a <= b:
            delta[a] += nbytes
            delta[b + 1] -= nbytes

    storages = [n for n in nodes if owner.get(n) is n and n not in resident]
    acts: dict[fx.Node, dict] = {}
    by_slot = fwd_order + bwd_order
    inplaced: set[fx.Node] = set()
    for s in storages:
        nbytes = tensor_bytes(s.meta["val"])
        s_uses = effective.get(s, [])
        if s in tangents:  # the autograd engine holds grad outputs until the backward returns
            live(nf, last, nbytes)
            continue
        created = slot_of.get(s)
        if created is None:
            continue
        if s in fwd:
            f_uses = [slot_of[u] for u in s_uses if u in fwd and u in slot_of]
            b_uses = sorted({slot_of[u] for u in s_uses if u in bwd and u in slot_of})
            lfu = max(f_uses + [created])
            if s in pinned:
                live(created, last, nbytes)
                continue
            if not fused[s]:
                live(created, lfu, nbytes)
            acts[s] = dict(bytes=nbytes, created=created, lfu=lfu, b_uses=b_uses)
        else:
            end = last if s in pinned else max([slot_of[u] for u in s_uses if u in slot_of] + [created])
            if not fused[s]:
                if end > created and _writes_in_place(by_slot[end], s, inplaced):
                    end -= 1  # Inductor writes the pointwise result into this dying buffer
                live(created, end, nbytes)

    # An extern kernel cannot read a broadcast (stride-0) view: Inductor materialises it first.
    for t, n in enumerate(by_slot):
        if _fusible_consumer(n):
            continue
        for i in n.all_input_nodes:
            v = i.meta.get("val")
            if is_view(i) and isinstance(v, torch.Tensor) and 0 in v.stride() and v.numel() > 1:
                live(t, t, tensor_bytes(v))

    # inputs of each activation's op (through views), and relevance for the backward
    def act_inputs(s: fx.Node) -> list[fx.Node]:
        out = []
        for i in compute_node(s).all_input_nodes:
            o = owner.get(i)
            if o in acts and o is not s and o not in out:
                out.append(o)
        return out

    inputs = {s: act_inputs(s) for s in acts}
    # A fused pointwise result that backward never reads is no decision of its own: Inductor
    # recomputes it inside its reader's kernel, from the reader's inputs. Fold it into its readers.
    folded = {s for s in acts if fused[s] and not acts[s]["b_uses"] and not is_random(s)}
    through: dict[fx.Node, list[fx.Node]] = {}  # each activation's folded ancestors
    for s in sorted(acts, key=lambda s: index[s]):
        resolved, anc = [], []
        for i in inputs[s]:
            if i in folded:
                anc += [i] + through[i]
                resolved += [j for j in inputs[i] if j not in resolved]
            elif i not in resolved:
                resolved.append(i)
        inputs[s], through[s] = resolved, list(dict.fromkeys(anc))
    relevant: set[fx.Node] = set()
    for s in sorted(acts, key=lambda s: index[s], reverse=True):
        if acts[s]["b_uses"]:
            relevant.add(s)
    for s in sorted(acts, key=lambda s: index[s], reverse=True):
        if s in relevant:
            relevant.update(inputs[s])
    relevant -= folded

    # ---- slot times -------------------------------------------------------------------
    def val(x: Any) -> Any:
        return x.meta.get("val") if isinstance(x, fx.Node) else x

    def kernel_reads(n: fx.Node) -> set[fx.Node]:
        """Storages that the kernel computing ``n`` reads from memory: fused producers are
        computed inside it, so it reads their inputs instead."""
        out, todo, seen = set(), list(n.all_input_nodes), set()
        while todo:
            o = owner.get(todo.pop())
            if o is None or o in seen:
                continue
            seen.add(o)
            if fused.get(o):
                todo.extend(o.all_input_nodes)
            else:
                out.add(o)
        return out

    # Slot times follow Inductor's kernels: a fused pointwise op moves nothing of its own and the
    # op that materialises the kernel's result reads what the whole kernel reads. A recomputation
    # is priced as its own kernel (its inputs read, its result written): a conservative price.
    times: dict[fx.Node, float] = {}  # per slot, as the step runs
    alone: dict[fx.Node, float] = {}  # per op, run as a kernel of its own
    for n in fwd_order + bwd_order:
        args = torch.utils._pytree.tree_map(val, n.args)
        kwargs = torch.utils._pytree.tree_map(val, n.kwargs)
        out = n.meta.get("val")
        flops = op_flops(n.target, args, kwargs, out)
        written = sum(tensor_bytes(o) for o in (out if isinstance(out, (tuple, list)) else [out]))
        alone[n] = op_time(flops, sum(tensor_bytes(val(i)) for i in n.all_input_nodes) + written, spec)
        if fused.get(n):  # runs inside its reader's kernel: no launch, no traffic of its own
            times[n] = flops / spec.peak_flops
        else:
            times[n] = op_time(flops, sum(tensor_bytes(val(i)) for i in kernel_reads(n)) + written, spec)

    fixed, acc = [], 0
    for t in range(ns):
        acc += delta[t]
        fixed.append(acc)
    slots = [
        Slot(n.name, FORWARD if i < nf else BACKWARD, times[n], fixed[i])
        for i, n in enumerate(fwd_order + bwd_order)
    ]
    activations = []
    for s in sorted(relevant, key=lambda s: index[s]):
        d, c = acts[s], compute_node(s)
        val_ = s.meta["val"]
        recomputable = not (
            is_random(c) or c.is_impure() or _must_be_in_forward(c)
            or c.meta.get("recompute") is not None and "MUST_SAVE" in str(c.meta.get("recompute"))
        )
        activations.append(
            Activation(
                name=s.name,
                op=str(getattr(c.target, "__name__", c.target)),
                bytes=d["bytes"],
                compute_time=alone[c] + sum(alone[compute_node(f)] for f in through[s]),
                created=d["created"],
                last_forward_use=d["lfu"],
                backward_uses=tuple(d["b_uses"]),
                inputs=tuple(i.name for i in inputs[s]),
                recomputable=recomputable,
                # plain contiguous results, big enough to be worth two copies (see MIN_OFFLOAD_BYTES)
                offloadable=d["bytes"] >= MIN_OFFLOAD_BYTES and s.target is not operator.getitem
                and val_.is_contiguous(),
                shape=tuple(int(x) if isinstance(x, int) else -1 for x in val_.shape),
                dtype=str(val_.dtype).replace("torch.", ""),
            )
        )
    problem = Problem(
        slots=tuple(slots),
        activations=tuple(activations),
        host_bandwidth=host_bandwidth,
        name=name,
        metadata={"device": spec.name, "num_nodes": len(nodes)},
    )
    return Captured(problem, [n.name for n in nodes if n in fwd], [n.name for n in bwd_order],
                    sorted(f.name for f in folded))


def _writes_in_place(u: fx.Node, s: fx.Node, inplaced: set) -> bool:
    """Whether Inductor can put pointwise op ``u``'s result in ``s``'s buffer, read last by ``u``
    (same size and dtype; one input a kernel). Records the reuse."""
    if u in inplaced or torch.Tag.pointwise not in _tags(u) or not _is_tensor(u):
        return False
    a, b = u.meta["val"], s.meta["val"]
    if a.dtype != b.dtype or tensor_bytes(a) != tensor_bytes(b):
        return False
    inplaced.add(u)
    return True


def _autograd_order(nodes: list, index: dict, bwd: set, tangents: list) -> list:
    """Backward ops in the order AOTAutograd emits them when every forward value is saved."""
    first = min((index[u] for t in tangents for u in t.users), default=None)
    if first is None:
        first = min((index[n] for n in bwd), default=len(nodes))
    done: set = set()
    seq: list = []

    def insert(n: fx.Node) -> None:
        todo, found = [n], []
        while todo:
            v = todo.pop()
            if v in done or v not in bwd:
                continue
            done.add(v)
            found.append(v)
            todo.extend(v.all_input_nodes)
        seq.extend(sorted(found, key=index.__getitem__))

    for n in nodes[first:]:
        if n in bwd:
            insert(n)
    return seq
