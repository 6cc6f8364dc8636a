"""DDP under remat, 2 ranks (gloo, CPU, spawned processes).

- The module compiled with backend remat at "75%" and wrapped in DDP: loss and gradients equal
  uncompiled DDP's, both ranks make the same plans after the same agreements (their remat logs name
  the same turns: ``remat.ranks``, ``tests/spawn.py``), and the third step's measured peak is under the
  cap (DDP's gradient buckets are resident before a step: ``remat.outside_memory``; the second step
  rebuilds them, which a profiler started before it reads too high).
- (slow) ``torch.compile(DDP(model))``: DDP's optimizer (``torch._dynamo.config.optimize_ddp``, on by
  default) splits the module's graph at gradient-bucket boundaries, and the split graphs share one
  byte cap: the second is planned under the cap less what the first keeps until its backward.
  Dynamo compiles the module's own forward as a frame of its own under DDP (DDP's forward breaks the
  graph at its logger), so the module must be a user-defined class: a ``torch.nn.Sequential``'s
  forward is torch's code, which Dynamo never compiles as a frame of its own, and nothing compiles.
"""

import copy
import json

import pytest
import torch
import torch.distributed as dist

import remat
from remat.measure import measure_step
from remat.plan import Decision
from tests.spawn import join_group, run_on_ranks, turns_logged

WORLD = 2
MiB = 2**20
STEP_CAP = 6 * MiB


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh()) for _ in range(6)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 8))


class Tower(torch.nn.Module):
    """Six 256-wide tanh layers (256 KiB of weights each) and a head: with 1 MB buckets, DDP's
    optimizer splits its graph in two."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(256, 256) for _ in range(6)])
        self.head = torch.nn.Linear(256, 8)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def train_step(ddp, x) -> tuple[float, list]:
    """Loss and gradients (in parameter order) of one step."""
    loss = ddp(x).pow(2).mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in ddp.parameters()]


def differences(run, plain_run) -> dict:
    (loss, grads), (plain_loss, plain_grads) = run, plain_run
    return {"loss_diff": abs(loss - plain_loss),
            "grad_diff": max((g - p).abs().max().item() for g, p in zip(grads, plain_grads, strict=True))}


def compiled_inside_ddp(rank: int) -> dict:
    base = mlp()
    plain = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    compiled = torch.compile(base, backend="remat", options={"memory_budget": "75%"})
    ddp = torch.nn.parallel.DistributedDataParallel(compiled)
    x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
    result = differences(train_step(ddp, x), train_step(plain, x))
    result["hashes"] = [r.plan.digest() for r in remat.reports(compiled)]
    result["recomputed"] = sum(len(r.plan.names(Decision.RECOMPUTE)) for r in remat.reports(compiled))
    result["caps"] = [r.budget_bytes for r in remat.reports(compiled)]
    train_step(ddp, x)  # DDP rebuilds its buckets in the forward of its second step
    result["peak"] = measure_step(lambda: ddp(x).pow(2).mean().backward()).peak_bytes
    return result


def ddp_compiled(rank: int) -> dict:
    base = Tower()
    plain = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base), bucket_cap_mb=1)
    ddp = torch.nn.parallel.DistributedDataParallel(base, bucket_cap_mb=1)
    compiled = torch.compile(ddp, backend="remat", options={"memory_budget": STEP_CAP})
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(rank))
    result = differences(train_step(compiled, x), train_step(plain, x))
    reports = remat.reports(compiled)
    result["hashes"] = [r.plan.digest() for r in reports]
    result["graphs"] = [{"budget": r.budget_bytes, "resident": r.resident_before_bytes, "kept": r.kept_bytes,
                         "step_cap": r.step_cap_bytes} for r in reports]
    return result


SCENARIOS = {"inside": compiled_inside_ddp, "outside": ddp_compiled}


def rank_main(rank: int, rendezvous: str, out_dir: str, scenario: str) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # plan in this process: its reports are read
    join_group(rank, rendezvous, WORLD)
    try:
        result = SCENARIOS[scenario](rank)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def on_two_ranks(scenario: str, out) -> list[dict]:
    return run_on_ranks(rank_main, out, scenario, world=WORLD)


def test_ddp_under_remat_matches_uncompiled_ddp_with_one_plan_on_both_ranks(tmp_path):
    results = on_two_ranks("inside", tmp_path)
    for r in results:
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5
        assert r["hashes"] and r["recomputed"] > 0  # each rank planned, and the cap made it recompute
        assert r["peak"] <= min(r["caps"])  # DDP's buckets were allocated before the step
    assert results[0]["hashes"] == results[1]["hashes"]
    turns = [turns_logged(tmp_path, rank) for rank in range(WORLD)]
    assert turns[0] == turns[1] and len(turns[0]) >= 2  # a plan and its code's peak, per plan compiled


@pytest.mark.slow  # about 30 s of CPU per rank: python -m pytest -m slow tests/e2e/test_ddp.py
def test_graphs_split_by_ddps_optimizer_share_the_step_cap(tmp_path):
    results = on_two_ranks("outside", tmp_path)
    for r in results:
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5
        first, second = r["graphs"]  # DDP's optimizer split the graph in two
        assert first["resident"] == 0 and first["budget"] == STEP_CAP
        assert second["resident"] == first["kept"] > 0  # planned under the cap less what graph0 keeps
        assert second["budget"] == STEP_CAP - first["kept"] and second["step_cap"] == STEP_CAP
    assert results[0]["hashes"] == results[1]["hashes"]
