"""Time fidelity: remat's predicted added step time vs the measured one, per cost model.

    python benchmarks/time_fidelity.py --quick                  # mlp, gpt, cnn, evoformer, small sizes
    python benchmarks/time_fidelity.py --models gpt --cost-models profiled,measured --rounds 20
    python benchmarks/time_fidelity.py --quick --models mlp --price  # + activation_memory_budget rows

Cost models: ``roofline`` (the CPU's constants, ``device="cpu"``), ``profiled`` (the roofline with
this machine's rates: ``remat profile`` runs first, into the run's cache) and ``measured``.

A measurement meant to survive a busy machine. For each model, plain torch.compile and remat at
75 %, 50 % and the floor ("min") under each cost model each compile in a process of their own, one
after the other, at a fixed thread count (``--threads``, default 1: at two threads on 2 shared cores
whole runs fall into a slow mode, OpenMP threads waiting for cores, that no median removes). The
processes then stay up and run their steps **interleaved**: in each round every configuration
runs a few steps (about ``--round-ms`` of work; the order rotates from round to round), so that
all of them see the same contention. A second plain-compile process, the control, runs too: its
ratio to the first (ideally 0 %) is the noise between processes. So does remat's store-all plan
(``remat_100``: remat recomputes nothing), the step over which remat predicts its added time.
A configuration's figure is the **median over rounds of its step time divided by plain compile's
step time in the same round**; next to it, the min-based figure (its fastest step over compile's
fastest) and the spread of the per-round ratios (25th..75th percentile). Predicted added time =
the plan's added time (sum over graphs); both are shown as a share of plain compile's step, and
again over the store-all step (the ratio per round to that process), which is what the
prediction claims. A plan that plain torch.compile replaced (its code met the cap) is marked and
left out of "rank", which counts the pairs of plans whose predicted added times differ by more
than 5 % and whose measured ratios order the same way.

``--price`` adds torch's ``activation_memory_budget`` 0.5 / 0.2 / 0 (compiled first) and remat,
default cost model, at a byte cap equal to each one's measured peak, to the same rounds: a second
table gives their peaks and steps over plain compile's and remat's step over that row's in the
same round (the price of remat's plan at torch's peak, with the machine's noise shared), and the
CPU time of each row's forward and backward apart: torch's plans and remat's differ in which half
they load (transformers GPT-2: torch's forward writes no dropout mask).

Step times are ``time.perf_counter`` around each step, not ``torch.utils.benchmark.Timer``: its
``timeit`` runs warm-up calls at every call, which would double the cost of a round of two steps.
Each step's CPU time (``time.process_time``: every thread of the worker) is recorded too, and every
ratio is also given on it (``cpu_`` figures; the tables' "CPU" columns): a process waiting for a
core on a busy machine adds wall time but no CPU time, so at one thread the CPU-time ratios keep
the cost of the code with far less of the other processes' noise (at several threads CPU time also
counts OpenMP threads spinning at barriers). The predicted added time is also given over the store-all
step's CPU time (the "CPU diff" columns): over its wall time, a busy machine deflates the prediction.
Every worker runs with glibc's malloc told to keep its heap (``STEADY_HEAP``; the caller's environment
wins): per-step page faults otherwise differ between processes. Measured costs are cached in a fresh ``REMAT_CACHE_DIR`` per run (the profile's rates too; ``--cache
DIR`` keeps one for several runs, which then plan with the same rates), so the first measured
configuration of a model measures and the later ones read the cache. Writes
``benchmarks/results/time_fidelity.{md,json}`` (``time_fidelity_quick`` with --quick; ``--out STEM``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _run_config  # noqa: E402
from compare import RESULTS, fmt_mib  # noqa: E402

REMAT_CONFIGS = ("remat_75", "remat_50", "remat_min")
STORE_ALL = "remat_100"  # remat's store-all plan: the step over which remat predicts its added time
AMB_CONFIGS = ("amb_0.5", "amb_0.2", "amb_0")  # --price: torch's activation_memory_budget ...
TORCH, DEFAULT = "torch", "default"  # ... (cost model column "torch") and remat at their peaks ("default" costs)
COST_OPTIONS = {  # remat's options per cost model of this benchmark
    "roofline": {"cost_model": "roofline", "device": "cpu"},  # the CPU's constants
    "profiled": {"cost_model": "roofline"},  # device "auto": the rates that `remat profile` cached
    "measured": {"cost_model": "measured"},
}
RANK_MARGIN = 0.05  # predictions closer than this (relative) do not order two plans
# glibc malloc of every worker: no buffer mmapped apart, no heap trimmed back to the system. With glibc's
# defaults each process settles into its own heap state, and the page faults of a step differ between
# processes that run the same code (the quick CNN's store-all plan: 1248 vs 2016 minor faults a step in
# two processes, the second also running a plan: 32.3 vs 35.7 ms CPU; with these, 0 faults and 29.1 ms),
# more than most plans add.
STEADY_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


# ---- one configuration, in its own process -----------------------------------------------------


def compiled_step(config: str, model_name: str, cost_model: str, args: argparse.Namespace):
    """(step, info): ``step()`` runs one training step of ``config``, compiled by its warm-up run;
    ``info`` holds the plan's figures, or the error that refused the cap."""
    import torch
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig

    fconfig.enable_autograd_cache = False  # every configuration compiles, and remat plans, from scratch
    iconfig.fx_graph_cache = False
    model, inputs, loss_fn, sizes = _run_config.load_example(model_name, args.quick)
    info = {"model": model_name, "config": config, "cost_model": cost_model, "sizes": sizes}
    if config.startswith("remat_"):
        options = {"time_limit": args.time_limit, **_run_config.remat_options(config.removeprefix("remat_")),
                   **COST_OPTIONS.get(cost_model, {})}
        fn = torch.compile(lambda *xs: loss_fn(model(*xs)), backend="remat", options=options)
    else:  # plain compile, activation_memory_budget, checkpoint: as compare.py runs them
        fn = _run_config.configured(config, model, loss_fn, args.time_limit, info)

    def step() -> float:
        """One step; returns its forward's CPU seconds (the loss computed, before its backward)."""
        _run_config._zero(model)
        c0 = time.process_time()
        loss = fn(*inputs)
        forward = time.process_time() - c0
        loss.backward()
        return forward

    t0 = time.perf_counter()
    try:
        step()
    except Exception as e:
        err = _run_config._remat_error(e)
        if err is None:
            raise
        return None, {**info, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
                      "budget_bytes": getattr(err, "budget_bytes", None)}
    info["first_step_s"] = time.perf_counter() - t0
    return step, {**info, **plan_figures(fn, config)}


