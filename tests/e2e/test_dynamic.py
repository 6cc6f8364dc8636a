"""Dynamic shapes end to end: one plan over a range of batch sizes, proven and measured under the
cap; a cap that only small sizes meet refused at compile time (mark_dynamic's range) or split into
buckets with a plan each (dynamic_range); the recompile-limit warning."""

import copy
import logging
import re

import pytest
import torch

import remat
from examples.mlp import MLP
from remat.measure import measure_step

torch.set_num_threads(2)
CAP = 4 << 20  # bytes; at 1024 rows the plan needs 3.56 MiB (storing everything: 5.56 MiB)


def mlp():
    torch.manual_seed(0)
    return MLP(d=64, hidden=256, blocks=2)


def loss_fn(out):
    return out.pow(2).mean()


def batch(rows, lo=128, hi=1024):
    x = torch.randn(rows, 64)
    torch._dynamo.mark_dynamic(x, 0, min=lo, max=hi)  # lo > 64: Inductor's CPU code guards rows > 64
    return x


def grads(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def check_step(step, model, reference, x, cap):
    """One compiled step on ``x``: gradients equal the eager reference's, measured peak <= ``cap``."""
    step(x).backward()
    loss_fn(reference(x)).backward()
    got, want = grads(model), grads(reference)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    measured = measure_step(lambda: step(x).backward())
    model.zero_grad(set_to_none=True)
    assert measured.peak_bytes <= cap, (x.shape[0], measured.peak_bytes)


def test_one_plan_over_a_range_matches_eager_and_meets_the_cap_at_each_size():
    model = mlp()
    reference = copy.deepcopy(model)
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", options={"memory_budget": CAP})
    for rows in (256, 1024, 640):
        check_step(step, model, reference, batch(rows), CAP)
    (report,) = remat.reports(step)  # one compile, one plan, for every size
    d = report.dynamic
    assert list(d.ranges.values()) == [(128, 1024)] and list(d.planned_at.values()) == [1024]
    assert d.proof.holds and d.proof.peak_bytes <= CAP
    assert re.fullmatch(r"\d+\*s\d+ \+ \d+", d.peak_formula)  # bytes linear in the batch


def test_a_ratio_over_a_range_compiles_no_plain_reference_that_planning_ignores(monkeypatch):
    import remat.backend

    calls = []
    real = remat.backend.plain_compile
    monkeypatch.setattr(remat.backend, "plain_compile", lambda *a, **k: calls.append(a) or real(*a, **k))
    model = mlp()
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", options={"memory_budget": "70%"})
    step(batch(256)).backward()
    (report,) = remat.reports(step)
    assert report.compiled_with == "remat plan" and "modelled" in report.reference
    assert calls == []  # the reference over a range is the model's at the corner: plain compile is not needed


def test_a_cap_that_only_small_sizes_meet_is_refused_at_compile_time_naming_the_largest_fit():
    model = mlp()
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", options={"memory_budget": "3MiB"})
    with pytest.raises(remat.InfeasibleBudgetError) as e:
        step(batch(256)).backward()  # 256 rows fit; 1024, in the range, do not
    m = re.search(r"the largest (s\d+) that fits is (\d+)", str(e.value))
    assert m and 256 <= int(m.group(2)) < 1024, str(e.value)


def test_a_range_that_no_plan_covers_is_split_into_buckets_with_a_plan_each():
    model = mlp()
    reference = copy.deepcopy(model)
    cap = 3 << 20  # storing everything fits up to ~518 rows, the floor up to ~925: 1024 fits no plan
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", dynamic=True,
                         options={"memory_budget": cap, "dynamic_range": {"x.0": (128, 1024)}})
    for rows in (200, 900, 300):  # the lower bucket, the upper one, the lower one again: two compiles
        check_step(step, model, reference, torch.randn(rows, 64), cap)
    low, high = remat.reports(step)
    buckets = low.dynamic.buckets
    assert buckets is not None and high.dynamic.buckets == buckets and len(buckets.bounds) == 2
    assert [low.dynamic.ranges, high.dynamic.ranges] == [{str(buckets.symbol): b} for b in buckets.bounds]
    assert not low.plan.names(remat.Decision.RECOMPUTE) and high.plan.names(remat.Decision.RECOMPUTE)
    assert 900 <= buckets.fits_up_to < 1024
    with pytest.raises(remat.InfeasibleBudgetError) as e:  # above every bucket: refused at its compile
        step(torch.randn(1000, 64)).backward()
    assert e.value.largest_fit == buckets.fits_up_to and f"is {buckets.fits_up_to}" in str(e.value)


def test_the_last_compile_that_the_recompile_limit_allows_warns(caplog):
    model = mlp()
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", dynamic=False,
                         options={"memory_budget": CAP, "inductor_check": False})
    with torch._dynamo.config.patch(recompile_limit=2), caplog.at_level(logging.WARNING, logger="remat"):
        step(torch.randn(128, 64)).backward()
        assert "recompile_limit" not in caplog.text
        step(torch.randn(192, 64)).backward()  # a new size: the second and last compile allowed
    assert "torch._dynamo.config.recompile_limit (2)" in caplog.text and "holds 2 plans" in caplog.text


def test_a_gpt_whose_loss_slices_the_logits_plans_over_a_range_of_sequence_lengths():
    """``dynamic=True`` on a causal LM loss (``logits[:, :-1]`` against ``targets[:, 1:]``): the
    backward reads only the row count of the sliced logits (``sym_size``), which the forward saves
    as a size; it raised PlanError ("backward reads 'clone_3'") before."""
    import torch.nn.functional as F

    from examples.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    c = GPTConfig(vocab=64, seq=64, layers=1, d=32, heads=2, dropout=0.0)
    model = GPT(c)
    reference = copy.deepcopy(model)
    cap = 300 << 10  # storing everything at 64 tokens peaks at about 403 KiB

    def causal_loss(m, idx, targets):
        return F.cross_entropy(m(idx)[:, :-1].reshape(-1, c.vocab), targets[:, 1:].reshape(-1))

    step = torch.compile(lambda idx, targets: causal_loss(model, idx, targets), backend="remat", dynamic=True,
                         options={"memory_budget": cap, "dynamic_range": {"idx.1": (16, 64)}})
    for t in (64, 16, 40):
        idx, targets = torch.randint(0, c.vocab, (2, t)), torch.randint(0, c.vocab, (2, t))
        step(idx, targets).backward()
        causal_loss(reference, idx, targets).backward()
        got, want = grads(model), grads(reference)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
        measured = measure_step(lambda: step(idx, targets).backward())
        model.zero_grad(set_to_none=True)
        assert measured.peak_bytes <= cap, (t, measured.peak_bytes)
    (report,) = remat.reports(step)  # one compile, one plan, for every length
    assert report.plan.names(remat.Decision.RECOMPUTE) and report.dynamic.proof.holds
    assert (16, 64) in report.dynamic.ranges.values()
