"""Solver fuzzing: random Problems (``synthetic.fuzz_problem``) through every solver and the simulator.

For each problem and a cap drawn between a little below its smallest peak and its store-all peak,
``solver_failures`` checks: the ILP meets every cap at or above ``min_peak`` (and the floor
itself) with a plan that the simulator accepts (no slot over the cap, every backward read and
recompute input live, decisions for exactly the needed set), with the peak and objective that
the simulator computes; it raises ``InfeasibleBudgetError`` only below the floor, naming the
floor; greedy's plans are valid and never cheaper than the ILP's; the baselines' plans are valid.

This file runs a fixed-seed slice; ``benchmarks/fuzz_solvers.py`` runs thousands with the same
checker.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from remat.errors import InfeasibleBudgetError
from remat.problem import Problem
from remat.simulate import simulate, store_all_peak
from remat.solvers import min_peak, solve
from remat.structure import with_layers

from .synthetic import (Graph, chain_problem, fuzz_problem, residual_problem, transformer_problem,
                        with_random_handovers, with_random_takers)


def _plan_failures(p: Problem, plan, cap: int | None, who: str) -> list[str]:
    """Why ``plan`` is not a valid plan of ``p`` under ``cap`` per the simulator (or is priced
    differently by the solver)."""
    tl = simulate(p, plan)
    out = [f"{who}: {e}" for e in tl.errors[:3]]
    if cap is not None and tl.peak_bytes > cap:
        out.append(f"{who}: peak {tl.peak_bytes} over the cap {cap}")
    if set(plan.decisions) != set(tl.needed):
        out.append(f"{who}: decides {sorted(plan.decisions)} but needs {sorted(tl.needed)}")
    if abs(tl.added_time - plan.objective) > 1e-9 * max(1.0, tl.added_time):
        out.append(f"{who}: objective {plan.objective} but the simulator adds {tl.added_time}")
    return out


def _ilp_at(p: Problem, cap: int, floor: int) -> tuple[object, list[str]]:
    """(ILP plan or None, failures) at ``cap``: a plan iff ``cap >= floor``."""
    try:
        plan = solve(p, cap, solver="ilp")
    except InfeasibleBudgetError as e:
        if cap >= floor:
            return None, [f"ilp: infeasible at cap {cap} >= min_peak {floor}"]
        if e.min_peak_bytes != floor:
            return None, [f"ilp: infeasible at {cap} names floor {e.min_peak_bytes}, min_peak says {floor}"]
        return None, []
    if cap < floor:
        return plan, [f"ilp: a plan at cap {cap} below min_peak {floor}"]
    return plan, _plan_failures(p, plan, cap, f"ilp at {cap}")


def solver_failures(p: Problem, frac: float, exact_ilp: bool = True) -> list[str]:
    """Every broken property of the solvers on ``p`` at the cap ``floor + frac * (store-all -
    floor)`` (``frac`` < 0: below the floor); empty when all hold. ``exact_ilp`` False (kernel
    metadata: the ILP's rows over-count) drops "greedy is never cheaper than the ILP"."""
    sp, floor = store_all_peak(p), min_peak(p)
    if floor > sp:
        return [f"min_peak {floor} above the store-all peak {sp}"]
    cap = floor + int(frac * (sp - floor)) if frac >= 0 else floor - 1 - int(-frac * floor)
    out = _ilp_at(p, floor, floor)[1]
    plan, failures = _ilp_at(p, cap, floor)
    out += failures
    try:
        g = solve(p, cap, solver="greedy")
    except InfeasibleBudgetError:
        g = None
    if g is not None:
        out += _plan_failures(p, g, cap, f"greedy at {cap}")
        if plan is None:
            out.append(f"greedy meets cap {cap} where the ILP does not")
        elif exact_ilp and plan.objective > g.objective + 1e-12 * max(1.0, g.objective):
            out.append(f"ilp objective {plan.objective} worse than greedy's {g.objective} at {cap}")
    for name in ("store_all", "recompute_all"):
        out += _plan_failures(p, solve(p, cap, solver=name), None, name)
    return out


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_on_random_problems(rng, frac):
    p = fuzz_problem(rng)
    assert solver_failures(p, frac) == []


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0), runs=hst.integers(1, 3))
def test_solvers_on_random_problems_under_other_runs(rng, frac, runs):
    """The same properties when ``runs`` other runs of the graph hold what each plan stores."""
    p = replace(fuzz_problem(rng), other_runs=runs, run_held_bytes=rng.randint(0, 64))
    assert solver_failures(p, frac) == []


