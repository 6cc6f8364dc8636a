"""The solver fuzzer's long run: thousands of random Problems through every solver and the simulator.

    python benchmarks/fuzz_solvers.py [--problems 2000] [--seed 0] [--max-acts 16]

Problem ``i`` is ``synthetic.fuzz_problem(random.Random(seed + i))`` at the cap fraction drawn
next from that generator (``tests/unit/test_solver_fuzz.py:solver_failures`` gives the checks; its
CI slice runs a fixed few dozen). Prints problems tried, failures (with their seeds, to replay
one: ``--seed SEED --problems 1``) and wall time; writes benchmarks/results/fuzz_solvers.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    from tests.unit.synthetic import fuzz_problem
    from tests.unit.test_solver_fuzz import solver_failures

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-acts", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fuzz_solvers.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    failures, sizes, offload = [], [], 0
    for seed in range(args.seed, args.seed + args.problems):
        rng = random.Random(seed)
        p = fuzz_problem(rng, max_acts=args.max_acts)
        frac = rng.uniform(-0.2, 1.0)
        sizes.append(len(p.activations))
        offload += p.host_bandwidth > 0
        try:
            found = solver_failures(p, frac)
        except Exception as e:  # a crash is a failure too
            found = [f"crash: {type(e).__name__}: {e}"]
        if found:
            failures.append(dict(seed=seed, frac=frac, failures=found))
            print(f"seed {seed}: " + "; ".join(found[:3]), flush=True)
    wall = time.perf_counter() - t0
    print("| problems | with offload | mean activations | failures | wall s |")
    print("|---|---|---|---|---|")
    print(f"| {args.problems} | {offload} | {sum(sizes) / max(1, len(sizes)):.1f} | {len(failures)} | {wall:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(problems=args.problems, seed=args.seed, max_acts=args.max_acts,
                                              with_offload=offload, failures=failures, wall_s=wall), indent=1))


if __name__ == "__main__":
    main()
