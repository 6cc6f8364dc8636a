"""Model fuzzer: random small models (``models.FuzzSpec``) under random budgets, compiled alone
(the loss outside the compiled call) or with the loss inside. Each case trains two SGD steps
under remat and in eager: losses, gradients and buffers must match, and the measured peak of the
second step must stay under the cap that remat reports; an ``InfeasibleBudgetError`` is a pass
only when the floor it names is above the cap. ``fuzz_case`` is the check; the CI slice below runs
a few fixed-seed examples and ``benchmarks/fuzz_models.py`` runs many.
"""

from __future__ import annotations

import copy
import functools
import operator
import traceback
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as hst

import remat
from remat.measure import measure_step
from remat.solvers import min_peak

from .models import BLOCKS, EXTRA_OUTPUTS, HEADS_OUT, STEMS, FuzzModel, FuzzSpec, fuzz_inputs

torch.set_num_threads(2)


@hst.composite
def fuzz_specs(draw) -> FuzzSpec:
    stem = draw(hst.sampled_from(STEMS))
    return FuzzSpec(
        stem=stem,
        blocks=tuple(draw(hst.lists(hst.sampled_from(BLOCKS), min_size=1, max_size=6))),
        head=draw(hst.sampled_from(HEADS_OUT)),
        extra_outputs=tuple(sorted(draw(hst.sets(hst.sampled_from(EXTRA_OUTPUTS), max_size=3)))),
        batch=draw(hst.integers(1, 4)),
        seq=draw(hst.sampled_from((4, 8, 16))),
        width=draw(hst.sampled_from((8, 16, 32))),
        input_grad=stem == "linear" and draw(hst.booleans()),
    )


# ("min",), ("ratio", r): r of plain torch.compile's peak, ("between", f): bytes at floor + f *
# (baseline - floor) of the modelled figures (f < 0 asks for less than the model's floor)
budgets = hst.one_of(
    hst.just(("min",)),
    hst.tuples(hst.just("ratio"), hst.floats(0.3, 1.0).map(lambda r: round(r, 3))),
    hst.tuples(hst.just("between"), hst.floats(-0.1, 1.0).map(lambda f: round(f, 3))),
)


@dataclass
class FuzzOutcome:
    # "ok"; "refused": InfeasibleBudgetError, its floor above the cap; "scratch": over the cap
    # only by an extern kernel's workspace; "known": over the cap in a ``KNOWN_GAPS`` op; "fail"
    status: str
    detail: str = ""
    cap: int | None = None
    measured: int | None = None
    floor: int | None = None  # the floor an InfeasibleBudgetError named


def float_leaves(outputs) -> list[torch.Tensor]:
    return [o for o in torch.utils._pytree.tree_leaves(outputs) if o.is_floating_point()]


def loss_weights(model: torch.nn.Module, inputs) -> list[torch.Tensor]:
    """Fixed random weights, one per float output (flattened), made before any step."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        shapes = [o.shape for o in float_leaves(copy.deepcopy(model)(*inputs))]
    return [torch.randn(s.numel(), generator=g) for s in shapes]


def weighted_loss(outputs, weights) -> torch.Tensor:
    """A dot product of each float output with its weights: no temporary the size of an output
    (outputs are contiguous), so a loss outside the compiled call adds only what autograd must
    (``functools.reduce``, not ``sum``: ``0 + tensor`` wraps the 0 in a tensor of its own)."""
    dots = [torch.dot(o.reshape(-1), w) for o, w in zip(float_leaves(outputs), weights)]
    return functools.reduce(operator.add, dots)


def resolve_budget(budget: tuple, model, inputs, weights):
    """The ``memory_budget`` option for a drawn budget."""
    if budget[0] == "min":
        return "min"
    if budget[0] == "ratio":
        return budget[1]
    report = remat.analyze(model, inputs, loss_fn=lambda out: weighted_loss(out, weights))
    floor = min_peak(report.problem)
    return max(1, int(floor + budget[1] * (report.baseline_peak_bytes - floor)))


def train(model, step_loss, inputs, measure: bool = False):
    """Two SGD steps of ``step_loss(*inputs)``, seeded per step (dropout). Returns the per-step
    (loss, gradients), the buffers after, and the second step's ``StepMeasurement`` when ``measure``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps, measured = [], None
    for i in range(2):
        opt.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        torch.manual_seed(100 + i)
        losses = []

        def forward_backward():
            losses.append(step_loss(*inputs))
            losses[-1].backward()

        if measure and i == 1:
            measured = measure_step(forward_backward)
        else:
            forward_backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads.update({f"input{k}": x.grad.clone() for k, x in enumerate(inputs) if x.grad is not None})
        steps.append((losses[-1].detach(), grads))
        opt.step()
    return steps, {n: b.clone() for n, b in model.named_buffers()}, measured


