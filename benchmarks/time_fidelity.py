"""Time fidelity: remat's predicted added step time vs the measured one, per cost model.

    python benchmarks/time_fidelity.py --quick                  # mlp, gpt, cnn, evoformer, small sizes
    python benchmarks/time_fidelity.py --models gpt --cost-models measured

For each model and cost model (``roofline`` at 2 threads, ``measured`` at 1 thread: on 2 shared
cores, op timings at 2 threads measure scheduling contention), plain torch.compile and remat at
75 %, 50 % and the floor ("min") each run in a fresh process (``benchmarks/_run_config.py``, as
``benchmarks/compare.py`` runs them). Measured added time = remat's median step minus plain
compile's median step of the same run; predicted = the plan's added time (sum over graphs). Both
are shown as a share of plain compile's step; "rank ok" says whether the measured step times of
the caps order as their predicted added times do. Measured costs are cached in a fresh
``REMAT_CACHE_DIR`` per run, so the first remat configuration of a model measures and the later
ones read the cache. Writes ``benchmarks/results/time_fidelity.{md,json}`` (``_quick`` with --quick,
then ``--tag``). ``--threads 1`` runs both cost models at one thread: at two threads on a busy 2-core
machine, whole runs fall into a slow mode (OpenMP threads waiting for cores) that no median removes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _run_config  # noqa: E402
from compare import RESULTS, fmt_mib  # noqa: E402

CONFIGS = ("compile", "remat_75", "remat_50", "remat_min")
COST_MODELS = ("roofline", "measured")
THREADS = {"roofline": 2, "measured": 1}


def worker(args: argparse.Namespace) -> int:
    """One configuration in this process: ``_run_config.run`` with the cost model added to remat's
    options and the thread count fixed (run() sets 2 threads and knows no cost_model)."""
    import torch

    compile_, set_threads = torch.compile, torch.set_num_threads

    def compile_with_cost_model(fn, *a, backend="inductor", options=None, **kw):
        if backend == "remat":
            options = {**(options or {}), "cost_model": args.cost_model}
        return compile_(fn, *a, backend=backend, options=options, **kw)

    torch.compile = compile_with_cost_model
    torch.set_num_threads = lambda _n: set_threads(args.threads)
    out = _run_config.run(args.model, args.config, args.quick, args.steps, args.time_limit, args.min_time)
    out.update(cost_model=args.cost_model, threads=torch.get_num_threads())  # cost_notes: from run()
    print(json.dumps(out), flush=True)
    return 0


def run_one(model: str, config: str, cost_model: str, threads: int, args: argparse.Namespace, env: dict) -> dict:
    """One configuration in a fresh process (``compare.run_one``'s protocol: the last JSON line)."""
    import subprocess

    cmd = [sys.executable, __file__, "--worker", "--model", model, "--config", config, "--cost-model", cost_model,
           "--threads", str(threads), "--steps", str(args.steps), "--min-time", str(args.min_time),
           "--time-limit", str(args.time_limit)] + (["--quick"] if args.quick else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"model": model, "config": config, "cost_model": cost_model, "error": f"timed out after {args.timeout} s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": model, "config": config, "cost_model": cost_model, "error": f"exited {p.returncode}: {tail}"[:300]}


def fidelity_rows(rows: list[dict]) -> list[dict]:
    """Per remat row: predicted and measured added time, as ms and as a share of compile's step."""
    out = []
    for r in rows:
        ref = next((c for c in rows if c["config"] == "compile" and c["model"] == r["model"]
                    and c["cost_model"] == r["cost_model"] and c.get("step_time_s")), None)
        if r["config"] == "compile" or ref is None:
            continue
        row = {k: r.get(k) for k in ("model", "cost_model", "config", "budget_bytes", "measured_peak_bytes",
                                      "predicted_added_s", "step_time_s", "error", "cost_notes", "decisions")}
        row["compile_step_s"] = ref["step_time_s"]
        if r.get("step_time_s") and r.get("predicted_added_s") is not None:
            row["measured_added_s"] = r["step_time_s"] - ref["step_time_s"]
            row["predicted_pct"] = 100 * r["predicted_added_s"] / ref["step_time_s"]
            row["measured_pct"] = 100 * row["measured_added_s"] / ref["step_time_s"]
        out.append(row)
    return out


def rank_agrees(rows: list[dict]) -> bool | None:
    """Whether the measured step times of one model's caps order as their predicted added times."""
    done = [r for r in rows if r.get("measured_pct") is not None]
    if len(done) < 2:
        return None
    by_pred = [r["config"] for r in sorted(done, key=lambda r: r["predicted_added_s"])]
    by_meas = [r["config"] for r in sorted(done, key=lambda r: r["step_time_s"])]
    return by_pred == by_meas


def table(fid: list[dict]) -> str:
    lines = ["| model | cost model | config | cap MiB | measured peak MiB | compile step ms | predicted +ms "
             "| measured +ms | predicted % | measured % | diff pp | rank ok | costs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in fid:
        groups.setdefault((r["model"], r["cost_model"]), []).append(r)
    for (model, cost_model), rows in groups.items():
        ok = rank_agrees(rows)
        for r in rows:
            done = r.get("measured_pct") is not None
            note = _short_error(r) or "; ".join(sorted(set(r.get("cost_notes") or [])))
            lines.append("| " + " | ".join([
                model, cost_model, r["config"], fmt_mib(r.get("budget_bytes")), fmt_mib(r.get("measured_peak_bytes")),
                f"{1e3 * r['compile_step_s']:.1f}",
                f"{1e3 * r['predicted_added_s']:.1f}" if r.get("predicted_added_s") is not None else "-",
                f"{1e3 * r['measured_added_s']:.1f}" if done else "-",
                f"{r['predicted_pct']:.1f}" if done else "-", f"{r['measured_pct']:.1f}" if done else "-",
                f"{r['measured_pct'] - r['predicted_pct']:+.1f}" if done else "-",
                "-" if ok is None else ("yes" if ok else "no"), note.replace("|", "/"),
            ]) + " |")
    return "\n".join(lines)


def _short_error(r: dict) -> str:
    """An error for a table cell: a cap under the floor as "infeasible", others cut short."""
    err = r.get("error") or ""
    if err.startswith("InfeasibleBudgetError"):
        return "infeasible: the cap is under the smallest reachable peak"
    return err[:80]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,gpt,cnn,evoformer")
    ap.add_argument("--cost-models", default=",".join(COST_MODELS))
    ap.add_argument("--quick", action="store_true", help="the small sizes of _run_config.SIZES")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--threads", type=int, help="torch threads of every run (default: roofline 2, measured 1)")
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--cost-model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    env = {**os.environ, "REMAT_CACHE_DIR": tempfile.mkdtemp(prefix="remat-profile-")}
    rows: list[dict] = []
    for model in args.models.split(","):
        for cost_model in args.cost_models.split(","):
            for config in CONFIGS:
                rows.append(run_one(model, config, cost_model, args.threads or THREADS[cost_model], args, env))
                print(json.dumps({k: rows[-1].get(k) for k in ("model", "cost_model", "config", "step_time_s",
                                                               "predicted_added_s", "error")}), flush=True)
                write_results(rows, ("time_fidelity_quick" if args.quick else "time_fidelity") + args.tag)
    print(table(fidelity_rows(rows)))
    return 0


def write_results(rows: list[dict], stem: str) -> None:
    """The rows so far as ``<stem>.json`` and the fidelity table as ``<stem>.md`` (after every
    configuration, so that a run stopped early keeps what it measured)."""
    fid = fidelity_rows(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows, "fidelity": fid}, indent=1))
    (RESULTS / f"{stem}.md").write_text(table(fid) + "\n")


if __name__ == "__main__":
    sys.exit(main())
