"""Inductor's own estimate of a compiled graph's peak: the check of the plan after fusion.

The plan is made on the joint graph, before Inductor decides which ops share a kernel, which
buffers a kernel writes in place and where it runs the recomputations that a fused kernel needs.
After fusion Inductor knows all of that; its memory planner (``torch._inductor.memory``) walks the
final kernel order and sums the live buffers, graph inputs included until their last use.
``InductorPeaks`` is installed as Inductor's post-fusion pass: it records that estimate for every
graph compiled under it (forward, then backward). Like the plan's prediction it leaves out the
resident inputs (parameters and batch, ``primals_*``), which Inductor never frees. The backend compares the largest
with the cap and plans again, lower, when it is over (``remat.backend.remat_backend``).

That planner still misses what code generation decides (a fused kernel allocates all of its outputs
before it runs; which results really reuse an input in place), and the pass runs before Inductor
reorders the kernels for peak memory, which plain torch.compile does (remat's plans turn it off):
on the MLP example at quick sizes plain compile's backward is estimated at 63.0 MiB, the order
before the reorder, where its code allocates 57.0, as measured (63.0 with the reorder off). So
when the backend also hands over the generated wrapper code of the graphs
(``remat.wrapper_memory.collect_wrapper_code``), the peak is read from that code instead
(``remat.wrapper_memory.wrapper_peak``), with the dtypes of inputs and extern results taken from
the graph recorded here. The pass also records the ops of each kernel
(``kernel_groups``), which the next plan's model runs as one (``remat.kernel_groups``), under
plain torch.compile the order in which its code runs the backward's kernels, extern calls
included, in which the model of plain compile's plan runs its backward ops (``remat.capture``;
remat's plans record none, ``_plain_order``), and each extern kernel's scratch by the op it runs,
which the next plan's model adds at that op's slot.

Neither the code nor the planner shows the scratch memory that an extern kernel allocates while it
runs (a CPU convolution's columns, the CPU attention backward's buffers): the pass measures it once
per distinct call (``extern_signature``: the op with the shapes, strides and dtypes that the code
passes; ``remat.profile.measure_workspace``, cached on disk with the measured op times) and the walk
adds it at that kernel's call (``workspaces``).
"""

from __future__ import annotations

import logging

from .kernel_groups import KernelGroups, reused_inputs, scheduler_groups, scheduler_order
from .profile import OpSignature, Profiler, TensorMeta, signature_of, with_inputs

log = logging.getLogger("remat")


def installed(peaks: "InductorPeaks") -> dict:
    """Inductor config patches that install ``peaks`` as the post-fusion pass. The FX graph cache is
    off under it: torch 2.13 bypasses that cache for a pass that is not a ``CustomSchedulerPass``
    anyway, and torch 2.11 (the GPU machines' image) pickles the pass into the cache key and fails."""
    return {"_post_fusion_custom_pass": peaks, "fx_graph_cache": False}