def plan_figures(fn, config: str) -> dict:
    """Predicted added time, the step's cap and predicted peak, values recomputed and cost-model
    notes of a remat configuration (``_run_config.plan_figures``)."""
    if not config.startswith("remat_"):
        return {}
    from remat import reports

    graphs = reports(fn)
    figures = _run_config.plan_figures(graphs)
    keys = ("predicted_added_s", "budget_bytes", "predicted_peak_bytes", "compiled_with", "cost_notes")
    return {**{k: figures.get(k) for k in keys}, "recomputed": figures.get("decisions", {}).get("recompute"),
            "backward_order": [r.problem.metadata.get("backward_order", "graph") for r in graphs]}


def serve(args: argparse.Namespace) -> int:
    """A worker: compile one configuration, print its figures as a JSON line, then answer
    ``steps K`` lines on stdin with the K steps' wall and CPU times and their forwards' CPU times
    until stdin closes."""
    import torch

    from remat.measure import measure_step

    torch.set_num_threads(args.threads)
    step, info = compiled_step(args.config, args.model, args.cost_model, args)
    if step is not None:
        info["measured_peak_bytes"] = int(measure_step(step).peak_bytes)
    info["threads"] = torch.get_num_threads()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        wall, cpu, forward = [], [], []
        for _ in range(int(line.split()[1])):
            t0, c0 = time.perf_counter(), time.process_time()
            forward.append(step())
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(json.dumps({"wall": wall, "cpu": cpu, "forward_cpu": forward}), flush=True)
    return 0


# ---- the coordinator ---------------------------------------------------------------------------