@pytest.mark.parametrize("seed", range(3))
def test_layer_modes_under_other_runs(seed):
    """Tied and mixed layer plans honour other runs too (the simulator accepts them)."""
    rng = random.Random(seed)
    p = replace(_random_stack(rng), other_runs=2)
    floor = min_peak(p)
    cap = floor + int(rng.random() * (store_all_peak(p) - floor))
    for mode in ("mix", "tie"):
        assert not _plan_failures(p, solve(p, cap, layers=mode), cap, mode)


# (seed, max_acts) of problems that benchmarks/fuzz_solvers.py found failing, now fixed:
# 100814: lower_bound_peak counted an OFFLOAD as live through its all-copies window, above the
# true floor, so ilp raised "cap 4359 cannot be met: the smallest peak is 4359"
@pytest.mark.parametrize("seed,max_acts", [(100814, 30)])
def test_problems_found_by_the_long_run(seed, max_acts):
    rng = random.Random(seed)
    p = fuzz_problem(rng, max_acts=max_acts)
    assert solver_failures(p, rng.uniform(-0.2, 1.0)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_checker_finds_a_broken_plan(seed):
    # a plan that leaves a needed activation undecided, and one priced wrongly, are both caught
    p = next(q for q in (fuzz_problem(random.Random(seed * 100 + i)) for i in range(100))
             if any(a.backward_uses and a.bytes for a in q.activations))
    plan = solve(p, None, solver="store_all")
    name = next(iter(plan.decisions))
    broken = replace(plan, decisions={k: v for k, v in plan.decisions.items() if k != name})
    assert _plan_failures(p, broken, None, "x")
    mispriced = replace(plan, objective=plan.objective + 1.0)
    assert _plan_failures(p, mispriced, None, "x")


def _random_stack(rng: random.Random) -> Problem:
    """A small stack of identical layers, its layers found (``remat.structure``)."""
    kind = rng.choice(["chain", "residual", "transformer"])
    if kind == "chain":
        p = chain_problem(layers=6, host_bandwidth=rng.choice([0.0, 150.0]))  # widths repeat every 3
    elif kind == "residual":
        p = residual_problem(blocks=rng.randint(2, 4), host_bandwidth=rng.choice([0.0, 150.0]))
    else:
        p = transformer_problem(layers=rng.randint(2, 3), seq=16, hidden=16, heads=2)
    return with_layers(p)


@pytest.mark.parametrize("seed", range(6))
def test_layer_modes_on_random_stacks(seed):
    """Every ``layers`` mode gives a plan the simulator accepts; free (exact at gap 0) <= mix <= tie."""
    rng = random.Random(seed)
    p = _random_stack(rng)
    assert p.layers
    _assert_layer_modes_ordered(p, rng)


def _assert_layer_modes_ordered(p: Problem, rng: random.Random) -> None:
    """At a random cap between the floor and store-all, every ``layers`` mode's plan is valid and
    free (exact at gap 0) <= mix <= tie."""
    floor = min_peak(p)
    cap = floor + int(rng.random() * (store_all_peak(p) - floor))
    plans = {mode: solve(p, cap, gap=0.0, layers=mode) for mode in ("mix", "tie", "free")}
    for mode, plan in plans.items():
        assert not _plan_failures(p, plan, cap, mode)
    eps = 1e-9 * max(1.0, plans["tie"].objective)
    assert plans["free"].objective <= plans["mix"].objective + eps <= plans["tie"].objective + 2 * eps


def _seeded_stack(rng: random.Random) -> Problem:
    """Layers whose dropout-like ops all read one random ``seeds`` value that no backward op
    reads: it lives while a recomputed reader has yet to start (many live segments)."""
    g = Graph(base=20)
    seeds = g.op("seeds", rng.randint(50, 400), 0.1, recomputable=False)
    prev = None
    for i in range(rng.randint(3, 6)):
        h = g.op(f"lin{i}", rng.randint(50, 200), 2.0 + i, inputs=(prev,) if prev else (), saved=(prev,) if prev else ())
        prev = g.op(f"drop{i}", rng.randint(50, 200), 0.3, inputs=(h, seeds), save_out=True)
    g.op("loss", 4, 0.1, inputs=(prev,), saved=(prev,))
    return g.problem("seeded")


@pytest.mark.parametrize("seed", range(6))
def test_pending_rows_solve_like_per_consumer_rows(seed, monkeypatch):
    """The live-segment rows written through ``pending`` variables (``ilp.PENDING_ROWS``; every
    candidate with segments at 0) give the same smallest peak and the same optimum as one row
    per consumer and segment."""
    from remat.solvers import ilp

    rng = random.Random(seed)
    p = _seeded_stack(rng)
    floor = min_peak(p)
    for frac in (0.1, 0.4, 0.7):
        cap = floor + int(frac * (store_all_peak(p) - floor))
        found = []
        for limit in (10**9, 0):
            monkeypatch.setattr(ilp, "PENDING_ROWS", limit)
            found.append((min_peak(p), solve(p, cap, gap=0.0, layers="free").objective))
        assert found[0][0] == found[1][0]
        assert found[0][1] == pytest.approx(found[1][1], rel=1e-9, abs=1e-12)


def with_random_kernels(p: Problem, rng: random.Random) -> Problem:
    """``p`` with random kernel facts in its metadata (``remat.kernel_groups.with_kernels``):
    some recomputable activations recomputed inside a backward kernel of one to three slots near
    their first read, some saved buffers handed to a kernel that starts before their last use, and
    some handed over through a recomputed consumer (``handed_through``; with or without backward
    uses of their own)."""
    nf, n = p.num_forward, len(p.slots)
    if n <= nf:
        return p
    kernels, hand, through = {}, {}, {}
    for a in p.activations:
        near = a.backward_uses[0] if a.backward_uses else rng.randrange(nf, n)
        if a.recomputable and rng.random() < 0.4:
            lo = max(nf, near - rng.randint(0, 2))
            kernels[a.name] = sorted(rng.sample(range(lo, min(n, lo + 4)), rng.randint(1, min(3, n - lo))))
        if a.backward_uses and rng.random() < 0.3:
            hand[a.name] = rng.randint(nf, a.backward_uses[-1])
    for a in p.activations:
        passing = [c for c in p.consumers[a.name] if c in kernels]
        if passing and a.name not in hand and rng.random() < 0.5:
            hand[a.name] = rng.choice(kernels[rng.choice(passing)])
            through[a.name] = rng.sample(passing, rng.randint(1, len(passing)))
    facts = {"recompute_kernels": kernels, "handovers": hand, "handed_through": through}
    return replace(p, metadata={**p.metadata, **facts})


def with_random_shared_kernels(p: Problem, rng: random.Random) -> Problem:
    """``p`` with random kernel facts as ``remat.kernel_groups.with_kernels`` writes them from
    kernels that several values share: a few backward kernels of one to three slots, a quarter of
    them of none (recomputed ops alone); about half the recomputable activations named by one to
    three of them (a consumer often by some of an input's: it reads that input inside them), each
    with those kernels' slots (when one holds any) and ids."""
    nf, n = p.num_forward, len(p.slots)
    if n <= nf:
        return p
    groups: list[list[int]] = []
    for _ in range(rng.randint(1, 6)):
        lo = rng.randrange(nf, n)
        some = sorted(rng.sample(range(lo, min(n, lo + 4)), rng.randint(1, min(3, n - lo))))
        groups.append([] if rng.random() < 0.25 else some)
    slots, ids = {}, {}
    for a in sorted(p.activations, key=lambda a: a.created):
        if not a.recomputable or rng.random() < 0.5:
            continue
        shared = [ids[i] for i in a.inputs if i in ids]
        pool = rng.choice(shared) if shared and rng.random() < 0.6 else list(range(len(groups)))
        ids[a.name] = sorted(rng.sample(pool, rng.randint(1, min(3, len(pool)))))
        if any(groups[k] for k in ids[a.name]):
            slots[a.name] = sorted({t for k in ids[a.name] for t in groups[k]})
    return replace(p, metadata={**p.metadata, "recompute_kernels": slots, "recompute_kernel_ids": ids})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_evaluate_shared_kernels_as_the_simulator(rng, frac):
    """Values computed inside several kernels, and consumers read inside an input's kernels
    (``remat.kernel_groups.reads_inside``), with takers: the solvers' exact evaluation gives the
    simulator's profile for random plans, and every solver's plan is valid under the cap."""
    p = with_random_shared_kernels(with_random_takers(fuzz_problem(rng), rng), rng)
    _assert_profiles_are_the_simulators(p, rng, plans=4)
    assert solver_failures(p, frac, exact_ilp=False) == []


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False))
def test_solvers_evaluate_kernel_rules_as_the_simulator(rng):
    """With kernel metadata, the solvers' exact evaluation (``Structure``) gives the simulator's
    profile for random plans, and every plan that it calls valid is valid for the simulator."""
    _assert_profiles_are_the_simulators(with_random_kernels(fuzz_problem(rng), rng), rng, plans=5)


