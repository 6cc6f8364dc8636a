"""Measured vs roofline op times on the GPT example's joint graph, per op kind.

    python benchmarks/profile_ops.py [--layers 4] [--batch 8] [--total-budget 120]

Traces the training step of examples/gpt.py as remat.analyze does (Dynamo, AOTAutograd and
Inductor's joint passes, on fake tensors) and prices every op of the joint graph twice: with the
roofline of remat.cost (the op as a kernel of its own: its inputs read, its outputs written, at
the CPU spec's constants) and with remat.profile (measured here, in a fresh cache directory, so
cold; then once more from the warm cache); then a third time with the roofline at this machine's
rates, as ``remat profile`` caches them (fp32 matmul FLOP/s, copy bandwidth, elementwise rate:
``remat.profile.profiled_spec``). Pointwise ops also get the price of a fused recomputation:
their traffic at the measured bandwidth. Views, getitem and placeholders cost
nothing in either model and are left out. Prints a markdown table; writes
benchmarks/results/profile_ops.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from torch._inductor.custom_graph_pass import CustomPartitionerFn  # noqa: E402

from remat.cost import DEVICES, DeviceSpec, ElementWork, op_flops, op_time, tensor_bytes  # noqa: E402
from remat.measure import matmul_flops  # noqa: E402
from remat.profile import MeasuredCosts, ProfileCache, profiled_spec, signature_of  # noqa: E402
from remat.pricing import transcendental_ops  # noqa: E402

MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_int_mm", "addbmm"}
REDUCTION_WORDS = ("sum", "mean", "amax", "amin", "max", "min", "norm", "softmax", "var", "std", "nll_loss", "prod")


class _Captured(Exception):
    """Stops compilation once the joint graph is in hand."""


class JointGraphGrabber(CustomPartitionerFn):
    """Inductor's partitioner hook that keeps the joint graph and stops."""

    def __init__(self) -> None:
        self.joint = None

    def __call__(self, gm, joint_inputs, **kwargs):
        self.joint = gm
        raise _Captured()

    def uuid(self) -> str:
        return "benchmarks.profile_ops.JointGraphGrabber"


def joint_graph(model, inputs, loss_fn) -> torch.fx.GraphModule:
    """The joint forward+backward graph of one training step, on fake tensors."""
    from torch._inductor.compile_fx import compile_fx

    grab = JointGraphGrabber()

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, config_patches={"custom_partitioner_fn": grab})

    torch._dynamo.reset()
    step = torch.compile(lambda *xs: loss_fn(model(*xs)), backend=backend, fullgraph=True)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            step(*inputs)
    except Exception:  # Dynamo wraps _Captured; the grabber holds the graph when it was reached
        if grab.joint is None:
            raise
    return grab.joint


def op_kind(op) -> str:
    """matmul, attention, convolution, random, pointwise, reduction or other."""
    name = op.overloadpacket.__name__
    if name in MATMUL:
        return "matmul"
    if "attention" in name:
        return "attention"
    if "convolution" in name:
        return "convolution"
    if name.startswith("inductor_") or torch.Tag.nondeterministic_seeded in op.tags:
        return "random"
    if torch.Tag.pointwise in op.tags:
        return "pointwise"
    if any(w in name for w in REDUCTION_WORDS):
        return "reduction"
    return "other"


def is_free(node) -> bool:
    """Placeholders, outputs, getitem and views: no kernel in either model."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return True
    return any(r.alias_info is not None for r in op._schema.returns) and not op._schema.is_mutable


def roofline(node, spec: DeviceSpec = DEVICES["cpu"]) -> tuple[float, int]:
    """(seconds, bytes moved) of the node's op as a kernel of its own at ``spec`` (a transcendental
    op's element ops at the spec's elementwise rate, when it has one: ``remat.pricing.transcendental_ops``)."""
    def val(x):
        return x.meta.get("val") if isinstance(x, torch.fx.Node) else x

    args = torch.utils._pytree.tree_map(val, node.args)
    kwargs = torch.utils._pytree.tree_map(val, node.kwargs)
    out = node.meta.get("val")
    moved = sum(tensor_bytes(val(i)) for i in node.all_input_nodes)
    moved += sum(tensor_bytes(o) for o in torch.utils._pytree.tree_leaves(out))
    flops = op_flops(node.target, args, kwargs, out)
    elementwise = transcendental_ops([node])
    return op_time(flops, moved, spec, ElementWork(transcendental=elementwise)), moved


def price_nodes(nodes, costs: MeasuredCosts, profiled: DeviceSpec | None = None) -> list[dict]:
    """One row per op node: kind, roofline, measured (None: not measured), fused price, and the
    roofline at ``profiled`` rates."""
    rows = []
    for n in nodes:
        seconds, moved = roofline(n)
        kind = op_kind(n.target)
        fused = costs.fused_time(moved) if kind == "pointwise" else None
        rows.append({"op": str(n.target), "kind": kind, "roofline_s": seconds, "measured_s": costs.op_time(n),
                     "fused_s": fused, "profiled_s": roofline(n, profiled)[0] if profiled else None})
    return rows


def by_kind(rows: list[dict]) -> dict[str, dict]:
    """Per kind: node counts, roofline of all nodes and of the measured ones, measured total."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        for key in (r["kind"], "total"):
            k = out[key]
            k["nodes"] += 1
            k["roofline_s"] += r["roofline_s"]
            if r["measured_s"] is not None:
                k["measured_nodes"] += 1
                k["measured_s"] += r["measured_s"]
                k["roofline_of_measured_s"] += r["roofline_s"]
                k["profiled_of_measured_s"] += r["profiled_s"] or 0.0
            if r["fused_s"] is not None:
                k["fused_s"] += r["fused_s"]
    return {kind: dict(v) for kind, v in sorted(out.items(), key=lambda kv: kv[0] == "total")}


