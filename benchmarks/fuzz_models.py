"""The model fuzzer's long run: random small models under random budgets, each trained two steps
under remat and in eager (``tests/e2e/test_fuzz_models.py:fuzz_case`` is the check).

    python benchmarks/fuzz_models.py [--examples 40] [--seed 0] [--out benchmarks/results/fuzz_models]

Cases are drawn by hypothesis from ``--seed`` (the same seed draws the same cases; no shrinking).
Prints one line per case and a summary table; writes ``OUT.json`` (every case: spec, budget, loss
inside or not, outcome, cap, measured peak, seconds) and ``OUT.md`` (the summary and the failures,
each with the spec to replay it: ``fuzz_case(FuzzSpec(...), budget, loss_inside)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cases(examples: int, seed: int, on_case) -> None:
    """Draw ``examples`` cases from ``seed`` with hypothesis and call ``on_case`` on each."""
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as hst

    from tests.e2e.test_fuzz_models import budgets, fuzz_specs

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=fuzz_specs(), budget=budgets, loss_inside=hst.booleans())
    def draw(spec, budget, loss_inside):
        torch._dynamo.reset()
        on_case(spec, budget, loss_inside)

    with torch._inductor.config.patch(fallback_random=True, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        draw()


def summary(cases: list[dict], wall: float) -> str:
    counts = {s: sum(c["status"] == s for c in cases) for s in ("ok", "refused", "scratch", "known", "fail")}
    lines = ["| cases | ok | refused (floor above the cap) | over the cap by extern scratch only "
             "| over the cap in a known gap | fail | wall s |", "|---|---|---|---|---|---|---|",
             f"| {len(cases)} | {counts['ok']} | {counts['refused']} | {counts['scratch']} | {counts['known']} "
             f"| {counts['fail']} | {wall:.0f} |"]
    fails = [c for c in cases if c["status"] not in ("ok", "refused")]
    if fails:
        lines += ["", "## Failures and peaks over the cap", ""]
        lines += [f"- {c['status']}: `fuzz_case({c['spec']}, {tuple(c['budget'])}, loss_inside={c['loss_inside']})`: "
                  f"{c['detail'].strip().splitlines()[0][:300]}" for c in fails]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from tests.e2e.test_fuzz_models import fuzz_case

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fuzz_models"))
    args = ap.parse_args(argv)
    cases, t0 = [], time.perf_counter()

    def on_case(spec, budget, loss_inside):
        t = time.perf_counter()
        outcome = fuzz_case(spec, budget, loss_inside)
        cases.append(dict(spec=repr(spec), budget=list(budget), loss_inside=loss_inside,
                          seconds=round(time.perf_counter() - t, 1), **dataclasses.asdict(outcome)))
        print(f"{len(cases)}: {outcome.status} {spec} {budget} loss_inside={loss_inside} cap={outcome.cap} "
              f"measured={outcome.measured} {outcome.detail.strip().splitlines()[0][:200] if outcome.detail else ''}",
              flush=True)

    run_cases(args.examples, args.seed, on_case)
    wall = time.perf_counter() - t0
    text = summary(cases, wall)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(examples=args.examples, seed=args.seed, wall_s=wall,
                                                        cases=cases), indent=1))
    out.with_suffix(".md").write_text(f"# Model fuzzer: `python benchmarks/fuzz_models.py --examples "
                                      f"{args.examples} --seed {args.seed}`\n\n" + text)


if __name__ == "__main__":
    main()
