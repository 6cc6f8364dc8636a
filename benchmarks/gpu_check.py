"""GPU check: measured vs predicted peak and step time, recompute-only vs offload, on one GPU.

    python benchmarks/gpu_check.py [--cap 60%] [--steps 5]

For a GPT-style model and the MLP of the core issue, runs plain torch.compile, remat with
recompute only at a cap, and remat with offload at the same cap; prints
torch.cuda.max_memory_allocated of one step above what was allocated before it, the simulator's
prediction, and the median step time; writes benchmarks/results/gpu_check.json. Needs CUDA;
finishes in a few minutes on an H100/H200. Targets on an H200: offload cuts the peak by >= 30 %
at <= 3 % step time, prediction within 3 % of the measured peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def mlp(device):
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)) for _ in range(3)])
    x = torch.randn(4096, 1024, device=device)
    return m.to(device), (x,), lambda out: out.sum()


def gpt(device):
    from gpt import factory

    m, (idx,), loss_fn = factory(batch=16, layers=8, d=1024, heads=16, seq=1024, vocab=32000)
    idx = idx.to(device)
    targets = torch.randint(0, 32000, idx.shape, device=device)
    return m.to(device), (idx,), lambda logits: nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def run(name, make, options, steps, device):
    from remat import Decision
    from remat.backend import LAST_COMPILE
    from remat.measure import measure_step

    torch._dynamo.reset()
    model, inputs, loss_fn = make(device)
    step = torch.compile(lambda *xs: loss_fn(model(*xs)), backend="remat" if options else "inductor",
                         **({"options": options} if options else {}))
    LAST_COMPILE.reports.clear()
    step(*inputs).backward()
    times = []
    for _ in range(steps):
        for p in model.parameters():
            p.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(*inputs).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.grad = None
    peak = measure_step(lambda: step(*inputs).backward(), device="cuda").peak_bytes
    predicted = sum(r.timeline.peak_bytes for r in LAST_COMPILE.reports) if LAST_COMPILE.reports else None
    offloaded = sum(len(r.plan.names(Decision.OFFLOAD)) for r in LAST_COMPILE.reports)
    return dict(name=name, options=options, peak=peak, predicted=predicted, step_s=statistics.median(times),
                offloaded=offloaded)


def main(argv=None) -> int:
    from remat.errors import fmt_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", default="60%")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_check.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    rows = []
    for model_name, make in (("mlp", mlp), ("gpt", gpt)):
        for label, options in (
            ("torch.compile", None),
            ("remat recompute", {"memory_budget": args.cap, "offload": False}),
            ("remat offload", {"memory_budget": args.cap, "offload": True}),
        ):
            r = run(f"{model_name} / {label}", make, options, args.steps, "cuda")
            torch.cuda.empty_cache()
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, cap {args.cap} of each model's no-remat peak\n")
    print("| model / config | measured peak | predicted | pred/meas | step ms | offloaded |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['predicted'] / r['peak']:.3f}" if r["predicted"] else ""
        pred = fmt_bytes(r["predicted"]) if r["predicted"] else ""
        print(f"| {r['name']} | {fmt_bytes(r['peak'])} | {pred} | {ratio} | {r['step_s'] * 1e3:.1f} | {r['offloaded']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
