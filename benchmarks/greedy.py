"""The greedy solver against the ILP: smallest peak reached and added time under caps.

    python benchmarks/greedy.py [--cache DIR] [--budgets 75%,50%,floor] [--time-limit 60]
                                [--graphs mlp,cnn,gpt,evoformer,gpt2_12]

Graphs: the examples at their default sizes (``examples/*.py:factory``, traced with
``remat.analyze``) and GPT-2 small at 12 layers (``benchmarks/solve_time.py``'s graph; with
``--cache`` the traced Problems are kept as JSON and reused). Per graph: the floor, the smallest
peak each solver reaches (the ILP's ``min_peak``, exact when proven within the time limit; the
greedy's from a run under a cap of 0), and per budget (a ratio of the store-all peak) each
solver's added time, or "above floor" when its plan cannot meet the cap; budget "floor" is the
cap at the ILP's floor. Writes
``--out``.md and .json (default benchmarks/results/greedy).
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def problem_of(graph: str, cache: str | None):
    """The Problem of ``graph`` (with its repeated layers), traced or from the cache."""
    import importlib

    import remat
    from remat.problem import Problem
    from remat.structure import with_layers

    path = Path(cache) / f"{graph}.json" if cache else None
    if path is not None and path.exists():
        return with_layers(Problem.load(path))
    if graph == "gpt2_12":
        from solve_time import traced

        problem = traced(12, None, "gpt2")[0]
    else:
        net, inputs, loss_fn = importlib.import_module(graph).factory()
        problem = remat.analyze(net, inputs, loss_fn=loss_fn).problem
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        problem.save(path)
    return with_layers(problem)


def compare(graph: str, problem, budgets: list[str], time_limit: float) -> dict:
    """Floors and per-budget added times of the greedy and the ILP on one Problem."""
    from remat.config import parse_budget
    from remat.solvers import min_peak, solve
    from remat.solvers._core import Structure
    from remat.solvers.greedy import run_greedy
    from remat.simulate import store_all_peak

    st = Structure(problem)
    baseline = store_all_peak(problem)
    t0 = time.perf_counter()
    ilp_floor = min_peak(problem, time_limit=time_limit, _structure=st)
    t1 = time.perf_counter()
    greedy_floor = run_greedy(st, 0)[2]
    row = dict(graph=graph, activations=len(problem.activations), baseline=baseline, ilp_floor=ilp_floor,
               greedy_floor=greedy_floor, ilp_floor_s=t1 - t0, greedy_floor_s=time.perf_counter() - t1, caps=[])
    for b in budgets:
        cap = ilp_floor if b == "floor" else parse_budget(b).resolve(baseline)
        entry = dict(budget=b, cap=cap)
        for solver in ("ilp", "greedy"):
            t = time.perf_counter()
            try:
                plan = solve(problem, cap, solver, time_limit=time_limit, _structure=st)
                entry[solver] = dict(added_ms=plan.objective * 1e3, status=plan.status, s=time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - InfeasibleBudgetError: the cap is under its floor
                entry[solver] = dict(error=type(e).__name__, s=time.perf_counter() - t)
        row["caps"].append(entry)
    return row


def markdown(rows: list[dict]) -> str:
    from remat.errors import fmt_bytes

    out = ["| graph | activations | ILP floor | greedy floor (vs ILP) | budget | ILP added | greedy added (vs ILP) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        head = (f"| {r['graph']} | {r['activations']} | {fmt_bytes(r['ilp_floor'])} | "
                f"{fmt_bytes(r['greedy_floor'])} ({r['greedy_floor'] / r['ilp_floor'] - 1:+.1%}) |")
        for c in r["caps"]:
            ilp, gr = c["ilp"], c["greedy"]
            ilp_s = f"{ilp['added_ms']:.1f} ms" if "added_ms" in ilp else "above floor"
            if "added_ms" not in gr:
                gr_s = "above floor"
            elif "added_ms" in ilp and ilp["added_ms"] > 0:
                gr_s = f"{gr['added_ms']:.1f} ms ({gr['added_ms'] / ilp['added_ms'] - 1:+.1%})"
            else:
                gr_s = f"{gr['added_ms']:.1f} ms"
            out.append(f"{head} {c['budget']} | {ilp_s} | {gr_s} |")
            head = "| | | | |"
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", default="mlp,cnn,gpt,evoformer,gpt2_12")
    ap.add_argument("--budgets", default="75%,50%,floor", help='ratios of the store-all peak; "floor": the ILP\'s')
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--cache", default=None, help="folder for traced Problems (JSON)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/greedy"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = [compare(g, problem_of(g, args.cache), args.budgets.split(","), args.time_limit)
            for g in args.graphs.split(",")]
    table = markdown(rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(table)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