def _assert_profiles_are_the_simulators(p: Problem, rng: random.Random, plans: int) -> None:
    """For ``plans`` random valid decisions, the solvers' exact evaluation (``Structure.profile``)
    is the simulator's profile, and the simulator finds no error."""
    from remat.plan import Decision
    from remat.solvers._core import Structure

    st = Structure(p)
    for _ in range(plans):
        dec = {c.name: rng.choice(list(Decision)) for c in st.cands}
        dec = st.normalize({k: v for k, v in dec.items()
                            if v is not Decision.RECOMPUTE or p.activation(k).recomputable})
        if not st.violations(dec):
            tl = simulate(p, dec)
            assert tl.errors == ()
            assert tuple(int(x) for x in st.profile(dec)) == tl.device_bytes


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_on_random_problems_with_kernels(rng, frac):
    """With random kernel metadata every solver's plan is one that the simulator accepts under
    the cap, and the ILP meets every cap from its floor up."""
    p = with_random_kernels(fuzz_problem(rng), rng)
    assert solver_failures(p, frac, exact_ilp=False) == []


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_on_random_problems_with_takers(rng, frac):
    """With values taken by their readers (``Activation.taken_by``, set at random where legal)
    the solver properties hold, the ILP still exact (never dearer than the greedy)."""
    p = with_random_takers(fuzz_problem(rng), rng)
    assert solver_failures(p, frac) == []


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_evaluate_takers_with_kernels_as_the_simulator(rng, frac):
    """Takers together with kernel metadata: the solvers' exact evaluation gives the simulator's
    profile for random plans, and every solver's plan is valid under the cap."""
    p = with_random_kernels(with_random_takers(fuzz_problem(rng), rng), rng)
    _assert_profiles_are_the_simulators(p, rng, plans=3)
    assert solver_failures(p, frac, exact_ilp=False) == []


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(0.0, 1.0))
def test_row_pruning_keeps_the_optimum_with_handovers_and_takers(rng, frac):
    """Buffers handed to a kernel's result (no recompute kernels) and taken values leave the
    row-dominance pruning on (``ilp.Rows``): it drops only rows that cannot change the optimum."""
    p = with_random_kernels(with_random_takers(fuzz_problem(rng), rng), rng)
    p = replace(p, metadata={**p.metadata, "recompute_kernels": {}})
    floor = min_peak(p)
    cap = floor + int(frac * (store_all_peak(p) - floor))
    pruned, whole = solve(p, cap, gap=0.0, layers="free"), solve(p, cap, gap=0.0, layers="free", prune=False)
    assert not _plan_failures(p, pruned, cap, "pruned")
    assert pruned.objective == pytest.approx(whole.objective, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_on_random_problems_with_handovers(rng, frac):
    """Handovers that a recomputed consumer breaks (no recompute kernels): the solvers' exact
    evaluation is the simulator's, every plan is valid, the ILP is exact (never dearer than the
    greedy) and its row pruning keeps the optimum."""
    p = with_random_handovers(fuzz_problem(rng), rng)
    _assert_profiles_are_the_simulators(p, rng, plans=3)
    assert solver_failures(p, frac) == []
    if frac >= 0:
        cap = min_peak(p) + int(frac * (store_all_peak(p) - min_peak(p)))
        pruned, whole = solve(p, cap, gap=0.0, layers="free"), solve(p, cap, gap=0.0, layers="free", prune=False)
        assert pruned.objective == pytest.approx(whole.objective, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 7])
def test_layer_modes_with_handovers(seed):
    """Handovers alone leave the closed activations of "mix" (``layered.closed_candidates``) and
    the pruning on: every mode's plan is valid, free (exact at gap 0) <= mix <= tie."""
    rng = random.Random(seed)
    p = with_random_kernels(_random_stack(rng), rng)
    p = replace(p, metadata={**p.metadata, "recompute_kernels": {}})
    _assert_layer_modes_ordered(p, rng)
    _assert_layer_modes_ordered(with_random_handovers(_random_stack(rng), rng, share=1.0), rng)
