"""DDP smoke test: 2 ranks (gloo, CPU, spawned processes) train a small MLP compiled with backend
remat at "75%" and wrapped in DDP: loss and gradients equal uncompiled DDP's, and both ranks make
the same plans. (``torch.compile(DDP(model))`` compiles no graph on torch 2.13's CPU here: DDP's
forward breaks the graph at its logger, so the module is compiled inside DDP instead.)"""

import copy
import json
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import remat
from remat.plan import Decision

WORLD = 2


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh()) for _ in range(6)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 8))


def train_step(ddp, x) -> tuple[float, list]:
    """Loss and gradients (in parameter order) of one step."""
    loss = ddp(x).pow(2).mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in ddp.parameters()]


def rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # plan in this process: its reports are read
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        base = mlp()
        plain = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        compiled = torch.compile(base, backend="remat", options={"memory_budget": "75%"})
        ddp = torch.nn.parallel.DistributedDataParallel(compiled)
        x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
        loss, grads = train_step(ddp, x)
        plain_loss, plain_grads = train_step(plain, x)
        result = {
            "loss_diff": abs(loss - plain_loss),
            "grad_diff": max((g - plain_g).abs().max().item() for g, plain_g in zip(grads, plain_grads, strict=True)),
            "hashes": [r.plan.digest() for r in remat.reports(compiled)],
            "recomputed": sum(len(r.plan.names(Decision.RECOMPUTE)) for r in remat.reports(compiled)),
        }
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_under_remat_matches_uncompiled_ddp_with_one_plan_on_both_ranks(tmp_path):
    mp.spawn(rank_main, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in results:
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5
        assert r["hashes"] and r["recomputed"] > 0  # each rank planned, and the cap made it recompute
    assert results[0]["hashes"] == results[1]["hashes"]
