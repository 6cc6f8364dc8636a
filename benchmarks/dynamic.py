"""Dynamic shapes: the MLP and GPT examples trained over ranges of sizes under a cap.

    python benchmarks/dynamic.py --quick     # small models, a few sizes per range (minutes on 2 CPU cores)
    python benchmarks/dynamic.py             # the issue's ranges: batch 1..64, sequence 64..512
    python benchmarks/dynamic.py --cases mlp_batch,mlp_buckets --quick

Each case trains one model with the sizes in the order given, compiled by remat under a cap with
one dimension dynamic (``mark_dynamic(x, dim)`` and the ``dynamic_range`` option, or
``mark_dynamic(x, dim, min=, max=)``), then by plain ``torch.compile`` with the same dimension
marked dynamic (``dynamic=True`` would make every size symbolic: see the closing note). Per size: the
measured peak (profiler allocation events, above what was resident before the step) against the
cap, the largest gradient difference from eager (same weights; dropout off, so that eager and
Inductor draw no different random numbers), and the median wall time of a few unprofiled steps of
both. Per case: the compiles of each (Dynamo's unique graphs) and remat's plans, each with the
sizes it covers. The ``*_buckets`` and ``*_refused`` cases use a cap that the top of the range fits
no plan under: with ``dynamic_range`` the range is split into buckets and a size above them is
refused at its compile; with ``mark_dynamic``'s min/max the first compile is refused, naming the
largest size that fits.

Writes ``benchmarks/results/dynamic[_quick].json`` after every case and ``.md`` at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(ROOT / "examples")):
    if p not in sys.path:
        sys.path.insert(0, p)

RESULTS = HERE / "results"
MIB = 2**20


@dataclass
class Case:
    """One model trained over a range of one input dimension (``dim``) under ``cap``."""

    model: str  # "mlp" or "gpt"
    dim: int  # 0: batch, 1: sequence
    lo: int
    hi: int
    sizes: tuple[int, ...]  # in the order trained
    cap: Any  # memory_budget
    how: str = "dynamic_range"  # or "mark_dynamic"
    shape: dict = field(default_factory=dict)  # model sizes


def cases(quick: bool) -> dict[str, Case]:
    """The issue's ranges; ``quick``: small models and a few sizes of each range. Batch ranges
    start at 2: Dynamo specialises a size of 1 (mark_dynamic refuses it). The MLP is narrow and
    wide: at batch <= 64 the example's widths (d=1024) hold 6 MiB+ of gradients against a few
    hundred KiB of activations, and no cap between the two peaks exists."""
    mlp = dict(d=16, hidden=2048 if quick else 4096, blocks=3)  # activations, not gradients, grow with the batch
    gpt = dict(layers=2, d=128, heads=4, vocab=512) if quick else dict(layers=4, d=256, heads=4, vocab=512)
    batches = (8, 64, 2, 33) if quick else (8, 64, 2, 16, 33, 48, 5, 24)
    seqs = (128, 512, 64, 300) if quick else (128, 512, 64, 256, 384, 96, 448)
    return {
        "mlp_batch": Case("mlp", 0, 2, 64, batches, "60%", shape=mlp),
        "gpt_batch": Case("gpt", 0, 2, 64, batches[:3] if quick else batches, "60%", shape={**gpt, "seq": 64}),
        "gpt_seq": Case("gpt", 1, 64, 512, seqs, "60%", shape={**gpt, "batch": 2 if quick else 4}),
        "mlp_buckets": Case("mlp", 0, 128, 1024, (200, 900, 300, 1000), 3 * MIB, shape=dict(d=64, hidden=256, blocks=2)),
        "mlp_refused": Case("mlp", 0, 128, 1024, (200,), 3 * MIB, "mark_dynamic", shape=dict(d=64, hidden=256, blocks=2)),
    }


def build(case: Case) -> tuple[torch.nn.Module, Callable[[int], tuple], Callable]:
    """(model, its inputs at a size (the model's input, then the loss's), loss of the model's output)."""
    torch.manual_seed(0)
    if case.model == "mlp":
        from mlp import MLP

        s = case.shape
        return MLP(s["d"], s["hidden"], s["blocks"]), lambda n: (torch.randn(n, s["d"]),), lambda out: out.pow(2).mean()
    from gpt import GPT, GPTConfig

    s = dict(case.shape)
    batch, seq = s.pop("batch", None), s.pop("seq", None)
    c = GPTConfig(**s, seq=case.hi if case.dim == 1 else seq, dropout=0.0)
    model = GPT(c)

    def tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # inputs and next-token targets
        shape = (n, c.seq + 1) if case.dim == 0 else (batch, n + 1)
        data = torch.randint(0, c.vocab, shape, generator=torch.Generator().manual_seed(n))
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, c.vocab), targets.reshape(-1))

    return model, tokens, loss


