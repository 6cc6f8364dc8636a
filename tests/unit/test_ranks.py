"""remat.ranks: one plan on every rank. The digest covers a Problem's memory structure and not
its op times; without torch.distributed (or under the fake backend) agree_across_ranks just
plans; under 2 spawned gloo ranks rank 0 alone plans and both get its plan (also inside a fake
tensor mode, as in Inductor), different problems raise on both ranks naming both digests and the
graph, and rank 0's InfeasibleBudgetError is raised on both ranks; with mode="local" (the option
ranks="local") each rank plans its own graph, different or not. Ranks out of step (one asks for
another plan of the same graph, or skips an agreement and asks about the next graph) raise a
RematError on both ranks naming each rank's turn, and each rank logs its turns (tests/spawn.py);
a rank that waits at an agreement no other rank joins raises a RematError naming it, not gloo's
timeout. The backward's order (planning.order_for_peak) follows rank 0's floors under "agree", where
each rank's own floors would choose differently."""

import dataclasses
import datetime
import json
import random

import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from remat.errors import InfeasibleBudgetError, RematError
from remat.plan import Decision, Plan
from remat.ranks import agree_across_ranks, decided_by_rank0, problem_digest
from tests.spawn import join_group, run_on_ranks
from tests.unit.synthetic import chain_problem, with_random_takers

WORLD = 2


def with_times_scaled(problem, factor: float):
    """The same problem with every op and recomputation taking ``factor`` times as long."""
    slots = tuple(dataclasses.replace(s, compute_time=s.compute_time * factor) for s in problem.slots)
    acts = tuple(dataclasses.replace(a, compute_time=a.compute_time * factor) for a in problem.activations)
    return dataclasses.replace(problem, slots=slots, activations=acts)


def with_bytes_doubled(problem, name: str):
    acts = tuple(dataclasses.replace(a, bytes=a.bytes * 2) if a.name == name else a for a in problem.activations)
    return dataclasses.replace(problem, activations=acts)


def all_stored(problem, solver: str) -> Plan:
    return Plan({a.name: Decision.STORE for a in problem.activations}, solver=solver)


def test_digest_ignores_op_times_and_sees_bytes():
    problem = chain_problem()
    assert problem_digest(problem) == problem_digest(with_times_scaled(problem, 3.0))
    assert problem_digest(problem) != problem_digest(with_bytes_doubled(problem, problem.activations[0].name))
    assert problem_digest(problem) != problem_digest(chain_problem(layers=5))


def test_digest_sees_the_other_runs_of_the_graph():
    problem = chain_problem(layers=4)
    more_runs = dataclasses.replace(problem, other_runs=3)
    assert problem_digest(problem) != problem_digest(more_runs)
    assert problem_digest(more_runs) != problem_digest(dataclasses.replace(more_runs, run_held_bytes=64))


def test_digest_sees_which_values_their_readers_take():
    taken = with_random_takers(chain_problem(), random.Random(0), share=1.0)
    untaken = dataclasses.replace(taken, activations=tuple(dataclasses.replace(a, taken_by="") for a in taken.activations))
    assert problem_digest(taken) != problem_digest(untaken)


def test_without_distributed_it_just_plans():
    problem = chain_problem()
    plan = all_stored(problem, "local")
    assert agree_across_ranks(problem, lambda: plan) is plan


def test_fake_process_group_plans_locally():
    """The fake backend traces one process as one rank of two: nothing to agree with."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    problem = chain_problem()
    plan = all_stored(problem, "local")
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        assert agree_across_ranks(problem, lambda: plan) is plan
    finally:
        dist.destroy_process_group()


def outcome(fn) -> dict:
    """What one call did on this rank, as JSON: its result's solver, or its error."""
    try:
        return {"solver": fn().solver}
    except RematError as e:
        return {"error": type(e).__name__, "message": str(e), "min_peak": getattr(e, "min_peak_bytes", None)}


