"""FSDP-style sharding under remat.

torch 2.13's FSDP2 (``fully_shard``) runs its hooks, and so its all-gathers and reduce-scatters,
outside Dynamo (``torch._dynamo.disable`` on every hook, reason "skipping FSDP hooks"): compiling the
whole FSDP2 model yields no graph, and the way that works is torchtitan's, each block compiled on its
own and then sharded. Its graphs then hold no collective; the all-gathered parameters are graph
inputs. Three tests:

- (slow) 2 spawned gloo ranks, FSDP2 over blocks compiled with backend remat at "95%" (of the
  modelled plain compile; the blocks' graph runs twice per step, and with its other run counted
  the floor is 4.32 MiB, above "80%"'s 3.85 MiB since session 7): loss and gradients equal uncompiled FSDP2's, both ranks make the same plans, some values are recomputed,
  and no collective is in the rewritten graphs.
- Collectives inside a graph (functional all-gather in forward, whose autograd is a reduce-scatter
  in backward, as FSDP's are), traced and run in one process under the fake process group at
  memory_budget="min": remat never recomputes a collective or its wait (the rewritten backward
  holds no all-gather), while it does recompute other values.
- FSDP2's buffers outside the graphs (``remat.outside_memory``), under the fake process group: found
  from the parameter groups of the module being called, with the padding of an odd dimension.

The first two compile once per graph, without the Inductor check: they are about what is planned.
"""

import copy
import json

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import remat
from remat.outside_memory import outside_memory
from remat.plan import Decision
from tests.spawn import join_group, run_on_ranks

WORLD = 2
COLLECTIVES = "_c10d_functional"


def blocks() -> torch.nn.Sequential:
    torch.manual_seed(0)

    def block():
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                                   torch.nn.GELU(), torch.nn.Linear(256, 64))

    return torch.nn.Sequential(*[block() for _ in range(2)], torch.nn.Linear(64, 8))


def sharded(model: torch.nn.Sequential, compile_block=None) -> torch.nn.Sequential:
    """FSDP2 per block and at the root; each block but the head compiled first when asked."""
    from torch.distributed.fsdp import fully_shard

    if compile_block is not None:
        for i in range(len(model) - 1):
            model[i] = compile_block(model[i])
    for block in model:
        fully_shard(block)
    return fully_shard(model)


def train_step(model, x) -> tuple[float, list]:
    loss = model(x).pow(2).mean()
    loss.backward()
    return loss.item(), [p.grad.full_tensor() for p in model.parameters()]