def compiled_step(case: Case, model, loss, remat_on: bool) -> Callable:
    """model+loss compiled by remat under the case's cap, or by plain torch.compile; the sizes of
    the case's dimension dynamic (``mark``), every other size static."""
    fn = lambda x, *targets: loss(model(x), *targets)  # noqa: E731
    if not remat_on:
        return torch.compile(fn)
    options = {"memory_budget": case.cap}
    if case.how == "dynamic_range":
        options["dynamic_range"] = {f"x.{case.dim}": (case.lo, case.hi)}
    return torch.compile(fn, backend="remat", options=options)


def mark(case: Case, inputs: tuple, remat_on: bool) -> tuple:
    """Mark the case's dimension of every input dynamic: over the case's range when remat takes
    it from ``mark_dynamic``, else unbounded (remat then takes the range from ``dynamic_range``)."""
    bounds = {"min": case.lo, "max": case.hi} if remat_on and case.how == "mark_dynamic" else {}
    for x in inputs:
        torch._dynamo.mark_dynamic(x, case.dim, **bounds)
    return inputs


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def step_time(step: Callable, x: tuple, model, repeats: int) -> float:
    """Median wall time of ``repeats`` forward+backward steps."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(*x).backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def run_size(case: Case, n: int, step: Callable, model, reference, loss, make, remat_on: bool, repeats: int) -> dict:
    """One size: a step against eager, then the measured peak and the median step time."""
    from remat.measure import measure_step

    x = mark(case, make(n), remat_on)
    t0 = time.perf_counter()
    step(*x).backward()
    first = time.perf_counter() - t0
    loss(reference(x[0]), *x[1:]).backward()
    got, want = grads(model), grads(reference)
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    scale = max(w.abs().max().item() for w in want.values())
    peak = measure_step(lambda: step(*x).backward()).peak_bytes
    model.zero_grad(set_to_none=True)
    return {"size": n, "first_call_s": first, "grad_max_diff": diff, "grad_max": scale,
            "grads_equal": diff <= 1e-4 * scale + 1e-6, "peak_bytes": peak, "step_s": step_time(step, x, model, repeats)}


def run_case(name: str, case: Case, repeats: int) -> dict:
    """remat, then plain torch.compile, over the case's sizes."""
    import remat

    out: dict[str, Any] = {"case": name, "model": case.model, "dim": case.dim, "range": [case.lo, case.hi],
                           "how": case.how, "cap": case.cap, "shape": case.shape, "sizes": list(case.sizes)}
    for label, remat_on in (("remat", True), ("plain", False)):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model, make, loss = build(case)
        reference = copy.deepcopy(model)
        step = compiled_step(case, model, loss, remat_on)
        rows = []
        for n in case.sizes:
            try:
                rows.append(run_size(case, n, step, model, reference, loss, make, remat_on, repeats))
            except remat.InfeasibleBudgetError as e:
                rows.append({"size": n, "refused": str(e), "largest_fit": e.largest_fit})
                model.zero_grad(set_to_none=True)
            except Exception as e:  # recorded, the other sizes still run
                rows.append({"size": n, "error": f"{type(e).__name__}: {str(e)[:500]}"})
                model.zero_grad(set_to_none=True)
            print(f"  {name} {label} size {n}: {_row_words(rows[-1])}", flush=True)
        out[label] = {"compiles": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]), "rows": rows}
        if remat_on:
            out[label]["plans"] = [_plan_of(r) for r in remat.reports(step)]
    return out


def _plan_of(r) -> dict:
    """What one of remat's plans covers: its sizes, cap, predicted peak, bucket, added time."""
    from remat import Decision
    from remat.planning import dynamic_note

    d = r.dynamic
    return {"cap_bytes": r.budget_bytes, "predicted_peak_bytes": r.timeline.peak_bytes,
            "inductor_peak_bytes": r.inductor_peak_bytes, "added_ms": r.plan.objective * 1e3,
            "ranges": {k: list(v) for k, v in d.ranges.items()} if d else None,
            "planned_at": d.planned_at if d else None, "peak_formula": d.peak_formula if d else None,
            "buckets": [list(b) for b in d.buckets.bounds] if d and d.buckets else None,
            "recompute": len(r.plan.names(Decision.RECOMPUTE)), "note": dynamic_note(r)}