def table(kinds: dict[str, dict]) -> str:
    lines = [
        "| kind | nodes | measured | roofline ms (measured nodes) | profiled roofline ms | measured ms "
        "| measured / roofline | measured / profiled roofline | pointwise traffic at measured bandwidth ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, k in kinds.items():
        roof, measured = k.get("roofline_of_measured_s", 0.0), k.get("measured_s", 0.0)
        profiled = k.get("profiled_of_measured_s", 0.0)
        ratio = f"{measured / roof:.2f}" if roof else "-"
        ratio_profiled = f"{measured / profiled:.2f}" if profiled else "-"
        fused = f"{k['fused_s'] * 1e3:.2f}" if "fused_s" in k else ""
        lines.append(f"| {kind} | {int(k['nodes'])} | {int(k.get('measured_nodes', 0))} | {roof * 1e3:.2f} | "
                     f"{profiled * 1e3:.2f} | {measured * 1e3:.2f} | {ratio} | {ratio_profiled} | {fused} |")
    return "\n".join(lines)


def profile(nodes, args, profiled: DeviceSpec | None = None) -> tuple[list[dict], MeasuredCosts, float]:
    """Price the nodes with a fresh profiler (cache: $REMAT_CACHE_DIR); wall seconds taken."""
    t0 = time.perf_counter()
    costs = MeasuredCosts.measure("cpu", total_budget_s=args.total_budget, per_op_budget_s=args.per_op_budget)
    rows = price_nodes(nodes, costs, profiled)
    return rows, costs, time.perf_counter() - t0


def this_machines_roofline() -> DeviceSpec:
    """The CPU roofline at the rates ``remat profile`` caches (the cache holds the bandwidth and
    elementwise rate that pricing measured; the fp32 matmul rate is measured here)."""
    matmul_flops("cpu", (torch.float32,), cache=ProfileCache.for_device("cpu"))
    return profiled_spec(DEVICES["cpu"])


def measure_gpt(args) -> dict:
    """Trace the GPT example's step, price its joint graph cold and warm; the result as plain data."""
    from gpt import factory

    model, inputs, loss_fn = factory(batch=args.batch, layers=args.layers)
    t0 = time.perf_counter()
    joint = joint_graph(model, inputs, loss_fn)
    trace_s = time.perf_counter() - t0
    nodes = [n for n in joint.graph.nodes if not is_free(n)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REMAT_CACHE_DIR"] = tmp  # a cold cache, then the same one warm
        _, cold, cold_s = profile(nodes, args)
        spec = this_machines_roofline()
        rows, warm, warm_s = profile(nodes, args, spec)
    return {
        "model": {"example": "gpt", "layers": args.layers, "batch": args.batch},
        "device": cold.profiler.cache.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0], "cores": os.cpu_count(), "trace_s": trace_s,
        "nodes": len(nodes), "distinct_signatures": len({signature_of(n) for n in nodes} - {None}),
        "bandwidth_measured": cold.bandwidth, "bandwidth_roofline": DEVICES["cpu"].bandwidth,
        "profiled_rates": spec.rates_note(),
        "profile_cold_s": cold_s, "profile_warm_s": warm_s, "summary_cold": cold.stats.summary(),
        "summary_warm": warm.stats.summary(), "stats_cold": vars(cold.stats), "stats_warm": vars(warm.stats),
        "kinds": by_kind(rows), "ops": rows,
    }


def summary(r: dict) -> str:
    return "\n".join([
        f"GPT example ({r['model']['layers']} layers, batch {r['model']['batch']}) joint graph: {r['nodes']} op "
        f"nodes, {r['distinct_signatures']} distinct signatures; {r['device']}, torch {r['torch']}; "
        f"load average {r['load_average']:.1f} on {r['cores']} cores",
        "", table(r["kinds"]), "",
        f"bandwidth: measured {r['bandwidth_measured'] / 1e9:.1f} GB/s, roofline spec "
        f"{r['bandwidth_roofline'] / 1e9:.1f} GB/s; profiled roofline: {r['profiled_rates']}",
        f"profile, cold cache: {r['profile_cold_s']:.1f} s ({r['summary_cold']}); warm cache: "
        f"{r['profile_warm_s']:.2f} s ({r['summary_warm']}); tracing the step took {r['trace_s']:.1f} s",
    ])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--total-budget", type=float, default=120.0, help="seconds of measuring, all ops together")
    ap.add_argument("--per-op-budget", type=float, default=0.05, help="min_run_time of one op's timing")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, as the example trains with")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/profile_ops"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    result = measure_gpt(args)
    text = summary(result)
    print(text)
    Path(args.out + ".md").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
