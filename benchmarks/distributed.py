"""2-rank gloo DDP on the CPU under remat: per-rank figures next to uncompiled DDP.

For each budget, 2 spawned ranks each wrap a remat-compiled MLP in DDP and report: loss and largest
gradient difference from uncompiled DDP, plan hashes, compile time (the first step), the cap that
remat resolved and the measured peak of a later step (``remat.measure.measure_step``: memory above
what was allocated before the step, which includes DDP's gradient buckets).

    python benchmarks/distributed.py --budgets 75% 50% --quick

Prints one line per rank and budget, and writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def mlp(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(depth)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 8))


def step(model, x) -> tuple[float, list]:
    loss = model(x).pow(2).mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def one_budget(rank: int, budget: str, width: int, depth: int, rows: int) -> dict:
    import remat
    from remat.measure import measure_step

    base = mlp(width, depth)
    plain = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    compiled = torch.compile(base, backend="remat", options={"memory_budget": budget})
    ddp = torch.nn.parallel.DistributedDataParallel(compiled)
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(rank))
    start = time.perf_counter()
    loss, grads = step(ddp, x)
    compile_s = time.perf_counter() - start
    plain_loss, plain_grads = step(plain, x)
    peak = measure_step(lambda: ddp(x).pow(2).mean().backward()).peak_bytes
    reports = remat.reports(compiled)
    return {"rank": rank, "budget": budget, "loss_diff": abs(loss - plain_loss),
            "grad_diff": max((g - p).abs().max().item() for g, p in zip(grads, plain_grads, strict=True)),
            "hashes": [r.plan.digest() for r in reports], "compile_s": round(compile_s, 2),
            "cap_bytes": [r.budget_bytes for r in reports], "measured_peak_bytes": peak}


def rank_main(rank: int, port: int, out_dir: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # plan in this process: its reports are read
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = [one_budget(rank, b, args.width, args.depth, args.rows) for b in args.budgets]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["75%", "50%"])
    parser.add_argument("--quick", action="store_true", help="a small MLP (width 128, depth 4, 1024 rows)")
    args = parser.parse_args()
    args.width, args.depth, args.rows = (128, 4, 1024) if args.quick else (512, 8, 4096)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(rank_main, args=(free_port(), out, args), nprocs=WORLD, join=True)
        rows = [row for r in range(WORLD) for row in json.loads(Path(out, f"rank{r}.json").read_text())]
    for row in rows:
        print(json.dumps(row))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "distributed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
