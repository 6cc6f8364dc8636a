"""Speed of the plan simulator on large random problems (the figure that no test asserts).

    python benchmarks/simulate_speed.py [--sizes 2500,5000,10000] [--repeat 5]

For each size N: a problem of 2N forward slots, 2N backward slots and N activations, with a plan
that STOREs, RECOMPUTEs and OFFLOADs by turns (``tests/unit/synthetic.py:large_problem``; N=5000
is the size the old timed test used, then asserted under 1 s). ``simulate`` is timed ``--repeat``
times on the same plan. Prints a markdown table and writes benchmarks/results/simulate_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))


def measure(size: int, repeat: int) -> dict:
    """Build the problem of ``size`` activations and time ``simulate`` on its plan."""
    from remat.plan import Decision
    from remat.simulate import simulate

    from synthetic import large_problem

    problem, plan = large_problem(forward=2 * size, backward=2 * size, activations=size)
    problem.earliest_slots, problem.consumers  # cached on the problem: not the simulator's cost
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tl = simulate(problem, plan)
        times.append(time.perf_counter() - t0)
    if not tl.ok:
        raise SystemExit(f"size {size}: the plan is invalid: {tl.errors[:3]}")
    return dict(slots=len(problem.slots), activations=len(problem.activations), needed=len(tl.needed),
                offloaded=sum(1 for d in plan.values() if d is Decision.OFFLOAD),
                min_s=min(times), median_s=statistics.median(times), repeat=repeat)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2500,5000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/simulate_speed.json"))
    args = ap.parse_args(argv)
    rows = [dict(size=int(s), **measure(int(s), args.repeat)) for s in args.sizes.split(",")]
    print("| activations | slots | needed | offloaded | simulate min s | median s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['activations']} | {r['slots']} | {r['needed']} | {r['offloaded']} | "
              f"{r['min_s']:.3f} | {r['median_s']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(rows=rows), indent=1))


if __name__ == "__main__":
    main()
