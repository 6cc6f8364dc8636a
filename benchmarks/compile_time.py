"""Compile time of remat with measured op costs, cold and warm profile cache, vs plain torch.compile.

    python benchmarks/compile_time.py --quick                       # mlp, evoformer, gpt, cnn
    python benchmarks/compile_time.py --quick --models mlp --budget 75
    python benchmarks/compile_time.py --quick --models mlp,evoformer --built-now   # + kernels of every plan built

Per model, one fresh process each (``benchmarks/_run_config.py``), in this order: plain
torch.compile; remat at ``--budget`` % with the default cost model (the roofline on the CPU);
remat with ``cost_model="measured"`` and an empty profile cache (``REMAT_CACHE_DIR``, new per
model: every op signature is timed); the same again with the cache the previous run filled (warm:
nothing is timed). Every process gets an empty Inductor kernel cache (``TORCHINDUCTOR_CACHE_DIR``)
and no FX-graph or AOTAutograd cache, so each compiles everything itself and no row borrows the
kernels of the row before it. Compile time = first step minus a normal step (wall clock); beside
it the CPU time of the row's whole process and the processes it waited for (its C++ builds):
``resource.getrusage(RUSAGE_CHILDREN)``, which the other engineers' load on shared cores moves far
less than the wall clock, though it also counts the process's imports and timed steps; remat's planning time
(``partition_time_s``: capture, costs, solves), solve time, the plans the check loop compiled,
what priced the ops (measured, cached, roofline), the C++ libraries that the row's kernel cache
holds at its end (the kernels built, and Inductor's instruction-set probes: the same in every row)
and the load average before and after each row are shown next to it. Writes
``benchmarks/results/compile_time{,_quick}.{md,json}`` (``--out STEM``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _run_config import MODELS  # noqa: E402
from compare import RESULTS, run_one  # noqa: E402


BUILT_NOW = "remat, roofline, every plan's kernels built"  # the row run with REMAT_DEFER_KERNEL_BUILDS=0


def runs(budget: int, built_now: bool = False) -> list[tuple[str, str, str]]:
    """(label, configuration, profile cache) in the order they run; "fresh" empties the cache.
    ``built_now``: also remat with the roofline and every plan of the check loop built at compile
    time (``remat.deferred_kernels`` off), as before kernel builds were deferred."""
    rows = [("plain torch.compile", "compile", "fresh"), ("remat, roofline", f"remat_{budget}", "fresh"),
            ("remat, measured, cold cache", f"remat_{budget}@measured", "fresh"),
            ("remat, measured, warm cache", f"remat_{budget}@measured", "kept")]
    return rows[:2] + [(BUILT_NOW, f"remat_{budget}", "fresh")] + rows[2:] if built_now else rows


def measure_model(model: str, args: argparse.Namespace) -> list[dict]:
    """One model's rows, each compiled in a fresh process with an empty kernel cache."""
    rows, profile_dir = [], None
    for label, config, cache in runs(args.budget, args.built_now):
        if cache == "fresh":
            profile_dir = tempfile.mkdtemp(prefix="remat-profile-")
        env = {**os.environ, "REMAT_CACHE_DIR": profile_dir, "PYTHONWARNINGS": "ignore",
               "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="remat-inductor-"),
               "OMP_NUM_THREADS": str(args.threads), "REMAT_DEFER_KERNEL_BUILDS": "0" if label == BUILT_NOW else "1"}
        load, cpu = os.getloadavg()[0], _children_cpu_s()
        row = run_one(model, config, args.quick, steps=3, min_time=0.5, time_limit=args.time_limit,
                      timeout=args.timeout, env=env, threads=args.threads)
        row["label"], row["load"], row["process_cpu_s"] = label, (load, os.getloadavg()[0]), _children_cpu_s() - cpu
        row["libraries_built"] = sum(1 for _ in Path(env["TORCHINDUCTOR_CACHE_DIR"]).rglob("*.so"))
        rows.append(row)
        print(f"{model} / {label}: compile {row.get('compile_time_s', 0):.1f} s {row.get('error', '')}",
              file=sys.stderr, flush=True)
    return rows


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children and what they waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def table(rows: list[dict]) -> str:
    """Compile time per row and as a ratio to plain torch.compile's, per model; the process's CPU
    time the same way."""
    lines = ["| model | run | compile s | vs plain | process CPU s | vs plain | remat planning s | solve s | "
             "plans compiled | recomputed | C++ libraries built | profile cache | op costs | load before / after | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    plain = {r["model"]: r for r in rows if r["config"] == "compile"}
    for r in rows:
        ref = plain.get(r["model"], {})
        cells = [r["model"], r["label"], *_with_ratio(r, ref, "compile_time_s"), *_with_ratio(r, ref, "process_cpu_s"),
                 _fmt(r.get("partition_time_s"), ".1f"), _fmt(r.get("solve_time_s"), ".2f"),
                 _fmt(r.get("plans_made"), "d"), _fmt((r.get("decisions") or {}).get("recompute"), "d"),
                 _fmt(r.get("libraries_built"), "d"),
                 r.get("profile_cache", "-"), "; ".join(r.get("cost_notes") or []) or "-",
                 " / ".join(f"{x:.1f}" for x in r.get("load") or ()) or "-",
                 (r.get("error") or "")[:100].replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_ratio(r: dict, ref: dict, key: str) -> list[str]:
    """Row ``r``'s ``key`` and its ratio to plain torch.compile's row ``ref``."""
    x, base = r.get(key), ref.get(key)
    return [_fmt(x, ".1f"), _fmt(x / base if x and base else None, ".2f")]


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,evoformer,gpt,cnn", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--budget", type=int, default=75, help="remat's cap, %% of plain torch.compile's peak")
    ap.add_argument("--quick", action="store_true", help="the small sizes of _run_config.SIZES")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    ap.add_argument("--time-limit", type=float, default=30.0, help="remat's planning time limit (s)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one process may take")
    ap.add_argument("--built-now", action="store_true",
                    help="also run remat (roofline) with every check-loop plan's kernels built at compile time")
    ap.add_argument("--out", help="stem of the result files (default compile_time, compile_time_quick with --quick)")
    args = ap.parse_args(argv)
    stem = args.out or ("compile_time_quick" if args.quick else "compile_time")
    started, rows = time.perf_counter(), []
    for model in args.models.split(","):
        rows += measure_model(model, args)
        settings = {"quick": args.quick, "threads": args.threads, "budget": f"{args.budget}%",
                    "wall_s": round(time.perf_counter() - started), "load average": os.getloadavg()}
        (RESULTS / f"{stem}.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
        (RESULTS / f"{stem}.md").write_text(f"Settings: {json.dumps(settings)}.\n\n{table(rows)}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
