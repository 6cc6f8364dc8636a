"""2-rank gloo DDP (or FSDP2) on the CPU under remat: per-rank figures next to the uncompiled run.

For each budget, 2 spawned ranks each wrap a remat-compiled model (an MLP, or the GPT of
examples/gpt.py without dropout, so that eager and compiled draw no random numbers) in DDP and
report: loss and largest gradient difference from uncompiled DDP (first step), plan hashes, compile
time (the first step), the cap that remat resolved, and the measured peaks
(``remat.measure.measure_step``: memory above what was allocated before the step) of the second
step and of the third. DDP rebuilds its gradient buckets once, in the forward of its second step:
the profiler sees that allocation but not the free of the buckets it replaces (allocated before the
profile), so the second step reads one bucket set (all gradients' bytes) too high; from the third
step on, the buckets are resident before the step.

    python benchmarks/distributed.py --budgets 75% 50% --quick
    python benchmarks/distributed.py --budgets 75% 50% --quick --model gpt
    python benchmarks/distributed.py --budgets 4MiB --quick --wrapper fsdp2

With ``--wrapper fsdp2``, FSDP2 instead of DDP: each block compiled, then sharded (torchtitan's
order); a byte cap is then taken less FSDP2's buffers (``resident_before_bytes``). Prints one line
per rank and budget, and writes benchmarks/results/distributed.json (the MLP under DDP), or
distributed_gpt.json, distributed_fsdp2.json, distributed_gpt_fsdp2.json (``--tag _s6``:
distributed_s6.json, distributed_s6_gpt.json, ...). Each row names per graph what its cap gave up
outside it (``outside``: FSDP2's buffers, inputs made earlier in the step), what its backward
receives (``kept_bytes``), its other runs per step (FSDP2's blocks of one class share one graph)
and what they hold while the last one runs (``other_runs``, ``other_runs_bytes``: in its predicted
and Inductor peaks), and its predicted peak.
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
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def mlp(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(depth)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 8))


def mlp_case(rank: int, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, Callable]:
    """(model, this rank's batch, loss of the model's output)."""
    x = torch.randn(args.rows, args.width, generator=torch.Generator().manual_seed(rank))
    return mlp(args.width, args.depth), x, lambda out: out.pow(2).mean()


def gpt_case(rank: int, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, Callable]:
    """examples/gpt.py's GPT without dropout; each rank its own batch of token ids."""
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "examples"))
    from gpt import GPT, GPTConfig

    torch.manual_seed(0)
    c = GPTConfig(vocab=args.vocab, seq=args.seq, layers=args.depth, d=args.width, heads=args.heads, dropout=0.0)
    data = torch.randint(0, c.vocab, (args.rows, c.seq + 1), generator=torch.Generator().manual_seed(rank))
    idx, targets = data[:, :-1], data[:, 1:]
    return GPT(c), idx, lambda logits: F.cross_entropy(logits.reshape(-1, c.vocab), targets.reshape(-1))


CASES = {"mlp": mlp_case, "gpt": gpt_case}


def step(model, x, loss_fn) -> tuple[float, list]:
    loss = loss_fn(model(x))
    loss.backward()
    grads = (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in model.parameters())
    return loss.item(), [g.clone() for g in grads]


def ddp_wrapped(base: torch.nn.Module, options: dict) -> tuple:
    """(uncompiled DDP, DDP over the remat-compiled model, what ``remat.reports`` reads)."""
    plain = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    compiled = torch.compile(base, backend="remat", options=options)
    return plain, torch.nn.parallel.DistributedDataParallel(compiled), compiled


def fsdp2_wrapped(base: torch.nn.Module, options: dict) -> tuple:
    """(uncompiled FSDP2, FSDP2 over blocks compiled first, as torchtitan does, a compiled block)."""
    plain = sharded(copy.deepcopy(base))
    model = sharded(base, lambda block: torch.compile(block, backend="remat", options=options))
    container, indices = blocks_of(model)
    return plain, model, container[indices[0]]


def blocks_of(model: torch.nn.Module) -> tuple:
    """(the container of the model's blocks, their indices): GPT's ``blocks``, or an MLP's layers but the head."""
    if hasattr(model, "blocks"):
        return model.blocks, range(len(model.blocks))
    return model, range(len(model) - 1)