def mismatch(ref, got) -> str:
    """'' when the compiled run equals eager, else what differs. fp32 tolerances: rtol 1e-4, and
    an atol of 1e-5 times the step's largest finite gradient (a gradient that is zero in exact arithmetic,
    a conv bias before batch norm, is rounding noise of the others' size). An inf or NaN (an exp
    head that overflows in eager) must be where eager has it."""
    (ref_steps, ref_buffers, _), (got_steps, got_buffers, _) = ref, got
    try:
        for i, ((ref_loss, ref_grads), (loss, grads)) in enumerate(zip(ref_steps, got_steps)):
            torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5, equal_nan=True,
                                       msg=lambda s: f"step {i} loss: {s}")
            assert grads.keys() == ref_grads.keys(), f"step {i}: gradients of {sorted(grads)} vs {sorted(ref_grads)}"
            atol = 1e-5 * max([1.0] + [g[g.isfinite()].abs().max().item() for g in ref_grads.values() if g.isfinite().any()])
            for n, g in ref_grads.items():
                torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=atol, equal_nan=True,
                                           msg=lambda s: f"step {i} grad {n}: {s}")
        for n, b in ref_buffers.items():
            torch.testing.assert_close(got_buffers[n], b, rtol=1e-4, atol=1e-5, msg=lambda s: f"buffer {n}: {s}")
    except AssertionError as e:
        return str(e)
    return ""


def compile_step(model, weights, option, loss_inside: bool):
    """(what torch.compile returned, the step's loss function) under remat at ``option``."""
    opts = {"memory_budget": option}
    if loss_inside:
        compiled = torch.compile(lambda *xs: weighted_loss(model(*xs), weights), backend="remat", options=opts,
                                 fullgraph=True)
        return compiled, compiled
    compiled = torch.compile(model, backend="remat", options=opts, fullgraph=True)
    return compiled, lambda *xs: weighted_loss(compiled(*xs), weights)


def fuzz_case(spec: FuzzSpec, budget: tuple, loss_inside: bool) -> FuzzOutcome:
    """Build ``spec``'s model, train it two steps in eager and under remat at ``budget``, compare."""
    torch.manual_seed(0)
    model, inputs = FuzzModel(spec).train(), fuzz_inputs(spec)
    weights = loss_weights(model, inputs)
    option = resolve_budget(budget, model, inputs, weights)
    eager_model, compiled_model = copy.deepcopy(model), copy.deepcopy(model)
    ref = train(eager_model, lambda *xs: weighted_loss(eager_model(*xs), weights), inputs)
    compiled, step_loss = compile_step(compiled_model, weights, option, loss_inside)
    try:
        got = train(compiled_model, step_loss, inputs, measure=True)
    except remat.InfeasibleBudgetError as e:
        ok = option != "min" and e.min_peak_bytes > e.budget_bytes
        return FuzzOutcome("refused" if ok else "fail", str(e), cap=e.budget_bytes, floor=e.min_peak_bytes)
    except Exception as e:  # the error first, then where it came from
        first = (str(e).strip().splitlines() or [""])[0]
        return FuzzOutcome("fail", f"{type(e).__name__}: {first}\n{traceback.format_exc(limit=-4)}")
    return judge(ref, got, remat.reports(compiled))


