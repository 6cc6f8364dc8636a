"""Recomputation prices on the roofline: a recomputed chain of folded pointwise values is one fused
kernel (its stored inputs read, its result written), not a kernel per op, and the ILP follows
that price. Nothing here times anything."""

from __future__ import annotations

import torch

from remat.capture import capture
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


def test_the_ilp_recomputes_the_chain_that_is_cheaper_fused():
    captured, problem, plan = planned(BYTES_SPEC)  # 1 B/s: a kernel costs the bytes it moves
    assert "mul" in captured.folded
    chain, single = problem.activation("exp"), problem.activation("exp_1")
    assert single.bytes == 1.5 * chain.bytes == 1.5 * 4 * N
    # one kernel: x read, exp written (a kernel per op, mul's result written and read, would be 4 * 4 N)
    assert chain.compute_time == 2 * 4 * N
    assert single.compute_time == 2 * 4 * 1.5 * N
    assert (plan.decisions["exp"], plan.decisions["exp_1"]) == (Decision.RECOMPUTE, Decision.STORE)