def _row_words(row: dict) -> str:
    if "error" in row:
        return f"ERROR {row['error']}"
    if "refused" in row:
        return f"refused at compile time: largest fit {row['largest_fit']}"
    return (f"peak {row['peak_bytes'] / MIB:.2f} MiB, grads {'=' if row['grads_equal'] else '!='} eager "
            f"(max diff {row['grad_max_diff']:.1e}), step {row['step_s'] * 1e3:.1f} ms")


def markdown(results: list[dict]) -> str:
    """A summary row per case, then a row per case and size."""
    lines = ["| case | sizes (how) | cap | remat compiles / plans | plain compiles | peak <= cap at every size | "
             "grads = eager at every size | refused | step time remat / plain (median of medians) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows, plain = r["remat"]["rows"], r["plain"]["rows"]
        ran = [x for x in rows if "refused" not in x and "error" not in x]
        caps = {p["cap_bytes"] for p in r["remat"]["plans"]}
        cap = max(caps) if caps else None
        ok = cap is not None and all(x["peak_bytes"] <= cap for x in ran)
        refused = ", ".join(f"{x['size']} (fits up to {x['largest_fit']})" for x in rows if "refused" in x) or "-"
        ratio = _median_ratio(ran, plain)
        lines.append(f"| {r['case']} | {r['range'][0]}..{r['range'][1]} of dim {r['dim']} ({r['how']}) | "
                     f"{_mib(cap)} | {r['remat']['compiles']} / {len(r['remat']['plans'])} | {r['plain']['compiles']} | "
                     f"{_yes(ok, ran)} | {_yes(all(x['grads_equal'] for x in ran), ran)} | "
                     f"{refused} | {ratio} |")
    lines += ["", "| case | size | remat peak | plain peak | cap | grad max diff | remat step | plain step | plan |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        by_size = {x["size"]: x for x in r["plain"]["rows"]}
        for x in r["remat"]["rows"]:
            p = by_size.get(x["size"], {})
            if "error" in x:
                lines.append(f"| {r['case']} | {x['size']} | ERROR: {x['error'][:120]} | | | | | | |")
                continue
            if "refused" in x:
                lines.append(f"| {r['case']} | {x['size']} | refused: fits up to {x['largest_fit']} | "
                             f"{_mib(p.get('peak_bytes'))} | | | | {_ms(p.get('step_s'))} | |")
                continue
            plan = _plan_covering(r, x["size"])
            lines.append(f"| {r['case']} | {x['size']} | {_mib(x['peak_bytes'])} | {_mib(p.get('peak_bytes'))} | "
                         f"{_mib(plan.get('cap_bytes'))} | {x['grad_max_diff']:.1e} | {_ms(x['step_s'])} | "
                         f"{_ms(p.get('step_s'))} | {_plan_words(plan)} |")
    return "\n".join(lines) + "\n"


def _yes(holds: bool, ran: list) -> str:
    """"yes"/"NO" over the sizes that ran; "-" when every size was refused."""
    return "-" if not ran else "yes" if holds else "NO"


def _plan_covering(r: dict, size: int) -> dict:
    """The plan whose range holds ``size`` (a size compiled static, 1, has a plan of its own)."""
    for p in r["remat"]["plans"]:
        span = next(iter((p["ranges"] or {}).values()), None)
        if span is not None and span[0] <= size <= span[1]:
            return p
    return next((p for p in r["remat"]["plans"] if p["ranges"] is None), {})


def _plan_words(p: dict) -> str:
    if not p:
        return ""
    span = next(iter((p["ranges"] or {}).values()), None)
    where = f"{span[0]}..{span[1]}" if span else "static"
    return f"{where}: {p['recompute']} recompute, +{p['added_ms']:.2f} ms predicted"


def _median_ratio(rows: list[dict], plain: list[dict]) -> str:
    by_size = {x["size"]: x for x in plain if "step_s" in x}
    pairs = [(x["step_s"], by_size[x["size"]]["step_s"]) for x in rows if x["size"] in by_size]
    if not pairs:
        return "-"
    return f"{statistics.median(a / b for a, b in pairs):.2f}x"


def _mib(b) -> str:
    return "-" if b is None else f"{b / MIB:.2f} MiB"


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.1f} ms"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, a few sizes per range")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per size (median)")
    ap.add_argument("--out", default=None, help="output path without extension")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    table = cases(args.quick)
    names = args.cases.split(",") if args.cases else list(table)
    out = Path(args.out) if args.out else RESULTS / ("dynamic_quick" if args.quick else "dynamic")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        print(f"{name}: {table[name]}", flush=True)
        results.append(run_case(name, table[name], args.repeats))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
