"""Memory fidelity: remat's predicted peaks next to Inductor's estimates and the measured peaks.

    python benchmarks/fidelity.py                       # examples (quick sizes) and transformers models
    python benchmarks/fidelity.py --models gpt,hf_llama --jobs 1
    python benchmarks/fidelity.py --models mlp --configs compile,remat_min --loss-outside   # model compiled alone

For each model, four configurations, each in a fresh process (``benchmarks/_run_config.py``'s
``run``, which loads the examples and the transformers models of ``benchmarks/hf_models.py``):

compile    plain ``torch.compile``: measured peak; Inductor's own estimate (both graphs) and the peak
           read from its code; remat's predicted peak of the store-all plan and of plain compile's
           min-cut partition (``remat.baseline``), both on the same captured Problem; and that
           partition's peak predicted by the model told plain compile's kernels, as the check loop
           tells it the last compile's (recomputations inlined in a kernel, buffers taken over)
remat_75   remat at a cap of 75 % / 50 % of plain torch.compile's peak (read from its code): cap,
remat_50   predicted peak, the peak of Inductor's code (``GraphReport.inductor_peak_bytes``), measured
remat_min  remat at memory_budget="min": the same figures at the smallest peak it reaches

For each remat configuration also the first plan of the check loop: its predicted peak over its
code's (what the model alone, before any compile, gets right), and the plans kept / compiled.

Writes ``benchmarks/results/fidelity.json`` after every configuration and ``fidelity.md`` at the
end. Peaks are above what was resident before the step (profiler allocation events on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _run_config  # noqa: E402
from compare import fmt_mib  # noqa: E402

RESULTS = HERE / "results"
CONFIGS = ("compile", "remat_75", "remat_50", "remat_min")
MODELS = _run_config.MODELS + _run_config.HF_MODELS


# ---- worker: one configuration of one model, in this process ----------------------------------


def plain_compile_predictions(name: str, quick: bool, kernel_groups=None) -> dict:
    """remat's predicted peaks of store-all and of plain compile's min-cut plan (one graph,
    traced on fake tensors, stopped after planning): the model alone, and, given
    ``kernel_groups`` (the kernels of plain compile's code), the model told those kernels as the
    check loop tells it the last compile's (``remat.kernel_groups``)."""
    from remat.solvers._core import Structure

    model, inputs, loss_fn, _ = _run_config.load_example(name, quick)
    t0 = time.perf_counter()
    rep = _plain_plan_report(model, inputs, loss_fn, None)
    info = rep.plan.info
    out = {"store_all_predicted_bytes": rep.baseline_peak_bytes, "plain_predicted_bytes": rep.timeline.peak_bytes,
           "plain_plan_errors": list(rep.timeline.errors[:3]), "plain_plan_s": time.perf_counter() - t0,
           "min_cut_saved_not_activations": info["saved_not_activations"],
           "min_cut_saved_not_activations_bytes": info["saved_not_activations_bytes"],
           "any_plan_bound_bytes": Structure(rep.captured.problem).lower_bound_peak()}
    if kernel_groups is not None:
        told = _plain_plan_report(model, inputs, loss_fn, kernel_groups)
        out["plain_predicted_with_kernels_bytes"] = told.timeline.peak_bytes
        out["plain_with_kernels_errors"] = list(told.timeline.errors[:3])
    return out


def _plain_plan_report(model, inputs, loss_fn, kernel_groups):
    """The GraphReport of plain compile's min-cut plan on the model's captured Problem: without
    ``kernel_groups``, the model alone, in the backward order plain Inductor's peak-memory pass keeps
    (``remat.planning.plain_compile_report``; its store-all peak and any plan's bound are in that
    order too); with them, told to the capture and the simulator as the check loop tells a plan."""
    from torch._inductor.custom_graph_pass import CustomPartitionerFn

    from remat.analyze import capture_step
    from remat.backend import _Stop
    from remat.baseline import plain_compile_plan, plain_compile_problem
    from remat.config import RematConfig
    from remat.planning import GraphReport, plain_compile_report, plan_joint_graph
    from remat.simulate import simulate

    class PlainCompilePlanner(CustomPartitionerFn):
        def __call__(self, gm, joint_inputs, **kw):
            n, static = kw["num_fwd_outputs"], kw.get("static_lifetime_input_indices")
            cfg = RematConfig.from_options({"solver": "store_all"})
            if kernel_groups is None:  # the model alone: plain compile in the order plain Inductor keeps
                raise _Stop(plain_compile_report(gm, n, static, cfg))
            report, (joint, _) = plan_joint_graph(gm, n, static, cfg, kernel_groups=kernel_groups)
            plan = plain_compile_plan(joint, report.captured, n, static)
            timeline = simulate(plain_compile_problem(joint, report.captured.problem, plan), plan)
            raise _Stop(GraphReport(report.captured, plan, timeline, report.baseline_peak_bytes, None))

        def uuid(self):
            return None

    return capture_step(model, inputs, loss_fn, PlainCompilePlanner())


def worker(name: str, config: str, quick: bool) -> dict:
    """Run one configuration (``_run_config.run``) and add the figures this benchmark needs: for
    plain compile, the scheduler's estimate, the code's peak and the kernels, from the
    ``InductorPeaks`` that ``_run_config`` reads plain compile's code with (``_made_peaks``)."""
    with _made_peaks() as made, _plans_tried() as tried:
        out = _run_config.run(name, config, quick, steps=1, time_limit=30.0, min_time=0.0)
    if tried:  # the check loop's plans (of the step's first graph): the first plan's fidelity and the compiles
        first = tried[0]
        out.update(first_plan_predicted_bytes=first[0], first_plan_code_bytes=first[1],
                   plans_compiled=sum(1 for t in tried if t[2] == first[2]))
    if config == "compile" and not _run_config.LOSS_OUTSIDE:  # the model's predictions trace model + loss
        peaks = next((p for p in reversed(made) if p.codes), None)
        groups = peaks.kernel_groups if peaks is not None else None
        out["plain_code_peak_bytes"] = peaks.peak_bytes if peaks is not None else None
        out["inductor_peak_bytes"] = max(peaks.peaks) if peaks is not None and peaks.peaks else None
        out.update(plain_compile_predictions(name, quick, groups))
    return out  # remat configurations: _run_config records Inductor's peak and the reference


@contextlib.contextmanager
def _made_peaks():
    """The ``remat.inductor_check.InductorPeaks`` made while the block runs (``_run_config``'s
    ``warmed_up_reading_code`` makes one for plain compile), in order."""
    import remat.inductor_check as inductor_check

    made, cls = [], inductor_check.InductorPeaks

    class Recorded(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    inductor_check.InductorPeaks = Recorded
    try:
        yield made
    finally:
        inductor_check.InductorPeaks = cls


@contextlib.contextmanager
def _plans_tried():
    """(predicted peak, code's peak, graph name) of every plan that remat's check loop compiles
    while the block runs (``remat.backend._compile_checked``), in order."""
    import remat.backend as backend

    tried, compile_checked = [], backend._compile_checked

    def recorded(gm, example_inputs, cfg, name, *args, **kwargs):
        out = compile_checked(gm, example_inputs, cfg, name, *args, **kwargs)
        report, estimate = out[1], out[2]
        if report is not None and estimate is not None:
            tried.append((report.timeline.peak_bytes, estimate, name))
        return out

    backend._compile_checked = recorded
    try:
        yield tried
    finally:
        backend._compile_checked = compile_checked


# ---- parent: every configuration in a fresh process --------------------------------------------


def run_one(name: str, config: str, quick: bool, timeout: float, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--models", name, "--configs", config]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "config": config, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "config": config, "error": f"worker exited {p.returncode}: {tail}"[:300],
            "wall_s": time.perf_counter() - t0}


def _ratio(a, b) -> str:
    return f"{a / b:.3f}" if a and b else "-"


def summary_row(name: str, rows: dict) -> dict:
    """One model's figures: the compile row's predictions and measurement, each cap's figures."""
    c = rows.get("compile", {})
    out = {"model": name, "plain_measured": c.get("measured_peak_bytes"),
           "plain_inductor": c.get("inductor_peak_bytes"), "store_all_predicted": c.get("store_all_predicted_bytes"),
           "plain_predicted": c.get("plain_predicted_bytes"), "plain_code": c.get("plain_code_peak_bytes"),
           "plain_predicted_with_kernels": c.get("plain_predicted_with_kernels_bytes"),
           "any_plan_bound": c.get("any_plan_bound_bytes"), "errors": {}}
    for config in CONFIGS[1:]:
        r = rows.get(config, {})
        if r.get("error"):
            out["errors"][config] = r["error"]
        out[config] = {k: r.get(k) for k in ("budget_bytes", "predicted_peak_bytes", "inductor_peak_bytes",
                                             "measured_peak_bytes", "plans_made", "first_plan_predicted_bytes",
                                             "first_plan_code_bytes", "plans_compiled")}
    if c.get("error"):
        out["errors"]["compile"] = c["error"]
    return out


def table(summaries: list[dict]) -> str:
    head = ("| model | plain meas. | plain Ind. est. | plain code | store-all pred. | plain pred. | plain pred/meas "
            "| plain pred. told its kernels | pred/meas "
            + "".join(f"| {c[6:]}%: cap | pred. | Ind. est. | meas. | pred/meas | meas/cap | meas/plain meas "
                      "| 1st plan pred/code | plans kept/compiled " for c in CONFIGS[1:])
            + "|")
    lines = ["All peaks in MiB above what was resident before the step; caps are % of plain torch.compile's peak (read from its compiled code).",
             "", head, "|---" * (9 + 9 * len(CONFIGS[1:])) + "|"]
    for s in summaries:
        cells = [s["model"], fmt_mib(s["plain_measured"]), fmt_mib(s["plain_inductor"]), fmt_mib(s.get("plain_code")),
                 fmt_mib(s["store_all_predicted"]), fmt_mib(s["plain_predicted"]),
                 _ratio(s["plain_predicted"], s["plain_measured"]), fmt_mib(s.get("plain_predicted_with_kernels")),
                 _ratio(s.get("plain_predicted_with_kernels"), s["plain_measured"])]
        for config in CONFIGS[1:]:
            r = s[config]
            cells += [fmt_mib(r["budget_bytes"]), fmt_mib(r["predicted_peak_bytes"]), fmt_mib(r["inductor_peak_bytes"]),
                      fmt_mib(r["measured_peak_bytes"]), _ratio(r["predicted_peak_bytes"], r["measured_peak_bytes"]),
                      _ratio(r["measured_peak_bytes"], r["budget_bytes"]), _ratio(r["measured_peak_bytes"], s["plain_measured"]),
                      _ratio(r.get("first_plan_predicted_bytes"), r.get("first_plan_code_bytes")),
                      f"{r['plans_made'] or '-'}/{r.get('plans_compiled') or '-'}"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"- {s['model']} {c}: {e}" for s in summaries for c, e in s["errors"].items()]
    notes = ["", worst_gap(summaries), "", any_plan_bounds(summaries)] + ([""] + errors if errors else [])
    return "\n".join(lines + notes)


def any_plan_bounds(summaries: list[dict]) -> str:
    """Each model's bound on the peak of any plan (``Structure.lower_bound_peak``: fixed bytes plus
    what every plan keeps, at the worst slot) as a fraction of plain compile's measured peak: a
    ratio cap under it is out of reach of any store / recompute / offload plan in the model."""
    cells = [f"{s['model']} {_ratio(s.get('any_plan_bound'), s['plain_measured'])}" for s in summaries
             if s.get("any_plan_bound")]
    return ("No plan's peak can go under (the model's bound: fixed bytes plus what every plan keeps, / plain meas.): "
            + ", ".join(cells) + ".") if cells else ""


def worst_gap(summaries: list[dict]) -> str:
    """The row where the prediction is furthest from the measured peak, as |pred - meas| / meas."""
    gaps = [(abs(s[k] - s["plain_measured"]) / s["plain_measured"], s["model"], row)
            for s in summaries for k, row in (("plain_predicted", "plain compile"),
                                              ("plain_predicted_with_kernels", "plain compile, told its kernels"))
            if s.get(k) and s["plain_measured"]]
    gaps += [(abs(s[c]["predicted_peak_bytes"] - s[c]["measured_peak_bytes"]) / s[c]["measured_peak_bytes"], s["model"], c)
             for s in summaries for c in CONFIGS[1:] if s[c]["predicted_peak_bytes"] and s[c]["measured_peak_bytes"]]
    if not gaps:
        return "No row has both a prediction and a measurement."
    gap, model, config = max(gaps)
    within = sum(g <= 0.03 for g, _, _ in gaps)
    return f"|pred - meas| / meas: worst {gap:.1%} ({model}, {config}); {within} of {len(gaps)} rows within 3 %."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                    help="the examples at their quick sizes (default)")
    ap.add_argument("--jobs", type=int, default=2, help="configurations run at once (peaks are per process)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=str(RESULTS / "fidelity.json"))
    ap.add_argument("--loss-outside", action="store_true",
                    help="compile the model alone and compute the loss after it, uncompiled (default: together)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    if args.worker:
        warnings.filterwarnings("ignore")
        try:
            out = worker(models[0], configs[0], args.quick)
        except Exception as e:
            import traceback

            traceback.print_exc()
            out = {"model": models[0], "config": configs[0], "error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps(out), flush=True)
        return 0
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "remat-bench-inductor"))
    if args.loss_outside:
        env["REMAT_BENCH_LOSS_OUTSIDE"] = "1"
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"quick": args.quick, "loss_outside": args.loss_outside, "models": {m: {} for m in models}}
    lock = threading.Lock()

    def one(job):
        model, config = job
        row = run_one(model, config, args.quick, args.timeout, env)
        with lock:
            results["models"][model][config] = row
            out_path.write_text(json.dumps(results, indent=1))
        print(f"[{time.perf_counter() - started:5.0f} s] {model} / {config}: "
              f"{row.get('error') or fmt_mib(row.get('measured_peak_bytes')) + ' MiB'}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, [(m, c) for m in models for c in configs]))
    results["summary"] = [summary_row(m, results["models"][m]) for m in models]
    results["wall_s"] = time.perf_counter() - started
    out_path.write_text(json.dumps(results, indent=1))
    text = table(results["summary"])
    where = " (the model compiled alone, the loss computed after it)" if args.loss_outside else ""
    out_path.with_suffix(".md").write_text(f"# Memory fidelity{where}\n\n{text}\n")
    print(text)
    print(f"wrote {out_path} and {out_path.with_suffix('.md')} in {results['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