class InductorPeaks:
    """``torch._inductor.config._post_fusion_custom_pass`` that records each graph's estimated
    peak bytes in ``peaks``; it leaves the kernel order unchanged."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        # the size symbols' values at which a dynamic-shape graph's code is read (a range's planning
        # corner); None: their hints
        self.sizes = sizes
        self.size_hints: list[dict[str, int]] = []  # per graph: its size symbols' hints
        self.peaks: list[int] = []
        self.itemsizes: list[dict[str, int]] = []  # per graph: element size of inputs and buffers
        self.codes: list[str] = []  # the graphs' wrapper code, when the backend collects it
        self.groups: list[tuple[frozenset[str], ...]] = []  # per graph: its generated kernels' ops
        self.orders: list[tuple[frozenset[str], ...]] = []  # per graph: plain compile's kernels, in its code's order
        self.workspaces: list[dict[str, int]] = []  # per graph: extern kernel's name -> its scratch bytes
        self.op_scratch: dict[str, int] = {}  # the same bytes by the name of the graph op the kernel runs
        self._profilers: dict[str, Profiler] = {}  # by device: measured workspaces, cached on disk

    def __call__(self, nodes: list) -> list:
        try:
            self.peaks.append(_estimate(nodes, self.sizes))
            self.itemsizes.append(_itemsizes())
            self.size_hints.append(_size_hints())
        except Exception as e:  # an estimate we cannot make is no reason to fail the compile
            log.debug("remat: no Inductor memory estimate (%s: %s)", type(e).__name__, e)
        try:
            self.groups.append(scheduler_groups(nodes))
            self.orders.append(_plain_order(nodes))
        except Exception as e:
            log.debug("remat: no kernel groups (%s: %s)", type(e).__name__, e)
        try:
            self.workspaces.append(self._extern_workspaces(nodes))
        except Exception as e:  # unmeasured workspaces count as 0, as before they were measured
            log.debug("remat: no extern workspaces (%s: %s)", type(e).__name__, e)
            self.workspaces.append({})
        return nodes

    def _extern_workspaces(self, nodes: list) -> dict[str, int]:
        """Scratch bytes of each extern kernel in ``nodes`` that allocates any, by its buffer name
        (the name the wrapper binds its result to, or passes as ``out=``); also kept by the name
        of the graph op it runs (``op_scratch``)."""
        from torch._inductor.scheduler import ExternKernelSchedulerNode

        out = {}
        for node in nodes:
            sig = extern_signature(node.node, self.sizes) if isinstance(node, ExternKernelSchedulerNode) else None
            if sig is None or not sig.inputs:
                continue
            device = sig.inputs[0].device
            profiler = self._profilers.setdefault(device, Profiler(device))
            nbytes = profiler.workspace(sig)
            if nbytes:
                out[node.node.get_name()] = nbytes
                self.op_scratch[_origin_call(node.node).name] = nbytes
        return out

    @property
    def kernel_groups(self) -> KernelGroups | None:
        """The kernels of a forward and a backward graph compiled under this pass, in that order;
        None unless exactly those two were recorded. The saved values whose buffers a backward
        kernel took over (``reused``) are read from the backward's wrapper code when collected;
        under plain compile its kernels come in the order its code runs them (``backward_order``)."""
        if len(self.groups) != 2:
            return None
        reused = frozenset(reused_inputs(self.codes[1])) if len(self.codes) == 2 else frozenset()
        order = self.orders[1] if len(self.orders) == 2 else ()
        return KernelGroups(forward=self.groups[0], backward=self.groups[1], reused=reused,
                            scratch=tuple(sorted(self.op_scratch.items())), backward_order=order)

    @property
    def walks(self) -> list | None:
        """Each graph's walk of its wrapper code (``WrapperPeak``), read once per set of codes;
        None unless every graph's code was read."""
        from .wrapper_memory import wrapper_peaks

        if not self.codes or len(self.codes) != len(self.peaks):
            return None
        if getattr(self, "_walked", (None,))[0] != len(self.codes):
            # a forward and its backward: the backward counts the copies saved under primals_* names
            hints = [self.sizes or h for h in self.size_hints]
            walks = wrapper_peaks(self.codes, self.itemsizes, hints, self.workspaces)
            self._walked = (len(self.codes), None if any(w is None for w in walks) else walks)
        return self._walked[1]

    @property
    def code_peaks(self) -> list[int] | None:
        """Each graph's peak read from its wrapper code; None unless every graph's code was read."""
        walks = self.walks
        return [w.peak_bytes for w in walks] if walks else None

    @property
    def peak_bytes(self) -> int | None:
        """The largest graph peak: from the wrapper code when it was read, else the scheduler's
        (over the code's under plain torch.compile, see the module's notes)."""
        from_code = self.code_peaks
        if from_code:
            return max(from_code)
        return max(self.peaks) if self.peaks else None


def _plain_order(nodes: list) -> tuple[frozenset[str], ...]:
    """Plain torch.compile's kernels in the order its code runs them: the order that Inductor's
    peak-memory pass (``torch._inductor.memory.reorder_for_peak_memory``, after this pass) gives
    the scheduler ``nodes`` (``scheduler_order``). Empty under remat's plans, which turn that pass
    off: a plan's order is its own (its recomputations place kernels, and their readers after
    them), and the check loop tells it to the next plan, which recomputes elsewhere (transformers
    Llama's "min": told the last plan's order, the model held a weight gradient's input 2 MiB
    across the SiLU backward, and the floor rose)."""
    from torch._inductor import config, memory
    from torch._inductor.virtualized import V
    from torch.utils._ordered_set import OrderedSet

    if not config.reorder_for_peak_memory:
        return ()
    graph = V.graph
    sched = graph.scheduler
    return scheduler_order(memory.reorder_for_peak_memory(
        list(nodes), sched.name_to_buf, sched.name_to_fused_node, OrderedSet(graph.graph_inputs.keys()),
        OrderedSet(graph.get_output_names())))


def extern_signature(kernel, sizes: dict[str, int] | None = None) -> OpSignature | None:
    """The op call of an Inductor extern kernel (``ir.ExternKernel``) as a ``remat.profile``
    signature: its graph node's call, with the tensors laid out as the kernel receives them
    (Inductor may pass copies in another layout); None for what is not one op call (a tuple
    element, a view) or cannot be measured alone. Random ops count: the measurement keeps the
    random number generators' state."""
    node = _origin_call(kernel)
    sig = signature_of(node, seeded=True) if node is not None else None
    if sig is None:
        return None
    try:
        inputs = [_input_meta(x, sizes) for x in kernel.inputs]
    except Exception:  # an input whose layout cannot be read: the graph node's layout
        return sig
    return with_inputs(sig, inputs) or sig


