"""Symbolic sizes (``remat.symbolic``): bytes as polynomials in the size symbols, and the proof
that a fixed plan's peak stays under a cap over a range of sizes."""

import pytest
import sympy
import torch
from torch._functorch import partitioners as P
from torch._functorch.aot_autograd import aot_function

from remat.capture import capture
from remat.config import parse_dynamic_range
from remat.errors import ConfigError
from remat.cost import DeviceSpec
from remat.simulate import simulate, store_all_plan
from remat.symbolic import Buckets, SymbolicSizes, box_max, can_split, live_bytes, no_guards, prove_peak, range_box

SPEC = DeviceSpec("bytes", peak_flops=1e30, bandwidth=1.0, host_bandwidth=0.0, launch_overhead=0.0)
s = sympy.Symbol("s0", positive=True, integer=True)
t = sympy.Symbol("s1", positive=True, integer=True)


def mlp(x, w1, w2, w3):
    return (torch.relu(torch.relu(x @ w1) @ w2) @ w3).tanh().sum()


def captured(batch: int, dynamic: bool):
    """The Captured of ``mlp``'s joint graph traced at ``batch`` rows (sizes symbolic if ``dynamic``)."""
    seen = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kw):
        fwd = set(P.classify_nodes(joint, [], num_fwd_outputs).required_fw_nodes)
        with no_guards(joint):
            seen["c"] = capture(joint, forward_nodes=fwd, num_fwd_outputs=num_fwd_outputs, spec=SPEC)
        return P.default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)

    x = torch.randn(batch, 16)
    w1, w2, w3 = (torch.randn(m, n, requires_grad=True) for m, n in ((16, 48), (48, 48), (48, 8)))
    aot_function(mlp, fw_compiler=lambda gm, _: gm, partition_fn=partition, dynamic=dynamic)(x, w1, w2, w3)
    return seen["c"]


def batch_symbol(sizes):
    """The symbol of the batch dimension (traced at 12 rows; every other size is symbolic too)."""
    assert sizes is not None
    return next(x for x, h in sizes.hints.items() if h == 12)


def test_symbolic_bytes_equal_the_concrete_bytes_at_several_sizes():
    dyn = captured(12, dynamic=True)
    sizes = dyn.symbolic
    sym = batch_symbol(sizes)
    assert sizes.problem_at(dyn.problem, {}) == dyn.problem  # the Problem holds the hint's bytes
    for batch in (5, 9, 31):
        static = captured(batch, dynamic=False)
        assert static.symbolic is None
        at = sizes.problem_at(dyn.problem, {sym: batch})
        assert [a.bytes for a in at.activations] == [a.bytes for a in static.problem.activations]
        assert [x.fixed_bytes for x in at.slots] == [x.fixed_bytes for x in static.problem.slots]
        plan = store_all_plan(static.problem)
        at_batch = {**sizes.hints, sym: batch}
        live = [int(e.subs(at_batch)) for e in live_bytes(dyn.problem, sizes, plan)]
        assert live == list(simulate(static.problem, plan).device_bytes)


def test_the_peak_of_a_plan_is_proven_over_a_range_and_the_largest_fitting_size_named():
    dyn = captured(12, dynamic=True)
    sizes, problem = dyn.symbolic, dyn.problem
    sym = batch_symbol(sizes)
    box = lambda hi: {**{x: (h, h) for x, h in sizes.hints.items()}, sym: (1, hi)}  # noqa: E731
    live = live_bytes(problem, sizes, store_all_plan(problem))
    at_64 = simulate(sizes.problem_at(problem, {sym: 64}), store_all_plan(problem)).peak_bytes
    assert prove_peak(live, at_64, box(64), sym).holds
    proof = prove_peak(live, at_64, box(128), sym)  # a cap that only holds at the smaller sizes
    assert not proof.holds and proof.largest_fit == 64 and proof.worst[sym] == 128
    # a plan that misses the cap by one byte at the top of the range, and only there
    wrong = prove_peak(live, at_64 - 1, box(64), sym)
    assert not wrong.holds and wrong.largest_fit == 63 and wrong.peak_bytes == at_64


def test_box_max_finds_interior_critical_points():
    bump = 50 - (s - 5) ** 2  # largest at s = 5, inside the range
    assert box_max(sympy.expand(bump), {s: (1, 10)})[0] == 50
    assert prove_peak([bump], 49, {s: (1, 10)}).largest_fit == 4
    two = sympy.expand(50 - (s - 5) ** 2 - (t - 3) ** 2)
    value, where = box_max(two, {s: (1, 10), t: (1, 10)})
    assert value == 50 and where == {s: 5, t: 3}
    assert not prove_peak([4 * s + 10, 3 * s**2], 100, {s: (1, 10)}).holds
    assert prove_peak([4 * s + 10, 3 * s**2], 100, {s: (1, 10)}).largest_fit == 5
    assert prove_peak([4 * s + 10, 3 * s**2], 300, {s: (1, 10)}).holds


