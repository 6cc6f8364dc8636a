"""Planning time of remat on deep models analysed on fake tensors: GPT-2 small, Llama-7B, Evoformer.

    python benchmarks/solve_time.py [--model gpt2|llama7b|evoformer] [--layers 12,24,48]
                                    [--budgets 50%,30%] [--cache DIR]
                                    [--modes auto,mix,tie,free,greedy] [--time-limit 60]
                                    [--models-only] [--floor]

Models, each at every depth of ``--layers``:

* ``gpt2``: n_embd 768, 12 heads, seq 1024, batch 8, vocab 50257 (``examples/gpt.py``);
* ``llama7b``: Llama-7B's shape (hidden 4096, 32 heads, SwiGLU 11008, RMSNorm, rotary
  embeddings, vocab 32000, bf16), seq 4096, batch 4: the step's store-all peak (110 GB above
  what is resident; 5.3 GB of activations a layer) dwarfs the 13.5 GB of weights. Built and traced under ``FakeTensorMode``: no weight is
  ever allocated;
* ``evoformer``: ``examples/evoformer.py`` at its default sizes with ``--layers`` blocks.

Each model is traced once (Dynamo + AOTAutograd on fake tensors, no step runs; ``--cache``
keeps the Problem as JSON); its repeated layers are found (``remat.structure``), then each solver
is timed on the same Problem: the ILP in each ``layers`` mode ("mix": two levels, "tie", "free";
"auto", the default, is "mix" from 8 layers per class, kept at the tied plan when the rest of
mix would not fit in half the time left) and the greedy. "partition" is layer
finding plus planning plus the simulator's check (wall seconds; "CPU s": the process's CPU
seconds over it, HiGHS's threads included, which a busy machine does not inflate; "load": the
1-minute load average after it); "RSS" is the process's peak resident memory
after that row (run with ``--cache`` on traced Problems to see the planner's alone). ``--floor``
times the min-peak search (``remat.solvers.ilp.min_peak_search``: what ``memory_budget="min"``
and an infeasible cap run) at each depth instead: its floor, wall and CPU seconds, and whether the
time limit rather than its work budget stopped it. Prints a markdown table and writes ``--out``
(default benchmarks/results/solve_time.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
MODES = {"auto": ("ilp", "auto"), "mix": ("ilp", "mix"), "tie": ("ilp", "tie"), "free": ("ilp", "free"), "greedy": ("greedy", "")}


class LlamaBlock(nn.Module):
    """A Llama decoder layer: RMSNorm, rotary multi-head attention, RMSNorm, SwiGLU."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(d), nn.RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Llama(nn.Module):
    """Token embedding, ``layers`` Llama blocks, final RMSNorm and the vocabulary head."""

    def __init__(self, layers=32, d=4096, heads=32, ffn=11008, vocab=32000, seq=4096) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaBlock(d, heads, ffn) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d), nn.Linear(d, vocab, bias=False)
        hd = d // heads
        angle = torch.outer(torch.arange(seq).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
        self.register_buffer("cos", torch.cat((angle.cos(), angle.cos()), -1), persistent=False)
        self.register_buffer("sin", torch.cat((angle.sin(), angle.sin()), -1), persistent=False)

    def forward(self, idx):
        x = self.embed(idx)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.head(self.norm(x))


def llama7b(layers: int, batch: int = 4, seq: int = 4096):
    """(model, inputs, loss_fn) of Llama-7B's shape in bf16, built on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Llama(layers=layers, seq=seq)
        finally:
            torch.set_default_dtype(saved)
        idx = torch.randint(0, 32000, (batch, seq))
    return model, (idx,), lambda logits: logits.float().logsumexp(-1).mean()


def gpt2(layers: int):
    from gpt import factory

    return factory(batch=8, vocab=50257, seq=1024, layers=layers, d=768, heads=12)


def evoformer(layers: int):
    from evoformer import factory

    return factory(blocks=layers)


MODELS = {"gpt2": gpt2, "llama7b": llama7b, "evoformer": evoformer}


def traced(layers: int, cache: str | None, model: str = "gpt2"):
    """The Problem of ``model`` at ``layers`` and the seconds tracing took (NaN: from the cache)."""
    import remat
    from remat.problem import Problem

    path = Path(cache) / f"{model}_{layers}.json" if cache else None
    if path is not None and path.exists():
        return Problem.load(path), float("nan")
    net, inputs, loss_fn = MODELS[model](layers)
    t0 = time.perf_counter()
    problem = remat.analyze(net, inputs, loss_fn=loss_fn).problem
    trace_s = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        problem.save(path)
    return problem, trace_s


def plan_row(problem, cap: int, solver: str, layers: str, time_limit: float) -> dict:
    """One timed planning (layer finding, solve, check) of ``problem`` under ``cap``."""
    import remat
    from remat.errors import InfeasibleBudgetError
    from remat.simulate import check
    from remat.solvers import get_solver
    from remat.structure import with_layers

    t0, c0 = time.perf_counter(), time.process_time()
    p = with_layers(problem) if layers else problem
    find_s = time.perf_counter() - t0
    kw = {"layers": layers} if solver == "ilp" else {}
    try:
        plan = get_solver(solver)(p, cap, time_limit=time_limit, **kw)
    except InfeasibleBudgetError as e:
        return dict(solver=solver, layers=layers, cap=cap, error=str(e))
    tl = check(p, plan, cap)
    return dict(solver=solver, layers=layers, cap=cap, predicted_peak=tl.peak_bytes, added_ms=tl.added_time * 1e3,
                find_s=find_s, partition_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                load=os.getloadavg()[0], status=plan.status, gap=plan.gap, layers_mode=plan.info.get("layers_mode", ""),
                source=plan.info.get("source", ""), classes=[len(c) for c in p.layers],
                recompute=len(plan.names(remat.Decision.RECOMPUTE)), store=len(plan.names(remat.Decision.STORE)))


def floor_row(problem, time_limit: float) -> dict:
    """One timed min-peak search of ``problem`` (its repeated layers found first, as planning does)."""
    from remat.solvers.ilp import min_peak_search
    from remat.structure import with_layers

    t0, c0 = time.perf_counter(), time.process_time()
    found = min_peak_search(with_layers(problem), time_limit=time_limit)
    return dict(floor=found.peak, wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                load=os.getloadavg()[0], proven=found.proven, timed_out=found.timed_out)


def print_floors(rows: list[dict]) -> None:
    from remat.errors import fmt_bytes

    print("| model | layers | floor | of store-all | search s | CPU s | load | proven | stopped by the clock |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['depth']} | {fmt_bytes(r['floor'])} | {r['floor'] / r['baseline']:.3f} | "
              f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['load']:.1f} | {r['proven']} | {r['timed_out']} |")


def print_table(rows: list[dict]) -> None:
    from remat.errors import fmt_bytes

    print("| layers | budget | solver | tie | cap | predicted peak | added time | partition s | CPU s | load | status | gap | source | RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['depth']} | {r['budget']} | {r['solver']} | {r['layers']} | {fmt_bytes(r['cap'])} |"
        if "error" in r:
            print(head + " infeasible | | | | | | | | |")
            continue
        gap = "" if r["gap"] is None else f"{r['gap']:.2%}"
        print(f"{head} {fmt_bytes(r['predicted_peak'])} | {r['added_ms']:.1f} ms | {r['partition_s']:.2f} | "
              f"{r['cpu_s']:.2f} | {r['load']:.1f} | {r['status']} | {gap} | {r['source']} | {r['rss_mib']:.0f} MiB |")


def main(argv=None) -> None:
    from remat.config import parse_budget
    from remat.errors import fmt_bytes
    from remat.simulate import store_all_peak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", choices=sorted(MODELS))
    ap.add_argument("--layers", default="12")
    ap.add_argument("--budgets", default="50%,30%")
    ap.add_argument("--modes", default="mix,tie,free,greedy", help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--cache", default=None, help="folder for traced Problems (JSON)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/solve_time.json"))
    ap.add_argument("--floor", action="store_true", help="time the min-peak search instead of the budgets' plans")
    ap.add_argument("--models-only", action="store_true",
                    help="the ILP's modes without the greedy plan (each model's own answer)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.models_only:
        from remat.solvers import ilp

        ilp._greedy_plan = lambda *a: (None, float("inf"))  # the ILP keeps a cheaper greedy plan otherwise
    rows, models = [], []
    for depth in (int(x) for x in args.layers.split(",")):
        problem, trace_s = traced(depth, args.cache, args.model)
        baseline = store_all_peak(problem)
        print(f"{args.model}, {depth} layers: {len(problem.slots)} slots, {len(problem.activations)} "
              f"activations; traced in {trace_s:.1f} s; baseline peak {fmt_bytes(baseline)}")
        models.append(dict(model=args.model, layers=depth, slots=len(problem.slots), activations=len(problem.activations),
                           baseline=baseline, trace_s=trace_s))
        if args.floor:
            rows.append(dict(model=args.model, depth=depth, baseline=baseline, **floor_row(problem, args.time_limit)))
            continue
        for b in args.budgets.split(","):
            cap = parse_budget(b).resolve(baseline)
            for solver, layers in (MODES[m] for m in args.modes.split(",")):
                r = plan_row(problem, cap, solver, layers, args.time_limit)
                r.update(model=args.model, depth=depth, budget=b, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                rows.append(r)
    (print_floors if args.floor else print_table)(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(models=models, rows=rows), indent=1))


if __name__ == "__main__":
    main()