def rank_main(rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # plan in this process: its reports are read
    join_group(rank, rendezvous, WORLD)
    try:
        base = blocks()
        plain = sharded(copy.deepcopy(base))
        # one dict: the blocks' graphs share one compilation
        options = {"memory_budget": "95%", "inductor_check": False}
        model = sharded(base, lambda b: torch.compile(b, backend="remat", options=options))
        x = torch.randn(512, 64, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
        loss, grads = train_step(model, x)
        plain_loss, plain_grads = train_step(plain, x)
        reports = remat.reports(model[0])
        result = {
            "loss_diff": abs(loss - plain_loss),
            "grad_diff": max((g - p).abs().max().item() for g, p in zip(grads, plain_grads, strict=True)),
            "hashes": [r.plan.digest() for r in reports],
            "recomputed": sum(len(r.plan.names(Decision.RECOMPUTE)) for r in reports),
            "collectives_in_code": sum((r.forward_code + r.backward_code).count(COLLECTIVES) for r in reports),
        }
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()



@pytest.mark.slow  # about 35 s of CPU per rank: python -m pytest -m slow tests/e2e/test_fsdp.py
def test_fsdp2_blocks_under_remat_match_uncompiled_fsdp2_with_one_plan_on_both_ranks(tmp_path):
    results = run_on_ranks(rank_main, tmp_path, world=WORLD)
    for r in results:
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5
        assert r["hashes"] and r["recomputed"] > 0  # each rank planned, and the cap made it recompute
        assert r["collectives_in_code"] == 0  # FSDP2's collectives run in its hooks, outside the graphs
    assert results[0]["hashes"] == results[1]["hashes"]


class GatheredWeights(torch.nn.Module):
    """Each layer's weight is sharded on dim 0 and all-gathered in forward (its gradient is
    reduce-scattered in backward), as FSDP does, with functional collectives inside the graph."""

    def __init__(self, d: int = 64, layers: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shards = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(d // WORLD, d) / d**0.5) for _ in range(layers)])

    def forward(self, x):
        for shard in self.shards:
            weight = funcol.all_gather_tensor_autograd(shard, gather_dim=0, group=dist.group.WORLD)
            x = torch.nn.functional.gelu(x @ weight.t())
        return x


def test_collectives_and_their_waits_are_never_recomputed():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    try:
        options = {"memory_budget": "min", "inductor_check": False}
        compiled = torch.compile(GatheredWeights(), backend="remat", options=options)
        compiled(torch.randn(512, 64)).sum().backward()
        (report,) = remat.reports(compiled)
    finally:
        dist.destroy_process_group()
    ops = {a.name: a.op for a in report.problem.activations}
    collective_values = {name for name, op in ops.items() if op.startswith(("all_gather", "wait_tensor"))}
    assert len(collective_values) == 6  # 3 all-gathers and their waits, in the memory model
    recomputed = set(report.plan.names(Decision.RECOMPUTE))
    assert recomputed and not recomputed & collective_values
    assert "all_gather" in report.forward_code and "all_gather" not in report.backward_code
    assert "reduce_scatter" in report.backward_code  # the gradients' collectives stay where autograd put them


class FindsOutside(torch.nn.Module):
    """A layer whose forward asks what runs outside the graphs, as the backend does while Dynamo
    compiles a block's forward (the FSDP2 module being called is on the stack)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 33)  # 33 rows on 2 ranks: padded to 17 per rank
        self.found = None

    def forward(self, x):
        self.found = outside_memory()
        return self.lin(x)


def test_fsdp2_buffers_outside_the_graphs_are_found_from_its_parameter_groups():
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(FindsOutside(), torch.nn.Linear(33, 8))
        fully_shard(model[0])
        fully_shard(model)
        model(torch.randn(4, 64)).sum().backward()
        found = model[0].found
    finally:
        dist.destroy_process_group()
    f32 = 4
    block = (34 * 64 + 34) * f32  # padded unsharded: 17 rows per rank, on 2 ranks
    head = (8 * 33 + 8) * f32  # the root's group (the head): prefetched, and its reduce-scatter buffer
    sharded = (17 * 64 + 17 + 4 * 33 + 4) * f32
    assert dict(found.parts) == {"gathered parameters": block, "prefetched parameters": head,
                                 "reduce-scatter buffer": head, "sharded gradients": sharded}
    assert found.nbytes == block + 2 * head + sharded and found.source == "FSDP2"
    assert outside_memory().nbytes == 0  # no FSDP2 module on the stack (DDP: nothing either)


def test_fsdp2_blocks_of_one_class_and_shapes_count_as_runs_of_one_graph():
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from remat.outside_memory import fsdp2, fsdp2_runs

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    try:
        model = blocks()  # 2 identical blocks and a head
        model.append(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)))
        model = sharded(model, lambda b: torch.compile(b, backend="remat", options={"memory_budget": "1MiB"}))
        model._get_fsdp_state()._lazy_init()  # what the root's first forward does: every state knows the others
        # the blocks but the last, compiled: 2 run one graph; the third has other shapes; the head is not compiled
        assert [fsdp2_runs(model[i]) for i in range(4)] == [2, 2, 1, 1]
        assert fsdp2(model[0]).runs == 2
    finally:
        dist.destroy_process_group()
