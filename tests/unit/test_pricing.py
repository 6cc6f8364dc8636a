"""Recomputation prices on the roofline: a recomputed chain of folded pointwise values is one fused
kernel (its stored inputs read, its result written), not a kernel per op, and the ILP follows
that price; a recomputed dropout mask costs its replayed random draw, less the forward's store of
the mask that a plan which recomputes it saves (``remat.pricing``'s rule). Nothing here times anything."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import remat
import remat.capture as capture_module
from remat import pricing
from remat.capture import capture
from remat.cost import DEVICES
from remat.plan import Decision
from remat.simulate import store_all_peak
from remat.solvers import get_solver

from .test_capture import BYTES_SPEC, trace_joint

N = 256 * 32  # elements of the chain's result


def chain_or_single(x, y):
    """Two activations that backward reads, both live at the forward's end, where a temporary (the
    repeat) makes the peak: ``exp`` (N elements) recomputes the folded product inside it, from
    ``x``; ``exp_1`` (1.5 N elements) is one op on ``y``."""
    return (x * 2.0).exp().sum() + y.exp().sum() + x.repeat(8, 1).sum()


def planned(spec):
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(chain_or_single, torch.randn(256, 32, requires_grad=True),
                                torch.randn(384, 32, requires_grad=True))
    captured = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=spec)
    problem = captured.problem
    return captured, problem, get_solver("ilp")(problem, store_all_peak(problem) - 1, time_limit=30)


@pytest.fixture
def credit(monkeypatch):
    """``credit(on)``: whether the capture's recompute prices subtract the forward's write that a
    recomputation saves (``recompute_time``'s ``fused``: the capture's own fused ops) or not."""
    def use(on: bool) -> None:
        fused: dict = {}
        real = capture_module.inlined_codes

        def codes(g):
            fused["ops"] = real(g)
            return fused["ops"]

        def price(*args):
            return pricing.recompute_time(*args[:6], fused=set(fused["ops"]) if on else None)

        monkeypatch.setattr(capture_module, "inlined_codes", codes)
        monkeypatch.setattr(capture_module, "recompute_time", price)
    return use


def test_the_ilp_recomputes_the_chain_that_is_cheaper_fused(credit):
    credit(False)
    captured, problem, plan = planned(BYTES_SPEC)  # 1 B/s: a kernel costs the bytes it moves
    assert "mul" in captured.folded
    chain, single = problem.activation("exp"), problem.activation("exp_1")
    assert single.bytes == 1.5 * chain.bytes == 1.5 * 4 * N
    # one kernel: x read, exp written (a kernel per op, mul's result written and read, would be 4 * 4 N)
    assert chain.compute_time == 2 * 4 * N
    assert single.compute_time == 2 * 4 * 1.5 * N
    assert (plan.decisions["exp"], plan.decisions["exp_1"]) == (Decision.RECOMPUTE, Decision.STORE)


class MaskedMLP(torch.nn.Module):
    """A dropout between two linears: its mask (a bool per element) is replayed from Inductor's seed."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.drop = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.l2(self.drop(torch.relu(self.l1(x))))


def analyzed_mask(device):
    """The Problem of ``MaskedMLP`` with Inductor's seeded random prims (its default RNG)."""
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=False):
        return remat.analyze(MaskedMLP(), (torch.randn(32, 16),), memory_budget="100%", device=device).problem


class DropoutMatmul(torch.nn.Module):
    """The smallest graph with a mask: a dropout whose output only a matmul reads."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.drop = torch.nn.Linear(64, 16), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.l(self.drop(x))


def dropout_matmul(spec):
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=False):
        return remat.analyze(DropoutMatmul(), (torch.randn(32, 64, requires_grad=True),), memory_budget="100%",
                             device=spec).problem


def test_a_recomputed_mask_costs_its_draw_less_the_forward_store_it_saves(credit):
    cpu, elements = DEVICES["cpu"], 32 * 64
    draw = elements / cpu.random_rate + cpu.launch_overhead
    credit(False)
    mask = dropout_matmul(cpu).activation("gt")  # gt(inductor_random(seed), 0.5): the draw is replayed
    assert mask.recomputable and mask.bytes == elements
    assert mask.compute_time == pytest.approx(draw)  # the draw, not the byte written per element (0.2 us)
    credit(True)
    # the forward computes the mask inside the dropout's kernel: saved, Inductor's CPU code stores
    # it through VecMask (12.5 ns an element), more than its draw (10): recomputing it costs nothing
    problem = dropout_matmul(cpu)
    assert cpu.bool_store_rate < cpu.random_rate and problem.activation("gt").compute_time == 0.0
    # the matmul reads the dropout's output from memory: written whatever the plan, no write saved
    assert problem.activation("mul_1").compute_time == dropout_matmul(cpu).activation("mul_1").compute_time > 0
    fast_store = dataclasses.replace(cpu, bool_store_rate=1e9)  # a store cheaper than the draw
    assert dropout_matmul(fast_store).activation("gt").compute_time == pytest.approx(draw - elements / 1e9)


def test_the_ilp_recomputes_a_mask_whose_saved_store_pays_its_draw_before_arithmetic(credit):
    # two candidates that free the byte: the mask (2 KiB, its draw 20 us) and the ReLU (8 KiB, 4 us)
    credit(False)
    problem = analyzed_mask("cpu")
    plan = get_solver("ilp")(problem, store_all_peak(problem) - 1, time_limit=30)
    assert plan.decisions["gt"] == Decision.STORE
    assert Decision.RECOMPUTE in (plan.decisions["relu"], plan.decisions["mul_1"])
    credit(True)  # the forward's store of the mask (25 us) that recomputing it saves: the mask is free
    problem = analyzed_mask("cpu")
    plan = get_solver("ilp")(problem, store_all_peak(problem) - 1, time_limit=30)
    assert problem.activation("gt").compute_time == 0.0 and plan.decisions["gt"] == Decision.RECOMPUTE