def _origin_call(kernel):
    """The graph node whose op the extern kernel calls (None when there is not exactly one, or the
    kernel calls no op: a tuple element)."""
    import torch

    if getattr(kernel, "op_overload", None) is None:
        return None
    node = getattr(kernel, "origin_node", None)
    if node is not None and isinstance(node.target, torch._ops.OpOverload):
        return node
    packet = getattr(getattr(kernel, "op_overload", None), "overloadpacket", None)
    calls = [o for o in getattr(kernel, "origins", ())
             if packet is not None and isinstance(o.target, torch._ops.OpOverload) and o.target.overloadpacket == packet]
    return calls[0] if len(calls) == 1 else None


def _input_meta(x, sizes: dict[str, int] | None) -> TensorMeta:
    """An extern kernel's input as the kernel receives it: its shape, strides, dtype and device."""
    shape = tuple(_concrete(d, sizes) for d in x.get_size())
    stride = tuple(_concrete(d, sizes) for d in x.get_stride())
    return TensorMeta(shape, stride, x.get_dtype(), str(x.get_device()))


def _itemsizes() -> dict[str, int]:
    """Element size of the graph's inputs and of every scheduler buffer, by wrapper name."""
    from torch._inductor.virtualized import V

    graph = V.graph
    out = {}
    for name, node in graph.graph_inputs.items():
        dtype = getattr(node, "get_dtype", lambda: None)()
        if dtype is not None:
            out[name] = dtype.itemsize
    for name, buf in graph.scheduler.name_to_buf.items():
        try:
            out[name] = buf.node.get_dtype().itemsize
        except Exception:
            continue
    return out


def _size_hints() -> dict[str, int]:
    """The hint of each size symbol of the graph being compiled, by name (empty when static)."""
    from torch._inductor.virtualized import V

    env = V.graph.sizevars.shape_env
    return {str(k): int(v) for k, v in env.backed_var_to_val.items()}


def _estimate(nodes: list, sizes: dict[str, int] | None = None) -> int:
    """Peak of live bytes over Inductor's kernel order (``torch._inductor.memory``), except that a
    kernel's result is taken to reuse, in place, a buffer of the same size that the kernel reads
    for the last time (Inductor decides that at code generation, after this pass, and its planner
    counts both), and that on a GPU only device buffers count (not the host copies of offloaded
    values). Symbolic sizes take their values from ``sizes``, else their hints."""
    from torch._inductor import memory
    from torch._inductor.scheduler import ExternKernelSchedulerNode
    from torch._inductor.virtualized import V
    from torch.utils._ordered_set import OrderedSet

    graph = V.graph
    sched = graph.scheduler
    inputs = OrderedSet(graph.graph_inputs.keys())
    outputs = OrderedSet(graph.get_output_names())
    _, freeable = memory.prepare_planning_info(nodes, sched.name_to_buf, sched.name_to_fused_node, inputs, outputs)
    infos, _, _ = memory.compute_memory_timeline(nodes, freeable, outputs)
    devices = [_device_type(b.buffer, graph) for b in infos]
    if "cuda" in devices:  # host copies of offloaded values are not device memory
        infos = [b for b, d in zip(infos, devices) if d == "cuda"]
    dying: dict[tuple[int, int], int] = {}  # (step, bytes) -> buffers of that size read last there
    for b in infos:
        if b.end_step != -1 and b.end_step > b.start_step:
            key = (b.end_step, b.size_free)
            dying[key] = dying.get(key, 0) + 1
    delta = [0] * (len(nodes) + 1)
    for b in infos:
        key = (b.start_step, b.size_alloc)
        inplace = (
            not isinstance(b.buffer, memory.FreeableInputBuffer)
            and not isinstance(nodes[b.start_step], ExternKernelSchedulerNode)
            and dying.get(key, 0) > 0
        )
        if inplace:
            dying[key] -= 1
        start = b.start_step + 1 if inplace else b.start_step
        if b.end_step == -1 or b.end_step >= start:
            delta[start] += b.size_alloc
            if b.end_step != -1:
                delta[b.end_step + 1] -= b.size_free
    peak = cur = 0
    for d in delta:
        cur += _concrete(d, sizes)
        peak = max(peak, cur)
    return int(peak)


def _concrete(nbytes, sizes: dict[str, int] | None) -> int:
    """An int for a byte count that may be a sympy expression of the size symbols."""
    from torch._inductor.virtualized import V

    if isinstance(nbytes, int) or not getattr(nbytes, "free_symbols", None):
        return int(nbytes)
    if sizes:
        return int(nbytes.subs({s: sizes[str(s)] for s in nbytes.free_symbols if str(s) in sizes}))
    return int(V.graph.sizevars.optimization_hint(nbytes))


def _device_type(buf, graph) -> str | None:
    """Device type of a scheduler buffer or of a freeable graph input (None if unknown)."""
    try:
        node = buf.node if hasattr(buf, "node") and buf.node is not None else graph.graph_inputs[buf.name]
        dev = node.get_device()
        return dev.type if dev is not None else None
    except Exception:
        return None
