"""Repeated layers (remat.structure) and the ILP's tied decisions over them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pulp
import pytest

from remat.errors import ConfigError
from remat.plan import Decision
from remat.problem import Problem
from remat.simulate import check, store_all_peak
from remat.solvers import min_peak, solve
from remat.solvers._core import REC, Structure
from remat.solvers.ilp import Model, Rows, _solve
from remat.solvers.layered import build_menus, layer_groups
from remat.structure import activation_graph, find_layers, signature, with_layers

from .synthetic import chain_problem, residual_problem, transformer_problem
from .test_solvers import bf_best, brute_force

DATA = Path(__file__).parent / "data"


def _assert_corresponding(p: Problem) -> None:
    """Each class: layers of one length whose k-th activations share a signature."""
    for cls in p.layers:
        for layer in cls[1:]:
            assert [signature(p.activation(n)) for n in layer] == [signature(p.activation(n)) for n in cls[0]]


def test_graph_view_has_every_activation_and_input_edge():
    p = residual_problem(blocks=2)
    g = activation_graph(p)
    assert set(g.nodes) == {a.name for a in p.activations}
    assert g.number_of_edges() == sum(len(set(a.inputs)) for a in p.activations)


@pytest.mark.parametrize("layers", [3, 5])
def test_transformer_stack_layers(layers):
    p = with_layers(transformer_problem(layers=layers))
    assert len(p.layers) == 1
    cls = p.layers[0]
    assert len(cls) == layers
    assert [lay[0] for lay in cls] == [f"l{i}_ln1" for i in range(layers)]
    assert all(len({n.split("_")[0] for n in lay}) == 1 for lay in cls)  # one layer's names only
    _assert_corresponding(p)


def test_no_layers_without_repeats():
    assert find_layers(residual_problem(blocks=1)) == ()


def test_module_paths_propose_layers():
    p = residual_problem(blocks=3)
    acts = []
    for a in p.activations:
        digits = "".join(ch for ch in a.name if ch.isdigit())
        block = -1 if not digits else int(digits) - (a.name[0] == "x")
        acts.append(replace(a, module=f"model.blocks.{block}.f" if block >= 0 else ""))
    p = replace(p, activations=tuple(acts))
    cls = find_layers(p)
    assert len(cls) == 1 and [lay[0] for lay in cls[0]] == ["norm0", "norm1", "norm2"]
    assert [lay[-1] for lay in cls[0]] == ["x1", "x2", "x3"]


def test_layers_json_round_trip_and_validation(tmp_path):
    p = with_layers(transformer_problem(layers=3))
    p.save(tmp_path / "p.json")
    q = Problem.load(tmp_path / "p.json")
    assert q.layers == p.layers and q.layers
    with pytest.raises(ValueError):
        replace(p, layers=((("l0_ln1",),),))  # a class of one layer
    with pytest.raises(ValueError):
        replace(p, layers=((("l0_ln1",), ("nope",)),))


def test_captured_cnn_layers():
    p = Problem.load(DATA / "cnn.json")
    for cls in find_layers(p):
        assert len(cls) >= 2
        names = [n for lay in cls for n in lay]
        assert len(names) == len(set(names))
    _assert_corresponding(with_layers(p))


# ---- tying in the ILP ---------------------------------------------------------------------------


def _tied_plans(p: Problem, plans):
    """The brute-force plans whose corresponding activations all take one decision."""
    out = []
    for pk, t, dec in plans:
        if all(len({dec.get(n) for n in pos} - {None}) <= 1 for cls in p.layers for pos in zip(*cls)):
            out.append((pk, t, dec))
    return out


@pytest.mark.parametrize("bw", [0.0, 150.0])
def test_tied_optimum_matches_brute_force(bw):
    p = with_layers(residual_problem(blocks=2, host_bandwidth=bw))
    assert p.layers
    plans = brute_force(p)
    floor = min(pk for pk, _, _ in plans)
    for cap in sorted({floor, (floor + store_all_peak(p)) // 2, store_all_peak(p) - 1}):
        free = solve(p, cap, gap=0.0, layers="free")
        check(p, free, cap)
        assert math.isclose(free.objective, bf_best(plans, cap), rel_tol=1e-9, abs_tol=1e-12)
        best_tied = bf_best(_tied_plans(p, plans), cap)
        try:
            tied = solve(p, cap, gap=0.0, layers="tie")
        except Exception as e:  # only when no tied plan and no greedy plan meets the cap
            assert best_tied is None, e
            continue
        check(p, tied, cap)
        assert tied.objective >= free.objective - 1e-12
        if tied.info["source"] == "tied":
            assert math.isclose(tied.objective, best_tied, rel_tol=1e-9, abs_tol=1e-12)
        assert best_tied is None or tied.objective <= best_tied + 1e-12


def test_tied_model_shares_binaries_and_plan_is_valid():
    p = with_layers(transformer_problem(layers=4, seq=32, hidden=32, heads=2))
    cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
    tied, free = solve(p, cap, layers="tie"), solve(p, cap, layers="free")
    check(p, tied, cap)
    check(p, free, cap)
    assert tied.info["tied_activations"] > 0
    assert tied.info["tied_num_binaries"] < free.info["num_binaries"]
    assert tied.bound is None or tied.info["source"] != "tied"  # a tied bound is no bound
    assert free.objective <= tied.objective + 1e-12 or free.info["source"] == "greedy"


def test_free_keeps_the_tied_plan_as_a_fallback():
    p = with_layers(chain_problem(layers=6))
    cap = max(min_peak(p), int(store_all_peak(p) * 0.7))
    plan = solve(p, cap, layers="free")
    check(p, plan, cap)
    assert "tied_sol_status" in plan.info and "sol_status" in plan.info


def test_layers_option_is_checked():
    p = transformer_problem(layers=2, seq=32, hidden=32, heads=2)
    with pytest.raises(ConfigError):
        solve(p, int(store_all_peak(p) * 0.8), layers="both")
    assert all(d in Decision for d in solve(p, None).decisions.values())


# ---- two levels: menus of layer plans, one choice per layer ("mix") ------------------------------


@pytest.mark.parametrize("bw", [0.0, 150.0])
def test_mix_lies_between_the_free_and_the_tied_optimum(bw):
    p = with_layers(residual_problem(blocks=2, host_bandwidth=bw))
    plans = brute_force(p)
    floor = min(pk for pk, _, _ in plans)
    for cap in sorted({floor, (floor + store_all_peak(p)) // 2, store_all_peak(p) - 1}):
        best, best_tied = bf_best(plans, cap), bf_best(_tied_plans(p, plans), cap)
        try:
            mix = solve(p, cap, gap=0.0, layers="mix")
        except Exception as e:  # only when no tied plan and no greedy plan meets the cap
            assert best_tied is None, e
            continue
        check(p, mix, cap)
        assert mix.objective >= best - 1e-12
        if best_tied is not None:
            assert mix.objective <= best_tied + 1e-12
        if best_tied is not None and math.isclose(best_tied, best, rel_tol=1e-12):  # tying is exact
            assert math.isclose(mix.objective, best, rel_tol=1e-9, abs_tol=1e-12)


def test_mix_on_a_stack_is_valid_smaller_and_no_worse_than_tied_or_greedy():
    p = with_layers(transformer_problem(layers=4, seq=32, hidden=32, heads=2))
    cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
    mix, tied, free = (solve(p, cap, layers=m) for m in ("mix", "tie", "free"))
    for plan in (mix, tied, free):
        check(p, plan, cap)
    assert mix.objective <= tied.objective + 1e-12
    assert mix.info["greedy_objective"] is None or mix.objective <= mix.info["greedy_objective"] + 1e-12
    assert mix.info["mix_num_binaries"] < free.info["num_binaries"]
    assert mix.bound is None or mix.info["source"] == "greedy"  # a mix bound is no bound
    assert mix.info["menu_items"] and all(n >= 2 for n in mix.info["menu_items"])


def _solved_menu_model(p: Problem, st: Structure, cap: int, plans):
    model = Model(st, Rows(st), cap, menus=build_menus(st, p.layers, plans))
    model.prob.solve(pulp.HiGHS(msg=False))
    assert model.prob.sol_status == pulp.LpSolutionOptimal
    return model.decisions()


def _models_floor(st: Structure) -> tuple[int, dict]:
    """The least peak that the MIP's rows allow (rounded up: the tightest cap at which a model
    finds a plan) and the min-peak MIP's plan reaching it. ``min_peak`` can be lower: its pair
    descents reach plans that the rows leave out (on these transformers, a recomputation started
    before the ``_core.DEFAULT_K`` start slots that the rows keep)."""
    model = Model(st, Rows(st), None)
    model.M.lowBound = st.lower_bound_peak() / model.unit
    assert _solve(model, "highs", 60.0, 0.0, False, None)[0] == pulp.LpSolutionOptimal
    return math.ceil(pulp.value(model.M) * model.unit), model.decisions()


def test_menu_model_spans_its_source_plans():
    p = with_layers(transformer_problem(layers=4, seq=32, hidden=32, heads=2))
    st = Structure(p)
    floor, source = _models_floor(st)
    cap = max(floor, int(store_all_peak(p) * 0.6))
    dec = _solved_menu_model(p, st, cap, [source])
    check(p, dec, cap)
    assert st.cost(dec) <= st.cost(source) + 1e-12
    menus = build_menus(st, p.layers, [source])
    assert all(choices for choices in menus.choices)  # every layer may take its own item
    assert len(menus.choices) == sum(len(cls) for cls in p.layers)


def test_moved_cap_solves_like_a_model_built_at_it():
    p = with_layers(transformer_problem(layers=3, seq=32, hidden=32, heads=2))
    st = Structure(p)
    rows = Rows(st)
    lo, hi = max(_models_floor(st)[0], int(store_all_peak(p) * 0.55)), int(store_all_peak(p) * 0.8)
    moved = Model(st, rows, hi)
    moved.set_budget(lo)
    built = Model(st, rows, lo)
    for m in (moved, built):
        m.prob.solve(pulp.HiGHS(msg=False, gapRel=0.0))
    assert math.isclose(st.cost(moved.decisions()), st.cost(built.decisions()), rel_tol=1e-9)
    assert st.peak(moved.decisions()) <= lo
    # the planner's handover keeps HiGHS's model and moves only the rows' bounds
    again = Model(st, rows, hi)
    costs, held = [], []
    for cap in (hi, lo):
        again.set_budget(cap)
        assert _solve(again, "highs", 30.0, 0.0, False, None)[0] == pulp.LpSolutionOptimal
        costs.append(st.cost(again.decisions()))
        held.append(again.prob.solverModel)
    assert held[0] is held[1] and held[1].getNumRow() == again.num_cons
    assert math.isclose(costs[1], st.cost(built.decisions()), rel_tol=1e-9) and costs[0] <= costs[1]
    assert st.peak(again.decisions()) <= lo


def test_layer_groups_split_by_decisions_and_free_the_ends():
    p = with_layers(transformer_problem(layers=5, seq=32, hidden=32, heads=2))
    st = Structure(p)
    cls = p.layers[0]
    pos = next(i for i, n in enumerate(cls[1]) if all(
        n2 in st.index and st.cands[st.index[n2]].rec_ok and st.cands[st.index[n2]].d >= 0 for n2 in (lay[i] for lay in cls)))
    plan = dict(st.store_all())
    for layer in (0, 1, 2):
        plan[cls[layer][pos]] = Decision.RECOMPUTE
    assert st.codes(st.normalize(plan))[st.index[cls[1][pos]]] == REC
    assert layer_groups(st, p.layers, plan) == ((cls[1], cls[2]),)  # 0 and 4 are ends, 3 alone
    assert layer_groups(st, p.layers, st.store_all()) == ((cls[1], cls[2], cls[3]),)


def test_auto_mixes_long_stacks_and_frees_short_ones(monkeypatch):
    from remat.solvers import ilp

    monkeypatch.setattr(ilp, "_greedy_plan", lambda *a: (None, math.inf))  # no greedy plan to keep
    short = with_layers(chain_problem(layers=6))  # two layers of three chain links
    long = with_layers(chain_problem(layers=24))  # eight
    assert [len(c) for c in short.layers] == [2] and [len(c) for c in long.layers] == [8]
    for p, mode in ((short, "free"), (long, "mix")):
        cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
        plan = solve(p, cap)  # layers="auto"
        check(p, plan, cap)
        assert plan.info["layers"] == "auto" and plan.info["layers_mode"] == mode
        assert ("mix_num_binaries" in plan.info) == (mode == "mix")


def test_auto_keeps_the_tied_plan_when_mix_would_not_fit(monkeypatch):
    from remat.solvers import ilp

    p = with_layers(chain_problem(layers=24))  # eight layers: "auto" starts "mix"
    cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
    monkeypatch.setattr(ilp, "AUTO_MIX_SHARE", 0.0)  # no time left for the rest of mix
    plan, tied = solve(p, cap), solve(p, cap, layers="tie")
    check(p, plan, cap)
    assert plan.info["layers_mode"] == "tie" and "mix_skipped" in plan.info
    assert "mix_num_binaries" not in plan.info and "menu_items" not in plan.info
    assert plan.objective <= tied.objective + 1e-12
    assert solve(p, cap, layers="mix").info["layers_mode"] == "mix"  # asked for: never skipped


def test_auto_keeps_a_greedy_plan_as_cheap_as_the_tied_one():
    p = with_layers(chain_problem(layers=24))
    cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
    plan, tied, greedy = solve(p, cap), solve(p, cap, layers="tie"), solve(p, cap, solver="greedy")
    assert greedy.objective <= tied.objective + 1e-12  # (this stack: the greedy finds the tied plan's cost)
    assert plan.info["layers_mode"] == "tie" and plan.info["mix_skipped"].startswith("the greedy plan")
    assert plan.objective <= greedy.objective + 1e-12
