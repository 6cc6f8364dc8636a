"""The plan simulator: hand-computed peaks, error reporting and properties on random problems."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remat.errors import PlanError
from remat.plan import Decision, Plan
from remat.problem import BACKWARD, FORWARD, Activation, Problem, Slot
from remat.simulate import (
    MemoryTimeline,
    check,
    live_intervals,
    needed_activations,
    recompute_starts,
    simulate,
    store_all_peak,
)
from remat.solvers import Structure
from remat.transfers import offload_window

from .synthetic import large_problem

S, R, O = Decision.STORE, Decision.RECOMPUTE, Decision.OFFLOAD


def slots(fixed_fwd, fixed_bwd, times=None):
    n = len(fixed_fwd) + len(fixed_bwd)
    times = times or [1.0] * n
    out = [Slot(f"f{i}", FORWARD, times[i], b) for i, b in enumerate(fixed_fwd)]
    k = len(fixed_fwd)
    out += [Slot(f"b{i}", BACKWARD, times[k + i], b) for i, b in enumerate(fixed_bwd)]
    return tuple(out)


def act(name, created, lfu, nbytes, uses=(), inputs=(), t=1.0, **kw):
    return Activation(name, f"op_{name}", nbytes, t, created, lfu, tuple(uses), tuple(inputs), **kw)


# ---- a 3-layer chain: slots f0 f1 f2 | b2 b1 b0 (0..5), fixed 100 everywhere ----------------
# a = layer0(x)  read by f1 and by b0 (slot 5)
# b = layer1(a)  read by f2 and by b1 (slot 4); recomputing it reads a
# c = layer2(b)  read by b2 (slot 3); its recomputation reads only resident values
# first backward uses d: c 3, b 4, a 5; earliest starts L: c 3, b 4, a min(5, L(b)) = 4.
# Recomputing b (at 4) and a: a is recomputed just in time for b, at slot 4.
def chain(**kw) -> Problem:
    return Problem(
        slots=slots([100] * 3, [100] * 3),
        activations=(
            act("a", 0, 1, 4, uses=(5,), t=1.0),
            act("b", 1, 2, 8, uses=(4,), inputs=("a",), t=2.0),
            act("c", 2, 2, 16, uses=(3,), t=3.0),
        ),
        name="chain",
        **kw,
    )


def test_chain_first_and_earliest_slots():
    p = chain()
    assert p.num_forward == 3
    assert p.first_uses == {"a": 5, "b": 4, "c": 3}
    assert p.earliest_slots == {"a": 4, "b": 4, "c": 3}
    assert p.relevant == ("a", "b", "c")


def test_store_all_chain():
    p = chain()
    tl = simulate(p, {"a": S, "b": S, "c": S})
    # a: slots 2..5, b: 3..4, c: 3..3 on top of 100
    assert tl.device_bytes == (100, 100, 104, 128, 112, 104)
    assert (tl.peak_bytes, tl.peak_slot) == (128, 3)
    assert tl.host_bytes == (0,) * 6 and tl.host_peak_bytes == 0
    assert tl.added_time == 0.0
    assert tl.needed == ("a", "b", "c")
    assert tl.ok and tl.errors == ()
    assert store_all_peak(p) == 128


def test_recompute_middle_activation():
    p = chain()
    plan = {"a": S, "b": R, "c": S}
    tl = simulate(p, plan)
    # b lives only at its recompute slot 4; a's last need stays 5 (its own backward use)
    assert tl.device_bytes == (100, 100, 104, 120, 112, 104)
    assert (tl.peak_bytes, tl.peak_slot) == (120, 3)
    assert tl.recompute_time == 2.0 and tl.transfer_time == 0.0 and tl.added_time == 2.0
    assert tl.ok
    assert live_intervals(p, plan) == {"a": [(2, 5)], "b": [(4, 4)], "c": [(3, 3)]}


# ---- a recompute chain: a -> b, both recomputed ------------------------------------------
# slots f0 f1 f2 | b0 b1 b2 (0..5), fixed 0; a read by backward slot 3, b by slot 5.
# S(b) = 5, S(a) = min(d(a) = 3, S(b) = 5) = 3; recomputing b reads a, so a's last need
# extends to 5.
def rchain(a_uses=(3,)) -> Problem:
    return Problem(
        slots=slots([0] * 3, [0] * 3),
        activations=(
            act("a", 0, 1, 1, uses=a_uses, t=0.5),
            act("b", 1, 2, 10, uses=(5,), inputs=("a",), t=2.0),
        ),
    )


def test_recompute_chain_extends_input():
    p = rchain()
    assert p.earliest_slots == {"a": 3, "b": 5}
    tl = simulate(p, {"a": R, "b": R})
    assert tl.starts == {"a": 3, "b": 5} and tl.last_needs == {"a": 5, "b": 5}
    assert live_intervals(p, {"a": R, "b": R}) == {"a": [(3, 5)], "b": [(5, 5)]}
    assert tl.device_bytes == (0, 0, 0, 1, 1, 11)
    assert (tl.peak_bytes, tl.peak_slot) == (11, 5)
    assert tl.recompute_time == 2.5 and tl.ok

    # a stored, b recomputed: a lives from after its last forward use to b's recompute slot
    tl = simulate(p, {"a": S, "b": R})
    assert tl.device_bytes == (0, 0, 1, 1, 1, 11) and tl.ok

    # a recomputed, b stored: a needed only at its own use
    tl = simulate(p, {"a": R, "b": S})
    assert tl.device_bytes == (0, 0, 0, 11, 10, 10) and tl.ok


def test_input_needed_only_by_recompute():
    p = rchain(a_uses=())
    assert p.earliest_slots == {"a": 5, "b": 5}
    # storing b does not need a at all
    assert needed_activations(p, {"b": S}) == ["b"]
    assert simulate(p, {"b": S}).ok
    # recomputing b needs a, which then must be decided
    assert needed_activations(p, {"b": R}) == ["a", "b"]
    tl = simulate(p, {"b": R})
    assert not tl.ok and any("'a'" in e and "no decision" in e for e in tl.errors)
    tl = simulate(p, {"a": R, "b": R})
    assert tl.ok and tl.device_bytes == (0, 0, 0, 0, 0, 11)
    tl = simulate(p, {"a": S, "b": R})
    assert tl.ok and tl.device_bytes == (0, 0, 1, 1, 1, 11)


def test_all_recompute_can_exceed_store_all():
    # Why "STORE-all peak >= every all-RECOMPUTE peak" is false: recomputing pulls in inputs that
    # STORE-all never keeps (and extends their lifetimes), so the peak can go up.
    p = rchain(a_uses=())
    assert store_all_peak(p) == 10
    assert simulate(p, {"a": R, "b": R}).peak_bytes == 11


# ---- offload --------------------------------------------------------------------------------
# slots f0..f3 | b0..b3 (0..7), 1 s each, fixed 0, 10 B/s.
# o: 20 B (2 s), last forward use 0, read at 7: the copy out hides behind f1+f2 (out_end 2), the
#    prefetch behind b1+b2 (back_start 5); nothing exposed.
# e: 30 B (3 s), last forward use 3 (end of forward), read at 4: nothing to hide either copy
#    behind, so 3 s + 3 s exposed and the device copy is gone only between out_end=3 and 4.
def offload_problem(bw=10.0) -> Problem:
    return Problem(
        slots=slots([0] * 4, [0] * 4),
        activations=(act("o", 0, 0, 20, uses=(7,)), act("e", 2, 3, 30, uses=(4,))),
        host_bandwidth=bw,
    )


def test_offload_window_and_host_bytes():
    p = offload_problem()
    assert offload_window(p, "o") == (2, 5, 0.0)
    assert offload_window(p, "e") == (3, 4, 6.0)

    tl = simulate(p, {"o": O, "e": S})
    assert tl.device_bytes == (0, 20, 20, 0, 30, 20, 20, 20)
    assert tl.host_bytes == (0, 0, 0, 20, 20, 20, 20, 20)
    assert tl.host_peak_bytes == 20 and tl.transfer_time == 0.0 and tl.ok

    tl = simulate(p, {"o": O, "e": O})
    assert live_intervals(p, {"o": O, "e": O}) == {"o": [(1, 2), (5, 7)], "e": [(4, 3), (4, 4)]}
    assert tl.device_bytes == (0, 20, 20, 0, 30, 20, 20, 20)
    assert tl.host_bytes == (0, 0, 0, 20, 50, 20, 20, 20)
    assert (tl.host_peak_bytes, tl.peak_bytes, tl.peak_slot) == (50, 30, 4)
    assert tl.transfer_time == 6.0 and tl.added_time == 6.0 and tl.ok

    # STORE for comparison: o occupies every slot after f0
    assert simulate(p, {"o": S, "e": S}).device_bytes == (0, 20, 20, 20, 50, 20, 20, 20)


def test_offload_uneven_slot_times():
    # f0 f1 f2 f3 | b0 b1 b2 with times 1 1 0.5 4 | 1 3 1; 8 B at 2 B/s = 4 s.
    times = [1.0, 1.0, 0.5, 4.0, 1.0, 3.0, 1.0]
    p = Problem(
        slots=slots([5] * 4, [5] * 3, times),
        activations=(act("x", 0, 0, 8, uses=(6,)),),
        host_bandwidth=2.0,
    )
    # out: f1+f2 = 1.5 < 4, f1+f2+f3 = 5.5 >= 4 -> out_end 3 (end of forward, nothing saved there)
    # back: b1 = 3 < 4, b0+b1 = 4 >= 4 -> back_start 4
    assert offload_window(p, "x") == (3, 4, 0.0)
    tl = simulate(p, {"x": O})
    assert tl.device_bytes == (5, 13, 13, 13, 13, 13, 13)
    assert tl.host_bytes == (0, 0, 0, 0, 8, 8, 8)


# ---- errors -----------------------------------------------------------------------------------
def test_missing_decision():
    tl = simulate(chain(), {"a": S, "b": S})
    assert not tl.ok
    assert any("'c'" in e and "no decision" in e for e in tl.errors)
    assert tl.needed == ("a", "b", "c")


def test_extra_decision_for_unneeded():
    p = rchain(a_uses=())
    tl = simulate(p, {"a": S, "b": S})
    assert not tl.ok and any("'a'" in e and "not needed" in e for e in tl.errors)
    assert tl.needed == ("b",)
    assert tl.device_bytes == (0, 0, 0, 10, 10, 10)  # the extra decision takes no memory


def test_unknown_name_and_bad_value():
    tl = simulate(chain(), {"a": S, "b": S, "c": S, "zzz": S})
    assert any("'zzz'" in e and "unknown" in e for e in tl.errors)
    tl = simulate(chain(), {"a": S, "b": S, "c": "bogus"})
    assert any("'c'" in e and "bogus" in e for e in tl.errors)
    # plain strings are accepted as decisions
    assert simulate(chain(), {"a": "store", "b": "recompute", "c": "store"}).peak_bytes == 120


def test_recompute_non_recomputable():
    p = Problem(
        slots=slots([0, 0], [0, 0]),
        activations=(act("drop", 0, 0, 7, uses=(3,), recomputable=False),),
    )
    tl = simulate(p, {"drop": R})
    assert not tl.ok and any("'drop'" in e and "not recomputable" in e for e in tl.errors)
    assert simulate(p, {"drop": S}).ok


def test_offload_disabled_or_not_offloadable():
    tl = simulate(chain(), {"a": O, "b": S, "c": S})  # host_bandwidth 0
    assert not tl.ok and any("'a'" in e and "host_bandwidth" in e for e in tl.errors)
    assert tl.transfer_time == 0.0
    assert tl.device_bytes == simulate(chain(), {"a": S, "b": S, "c": S}).device_bytes

    p = Problem(
        slots=slots([0, 0], [0, 0]),
        activations=(act("x", 0, 0, 7, uses=(3,), offloadable=False),),
        host_bandwidth=1e9,
    )
    tl = simulate(p, {"x": O})
    assert not tl.ok and any("not offloadable" in e for e in tl.errors)


def test_unsorted_backward_uses_are_rejected():
    with pytest.raises(ValueError, match="ascending"):
        Problem(slots=slots([0] * 3, [0] * 3), activations=(act("x", 0, 0, 4, uses=(5, 3)),))


def test_recomputed_input_starts_just_in_time_for_its_consumer():
    # b is recomputed at its use (4) and reads a: a is recomputed just before, at slot 4, and
    # stays until its own use at 5 (the old static rule forbade this pair).
    p = chain()
    plan = {"a": R, "b": R, "c": S}
    tl = simulate(p, plan)
    assert tl.ok, tl.errors
    assert tl.starts == {"a": 4, "b": 4, "c": 3} == recompute_starts(p, plan)
    assert live_intervals(p, plan) == {"a": [(4, 5)], "b": [(4, 4)], "c": [(3, 3)]}
    assert tl.device_bytes == (100, 100, 100, 116, 112, 104)
    assert tl.recompute_time == 3.0
    assert simulate(p, {"a": S, "b": R, "c": S}).ok  # the checkpoint pattern still works
    assert simulate(p, {"a": R, "b": S, "c": S}).starts["a"] == 5  # no consumer: its own use


# ---- a -> b -> c, with b never read by backward -----------------------------------------------
# slots f0 f1 f2 | b0 b1 b2 b3 (3..6), fixed 0. a: 2 B, read at 6; b = f(a): 4 B, read by nothing
# in backward; c = g(b): 8 B, read at 3. Recomputing c and b and a: all start at d(c) = 3.
def jchain() -> Problem:
    return Problem(
        slots=slots([0] * 3, [0] * 4),
        activations=(
            act("a", 0, 1, 2, uses=(6,), t=1.0),
            act("b", 1, 2, 4, inputs=("a",), t=2.0),
            act("c", 2, 2, 8, uses=(3,), inputs=("b",), t=4.0),
        ),
    )


def test_jit_chain_starts_at_the_first_consumer_need():
    p = jchain()
    assert p.first_uses == {"a": 6, "b": None, "c": 3}
    assert p.earliest_slots == {"a": 3, "b": 3, "c": 3}
    plan = {"a": R, "b": R, "c": R}
    tl = simulate(p, plan)
    assert tl.ok, tl.errors
    assert tl.starts == {"a": 3, "b": 3, "c": 3}
    assert tl.last_needs == {"a": 6, "b": 3, "c": 3}
    assert live_intervals(p, plan) == {"a": [(3, 6)], "b": [(3, 3)], "c": [(3, 3)]}
    assert tl.device_bytes == (0, 0, 0, 14, 2, 2, 2)
    # a stored: its last need stays its own use; b recomputed from it at 3
    tl = simulate(p, {"a": S, "b": R, "c": R})
    assert tl.ok and tl.device_bytes == (0, 0, 2, 14, 2, 2, 2)
    # b stored, c recomputed: a is not needed beyond its own use; b lives until 3
    tl = simulate(p, {"a": R, "b": S, "c": R})
    assert tl.ok and tl.starts == {"a": 6, "b": 3, "c": 3}
    assert tl.device_bytes == (0, 0, 0, 12, 0, 0, 2)


def test_stored_input_last_need_extends_to_recomputed_consumer_start():
    # a read at 3 only; b = f(a) read at 5 and recomputed there: a (stored) lives until 5.
    p = Problem(
        slots=slots([0] * 3, [0] * 3),
        activations=(act("a", 0, 1, 3, uses=(3,)), act("b", 1, 2, 5, uses=(5,), inputs=("a",))),
    )
    tl = simulate(p, {"a": S, "b": R})
    assert tl.ok and tl.last_needs == {"a": 5, "b": 5} and tl.starts == {"a": 3, "b": 5}
    assert tl.device_bytes == (0, 0, 3, 3, 3, 8)


def test_offload_needed_before_its_prefetch_is_an_error():
    # OFFLOAD a (4 B at 2 B/s): prefetched by d(a) = 5, but recomputing b at 4 needs it earlier.
    q = chain(host_bandwidth=2.0)
    assert offload_window(q, "a") == (2, 3, 1.0)
    plan = {"a": O, "b": R, "c": S}
    assert live_intervals(q, plan)["a"] == [(2, 2), (3, 5)]
    tl = simulate(q, plan)
    assert any("'a' is OFFLOAD but a recomputed consumer needs it at slot 4" in e for e in tl.errors)
    assert any("'a' read at slot 4 to recompute 'b' but not live" in e for e in tl.errors)
    with pytest.raises(PlanError, match="'a' is OFFLOAD"):
        check(q, plan)
    tl = simulate(q, {"a": O, "b": S, "c": S})  # its own use at slot 5 is fine
    # (no slot freed: the copy out ends at 2, the prefetch starts at 3; 1 s exposed)
    assert tl.ok and tl.device_bytes == (100, 100, 104, 128, 112, 104)
    assert tl.host_bytes == (0, 0, 0, 4, 4, 4) and tl.transfer_time == 1.0


def test_offload_without_direct_backward_use_is_an_error():
    p = Problem(slots=jchain().slots, activations=jchain().activations, host_bandwidth=100.0)
    with pytest.raises(ValueError):
        offload_window(p, "b")
    tl = simulate(p, {"a": S, "b": O, "c": R})
    assert any("'b' is OFFLOAD but backward never reads it directly" in e for e in tl.errors)


# ---- check ------------------------------------------------------------------------------------
def test_check_budget():
    p = chain()
    plan = Plan({"a": S, "b": R, "c": S}, solver="hand")
    tl = check(p, plan, budget_bytes=120)
    assert isinstance(tl, MemoryTimeline) and tl.peak_bytes == 120
    assert check(p, plan).peak_bytes == 120
    with pytest.raises(PlanError, match="119"):
        check(p, plan, budget_bytes=119)
    with pytest.raises(PlanError, match="no decision"):
        check(p, {"a": S, "b": S})
    with pytest.raises(PlanError) as ei:
        check(p, {"a": S, "b": S}, budget_bytes=10**9)
    assert "'c'" in str(ei.value)


def test_empty_schedule():
    tl = simulate(Problem(slots=(), activations=()), {})
    assert tl.device_bytes == () and tl.peak_bytes == 0 and tl.ok
    assert store_all_peak(Problem(slots=(), activations=())) == 0


# ---- JSON -------------------------------------------------------------------------------------
def test_problem_json_round_trip(tmp_path):
    p = Problem(
        slots=slots([1, 2, 3], [4, 5, 6], [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]),
        activations=(
            act("a", 0, 1, 4, uses=(3, 5), shape=(2, 3), dtype="torch.float32"),
            act("b", 1, 2, 8, uses=(4,), inputs=("a",), recomputable=False, offloadable=False),
        ),
        host_bandwidth=1.5e9,
        name="rt",
        metadata={"model": "mlp", "n": 3},
    )
    q = Problem.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and q.metadata == p.metadata and q.name == "rt"
    p.save(tmp_path / "p.json")
    q = Problem.load(tmp_path / "p.json")
    assert q == p and q.metadata == p.metadata
    plan = {"a": S, "b": S}
    assert simulate(q, plan) == simulate(p, plan)


def test_other_runs_hold_what_the_plan_stores_at_every_slot():
    # 3 other runs of the chain, each holding 5 B of inputs and what the plan STOREs
    p = chain(other_runs=3, run_held_bytes=5)
    alone = simulate(chain(), {"a": S, "b": S, "c": S})
    tl = simulate(p, {"a": S, "b": S, "c": S})
    assert tl.other_runs_bytes == 3 * (5 + 4 + 8 + 16)
    assert tl.device_bytes == tuple(b + 99 for b in alone.device_bytes)
    # recomputing b and c: the other runs hold only a (b's input) and the inputs
    tl = simulate(p, {"a": S, "b": R, "c": R})
    assert tl.other_runs_bytes == 3 * (5 + 4) and tl.ok
    assert tl.peak_bytes == simulate(chain(), {"a": S, "b": R, "c": R}).peak_bytes + 27
    assert Structure(p).profile({"a": S, "b": R, "c": R}).tolist() == list(tl.device_bytes)


def test_other_runs_do_not_hold_what_is_offloaded():
    p = Problem(offload_problem().slots, offload_problem().activations, host_bandwidth=10.0, other_runs=2)
    tl = simulate(p, {"o": O, "e": S})
    assert tl.other_runs_bytes == 2 * 30
    assert tl.device_bytes == tuple(b + 60 for b in simulate(offload_problem(), {"o": O, "e": S}).device_bytes)
    assert Structure(p).profile({"o": O, "e": S}).tolist() == list(tl.device_bytes)


def test_other_runs_survive_json_and_must_not_be_negative():
    p = chain(other_runs=3, run_held_bytes=5)
    q = Problem.from_dict(json.loads(json.dumps(p.to_dict())))
    assert (q.other_runs, q.run_held_bytes) == (3, 5) and q == p
    with pytest.raises(ValueError, match="other_runs"):
        chain(other_runs=-1)


def test_plan_json_round_trip(tmp_path):
    plan = Plan(
        {"a": S, "b": R, "c": O},
        solver="ilp",
        status="optimal",
        objective=1.25,
        bound=1.0,
        gap=0.2,
        solve_time_s=0.5,
        budget_bytes=1 << 30,
        info={"nodes": 3},
    )
    q = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert q == plan and q.info == plan.info
    assert all(isinstance(d, Decision) for d in q.decisions.values())
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


# ---- speed ------------------------------------------------------------------------------------
def test_large_problem_agrees_with_the_solvers_evaluation():
    # (the simulator's speed on the full-size problem is benchmarks/simulate_speed.py's figure)
    p, plan = large_problem(forward=3_000, backward=3_000, activations=1_500)
    assert {plan[n] for n in plan} == {S, R, O}
    tl = simulate(p, plan)
    assert tl.ok, tl.errors[:3]
    struct = Structure(p)
    assert tl.device_bytes == tuple(int(b) for b in struct.profile(plan))
    assert tl.added_time == pytest.approx(struct.cost(plan), rel=1e-12)


# ---- properties on random problems ------------------------------------------------------------
TIMES = st.sampled_from([0.0, 0.5, 1.0, 2.0])


@st.composite
def problems(draw):
    nf = draw(st.integers(1, 5))
    nb = draw(st.integers(0, 5))
    sl = tuple(
        Slot(f"s{i}", FORWARD if i < nf else BACKWARD, draw(TIMES), draw(st.integers(0, 100)))
        for i in range(nf + nb)
    )
    acts: list[Activation] = []
    for i in range(draw(st.integers(0, 6))):
        created = draw(st.integers(0, nf - 1))
        lfu = draw(st.integers(created, nf - 1))
        uses = sorted(draw(st.sets(st.integers(nf, nf + nb - 1), max_size=3))) if nb else []
        earlier = [a.name for a in acts if a.created < created]
        inputs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        acts.append(
            Activation(
                f"a{i}", "op", draw(st.integers(0, 50)), draw(TIMES), created, lfu,
                tuple(uses), tuple(inputs), draw(st.booleans()), draw(st.booleans()),
            )
        )
    return Problem(slots=sl, activations=tuple(acts), host_bandwidth=draw(st.sampled_from([0.0, 5.0, 100.0])))


def random_plan(draw, p: Problem, valid: bool = True) -> dict[str, Decision]:
    """Random decisions over exactly the needed closure (consumers decided first); with ``valid``
    only OFFLOAD where the activation is not needed before its first backward use."""
    needed = {a.name for a in p.activations if a.backward_uses}
    plan: dict[str, Decision] = {}
    start: dict[str, int] = {}
    for a in sorted(p.activations, key=lambda a: a.created, reverse=True):
        if a.name not in needed:
            continue
        s = [a.backward_uses[0]] if a.backward_uses else []
        s += [start[c.name] for c in p.activations if a.name in c.inputs and plan.get(c.name) is R]
        start[a.name] = min(s)
        options = [S]
        if a.recomputable:
            options.append(R)
        if a.offloadable and p.host_bandwidth > 0 and (
            not valid or (a.backward_uses and start[a.name] == a.backward_uses[0])
        ):
            options.append(O)
        plan[a.name] = draw(st.sampled_from(options))
        if plan[a.name] is R:
            needed.update(a.inputs)
    return plan


def copy_windows(p: Problem, names: list[str]) -> tuple[dict, float]:
    """Copies one after another on each link, by linear scans over the slots' time: per name
    (last forward slot on the device, first backward slot on it again), and the unhidden seconds."""
    nf, n = p.num_forward, len(p.slots)
    end = [sum(s.compute_time for s in p.slots[: t + 1]) for t in range(n)]  # end time of slot t
    begin = [e - s.compute_time for e, s in zip(end, p.slots)]
    win, link, out_wait = {}, 0.0, 0.0
    for a in sorted((p.activation(x) for x in names), key=lambda a: (a.last_forward_use, a.created, a.name)):
        link = max(link, end[a.last_forward_use]) + a.bytes / p.host_bandwidth
        t = next((t for t in range(a.last_forward_use + 1, nf) if end[t] >= link), None)
        if t is None:
            t, out_wait = nf - 1, max(out_wait, link - end[nf - 1])
        win[a.name] = [t, None]
    link, in_wait = float("inf"), 0.0
    for a in sorted((p.activation(x) for x in names), key=lambda a: (a.backward_uses[0], a.created, a.name),
                    reverse=True):
        d = a.backward_uses[0]
        link = min(link, begin[d]) - a.bytes / p.host_bandwidth
        t = max((t for t in range(nf, d) if begin[t] <= link), default=None)
        if link < begin[nf] or t is None:
            t, in_wait = nf, max(in_wait, begin[nf] - link)
        win[a.name][1] = t
    return win, out_wait + in_wait


def brute_force(p: Problem, plan: dict[str, Decision]) -> tuple[list[int], list[int]]:
    """Per-slot, per-activation reading of the semantics, without intervals or difference arrays.

    Starts by fixed-point iteration (not the simulator's one reverse sweep): S(v) is the least
    of d(v) and the starts of v's RECOMPUTE consumers in the plan.
    """
    win, _ = copy_windows(p, [n for n, d in plan.items() if d is O])
    start = {n: (p.activation(n).backward_uses or (None,))[0] for n in plan}
    changed = True
    while changed:
        changed = False
        for c, dc in plan.items():
            if dc is not R or start[c] is None:
                continue
            for i in p.activation(c).inputs:
                if start[i] is None or start[c] < start[i]:
                    start[i] = start[c]
                    changed = True
    device = [s.fixed_bytes for s in p.slots]
    host = [0] * len(p.slots)
    for name, d in plan.items():
        a = p.activation(name)
        last = max(
            list(a.backward_uses)
            + [start[c.name] for c in p.activations if name in c.inputs and plan.get(c.name) is R]
        )
        for t in range(len(p.slots)):
            if d is S:
                on = a.last_forward_use < t <= last
            elif d is R:
                on = start[name] <= t <= last
            else:
                out_end, back_start = win[name]
                on = a.last_forward_use < t <= out_end or back_start <= t <= last
                host[t] += a.bytes * (out_end < t <= last)
            device[t] += a.bytes * on
    return device, host


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.data())
def test_random_valid_plans(p, data):
    plan = random_plan(data.draw, p)
    tl = simulate(p, plan)
    nf = p.num_forward

    # a complete plan of allowed decisions over the needed closure is always valid
    assert tl.ok, tl.errors
    assert set(tl.needed) == set(plan) and list(tl.needed) == needed_activations(p, plan)

    # memory never drops below what no decision changes; matches the brute-force reading
    assert all(d >= s.fixed_bytes for d, s in zip(tl.device_bytes, p.slots))
    device, host = brute_force(p, plan)
    assert list(tl.device_bytes) == device and list(tl.host_bytes) == host
    if p.slots:
        assert tl.peak_bytes == max(device) and tl.peak_slot == device.index(max(device))
    assert tl.host_peak_bytes == max(host, default=0)

    # time accounting
    assert tl.recompute_time == pytest.approx(sum(p.activation(n).compute_time for n in plan if plan[n] is R))
    assert tl.transfer_time == pytest.approx(copy_windows(p, [n for n in plan if plan[n] is O])[1])
    assert tl.added_time == pytest.approx(tl.recompute_time + tl.transfer_time)

    # Storing the plan's whole needed set dominates the plan on the forward slots (nothing but
    # STORE/OFFLOAD holds an activation there, and OFFLOAD only part of the time) ...
    held = simulate(p, {n: S for n in plan}, ) if all(not p.activation(n).inputs or plan[n] is not R for n in plan) else None
    if held is not None and held.ok:
        assert all(tl.device_bytes[t] <= held.device_bytes[t] for t in range(nf))
    base = simulate(p, {a.name: S for a in p.activations if a.backward_uses})
    assert base.ok
    # ... and everywhere when nothing is recomputed, or when no activation has inputs (then the
    # needed set and every last need are the STORE-all ones and each interval is a sub-interval).
    # With recomputed inputs it does not: see test_all_recompute_can_exceed_store_all.
    if R not in plan.values() or not any(a.inputs for a in p.activations):
        assert all(x <= y for x, y in zip(tl.device_bytes, base.device_bytes))
        assert tl.peak_bytes <= base.peak_bytes == store_all_peak(p)

    # dropping any one decision makes the plan invalid (missing decision, or now-extra ones)
    if plan:
        name = data.draw(st.sampled_from(sorted(plan)))
        assert not simulate(p, {k: v for k, v in plan.items() if k != name}).ok


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.data())
def test_invalid_exactly_when_an_offload_is_needed_early(p, data):
    """A plan of allowed decisions over its needed closure is valid iff every OFFLOAD activation
    is read by backward directly and no recomputed consumer needs it before that first use."""
    plan = random_plan(data.draw, p, valid=False)
    tl = simulate(p, plan)
    starts = recompute_starts(p, plan)
    assert set(starts) == set(plan)
    bad = sorted(
        n for n, d in plan.items()
        if d is O and (not p.activation(n).backward_uses or starts[n] < p.activation(n).backward_uses[0])
    )
    assert tl.ok == (not bad), (bad, tl.errors)
    for n in bad:
        assert any(f"act {n!r} is OFFLOAD" in e for e in tl.errors)
    if tl.ok:  # the starts are the fixed point's
        for n, d in plan.items():
            if d is R:
                a = p.activation(n)
                for i in a.inputs:
                    assert starts[i] <= starts[n]


# ---- kernels that recomputed a value in the last compile (remat.kernel_groups) -----------------
# slots f0 f1 | b0 .. b4 (2..6), fixed 10 everywhere; u is stored, v recomputed from u


def kernel_problem(v_uses, kernels=None, v_inputs=("u",)):
    from remat.kernel_groups import KernelGroups, with_kernels

    p = Problem(slots=slots([10] * 2, [10] * 5), activations=(
        act("u", 0, 1, 1000, uses=(2,)), act("v", 1, 1, 100, uses=v_uses, inputs=v_inputs)))
    groups = KernelGroups(backward=tuple(frozenset(k) for k in (kernels or ())))
    return with_kernels(p, groups)


def test_a_value_written_by_the_kernel_that_recomputes_it_lives_across_the_kernel():
    plain = simulate(kernel_problem((4, 6)), {"u": S, "v": R})
    assert plain.device_bytes[2:] == (1010, 1010, 1110, 110, 110)
    kernel = simulate(kernel_problem((4, 6), [{"b1", "b2", "v"}]), {"u": S, "v": R})
    assert kernel.ok and kernel.device_bytes[2:] == (1010, 1110, 1110, 110, 110)  # from the kernel's start
    assert kernel.starts["v"] == 4
    ends = live_intervals(kernel_problem((4, 6), [{"b2", "b3", "v"}]), {"u": S, "v": R})
    assert ends["v"] == [(4, 6)] and ends["u"] == [(2, 5)]  # to the kernel's end, which reads u until then


def test_a_value_read_only_inside_the_kernel_that_recomputes_it_takes_no_memory():
    p = kernel_problem((3, 4), [{"b1", "b2", "b3", "v"}])
    tl = simulate(p, {"u": S, "v": R})
    assert tl.ok and tl.device_bytes[2:] == (1010, 1010, 1010, 1010, 10)  # u read until the kernel ends
    assert live_intervals(p, {"u": S, "v": R})["v"] == []
    assert simulate(p, {"u": S, "v": S}).device_bytes[2:5] == (1110, 110, 110)  # stored: no kernel rule


def test_a_consumer_recomputed_in_another_kernel_reads_the_value_from_memory():
    acts = (act("u", 0, 1, 1000, uses=(2,)), act("v", 0, 1, 100, uses=(3,)),
            act("w", 1, 1, 1, uses=(5,), inputs=("v",)))
    from remat.kernel_groups import KernelGroups, with_kernels

    base = Problem(slots=slots([10] * 2, [10] * 5), activations=acts)
    same = with_kernels(base, KernelGroups(backward=(frozenset({"b1", "b3", "v", "w"}),)))
    other = with_kernels(base, KernelGroups(backward=(frozenset({"b1", "v"}), frozenset({"b3", "w"}))))
    plan = {"u": S, "v": R, "w": R}
    assert simulate(same, plan).peak_bytes == 1010  # v and w never leave their kernel
    assert live_intervals(other, plan)["v"] == [(3, 5)] and simulate(other, plan).ok


def test_recompute_kernels_survive_json_and_ignore_kernels_of_no_backward_slot():
    from remat.kernel_groups import KernelGroups, RecomputeKernel, recompute_kernel_ids, recompute_kernels, with_kernels

    p = kernel_problem((4,), [{"b2", "b4", "v", "no_such_op"}, {"u", "f0"}])
    assert recompute_kernels(p) == {"v": RecomputeKernel((4, 6), frozenset({0}))}
    assert recompute_kernel_ids(p) == {"v": {0}, "u": {1}}  # u: named by a kernel of no backward slot
    again = Problem.from_dict(json.loads(json.dumps(p.to_dict())))
    assert recompute_kernels(again) == recompute_kernels(p) and recompute_kernel_ids(again) == recompute_kernel_ids(p)
    bare = kernel_problem((4,))
    assert with_kernels(bare, None) is bare and recompute_kernels(bare) == {}
    assert with_kernels(bare, KernelGroups(forward=(frozenset({"f0", "f1"}),))) is bare


def test_a_pointwise_value_computed_inside_several_kernels_is_never_written():
    # v, read at b1 and b3, is named by the kernels of both: each computes it inline (a kernel that
    # wrote it would be the only one naming it), so it takes no memory; u lives until the last reads it
    p = kernel_problem((3, 5), [{"b1", "v"}, {"b3", "v"}])
    assert live_intervals(p, {"u": S, "v": R}) == {"u": [(2, 5)], "v": []}
    assert simulate(p, {"u": S, "v": R}).device_bytes[2:] == (1010, 1010, 1010, 1010, 10)
    written = kernel_problem((3, 5), [{"b1", "v"}, {"b3"}])  # b3 reads v's buffer: its kernel does not name v
    assert live_intervals(written, {"u": S, "v": R})["v"] == [(3, 5)]
    from dataclasses import replace

    from remat.kernel_groups import POINTWISE, KernelGroups, recompute_kernel_ids, recompute_kernels, with_kernels

    reduction = with_kernels(replace(kernel_problem((3, 5)), metadata={POINTWISE: ["u"]}),
                             KernelGroups(backward=(frozenset({"b1", "v"}), frozenset({"b3", "v"}))))
    assert recompute_kernels(reduction)["v"].slots == (3,) and recompute_kernel_ids(reduction) == {}


def test_a_consumer_recomputed_by_a_kernel_of_recomputed_ops_alone_reads_inside_it():
    # slots f0 f1 f2 | b0 .. b4 (3..7). w = f(v), read by an extern op at b2 (slot 5), is
    # recomputed with v in a kernel that holds no backward slot (it runs when w is first needed);
    # v's backward use b3 is in the other kernel that names v. v is read only inside its kernels
    # while w's kernel runs within theirs (5 <= 6)
    def problem(w_use):
        from remat.kernel_groups import KernelGroups, with_kernels

        acts = (act("u", 0, 2, 1000, uses=(3,)), act("v", 1, 2, 100, uses=(6,), inputs=("u",)),
                act("w", 2, 2, 50, uses=(w_use,), inputs=("v",)))
        base = Problem(slots=slots([10] * 3, [10] * 5), activations=acts)
        return with_kernels(base, KernelGroups(backward=(frozenset({"v", "w"}), frozenset({"b3", "v"}))))

    plan = {"u": S, "v": R, "w": R}
    assert live_intervals(problem(5), plan) == {"u": [(3, 6)], "v": [], "w": [(5, 5)]}
    # read at b4 (slot 7), w is recomputed after v's kernels: v's buffer is what it reads
    assert live_intervals(problem(7), plan) == {"u": [(3, 6)], "v": [(6, 7)], "w": [(7, 7)]}


def test_a_value_recomputed_in_a_kernel_before_its_first_read_reads_its_inputs_there():
    # Inductor put v's recomputation into the kernel of b0, b1 (slots 2, 3), though b4 (slot 6)
    # first reads it: v is written there and u, read by that kernel only, dies with it
    p = kernel_problem((6,), [{"b0", "b1", "v"}])
    tl = simulate(p, {"u": S, "v": R})
    assert tl.ok and live_intervals(p, {"u": S, "v": R}) == {"u": [(2, 3)], "v": [(2, 6)]}
    assert tl.device_bytes[2:] == (1110, 1110, 110, 110, 110)


def test_a_taker_that_its_kernels_inline_takes_no_buffer():
    # slots f0 f1 f2 | b0 .. b4 (3..7). a (an extern op's result: no kernel) is taken by t where
    # both are recomputed, but t is computed only inside the kernel of its one reader b2: t
    # writes nothing, a keeps its buffer (transformers Llama's recomputed mm_6, read by the
    # residual add_7 that two kernels inline)
    from remat.kernel_groups import KernelGroups, with_kernels

    acts = (act("u", 0, 2, 1000, uses=(3,)), act("a", 1, 2, 100, inputs=("u",), taken_by="t"),
            act("t", 2, 2, 100, uses=(5,), inputs=("a",)))
    base = Problem(slots=slots([10] * 3, [10] * 5), activations=acts)
    plan = {"u": S, "a": R, "t": R}
    assert live_intervals(base, plan)["a"] == []  # t writes into a's buffer
    told = with_kernels(base, KernelGroups(backward=(frozenset({"b2", "t"}),)))
    assert live_intervals(told, plan) == {"u": [(3, 5)], "a": [(5, 5)], "t": []}


def moved_problem(fixed_bwd=(17, 22, 15, 15, 15), buffers=None):
    """v (recomputed from the stored u) and w are read at b1 (slot 3), outside the kernel that
    would recompute v (b2, b3: slots 4, 5); b1's op allocates 5 bytes kept to the end (a weight
    gradient) and reads the buffer g (7 bytes, from b0 to b1) of the fixed bytes."""
    from dataclasses import replace

    from remat.simulate import SLOT_BUFFERS

    acts = (act("u", 0, 1, 1000, uses=(2,)), act("v", 1, 1, 100, uses=(3,), inputs=("u",)),
            act("w", 0, 1, 50, uses=(3,)))
    p = kernel_problem((3,), [{"b2", "b3", "v"}])
    p = replace(p, slots=slots([10] * 2, list(fixed_bwd)), activations=acts)
    return replace(p, metadata={**p.metadata, SLOT_BUFFERS: buffers or {"b1": [5, 6, [["g", 7, 3]]]}})


def test_a_reader_of_a_value_recomputed_inside_a_kernel_acts_after_that_kernel():
    """b1 reads v, which the kernel of b2, b3 recomputes, so Inductor runs b1 after that kernel:
    its result's bytes start after it, g and w live until then, v lives from the kernel's start."""
    p = moved_problem()
    moved = simulate(p, {"u": S, "v": R, "w": S})
    assert moved.ok and moved.starts["v"] == 5 and moved.last_needs["v"] == 6
    assert live_intervals(p, {"u": S, "v": R, "w": S}) == {"u": [(2, 5)], "v": [(4, 6)], "w": [(2, 6)]}
    # fixed 17 22 15 15 15 less b1's 5 on slots 3..5, plus g's 7 on 4..6
    assert moved.device_bytes[2:] == (1067, 1067, 1167, 1167, 172)
    stored = simulate(p, {"u": S, "v": S, "w": S})  # nothing recomputed: b1 stays where it is
    assert stored.device_bytes[2:] == (1167, 172, 15, 15, 15)
    bare = simulate(moved_problem(buffers={"b0": [1, 6, []]}), {"u": S, "v": R, "w": S})
    assert bare.device_bytes[2:] == (1067, 1172, 1115, 1115, 15)  # b1 not described: it stays at its slot


def test_a_value_whose_buffer_a_kernel_takes_over_leaves_where_that_kernel_starts():
    from remat.kernel_groups import KernelGroups, handovers, with_kernels

    acts = (act("u", 0, 1, 1000, uses=(4,)), act("w", 1, 1, 1, uses=(6,), inputs=("u",)))
    base = Problem(slots=slots([10] * 2, [10] * 5), activations=acts)
    p = with_kernels(base, KernelGroups(backward=(frozenset({"b1", "b2"}),), reused=frozenset({"u", "buf3"})))
    assert handovers(p) == {"u": 3}  # the kernel of u's last read (slot 4) starts at slot 3
    tl = simulate(p, {"u": S, "w": S})
    assert tl.ok and live_intervals(p, {"u": S, "w": S})["u"] == [(2, 2)]
    assert simulate(base, {"u": S, "w": S}).device_bytes[2:5] == (1011, 1011, 1011)
    assert tl.device_bytes[2:5] == (1011, 11, 11)  # the kernel's result, in fixed bytes, holds u's buffer
    assert live_intervals(p, {"u": S, "w": R})["u"] == [(2, 6)]  # needed later: no handover
    assert handovers(with_kernels(base, KernelGroups(reused=frozenset({"u"})))) == {"u": 4}  # no kernel: at the read


def handover_problem() -> Problem:
    """The smallest graph of a conditional handover. Slots f0 f1 | b0 b1 b2 b3 (2..5): ``a`` (f0,
    1000 B, read by backward at b3) has its buffer taken by the kernel that starts at b1; ``c =
    f(a)`` (f1, 100 B, read at b2) may be recomputed; b1 holds 2000 B of its own."""
    acts = (act("a", 0, 1, 1000, uses=(5,), recomputable=False, offloadable=False),
            act("c", 1, 1, 100, uses=(4,), inputs=("a",)))
    return Problem(slots=slots([10, 10], [10, 2000, 10, 10]), activations=acts, metadata={"handovers": {"a": 3}})


def test_a_recomputed_consumer_breaks_the_handover_of_its_input():
    # hf_llama: recomputed inside the SwiGLU backward kernel, ``mul_20 = div_1 * mm_12`` reads
    # both again there, and Inductor takes neither buffer (code 18.7 MB, model 15.0 MB)
    p = handover_problem()
    stored = simulate(p, {"a": S, "c": S})
    assert live_intervals(p, {"a": S, "c": S})["a"] == [(2, 2)]
    assert stored.device_bytes[2:] == (1110, 2100, 110, 10)
    recomputed = simulate(p, {"a": S, "c": R})
    assert live_intervals(p, {"a": S, "c": R})["a"] == [(2, 5)]  # to its last backward use
    assert recomputed.ok and recomputed.device_bytes[2:] == (1010, 3000, 1110, 1010)


def through_problem(d_use: int = 4) -> Problem:
    """The smallest graph of a handover through a recomputed consumer. Slots f0 f1 f2 | b0 b1 b2
    (3..5): ``v`` (f0, 1000 B) has no backward use; ``c = v - m`` (f1, 1000 B, pointwise) is read
    at b2 and recomputed, if the plan says so, inside the kernel of b1 and b2 (whose result, 1000 B
    from b1, is in the fixed bytes): that kernel reads ``v`` at the index it writes and its result
    takes ``v``'s buffer (hf_llama's log-softmax backward: ``sub_1`` from ``mm_14``). ``d = g(v)``
    (f2, 10 B) is read at ``d_use``."""
    from remat.kernel_groups import KernelGroups, with_kernels

    acts = (act("v", 0, 2, 1000, recomputable=False, offloadable=False),
            act("c", 1, 2, 1000, uses=(5,), inputs=("v",), offloadable=False),
            act("d", 2, 2, 10, uses=(d_use,), inputs=("v",), offloadable=False))
    p = Problem(slots=slots([10, 10, 10], [10, 1010, 1010]), activations=acts,
                metadata={"handovers": {"c": 4, "v": 4}, "handed_through": {"v": ["c"]}})
    return with_kernels(p, KernelGroups(backward=(frozenset({"b1", "b2", "c"}),)))


def test_a_value_read_through_a_consumer_recomputed_in_the_taking_kernel_is_handed_over():
    p = through_problem()
    stored = simulate(p, {"c": S, "d": S})  # v is not needed: c's own buffer is taken
    assert stored.ok and stored.device_bytes[3:] == (1020, 1020, 1010)
    recomputed = simulate(p, {"v": S, "c": R, "d": S})  # c inlined: the kernel writes into v
    assert live_intervals(p, {"v": S, "c": R, "d": S}) == {"v": [(3, 3)], "c": [], "d": [(3, 4)]}
    assert recomputed.ok and recomputed.device_bytes[3:] == (1020, 1020, 1010)
    # d recomputed too reads v again: no handover
    assert live_intervals(p, {"v": S, "c": R, "d": R})["v"] == [(3, 5)]
    assert simulate(p, {"v": S, "c": R, "d": R}).device_bytes[3:] == (1010, 2020, 2010)


def test_a_consumer_recomputed_before_the_taking_kernel_still_breaks_the_handover():
    # Inductor may fuse d's recomputation into the taking kernel, which then reads v beside the
    # result (hf_llama's mul_20 = div_1 * mm_12: recomputed two slots before the SwiGLU backward
    # kernel in the model, inside it in the code, which took neither buffer: code 22.7 MB, a
    # model that kept the handovers 16.8 MB)
    p = through_problem(d_use=3)
    plan = {"v": S, "c": R, "d": R}
    assert live_intervals(p, plan) == {"v": [(3, 5)], "c": [], "d": [(3, 3)]}
    assert simulate(p, plan).device_bytes[3:] == (1020, 2010, 2010)


# ---- a value taken by its recomputed reader (Activation.taken_by) ------------------------------
# slots f0 f1 | b0 b1 b2 (2..4): x = addmm (f0) read only by y = tanh(x) (f1), which backward
# reads at b2; Inductor writes a recomputed y into a recomputed x's buffer


def taken_problem(taken_by="y", kernels=None):
    from remat.kernel_groups import KernelGroups, with_kernels

    p = Problem(slots=slots([10, 20], [100, 100, 90]), activations=(
        act("x", 0, 1, 8, taken_by=taken_by), act("y", 1, 1, 8, uses=(4,), inputs=("x",))))
    return with_kernels(p, KernelGroups(backward=tuple(frozenset(k) for k in (kernels or ()))))


def test_a_recomputed_value_taken_by_its_recomputed_reader_ends_where_the_reader_starts():
    both = {"x": R, "y": R}
    assert simulate(taken_problem(""), both).device_bytes[2:] == (100, 100, 106)  # x and y at b2
    tl = simulate(taken_problem(), both)
    assert tl.ok and tl.device_bytes[2:] == (100, 100, 98) and tl.peak_bytes == 100
    assert live_intervals(taken_problem(), both)["x"] == []
    stored = {"x": S, "y": R}  # a stored x keeps its buffer to its last need, y's start
    assert simulate(taken_problem(), stored).device_bytes == simulate(taken_problem(""), stored).device_bytes
    assert live_intervals(taken_problem(), stored)["x"] == [(2, 4)]


def test_a_taken_value_recomputed_in_a_kernel_before_its_reader_lives_until_the_reader_starts():
    p = taken_problem(kernels=[{"b0", "b1", "x"}])  # x's kernel at b0..b1, y recomputed at b2
    tl = simulate(p, {"x": R, "y": R})
    assert tl.ok and live_intervals(p, {"x": R, "y": R})["x"] == [(2, 3)]
    assert tl.device_bytes[2:] == (108, 108, 98)


def test_a_taker_must_be_the_only_reader_of_equal_bytes():
    with pytest.raises(ValueError, match="only reader"):
        Problem(slots=slots([10, 20], [100, 100, 90]), activations=(
            act("x", 0, 1, 8, uses=(2,), taken_by="y"), act("y", 1, 1, 8, uses=(4,), inputs=("x",))))
    with pytest.raises(ValueError, match="other bytes"):
        Problem(slots=slots([10, 20], [100, 100, 90]), activations=(
            act("x", 0, 1, 4, taken_by="y"), act("y", 1, 1, 8, uses=(4,), inputs=("x",))))
    p = taken_problem()
    assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p
