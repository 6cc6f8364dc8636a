"""Side-by-side: each example model under eager, checkpointing, Inductor, Inductor's
activation_memory_budget and remat at several caps, in one run, one fresh process per configuration.

    python benchmarks/compare.py                  # gpt, evoformer, cnn at default sizes
    python benchmarks/compare.py --quick          # smaller sizes, shorter timing
    python benchmarks/compare.py --models cnn --configs compile,remat_50
    python benchmarks/compare.py --models hf_llama --configs compile,amb_0.5,remat_min --equal-peak

Columns: measured step peak (profiler allocation events on CPU, above the memory allocated before
the step), remat's predicted peak, the peak read from Inductor's generated code, each of those two
over the measured peak (summed over a step's graphs: the runner reports totals), step time (median
of unprofiled steps) as a ratio to plain torch.compile and, for remat's plans, measured and
predicted as a ratio to remat's store-all plan (``remat_100``: the baseline of remat's predicted
added time), compile time (first step minus a normal step), remat's solve time, and the largest
absolute gradient difference from eager with the same seed. A configuration listed twice runs
twice (``compile`` again at the end: the noise between two processes of the same code). With ``--equal-peak``, remat also runs
at a cap equal to each ``amb_*`` row's measured peak (rows ``remat_<bytes>B``, note "= amb_0.5's
peak"): the price of remat's plan against torch's at the same peak. With ``--min-as-cap``, remat
also runs at a byte cap equal to each ``remat_min`` row's reported cap (note "= remat_min's
cap"): the floor that remat reports, used as a cap ("meas / cap" says how close the step comes to
it). The ``compile`` and ``amb_*`` rows read their code's peak too, as remat's check reads it
(backward compiled with the forward). Prints markdown tables, writes
``benchmarks/results/compare.json`` (``compare_quick.json`` with --quick), the tables as ``.md``
and one PNG per model (``compare_<model>.png``: measured peak vs step time).

Every configuration compiles from scratch (no FX-graph or AOTAutograd cache); the Inductor kernel
cache on disk (``TORCHINDUCTOR_CACHE_DIR``, by default a directory under the system temp dir) is
shared by the configurations of a run, so identical kernels are built once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _run_config import CONFIGS, HF_MODELS, MODELS, valid_config  # noqa: E402

RESULTS = HERE / "results"


def fmt_mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def run_one(model: str, config: str, quick: bool, steps: int, min_time: float, time_limit: float, timeout: float,
            env: dict, threads: int = 2) -> dict:
    cmd = [sys.executable, str(HERE / "_run_config.py"), "--model", model, "--config", config, "--steps", str(steps),
           "--min-time", str(min_time), "--time-limit", str(time_limit), "--threads", str(threads)]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": model, "config": config, "quick": quick, "error": f"timed out after {timeout:.0f} s",
                "wall_s": time.perf_counter() - t0}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": model, "config": config, "quick": quick, "error": f"runner exited {p.returncode}: {tail}"[:300],
            "wall_s": time.perf_counter() - t0}


def add_ratios(rows: list[dict]) -> None:
    """Each row's peak and step time over plain compile's; a remat plan's measured and predicted
    added time over remat's store-all step (``remat_100``, the prediction's baseline)."""
    ref = next((r for r in rows if r["config"] == "compile" and r.get("step_time_s")), None)
    store_all = next((r for r in rows if r["config"] == "remat_100" and r.get("step_time_s")), None)
    for r in rows:
        if ref and r.get("step_time_s"):
            r["step_time_ratio"] = r["step_time_s"] / ref["step_time_s"]
        if store_all and r.get("step_time_s") and r.get("predicted_added_s") is not None:
            r["over_store_all"] = r["step_time_s"] / store_all["step_time_s"]
            r["predicted_over_store_all"] = 1 + r["predicted_added_s"] / store_all["step_time_s"]
        if ref and r.get("measured_peak_bytes") is not None and ref.get("measured_peak_bytes"):
            r["peak_ratio"] = r["measured_peak_bytes"] / ref["measured_peak_bytes"]
        if r.get("budget_bytes") and r.get("measured_peak_bytes") is not None and r["config"] != "remat_100":
            r["measured_over_cap"] = r["measured_peak_bytes"] / r["budget_bytes"]
        for key in ("predicted", "inductor"):  # the model's and the code's figure against the measurement
            if r.get(f"{key}_peak_bytes") and r.get("measured_peak_bytes"):
                r[f"{key}_over_measured"] = r[f"{key}_peak_bytes"] / r["measured_peak_bytes"]


def _note(r: dict) -> str:
    """What a row's note says: its error, or its decisions; where its cap came from; its costs."""
    note = r.get("error", "")
    if note.startswith("InfeasibleBudgetError") and r.get("min_peak_bytes"):
        note = f"infeasible: smallest reachable peak {fmt_mib(r['min_peak_bytes'])} MiB"
    if not note and r.get("decisions"):
        d = r["decisions"]
        note = f"{d.get('recompute', 0)} recompute, {d.get('store', 0)} store"
        if d.get("offload"):
            note += f", {d['offload']} offload"
        if "plain torch.compile" in (r.get("compiled_with") or []):
            note += " (plan not run: plain torch.compile met the cap)"
    if r.get("profile_cache"):
        note = f"measured costs, {r['profile_cache']} profile cache; {note}"
    if r.get("equal_peak_of"):
        note = f"cap = {r['equal_peak_of']}'s measured peak; {note}"
    if r.get("cap_of"):
        note = f"cap = {r['cap_of']}'s cap; {note}"
    return note


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table(rows: list[dict]) -> str:
    head = ("| config | measured peak MiB | vs compile | predicted peak MiB | Inductor code MiB | pred / meas "
            "| code / meas | cap MiB | meas / cap | step ms (median) | best ms | step / compile | step / store-all "
            "| predicted / store-all | compile s | solve s | grad err vs eager | note |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        err = r.get("grad_max_abs_err")
        note = _note(r)
        lines.append(
            "| {config} | {mp} | {pr} | {pp} | {ip} | {pm} | {im} | {cap} | {mc} | {st} | {best} | {ratio} | {sa} | {psa} "
            "| {ct} | {sv} | {ge} | {note} |".format(
                config=r["config"],
                mp=fmt_mib(r.get("measured_peak_bytes")),
                pr=f"{r['peak_ratio']:.2f}" if r.get("peak_ratio") is not None else "-",
                pp=fmt_mib(r.get("predicted_peak_bytes")),
                ip=fmt_mib(r.get("inductor_peak_bytes")),
                pm=_ratio(r.get("predicted_over_measured")),
                im=_ratio(r.get("inductor_over_measured")),
                cap=fmt_mib(r.get("budget_bytes")) if r.get("budget_bytes") and r["config"] != "remat_100" else "-",
                mc=_ratio(r.get("measured_over_cap")),
                st=f"{1e3 * r['step_time_s']:.1f}" if r.get("step_time_s") else "-",
                best=f"{1e3 * r['step_time_min_s']:.1f}" if r.get("step_time_min_s") else "-",
                ratio=f"{r['step_time_ratio']:.2f}" if r.get("step_time_ratio") else "-",
                sa=_ratio(r.get("over_store_all")),
                psa=_ratio(r.get("predicted_over_store_all")),
                ct=f"{r['compile_time_s']:.1f}" if r.get("compile_time_s") else "-",
                sv=f"{r['solve_time_s']:.2f}" if r.get("solve_time_s") is not None else "-",
                ge="-" if err is None else f"{err:.1e}",
                note=note.replace("|", "/"),
            )
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,evoformer,cnn",
                    help=f"comma-separated, from {', '.join(MODELS + HF_MODELS)}")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the configurations")
    ap.add_argument("--quick", action="store_true", help="smaller models and shorter timing")
    ap.add_argument("--steps", type=int, default=None, help="unprofiled steps to time at least (default 10, --quick 5)")
    ap.add_argument("--min-time", type=float, default=None, help="time steps for at least this long (default 3 s, --quick 1.5 s)")
    ap.add_argument("--time-limit", type=float, default=None, help="remat solver time limit (default 60 s, --quick 30 s)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one configuration may take")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every configuration (default 2)")
    ap.add_argument("--out", default=None,
                    help="JSON output path (default benchmarks/results/compare.json, --quick: compare_quick.json)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--equal-peak", action="store_true",
                    help="also run remat at a cap equal to each amb_* row's measured peak")
    ap.add_argument("--min-as-cap", action="store_true",
                    help="also run remat at a byte cap equal to each remat_min row's reported cap")
    args = ap.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [m for m in models if m not in MODELS + HF_MODELS] + [c for c in configs if not valid_config(c)]
    if bad:
        print(f"compare: unknown model or config {', '.join(bad)}; models: {', '.join(MODELS + HF_MODELS)}; "
              f"configs: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    steps = args.steps or (5 if args.quick else 10)
    min_time = args.min_time if args.min_time is not None else (1.5 if args.quick else 3.0)
    time_limit = args.time_limit or (30.0 if args.quick else 60.0)
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "remat-bench-inductor"))
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env["PYTHONWARNINGS"] = "ignore"
    out_path = Path(args.out or RESULTS / ("compare_quick.json" if args.quick else "compare.json"))
    out_path.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict = {"quick": args.quick, "threads": args.threads, "steps": steps, "min_time": min_time, "time_limit": time_limit, "python": sys.version.split()[0],
                     "models": {}}
    try:
        import torch

        results["torch"] = torch.__version__
    except Exception:  # pragma: no cover
        pass
    tables = []
    for model in models:
        rows: list[dict] = []
        todo = [(c, None) for c in configs]
        while todo:
            config, of = todo.pop(0)
            t0 = time.perf_counter()
            print(f"[{time.perf_counter() - started:6.0f} s] {model} / {config} ...", file=sys.stderr, flush=True)
            row = run_one(model, config, args.quick, steps, min_time, time_limit, args.timeout, env, args.threads)
            if of:
                row["equal_peak_of" if of.startswith("amb_") else "cap_of"] = of
            msg = row.get("error") or (f"peak {fmt_mib(row.get('measured_peak_bytes'))} MiB, "
                                       f"step {1e3 * row.get('step_time_s', 0):.1f} ms")
            print(f"           {model} / {config}: {msg} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            rows.append(row)
            if args.equal_peak and config.startswith("amb_") and row.get("measured_peak_bytes"):
                todo.append((f"remat_{row['measured_peak_bytes']}B", config))
            if args.min_as_cap and config.split("@")[0] == "remat_min" and row.get("budget_bytes"):
                costs = config.partition("@")[2]
                todo.append((f"remat_{row['budget_bytes']}B" + (f"@{costs}" if costs else ""), config))
            add_ratios(rows)
            results["models"][model] = rows
            out_path.write_text(json.dumps(results, indent=1))  # partial results survive an interruption
        add_ratios(rows)
        sizes = next((r.get("sizes") for r in rows if r.get("sizes") is not None), {})
        params = next((r.get("parameters") for r in rows if r.get("parameters")), None)
        title = f"## {model}" + (f" ({params / 1e6:.2f} M parameters" if params else " (") + \
                (f", {', '.join(f'{k}={v}' for k, v in sizes.items())})" if sizes else ", default sizes)")
        text = f"{title}\n\n{table(rows)}\n"
        print(text, flush=True)
        tables.append(text)
        if not args.no_plot:
            from remat.plots import plot_benchmark

            png = plot_benchmark(rows, out_path.parent / f"{out_path.stem}_{model}.png",
                                 title=f"{model}: measured step peak vs step time" + (" (quick)" if args.quick else ""))
            print(f"wrote {png}\n", flush=True)
    results["wall_s"] = time.perf_counter() - started
    out_path.write_text(json.dumps(results, indent=1))
    (out_path.with_suffix(".md")).write_text("\n".join(tables))
    print(f"wrote {out_path} and {out_path.with_suffix('.md')} in {results['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