def sharded(model: torch.nn.Module, compile_block: Callable | None = None) -> torch.nn.Module:
    """FSDP2 per block (each compiled first when asked) and at the root."""
    from torch.distributed.fsdp import fully_shard

    container, indices = blocks_of(model)
    for i in indices:
        if compile_block is not None:
            container[i] = compile_block(container[i])
        fully_shard(container[i])
    return fully_shard(model)


WRAPPERS = {"ddp": ddp_wrapped, "fsdp2": fsdp2_wrapped}


def one_budget(rank: int, budget: str, args: argparse.Namespace) -> dict:
    import remat
    from remat.measure import measure_step
    from remat.plan import Decision

    base, x, loss_fn = CASES[args.model](rank, args)
    plain, model, compiled = WRAPPERS[args.wrapper](base, {"memory_budget": budget})
    start = time.perf_counter()
    loss, grads = step(model, x, loss_fn)
    compile_s = time.perf_counter() - start
    plain_loss, plain_grads = step(plain, x, loss_fn)
    second, third = (measure_step(lambda: loss_fn(model(x)).backward()).peak_bytes for _ in range(2))
    reports = remat.reports(compiled)
    return {"rank": rank, "model": args.model, "wrapper": args.wrapper, "budget": budget,
            "loss_diff": abs(loss - plain_loss),
            "grad_diff": max((g - p).abs().max().item() for g, p in zip(grads, plain_grads, strict=True)),
            "hashes": [r.plan.digest() for r in reports], "compile_s": round(compile_s, 2),
            "cap_bytes": [r.budget_bytes for r in reports],
            "inductor_peak_bytes": [r.inductor_peak_bytes for r in reports],
            "resident_before_bytes": [r.resident_before_bytes for r in reports],
            "outside": [r.outside for r in reports], "kept_bytes": [r.kept_bytes for r in reports],
            "other_runs": [r.problem.other_runs for r in reports],
            "other_runs_bytes": [r.other_runs_bytes for r in reports],
            "predicted_peak_bytes": [r.timeline.peak_bytes for r in reports],
            "recomputed": [len(r.plan.names(Decision.RECOMPUTE)) for r in reports],
            "second_step_peak_bytes": second, "measured_peak_bytes": third}


def refusal_or_row(rank: int, budget: str, args: argparse.Namespace) -> dict:
    """``one_budget``'s row, or remat's refusal (a cap under the floor: every rank raises rank 0's error)."""
    import remat

    try:
        return one_budget(rank, budget, args)
    except remat.RematError as e:
        return {"rank": rank, "model": args.model, "budget": budget, "error": f"{type(e).__name__}: {e}"}


def rank_main(rank: int, port: int, out_dir: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # plan in this process: its reports are read
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = [refusal_or_row(rank, b, args) for b in args.budgets]
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
    parser.add_argument("--model", choices=sorted(CASES), default="mlp")
    parser.add_argument("--wrapper", choices=sorted(WRAPPERS), default="ddp",
                        help="ddp: DDP over the compiled model; fsdp2: each block compiled, then fully_shard per block "
                             "and at the root (a byte cap takes FSDP2's buffers off: remat.outside_memory)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes: MLP width 128, depth 4, 1024 rows; GPT d 64, 2 layers, 2 heads, "
                             "vocab 256, seq 64, batch 4")
    parser.add_argument("--tag", default="", help="appended to the results file's name (e.g. _s6)")
    args = parser.parse_args()
    args.vocab, args.seq, args.heads = (256, 64, 2) if args.quick else (512, 128, 4)
    if args.model == "gpt":
        args.width, args.depth, args.rows = (64, 2, 4) if args.quick else (256, 4, 8)
    else:
        args.width, args.depth, args.rows = (128, 4, 1024) if args.quick else (512, 8, 4096)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(rank_main, args=(free_port(), out, args), nprocs=WORLD, join=True)
        rows = [row for r in range(WORLD) for row in json.loads(Path(out, f"rank{r}.json").read_text())]
    for row in rows:
        print(json.dumps(row))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    suffix = "".join(f"_{part}" for part in (args.model, args.wrapper) if part not in ("mlp", "ddp"))
    name = f"distributed{args.tag}{suffix}.json"
    (results / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
