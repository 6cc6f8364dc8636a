"""Solve time of the planner on a GPT-2-small-shaped model analysed on fake tensors.

    python benchmarks/solve_time.py [--layers 12] [--budgets 50%,30%]

12 layers, n_embd 768, 12 heads, seq 1024, batch 8, vocab 50257 (GPT-2 small). The model is traced
once (Dynamo + AOTAutograd on fake tensors, no step runs); each solver is then timed on the same
Problem. Prints a markdown table and writes benchmarks/results/solve_time.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def main(argv=None) -> None:
    import remat
    from remat.config import parse_budget
    from remat.errors import InfeasibleBudgetError, fmt_bytes
    from remat.simulate import check, store_all_peak
    from remat.solvers import get_solver, min_peak

    from gpt import factory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--budgets", default="50%,30%")
    ap.add_argument("--solvers", default="ilp,greedy")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/solve_time.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    model, inputs, loss_fn = factory(batch=8, vocab=50257, seq=1024, layers=args.layers, d=768, heads=12)
    t0 = time.perf_counter()
    problem = remat.analyze(model, inputs, loss_fn=loss_fn).problem
    trace_s = time.perf_counter() - t0
    baseline = store_all_peak(problem)
    t0 = time.perf_counter()
    floor = min_peak(problem)
    floor_s = time.perf_counter() - t0
    print(f"GPT-2 small shape, {args.layers} layers: {len(problem.slots)} slots, {len(problem.activations)} "
          f"activations; traced in {trace_s:.1f} s; baseline peak {fmt_bytes(baseline)}; "
          f"smallest feasible peak {fmt_bytes(floor)} ({floor / baseline:.0%}, found in {floor_s:.2f} s)\n")
    rows = []
    for b in args.budgets.split(","):
        cap = parse_budget(b).resolve(baseline)
        for name in args.solvers.split(","):
            t0 = time.perf_counter()
            try:
                plan = get_solver(name)(problem, cap, time_limit=60.0)
            except InfeasibleBudgetError as e:
                rows.append(dict(budget=b, solver=name, cap=cap, error=str(e)))
                continue
            wall = time.perf_counter() - t0
            tl = check(problem, plan, cap)
            rows.append(dict(budget=b, solver=name, cap=cap, predicted_peak=tl.peak_bytes,
                             added_ms=tl.added_time * 1e3, wall_s=wall, solve_time_s=plan.solve_time_s,
                             status=plan.status, gap=plan.gap,
                             recompute=len(plan.names(remat.Decision.RECOMPUTE)), store=len(plan.names(remat.Decision.STORE))))
    print("| budget | solver | cap | predicted peak | added time | wall s | status | gap | recompute | store |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['budget']} | {r['solver']} | {fmt_bytes(r['cap'])} | infeasible | | | | | | |")
            continue
        gap = "" if r["gap"] is None else f"{r['gap']:.2%}"
        print(f"| {r['budget']} | {r['solver']} | {fmt_bytes(r['cap'])} | {fmt_bytes(r['predicted_peak'])} | "
              f"{r['added_ms']:.1f} ms | {r['wall_s']:.2f} | {r['status']} | {gap} | {r['recompute']} | {r['store']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(layers=args.layers, slots=len(problem.slots),
                                              activations=len(problem.activations), baseline=baseline,
                                              min_peak=floor, trace_s=trace_s, rows=rows), indent=1))


if __name__ == "__main__":
    main()
