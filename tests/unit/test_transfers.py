"""The copy schedule of OFFLOAD activations: one link per direction, copies in order."""

from __future__ import annotations

import pytest

from remat.plan import Decision
from remat.problem import BACKWARD, FORWARD, Activation, Problem, Slot
from remat.simulate import check, simulate
from remat.solvers import solve
from remat.transfers import offload_window, schedule_transfers

O, S = Decision.OFFLOAD, Decision.STORE


def _two_copies(bandwidth: float, nf: int = 6, nb: int = 6) -> Problem:
    """Two 100-byte activations last used in slot 0, read back at the last two backward slots."""
    slots = [Slot(f"f{i}", FORWARD, 1.0, 10) for i in range(nf)]
    slots += [Slot(f"b{i}", BACKWARD, 1.0, 10) for i in range(nb)]
    n = nf + nb
    acts = [
        Activation("a", "mm", 100, 50.0, 0, 0, (n - 1,), ()),
        Activation("b", "mm", 100, 50.0, 0, 0, (n - 2,), ()),
    ]
    return Problem(tuple(slots), tuple(acts), host_bandwidth=bandwidth, name="two")


def test_lone_copy_matches_offload_window():
    p = _two_copies(100.0)  # 1 s per copy: one slot each way
    s = schedule_transfers(p, ["a"])
    assert (s.free_after["a"], s.prefetch_at["a"], s.exposed) == offload_window(p, "a") == (1, 10, 0.0)


def test_copies_queue_on_the_link():
    p = _two_copies(100.0)
    s = schedule_transfers(p, ["a", "b"])
    # both released at the end of slot 0: a (created first) copies in slot 1, b in slot 2
    assert s.free_after == {"a": 1, "b": 2}
    assert s.out_done == {"a": 2.0, "b": 3.0}
    # b is needed at slot 10, a at 11: a's prefetch runs in slot 10, b's in slot 9
    assert s.prefetch_at == {"a": 10, "b": 9}
    assert s.exposed == 0.0
    tl = check(p, {"a": O, "b": O})
    assert tl.device_bytes[1] == 10 + 200 and tl.device_bytes[2] == 10 + 100 and tl.device_bytes[3] == 10
    assert tl.transfer_time == 0.0


def test_exposed_time_when_the_link_is_too_slow():
    p = _two_copies(100.0 / 4.0, nf=6, nb=6)  # 4 s per copy: 8 s of copies after slot 0, 5 s of compute
    s = schedule_transfers(p, ["a", "b"])
    assert s.exposed_out == pytest.approx(8.0 - 5.0)
    assert s.free_after == {"a": 4, "b": 5}
    # backward: a due at t=11 (start of slot 11), b at 10: a runs 7..11, b 3..7; backward starts at 6
    assert s.exposed_in == pytest.approx(3.0)
    assert s.prefetch_at == {"a": 7, "b": 6}
    assert simulate(p, {"a": O, "b": O}).transfer_time == pytest.approx(6.0)
    # one copy alone: 4 s each way, hidden
    assert simulate(p, {"a": O, "b": S}).transfer_time == 0.0


def test_ilp_prices_contention_and_respects_the_cap():
    """Alone, each copy hides behind compute; together they do not. The ILP must see that."""
    p = _two_copies(100.0 / 4.0)
    for cap in (110, 210, 300):
        plan = solve(p, cap, gap=0.0)
        tl = check(p, plan, cap)
        assert plan.objective == pytest.approx(tl.added_time)
        best = min(
            t.added_time
            for da in Decision for db in Decision
            if (t := simulate(p, {"a": da, "b": db})).ok and t.peak_bytes <= cap
        )
        assert plan.objective == pytest.approx(best)
    assert simulate(p, {"a": O, "b": O}).added_time == pytest.approx(6.0)  # what the ILP avoids


def test_bad_inputs():
    p = _two_copies(0.0)
    with pytest.raises(ValueError, match="host_bandwidth"):
        schedule_transfers(p, ["a"])
    assert schedule_transfers(p, []).exposed == 0.0


def _many_copies(n: int, bandwidth: float) -> Problem:
    """``n`` activations of different sizes and recompute costs, released and read back at
    scattered slots: the link cannot hide all their copies."""
    import random

    rng = random.Random(n)
    nf = nb = 3 * n
    slots = [Slot(f"f{i}", FORWARD, 1.0, 0) for i in range(nf)] + [Slot(f"b{i}", BACKWARD, 1.0, 0) for i in range(nb)]
    acts = []
    for k in range(n):
        c = rng.randrange(0, nf - 1)
        acts.append(Activation(f"a{k}", "mm", rng.randrange(1, 40) * 10, rng.uniform(0.1, 5.0), c, c,
                               (nf + rng.randrange(0, nb),), ()))
    acts.sort(key=lambda a: a.created)
    return Problem(tuple(slots), tuple(acts), host_bandwidth=bandwidth, name="many")


def test_copies_only_end_earlier_when_fewer_share_the_link():
    """Why the solvers may fix each candidate's window from the schedule of all candidates."""
    import random

    p = _many_copies(12, 60.0)
    rng = random.Random(0)
    names = [a.name for a in p.activations]
    full = schedule_transfers(p, names)
    for _ in range(200):
        sub = [n for n in names if rng.random() < 0.5]
        s = schedule_transfers(p, sub)
        for n in sub:
            assert s.free_after[n] <= full.free_after[n] and s.prefetch_at[n] >= full.prefetch_at[n]
        assert s.exposed <= full.exposed + 1e-12


def test_offload_candidates_fit_the_link_and_every_plan_holds():
    from remat.solvers._core import Structure

    p = _many_copies(12, 60.0)
    st = Structure(p)
    offs = [c for c in st.cands if c.off_ok]
    cum, nf = p.cumulative_time, p.num_forward
    assert 0 < st.offload_candidates < len(p.activations)
    assert sum(c.bytes for c in offs) <= min(cum[nf], cum[-1] - cum[nf]) * p.host_bandwidth
    for cap_frac in (0.5, 0.7, 0.9):
        cap = int(simulate(p, {a.name: S for a in p.activations}).peak_bytes * cap_frac)
        for solver in ("ilp", "greedy"):
            try:
                plan = solve(p, cap, solver=solver)
            except Exception as e:  # an unreachable cap must say so
                assert "cannot be met" in str(e)
                continue
            tl = check(p, plan, cap)
            assert plan.objective == pytest.approx(tl.added_time)