def rank_main(rank: int, rendezvous: str, out_dir: str) -> None:
    join_group(rank, rendezvous, WORLD)
    try:
        calls = []

        def make_plan():
            calls.append(rank)
            return all_stored(problem, f"rank{rank}")

        def refuse():
            raise InfeasibleBudgetError(1000, 1234 + rank, detail="graph chain; raise memory_budget")

        problem = with_times_scaled(chain_problem(), 1.0 + rank)  # op times differ per rank: still one plan
        with FakeTensorMode():  # as inside Inductor's partitioner: the collectives still run on real tensors
            agreed = outcome(lambda: agree_across_ranks(problem, make_plan))
        infeasible = outcome(lambda: agree_across_ranks(problem, refuse))
        other = chain_problem(layers=4 + rank)  # rank 1 captured a different graph
        mismatch = outcome(lambda: agree_across_ranks(other, make_plan))
        agreed_calls = list(calls)
        calls.clear()
        local = outcome(lambda: agree_across_ranks(other, make_plan, mode="local"))  # a pipeline stage each
        result = {"agreed": agreed, "calls": agreed_calls, "local_calls": calls, "infeasible": infeasible, "mismatch": mismatch,
                  "digest": problem_digest(other), "local": local, "decided": decided_by_rank0("g", lambda: rank)}
        result.update(out_of_step(rank, problem, make_plan))
        # neither rank tears the group down while the other still reads the last all-gather (gloo
        # aborts a rank whose peer closed the connection mid-collective: SIGABRT, 2 runs in 21)
        dist.barrier()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def out_of_step(rank: int, problem, make_plan) -> dict:
    """Two divergences: rank 1 asks for a plan at another offset below the cap; then rank 0 asks
    for one more plan of ``problem`` while rank 1 has gone on to the next graph."""
    asked = outcome(lambda: agree_across_ranks(problem, make_plan, asked=f"a plan {rank * 64} B below the target"))
    following = dataclasses.replace(problem, name="graph1") if rank else problem
    skipped = outcome(lambda: agree_across_ranks(following, make_plan))
    return {"asked": asked, "skipped": skipped}


def test_two_ranks_share_rank0s_plan_and_its_errors(tmp_path):
    results = run_on_ranks(rank_main, tmp_path, world=WORLD)
    assert [r["agreed"] for r in results] == [{"solver": "rank0"}] * WORLD
    assert results[0]["calls"] == [0] and results[1]["calls"] == []  # rank 1 never planned
    assert [r["local_calls"] for r in results] == [[0], [1]]  # under ranks="local" each planned its own graph
    assert [r["local"] for r in results] == [{"solver": "rank0"}, {"solver": "rank1"}]
    assert [r["decided"] for r in results] == [0] * WORLD
    for r in results:
        assert r["infeasible"]["error"] == "InfeasibleBudgetError" and r["infeasible"]["min_peak"] == 1234
        assert r["mismatch"]["error"] == "RematError"
        assert "chain" in r["mismatch"]["message"]
        assert results[0]["digest"] in r["mismatch"]["message"] and results[1]["digest"] in r["mismatch"]["message"]
        assert r["asked"]["error"] == "RematError" and "out of step" in r["asked"]["message"]
        assert "a plan 0 B below" in r["asked"]["message"] and "a plan 64 B below" in r["asked"]["message"]
        assert r["skipped"]["error"] == "RematError" and "graph graph1" in r["skipped"]["message"]
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(WORLD)]
    assert "rank 0 enters agreement 5, graph chain: a plan 0 B below the target" in logs[0]
    assert "rank 1 enters agreement 5, graph chain: a plan 64 B below the target" in logs[1]
    assert all(f"rank {rank} has rank 0's answer to agreement 1 (ok)" in log for rank, log in enumerate(logs))


def lone_rank_main(rank: int, rendezvous: str, out_dir: str) -> None:
    """Rank 0 enters an agreement that rank 1, which leaves, never joins."""
    join_group(rank, rendezvous, WORLD, timeout=datetime.timedelta(seconds=20))
    try:
        problem = chain_problem()
        result = outcome(lambda: agree_across_ranks(problem, lambda: all_stored(problem, "rank0"))) if rank == 0 else {}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_an_agreement_that_no_other_rank_joins_is_remats_error(tmp_path):
    lone, _ = run_on_ranks(lone_rank_main, tmp_path, world=WORLD)
    assert lone["error"] == "RematError"
    assert "rank 0 waited at its agreement 1, graph chain: a plan" in lone["message"]


def order_rank_main(rank: int, rendezvous: str, out_dir: str) -> None:
    """Each rank's floors choose differently: rank 0's rise with the new order (it keeps the
    graph's), rank 1's do not. Under "agree" rank 0 solves every floor; under "local" each rank its own."""
    import remat.solvers
    from remat.planning import order_for_peak
    from tests.unit.test_order_backward import SPEC, linear_joint

    join_group(rank, rendezvous, WORLD)
    try:
        floors = []

        def floor(problem, time_limit):  # rank 0: 1 for the graph's order (asked first), then 2
            floors.append(rank)
            return len(floors) if rank == 0 else 1

        remat.solvers.min_peak = floor
        result = {}
        for mode in ("agree", "local"):
            floors.clear()
            joint, fwd, n = linear_joint()
            result[mode] = {"chosen": order_for_peak(joint, fwd, n, SPEC, ranks=mode).chosen, "floors": len(floors)}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_the_backward_order_follows_rank0s_floors(tmp_path):
    results = run_on_ranks(order_rank_main, tmp_path, world=WORLD)
    agree, local = [r["agree"] for r in results], [r["local"] for r in results]
    assert [a["chosen"] for a in agree] == ["graph"] * WORLD  # rank 0's floors keep the graph's order
    assert [a["floors"] for a in agree] == [2, 0]  # rank 0 solved both floors, rank 1 none
    assert local[0]["chosen"] == "graph" and local[1]["chosen"] != "graph"  # each its own: they differ
