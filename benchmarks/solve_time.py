"""Solve time of the planner on GPT-2-small-shaped models analysed on fake tensors.

    python benchmarks/solve_time.py [--layers 12,24,48] [--budgets 50%,30%] [--cache DIR]
                                    [--modes auto,mix,tie,free,greedy] [--time-limit 60]

n_embd 768, 12 heads, seq 1024, batch 8, vocab 50257 (GPT-2 small) at each depth. Each model is
traced once (Dynamo + AOTAutograd on fake tensors, no step runs; ``--cache`` keeps the Problem as
JSON); its repeated layers are found (``remat.structure``), then each solver is timed on the same
Problem: the ILP in each ``layers`` mode ("mix": two levels, "tie", "free"; "auto", the default,
is "mix" from 8 layers per class) and the greedy.
"partition" is layer finding plus planning plus the simulator's check. Prints a markdown table and writes benchmarks/results/solve_time.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
MODES = {"auto": ("ilp", "auto"), "mix": ("ilp", "mix"), "tie": ("ilp", "tie"), "free": ("ilp", "free"), "greedy": ("greedy", "")}


def traced(layers: int, cache: str | None):
    """The Problem of the GPT-2-small-shaped model at ``layers`` and the seconds tracing took."""
    import remat
    from remat.problem import Problem

    from gpt import factory

    path = Path(cache) / f"gpt2_{layers}.json" if cache else None
    if path is not None and path.exists():
        return Problem.load(path), float("nan")
    model, inputs, loss_fn = factory(batch=8, vocab=50257, seq=1024, layers=layers, d=768, heads=12)
    t0 = time.perf_counter()
    problem = remat.analyze(model, inputs, loss_fn=loss_fn).problem
    trace_s = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        problem.save(path)
    return problem, trace_s


def plan_row(problem, cap: int, solver: str, layers: str, time_limit: float) -> dict:
    """One timed planning (layer finding, solve, check) of ``problem`` under ``cap``."""
    import remat
    from remat.errors import InfeasibleBudgetError
    from remat.simulate import check
    from remat.solvers import get_solver
    from remat.structure import with_layers

    t0 = time.perf_counter()
    p = with_layers(problem) if layers else problem
    find_s = time.perf_counter() - t0
    kw = {"layers": layers} if solver == "ilp" else {}
    try:
        plan = get_solver(solver)(p, cap, time_limit=time_limit, **kw)
    except InfeasibleBudgetError as e:
        return dict(solver=solver, layers=layers, cap=cap, error=str(e))
    tl = check(p, plan, cap)
    return dict(solver=solver, layers=layers, cap=cap, predicted_peak=tl.peak_bytes, added_ms=tl.added_time * 1e3,
                find_s=find_s, partition_s=time.perf_counter() - t0, status=plan.status, gap=plan.gap,
                source=plan.info.get("source", ""), classes=[len(c) for c in p.layers],
                recompute=len(plan.names(remat.Decision.RECOMPUTE)), store=len(plan.names(remat.Decision.STORE)))


def print_table(rows: list[dict]) -> None:
    from remat.errors import fmt_bytes

    print("| layers | budget | solver | tie | cap | predicted peak | added time | partition s | status | gap | source | RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['depth']} | {r['budget']} | {r['solver']} | {r['layers']} | {fmt_bytes(r['cap'])} |"
        if "error" in r:
            print(head + " infeasible | | | | | | |")
            continue
        gap = "" if r["gap"] is None else f"{r['gap']:.2%}"
        print(f"{head} {fmt_bytes(r['predicted_peak'])} | {r['added_ms']:.1f} ms | {r['partition_s']:.2f} | "
              f"{r['status']} | {gap} | {r['source']} | {r['rss_mib']:.0f} MiB |")


def main(argv=None) -> None:
    from remat.config import parse_budget
    from remat.errors import fmt_bytes
    from remat.simulate import store_all_peak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="12")
    ap.add_argument("--budgets", default="50%,30%")
    ap.add_argument("--modes", default="mix,tie,free,greedy", help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--cache", default=None, help="folder for traced Problems (JSON)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/solve_time.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows, models = [], []
    for depth in (int(x) for x in args.layers.split(",")):
        problem, trace_s = traced(depth, args.cache)
        baseline = store_all_peak(problem)
        print(f"GPT-2 small shape, {depth} layers: {len(problem.slots)} slots, {len(problem.activations)} "
              f"activations; traced in {trace_s:.1f} s; baseline peak {fmt_bytes(baseline)}")
        models.append(dict(layers=depth, slots=len(problem.slots), activations=len(problem.activations),
                           baseline=baseline, trace_s=trace_s))
        for b in args.budgets.split(","):
            cap = parse_budget(b).resolve(baseline)
            for solver, layers in (MODES[m] for m in args.modes.split(",")):
                r = plan_row(problem, cap, solver, layers, args.time_limit)
                r.update(depth=depth, budget=b, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                rows.append(r)
    print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(models=models, rows=rows), indent=1))


if __name__ == "__main__":
    main()