def test_range_box_from_the_option_or_the_shape_env():
    sizes = SymbolicSizes({}, (), {s: 12, t: 8}, {s: (1, None), t: (4, 16)},
                          {s: ("L['x'].size()[0]",), t: ("L['y'].size()[1]",)})
    assert range_box(sizes, None) == {s: (12, 12), t: (4, 16)}  # no bound on s0: its hint alone
    assert range_box(sizes, parse_dynamic_range({"x.0": (2, 64)})) == {s: (2, 64), t: (4, 16)}
    assert range_box(sizes, parse_dynamic_range({"s1": (8, 9)})) == {s: (12, 12), t: (8, 9)}
    assert range_box(sizes, parse_dynamic_range((1, 32))) == {s: (1, 32), t: (1, 32)}
    assert range_box(SymbolicSizes({}, (), {s: 12}, {s: (1, None)}), None) is None
    with pytest.raises(ConfigError, match=r"names 'z.0', which is no dynamic size of g.*s0 \(L\['x'\]"):
        range_box(sizes, parse_dynamic_range({"z.0": (1, 2)}), "g")


def test_buckets_hold_each_size_once_and_only_an_unbounded_size_is_split():
    buckets = Buckets(s, ((128, 518), (519, 925)), range_hi=1024)
    assert [buckets.index_of(n) for n in (128, 518, 519, 925, 926, 100)] == [0, 0, 1, 1, None, None]
    assert buckets.fits_up_to == 925
    assert buckets.describe() == "s0 in [128, 518], [519, 925], a plan each; above 925 refused"
    sizes = SymbolicSizes({}, (), {s: 12, t: 8}, {s: (2, None), t: (4, 64)})
    assert can_split(sizes, s) and not can_split(sizes, t)  # t: mark_dynamic(min=4, max=64)


def test_exact_floor_divisions_of_sizes_become_polynomials():
    from torch.utils._sympy.functions import FloorDiv

    from remat.symbolic import exact_divisions

    assert exact_divisions(4 * FloorDiv(s**2, s) * t) == 4 * s * t  # two sizes that share a symbol
    assert exact_divisions(FloorDiv(6 * s * t, 3 * t)) == 2 * s
    assert exact_divisions(FloorDiv(s, 2)) == FloorDiv(s, 2)  # not exact: kept


def test_a_symbol_has_the_sources_of_the_symbols_found_equal_to_it():
    from types import SimpleNamespace

    src = lambda name: SimpleNamespace(name=name)  # noqa: E731
    u = sympy.Symbol("s2", positive=True, integer=True)
    env = SimpleNamespace(backed_var_to_val={s: 8, u: 8}, replacements={u: s}, var_to_range={},
                          var_to_sources={s: [src("L['targets'].size()[0]")], u: [src("L['x'].size()[0]")]})
    sizes = SymbolicSizes.of(env, {"a": 4 * s}, [])  # the loss made the input's batch (s2) equal to s0
    assert sizes.sources[s] == ("L['targets'].size()[0]", "L['x'].size()[0]")
    assert range_box(sizes, parse_dynamic_range({"x.0": (2, 64)})) == {s: (2, 64)}


def test_a_range_is_the_one_tracing_left_not_one_that_later_guards_narrow():
    """Inductor's CPU code generation guards ``s0*s1 <= 4096`` and ``s0 <= 4096`` while a graph
    compiles, which narrows the ShapeEnv's range of the batch symbol to [2, 4096]: no range to plan
    over (a transformers GPT-2 traced at batch 2 was planned at batch 4096 under a 12 GiB cap)."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from remat.symbolic import _symbol_facts

    env = ShapeEnv()
    batch, seq = (env.create_symbol(v, ConstantSource(n), dynamic_dim=DimDynamic.DYNAMIC)
                  for v, n in ((2, "batch"), (32, "seq")))
    assert _symbol_facts(env, {batch, seq})[1] == {batch: (2, None), seq: (2, None)}
    env.evaluate_expr(sympy.Le(batch, 4096))  # a guard Inductor's code generation adds
    assert env.var_to_range[batch].upper == 4096  # the ShapeEnv's range is narrowed ...
    hints, ranges, _ = _symbol_facts(env, {batch, seq})
    assert ranges == {batch: (2, None), seq: (2, None)} and hints == {batch: 2, seq: 32}  # ... remat's is not



def test_what_the_step_holds_beside_the_graph_is_kept_at_every_size():
    """Bytes that the Problem holds beyond the graph's own (a loss computed outside at the end of
    the forward, what the caller holds through the backward) stay in the Problem at other sizes
    and in the proof's live bytes; ``problem_at`` dropped them before."""
    from remat.kernel_groups import with_scratch

    dyn = captured(12, dynamic=True)
    sizes = dyn.symbolic
    sym = batch_symbol(sizes)
    last_forward = dyn.problem.slots[dyn.problem.num_forward - 1].name
    held = with_scratch(dyn.problem, {last_forward: 1000})
    kept = sizes.holding(held)
    for batch in (5, 31):
        bare, at = sizes.problem_at(dyn.problem, {sym: batch}), kept.problem_at(held, {sym: batch})
        assert [b.fixed_bytes + (1000 if b.name == last_forward else 0) for b in bare.slots] == \
            [a.fixed_bytes for a in at.slots]
        plan = store_all_plan(held)
        live = [int(e.subs({**sizes.hints, sym: batch})) for e in live_bytes(held, kept, plan)]
        assert live == list(simulate(at, plan).device_bytes)
    assert kept.problem_at(held, {}) == held