# Peaks over the cap that the fuzzer found, whose fix is in Inductor's code walk (remat/wrapper_memory.py,
# remat/inductor_check.py), not yet in effect (issue 11's note has the repros). Keyed by the op that reaches the peak.
KNOWN_GAPS: dict[str, str] = {}  # op -> why the check misses its peak (empty: none known)


def judge(ref, got, reports) -> FuzzOutcome:
    """Equal to eager, one planned graph, and the measured peak under the cap it reports
    (``memory_outcome``)."""
    m = got[2]
    if len(reports) != 1:
        return FuzzOutcome("fail", f"{len(reports)} graphs planned, expected 1", measured=m.peak_bytes)
    differs = mismatch(ref, got)
    if differs:
        return FuzzOutcome("fail", differs, cap=reports[0].budget_bytes, measured=m.peak_bytes)
    return memory_outcome(m, reports[0].budget_bytes)


def memory_outcome(m, cap: int) -> FuzzOutcome:
    """The measured step ``m`` against ``cap``: "ok" under it. A peak over the cap by no more than
    the scratch memory of the extern kernel that reached it (a workspace that the check measured
    apart from the step, or not at all) is "scratch"; one reached in an op of ``KNOWN_GAPS`` is
    "known"; neither is "fail"."""
    if m.peak_bytes <= cap:
        return FuzzOutcome("ok", cap=cap, measured=m.peak_bytes)
    over = (f"measured {m.peak_bytes} B over the cap {cap} B, reached in {m.peak_op or 'no op'} "
            f"holding {m.peak_op_scratch_bytes} B of scratch")
    if m.peak_bytes - m.peak_op_scratch_bytes <= cap:
        return FuzzOutcome("scratch", over, cap=cap, measured=m.peak_bytes)
    if m.peak_op in KNOWN_GAPS:
        return FuzzOutcome("known", f"{over}; known gap: {KNOWN_GAPS[m.peak_op]}", cap=cap, measured=m.peak_bytes)
    return FuzzOutcome("fail", over, cap=cap, measured=m.peak_bytes)


@pytest.fixture(autouse=True)
def _reuse_compiled_kernels():
    """Graph caches off (the remat partitioner runs in every case), Inductor's C++ kernels reused."""
    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield


@seed(20261129)
@settings(max_examples=3, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(spec=fuzz_specs(), budget=budgets, loss_inside=hst.booleans())
def test_random_models_match_eager_under_the_cap(spec, budget, loss_inside):
    torch._dynamo.reset()
    outcome = fuzz_case(spec, budget, loss_inside)
    assert outcome.status != "fail", (spec, budget, loss_inside, outcome)
    if outcome.status in ("scratch", "known"):  # over the cap for a reason named in the warning
        warnings.warn(f"{spec} {budget}: {outcome.detail}")


def test_a_returned_view_of_a_copy_keeps_the_copy_for_the_backward():
    # found by the fuzzer (seed 9, case 29): the forward returns ``view_5``, a view of ``clone_1``,
    # which the backward reads through another view; the capture leaves clone_1 out of the planned
    # values (the caller holds its storage), so the rewrite must save it as a forward output
    spec = FuzzSpec(stem="linear", blocks=("rmsnorm", "permute_view", "permute_view"), head="linear",
                    extra_outputs=("hidden",), batch=1, seq=8, width=16, input_grad=False)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        outcome = fuzz_case(spec, ("min",), loss_inside=False)
    assert outcome.status == "ok", outcome


def test_a_channels_last_weight_gradient_copied_by_autograd_stays_under_the_cap():
    # found by the fuzzer (seed 18, case 10): the compiled backward returns the conv weight's gradient
    # channels-last; AccumulateGrad copies it into the weight's strides after the backward returned,
    # 1,408 B over the code's reading and 1,136 B over "min"'s cap (28,296 B measured, cap 27,160 B)
    spec = FuzzSpec(stem="conv_bn", blocks=("softmax", "buffer_scale", "residual_mlp", "tanh", "sigmoid"),
                    head="sigmoid", extra_outputs=(), batch=1, seq=4, width=32, input_grad=False)
    torch._dynamo.reset()
    outcome = fuzz_case(spec, ("min",), loss_inside=False)
    assert outcome.status == "ok", outcome