class Worker:
    """A configuration's process: started, compiled, then asked for steps."""

    def __init__(self, model: str, config: str, cost_model: str, args: argparse.Namespace, env: dict) -> None:
        cmd = [sys.executable, __file__, "--serve", "--model", model, "--config", config, "--cost-model", cost_model,
               "--threads", str(args.threads), "--time-limit", str(args.time_limit)] + (["--quick"] if args.quick else [])
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, cwd=HERE.parent)
        self.info = self._reply() or {"model": model, "config": config, "cost_model": cost_model,
                                      "error": f"worker exited: {self._log_tail()}"}
        self.times: list[list[float]] = []  # wall seconds of its steps, per round
        self.cpu_times: list[list[float]] = []  # CPU seconds of the same steps
        self.forward_cpu_times: list[list[float]] = []  # CPU seconds of their forwards

    def ready(self) -> bool:
        return "error" not in self.info

    def run_steps(self, k: int) -> None:
        self.proc.stdin.write(f"steps {k}\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.times.append(reply["wall"])
        self.cpu_times.append(reply["cpu"])
        self.forward_cpu_times.append(reply["forward_cpu"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def _reply(self):
        line = self.proc.stdout.readline()
        return json.loads(line) if line.startswith(("{", "[")) else None

    def _log_tail(self) -> str:
        self.proc.wait(timeout=60)
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines() or ["no output"]
        errors = [line for line in lines if "Error" in line or "Exception" in line]  # not Dynamo's closing hint
        return (errors or lines)[-1][:300]


def interleaved(workers: list[Worker], rounds: int, round_s: float) -> None:
    """``rounds`` rounds; in each, every ready worker runs steps worth about ``round_s`` seconds
    (from its first round's step time), in an order that rotates from round to round."""
    ready = [w for w in workers if w.ready()]
    per_round = {id(w): 1 for w in ready}
    for r in range(rounds):
        order = ready[r % len(ready):] + ready[:r % len(ready)] if ready else []
        for w in order:
            w.run_steps(per_round[id(w)])
        if r == 0:
            per_round = {id(w): max(1, min(20, round(round_s / max(w.times[0][0], 1e-6)))) for w in ready}


def ratio_figures(times: list[list[float]], refs: list[list[list[float]]]) -> dict:
    """Per-round ratios of a configuration's median step (``times``: its steps per round) to the
    mean of the reference processes' median steps in the same round: their median and quartiles;
    the min-based ratio (fastest step over the mean of the references' fastest); the medians of
    all steps. The first round, a warm-up, is left out."""
    rounds = list(zip(times, *refs))
    rounds = rounds[1:] or rounds
    ref_medians = [statistics.fmean(statistics.median(r) for r in rnd[1:]) for rnd in rounds]
    ratios = sorted(statistics.median(rnd[0]) / m for rnd, m in zip(rounds, ref_medians))
    mine = [t for rnd in rounds for t in rnd[0]]
    theirs = [[t for rnd in rounds for t in rnd[i]] for i in range(1, len(refs) + 1)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"rounds": len(rounds), "ratio_median": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
            "ratio_min_based": min(mine) / statistics.fmean(min(ts) for ts in theirs),
            "step_median_s": statistics.median(mine), "compile_step_median_s": statistics.median(ref_medians),
            "steps": len(mine)}


def measure_model(model: str, cost_models: list[str], args: argparse.Namespace, env: dict) -> list[dict]:
    """Plain compile twice (a reference and a control), remat's store-all plan, the price rows
    (``--price``) and remat's caps under each cost model; compiled one by one, then interleaved."""
    workers = [Worker(model, "compile", "-", args, env), Worker(model, "compile", "control", args, env),
               Worker(model, STORE_ALL, "store all", args, env)]
    workers += price_workers(model, args, env) if args.price else []
    workers += [Worker(model, config, cost_model, args, env) for cost_model in cost_models for config in REMAT_CONFIGS]
    try:
        interleaved(workers, args.rounds, args.round_ms / 1e3)
    finally:
        for w in workers:
            w.close()
    rows = [dict(w.info, **({"step_times_s": w.times, "step_cpu_s": w.cpu_times,
                             "forward_cpu_s": w.forward_cpu_times} if w.ready() else {}))
            for w in workers]
    return scored(rows)


def price_workers(model: str, args: argparse.Namespace, env: dict) -> list[Worker]:
    """torch's activation_memory_budget rows, then remat (default cost model) at a byte cap equal to
    each of their measured peaks (``equal_peak_of`` names the row)."""
    ambs = [Worker(model, config, TORCH, args, env) for config in AMB_CONFIGS]
    remats = []
    for amb in (a for a in ambs if a.ready()):
        remats.append(Worker(model, f"remat_{amb.info['measured_peak_bytes']}B", DEFAULT, args, env))
        remats[-1].info["equal_peak_of"] = amb.info["config"]
    return ambs + remats


STEP_TIMES = {"": "step_times_s", "cpu_": "step_cpu_s"}  # figure prefix: the rows' per-round wall / CPU seconds


def scored(rows: list[dict]) -> list[dict]:
    """One model's rows with their ratio figures, from wall times and, prefixed ``cpu_``, from CPU
    times (``STEP_TIMES``; rows of older runs have wall times alone). The control's ratio is to the
    first plain compile alone: the noise between two processes that run the same code. The others'
    are to the mean of both plain compiles, so that neither process's luck biases every figure."""
    out = []
    for original in rows:
        row = {k: v for k, v in original.items() if k not in _FIGURES}
        for prefix, key in STEP_TIMES.items():
            row.update({prefix + k: v for k, v in timed_figures(original, rows, key).items()})
        if row["cost_model"] == "control":
            row["predicted_added_s"] = 0.0
        out.append(row)
    return out


def timed_figures(original: dict, rows: list[dict], key: str) -> dict:
    """A row's ratios from the per-round step times under ``key`` of it and of its model's
    ``rows``: to plain compile (``ratio_figures``), to the store-all plan and to the
    activation_memory_budget row it shares a peak with; empty without such times."""
    ref, control, mine = rows[0], rows[1], original.get(key)
    if not mine:
        return {}
    both = [r[key] for r in (ref, control) if r.get(key)]
    store_all = next((r[key] for r in rows if r["config"] == STORE_ALL and r.get(key)), None)
    figures = {}
    if original is not ref and ref.get(key):
        figures.update(ratio_figures(mine, both[:1] if original is control else both))
    if original["cost_model"] != TORCH and original["config"] not in ("compile", STORE_ALL) and store_all:
        figures.update(store_all_figures(mine, store_all))
    of = next((r for r in rows if r["config"] == original.get("equal_peak_of") and r.get(key)), None)
    if of is not None:
        figures.update(price_figures(mine, of[key]))
    return figures


def store_all_figures(times: list[list[float]], store_all: list[list[float]]) -> dict:
    """The per-round ratios to remat's store-all plan (``STORE_ALL``, the baseline of the predicted
    added time): their median and quartiles, and that plan's median step."""
    f = ratio_figures(times, [store_all])
    return {"sa_ratio_median": f["ratio_median"], "sa_ratio_q1": f["ratio_q1"], "sa_ratio_q3": f["ratio_q3"],
            "store_all_step_median_s": f["compile_step_median_s"]}


def price_figures(times: list[list[float]], amb: list[list[float]]) -> dict:
    """The per-round ratios of remat at an activation_memory_budget row's peak to that row."""
    f = ratio_figures(times, [amb])
    return {"price_ratio_median": f["ratio_median"], "price_ratio_q1": f["ratio_q1"], "price_ratio_q3": f["ratio_q3"]}


_WALL_FIGURES = ("price_ratio_median", "price_ratio_q1", "price_ratio_q3", "rounds", "ratio_median", "ratio_q1",
                 "ratio_q3", "ratio_min_based", "step_median_s", "compile_step_median_s", "steps", "compile_steps",
                 "sa_ratio_median", "sa_ratio_q1", "sa_ratio_q3", "store_all_step_median_s")
_FIGURES = _WALL_FIGURES + tuple("cpu_" + k for k in _WALL_FIGURES)


def rescore(path: Path) -> None:
    """Recompute the figures of a saved run (its per-round step times) and write its tables again."""
    doc = json.loads(path.read_text())
    by_model: dict[str, list[dict]] = {}
    for row in doc["rows"]:
        by_model.setdefault(row["model"], []).append(row)
    rows = [r for model_rows in by_model.values() for r in scored(model_rows)]
    settings = {**doc["settings"], "reference": "mean of 2 plain-compile processes (control: the first alone)"}
    write_results(rows, path.stem, settings)


# ---- figures -----------------------------------------------------------------------------------


def fidelity_rows(rows: list[dict]) -> list[dict]:
    """The remat rows with predicted and measured added time as a share of compile's step and, where
    the store-all plan ran, of that plan's step (the prediction's own baseline)."""
    out = []
    for r in rows:
        if r["cost_model"] in ("-", TORCH):  # the reference, torch's rows (the price table's)
            continue
        row = {k: v for k, v in r.items() if k not in STEP_TIMES.values()}
        if r.get("ratio_median") is not None and r.get("predicted_added_s") is not None:
            row["predicted_pct"] = 100 * r["predicted_added_s"] / r["compile_step_median_s"]
            row["measured_pct"] = 100 * (r["ratio_median"] - 1)
            row["measured_min_pct"] = 100 * (r["ratio_min_based"] - 1)
        if r.get("sa_ratio_median") is not None and r.get("predicted_added_s") is not None:
            row["predicted_sa_pct"] = 100 * r["predicted_added_s"] / r["store_all_step_median_s"]
            row["measured_sa_pct"] = 100 * (r["sa_ratio_median"] - 1)
        for figure in ("ratio_median", "sa_ratio_median"):  # the same ratios on CPU time
            if r.get("cpu_" + figure) is not None:
                row[f"cpu_measured_{figure.removesuffix('ratio_median')}pct"] = 100 * (r["cpu_" + figure] - 1)
        if r.get("cpu_store_all_step_median_s") and r.get("predicted_added_s") is not None:
            # over the store-all step's CPU time: on a busy machine its wall time grows, the prediction does not
            row["cpu_predicted_sa_pct"] = 100 * r["predicted_added_s"] / r["cpu_store_all_step_median_s"]
        out.append(row)
    return out


def ran_plain(r: dict) -> bool:
    """Whether plain torch.compile ran instead of every graph's plan (its prediction is not measured)."""
    return "plain torch.compile" in (r.get("compiled_with") or [])


def rank_pairs(rows: list[dict]) -> tuple[int, int]:
    """(agreeing, compared): pairs of plans whose predicted added times differ by more than
    RANK_MARGIN, and how many of them the measured median ratios order the same way."""
    done = [r for r in rows if r.get("measured_pct") is not None and not ran_plain(r)]
    agree = compared = 0
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            pa, pb = a["predicted_added_s"], b["predicted_added_s"]
            if abs(pa - pb) <= RANK_MARGIN * max(pa, pb):
                continue
            compared += 1
            agree += (pa < pb) == (a["ratio_median"] < b["ratio_median"])
    return agree, compared


def table(fid: list[dict]) -> str:
    """Predicted vs measured added time per model and cost model: over plain compile's step, then
    over remat's store-all step (the prediction's baseline)."""
    lines = ["| model | cost model | config | recomputed | cap MiB | measured peak MiB | compile step ms | rounds "
             "| predicted % | measured % (median of rounds) | q1..q3 % | min-based % | diff pp | CPU-time % "
             "| store-all step ms | predicted % of store-all | measured % vs store-all | q1..q3 % | diff pp "
             "| CPU-time % vs store-all | predicted % of store-all CPU time | CPU diff pp | rank | costs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in fid:
        groups.setdefault((r["model"], r["cost_model"]), []).append(r)
    for (model, cost_model), rows in groups.items():
        agree, compared = rank_pairs(rows)
        for r in rows:
            recomputed = "-" if r.get("recomputed") is None else str(r["recomputed"])
            cap = fmt_mib(r.get("budget_bytes")) if r["config"] != STORE_ALL else "-"  # its cap binds nothing
            lines.append("| " + " | ".join([model, cost_model, r["config"], recomputed, cap,
                                            fmt_mib(r.get("measured_peak_bytes"))] + _measured_cells(r)
                                           + _store_all_cells(r)
                                           + [f"{agree}/{compared}" if compared else "-", _note(r)]) + " |")
    return "\n".join(lines)


def _measured_cells(r: dict) -> list[str]:
    if r.get("measured_pct") is None:
        return ["-"] * 8
    return [f"{1e3 * r['compile_step_median_s']:.1f}", str(r["rounds"]), f"{r['predicted_pct']:.1f}",
            f"{r['measured_pct']:.1f}", f"{100 * (r['ratio_q1'] - 1):.1f}..{100 * (r['ratio_q3'] - 1):.1f}",
            f"{r['measured_min_pct']:.1f}", f"{r['measured_pct'] - r['predicted_pct']:+.1f}",
            _cpu_pct(r, "cpu_ratio")]


def _store_all_cells(r: dict) -> list[str]:
    if r.get("measured_sa_pct") is None:
        return ["-"] * 8
    cpu = [f"{r['cpu_predicted_sa_pct']:.1f}", f"{r['cpu_measured_sa_pct'] - r['cpu_predicted_sa_pct']:+.1f}"] \
        if r.get("cpu_predicted_sa_pct") is not None and r.get("cpu_measured_sa_pct") is not None else ["-", "-"]
    return [f"{1e3 * r['store_all_step_median_s']:.1f}", f"{r['predicted_sa_pct']:.1f}", f"{r['measured_sa_pct']:.1f}",
            f"{100 * (r['sa_ratio_q1'] - 1):.1f}..{100 * (r['sa_ratio_q3'] - 1):.1f}",
            f"{r['measured_sa_pct'] - r['predicted_sa_pct']:+.1f}", _cpu_pct(r, "cpu_sa_ratio"), *cpu]


def _cpu_pct(r: dict, key: str) -> str:
    """A CPU-time ratio (``key``: its figures' stem) as a percentage over its reference, with its
    quartiles; "-" for a run without CPU times."""
    if r.get(f"{key}_median") is None:
        return "-"
    return f"{100 * (r[f'{key}_median'] - 1):.1f} ({100 * (r[f'{key}_q1'] - 1):.1f}..{100 * (r[f'{key}_q3'] - 1):.1f})"


def _note(r: dict) -> str:
    """The error for a table cell (a cap under the floor as "infeasible"), else the cost notes."""
    err = r.get("error") or ""
    if err.startswith("InfeasibleBudgetError"):
        return "infeasible: the cap is under the smallest reachable peak"
    if ran_plain(r):
        return "plain torch.compile ran (its code met the cap): the plan's prediction is not measured"
    return (err[:80] or "; ".join(sorted(set(r.get("cost_notes") or [])))).replace("|", "/")


def price_table(rows: list[dict]) -> str:
    """--price: torch's activation_memory_budget rows and remat at each one's measured peak, their
    peaks and steps over plain compile's, and remat's step over that row's in the same round."""
    lines = ["| model | config | recomputed | measured peak MiB | peak / compile | step / compile (median of rounds) "
             "| q1..q3 | remat / amb row (median of rounds) | q1..q3 | CPU time: step / compile | q1..q3 "
             "| CPU time: remat / amb row | q1..q3 | CPU ms: forward / backward | predicted % of store-all | note |",
             "|---|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|---|---|---:|---|"]
    peaks = {r["model"]: r.get("measured_peak_bytes") for r in rows if r["cost_model"] == "-"}
    for r in (r for r in rows if r["cost_model"] in (TORCH, DEFAULT)):
        peak, ref = r.get("measured_peak_bytes"), peaks.get(r["model"])
        recomputed = "-" if r.get("recomputed") is None or r["cost_model"] == TORCH else str(r["recomputed"])
        cells = [r["model"], r["config"], recomputed, fmt_mib(peak),
                 f"{peak / ref:.3f}" if peak and ref else "-",
                 *_spread(r, "ratio"), *_spread(r, "price_ratio"), *_spread(r, "cpu_ratio"),
                 *_spread(r, "cpu_price_ratio"), _forward_backward(r),
                 _pct(r.get("predicted_added_s"), r.get("store_all_step_median_s")),
                 "; ".join(filter(None, [f"cap = {r['equal_peak_of']}'s peak" if r.get("equal_peak_of") else "",
                                         _order_note(r), _note(r)]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _forward_backward(r: dict) -> str:
    """Median CPU milliseconds of a row's forwards and of its backwards (step less forward), the
    first round (a warm-up) left out; "-" for rows of runs that did not time forwards."""
    steps, forwards = r.get("step_cpu_s") or [], r.get("forward_cpu_s") or []
    pairs = [(s, f) for rs, rf in list(zip(steps, forwards))[1:] for s, f in zip(rs, rf)]
    if not pairs:
        return "-"
    return f"{1e3 * statistics.median(f for _, f in pairs):.1f} / {1e3 * statistics.median(s - f for s, f in pairs):.1f}"


def _order_note(r: dict) -> str:
    """The backward order of a remat plan's graphs when one is not the graph's own
    (``remat.passes.order_backward``), e.g. "backward order lpmf"; empty otherwise."""
    orders = r.get("backward_order") or []
    return f"backward order {','.join(orders)}" if any(o != "graph" for o in orders) else ""


def _pct(part: float | None, whole: float | None) -> str:
    return "-" if part is None or not whole else f"{100 * part / whole:.1f}"


def _spread(r: dict, key: str) -> list[str]:
    """A ratio's median and quartiles as two cells, or dashes."""
    if r.get(f"{key}_median") is None:
        return ["-", "-"]
    return [f"{r[f'{key}_median']:.3f}", f"{r[f'{key}_q1']:.3f}..{r[f'{key}_q3']:.3f}"]


def write_results(rows: list[dict], stem: str, settings: dict) -> None:
    """The rows so far as ``<stem>.json`` and the table as ``<stem>.md`` (after every group, so
    that a run stopped early keeps what it measured)."""
    fid = fidelity_rows(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"settings": settings, "rows": rows, "fidelity": fid}, indent=1))
    head = ", ".join(f"{k} {v}" for k, v in settings.items())
    price = any(r["cost_model"] == TORCH for r in rows)
    prices = f"\n## Price: remat at each activation_memory_budget row's peak\n\n{price_table(rows)}\n" if price else ""
    (RESULTS / f"{stem}.md").write_text(f"Settings: {head}.\n\n{table(fid)}\n{prices}")


def profile_machine(threads: int, env: dict) -> str:
    """Run ``remat profile`` at ``threads`` into the run's cache, unless that cache holds the rates
    and the matmul table of this thread count already (``--cache``); the roofline's rates, as the
    report names them."""
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); from remat.profile import machine_spec; "
            "spec = machine_spec(); print(spec.rates_note() if spec.matmul_table is not None else '')")
    cmd = [sys.executable, "-c", code, str(threads)]
    note = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent, check=True).stdout.strip()
    if note:
        return note
    cmd = [sys.executable, "-m", "remat.cli", "profile", "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent, check=True).stdout
    return next((line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("roofline of")), out.strip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,gpt,cnn,evoformer")
    ap.add_argument("--cost-models", default=",".join(COST_OPTIONS), help="of " + ", ".join(COST_OPTIONS))
    ap.add_argument("--quick", action="store_true", help="the small sizes of _run_config.SIZES")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds (the first is a warm-up)")
    ap.add_argument("--round-ms", type=float, default=300.0, help="step time per configuration and round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every configuration (default 1)")
    ap.add_argument("--time-limit", type=float, default=30.0, help="remat's planning time limit (s)")
    ap.add_argument("--out", help="stem of the result files (default time_fidelity, time_fidelity_quick with --quick)")
    ap.add_argument("--price", action="store_true",
                    help="also torch's activation_memory_budget 0.5 / 0.2 / 0 and remat at each one's measured peak")
    ap.add_argument("--rescore", metavar="JSON", help="recompute the figures and tables of a saved run")
    ap.add_argument("--cache", metavar="DIR", help="REMAT_CACHE_DIR of the run, kept (default: a fresh one): "
                    "runs that share it share one profile of the machine's rates and the measured op times")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--cost-model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args)
    if args.rescore:
        rescore(Path(args.rescore))
        return 0
    env = {**STEADY_HEAP, **os.environ, "REMAT_CACHE_DIR": args.cache or tempfile.mkdtemp(prefix="remat-profile-")}
    cost_models = args.cost_models.split(",")
    settings = {"threads": args.threads, "rounds": args.rounds, "round ms": args.round_ms, "quick": args.quick}
    if "profiled" in cost_models:
        settings["profiled rates"] = profile_machine(args.threads, env)
    settings["price"] = args.price
    rows: list[dict] = []
    for model in args.models.split(","):
        model_rows = measure_model(model, cost_models, args, env)
        for r in model_rows:
            print(json.dumps({k: r.get(k) for k in ("model", "cost_model", "config", "ratio_median",
                                                    "predicted_added_s", "error")}), flush=True)
        rows += model_rows
        write_results(rows, args.out or ("time_fidelity_quick" if args.quick else "time_fidelity"), settings)
    print(table(fidelity_rows(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
