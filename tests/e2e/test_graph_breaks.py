"""One cap for the whole step across graph breaks: a graph is planned under the cap less what the
graphs compiled before it keep until their backward runs; a ratio is of plain compile's step."""

import copy

import pytest
import torch

import remat
from remat.compilation import compilation_for
from remat.errors import fmt_bytes
from remat.measure import measure_step

torch.set_num_threads(2)

MiB = 2**20


class Half(torch.nn.Module):
    """Two residual tanh MLP blocks."""

    def __init__(self, d=128, hidden=512):
        super().__init__()
        self.a, self.b = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d)
        self.c, self.e = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d)

    def forward(self, x):
        x = x + self.b(torch.tanh(self.a(x)))
        return x + self.e(torch.tanh(self.c(x)))


class Broken(torch.nn.Module):
    """Two MLP halves with a graph break between them: two graphs per step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = Half(), Half()

    def forward(self, x):
        h = self.first(x)
        torch._dynamo.graph_break()
        return self.second(h)


def output_grad_bytes(rows=512):
    """The gradient of the first graph's output (rows x 128 fp32): its backward receives it, but it
    exists only once that backward starts, so the second graph does not count it; the second
    graph's input (that output) it counts instead, as held outside its code while it runs."""
    return rows * 128 * 4


def batch(rows=512):
    return torch.randn(rows, 128, generator=torch.Generator().manual_seed(1))


def step_of(model, compiled, x):
    def step():
        model.zero_grad(set_to_none=True)
        compiled(x).pow(2).mean().backward()

    return step


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_second_graph_is_planned_under_the_cap_less_what_the_first_keeps():
    # the second graph's share is the cap less what the first holds (2.50 MiB): 3.50 MiB, below its
    # plain peak (3.75 MiB). It recomputes its first block's Linear and tanh, and Inductor writes
    # the recomputed tanh into the recomputed Linear's buffer (``Activation.taken_by``): predicted
    # 3.50 MiB, code 3.00 MiB (the model still holds the tanh-backward kernel's inputs longer)
    model, cap = Broken(), 6 * MiB
    eager = copy.deepcopy(model)
    eager(batch()).pow(2).mean().backward()
    compiled = torch.compile(model, backend="remat", options={"memory_budget": cap}, dynamic=False)
    step = step_of(model, compiled, batch())
    step()
    first, second = remat.reports(compiled)
    assert first.kept_bytes > output_grad_bytes() and first.resident_before_bytes == 0
    # what the first graph's backward receives less its output's gradient, and that output (the second's input)
    assert second.resident_before_bytes == (first.kept_bytes - output_grad_bytes()) + output_grad_bytes()
    assert second.budget_bytes == cap - second.resident_before_bytes and second.step_cap_bytes == cap
    assert second.captured.problem.activation("addmm").taken_by == "tanh"  # tanh(Linear(x)), one reader
    torch.testing.assert_close(grads_of(model), grads_of(eager))
    assert measure_step(step).peak_bytes <= cap


def test_a_ratio_is_of_plain_compiles_step_and_the_second_graph_gives_up_what_the_first_keeps():
    # 85 %: graph0 plans below its plain peak of 3.75 MiB by recomputing a Linear and its tanh, which
    # Inductor writes into the Linear's buffer (``Activation.taken_by``; code 3.00 MiB)
    model, ratio = Broken(), 0.85
    compiled = torch.compile(model, backend="remat", options={"memory_budget": f"{ratio:.0%}"}, dynamic=False)
    step = step_of(model, compiled, batch())
    step()
    first, second = remat.reports(compiled)
    assert first.resident_before_bytes == 0
    # what the first graph's backward receives less its output's gradient, and that output (the second's input)
    assert second.resident_before_bytes == (first.kept_bytes - output_grad_bytes()) + output_grad_bytes()
    # the second graph's reference is plain compile's step: its own code's peak on top of what plain's first graph keeps
    assert second.reference_peak_bytes > first.reference_peak_bytes
    for r in (first, second):
        assert r.step_cap_bytes == int(ratio * r.reference_peak_bytes)
    assert measure_step(step).peak_bytes <= second.step_cap_bytes


def test_a_recompile_replaces_its_frames_bytes_instead_of_adding_them():
    model, options = Broken(), {"memory_budget": 6 * MiB}
    compiled = torch.compile(model, backend="remat", options=options, dynamic=False)
    step_of(model, compiled, batch(512))()
    step_of(model, compiled, batch(384))()  # another batch size: both frames compile again
    reports = remat.reports(compiled)
    assert len(reports) == 4
    kept = compilation_for(options).kept_bytes
    held = [reports[2].kept_bytes - output_grad_bytes(384), reports[3].kept_bytes]  # the second's input counts too
    assert list(kept.values()) == held
    assert reports[2].resident_before_bytes == 0
    assert reports[3].resident_before_bytes == held[0] + output_grad_bytes(384)
    assert reports[2].kept_bytes < reports[0].kept_bytes  # fewer rows keep fewer bytes


def test_a_second_graph_that_cannot_fit_names_the_smallest_cap_for_the_step():
    model, cap = Broken(), 4 * MiB  # the first graph fits, the second does not after it
    compiled = torch.compile(model, backend="remat", options={"memory_budget": cap}, dynamic=False)
    with pytest.raises(remat.InfeasibleBudgetError) as info:
        step_of(model, compiled, batch())()
    err, (first,) = info.value, remat.reports(compiled)
    assert err.budget_bytes == cap and err.min_peak_bytes > cap
    message = str(err)
    assert "graph1 needs" in message and "the smallest cap for the whole step" in message
    assert f"{fmt_bytes(first.kept_bytes)} is held outside it while it runs" in message


def watched(comp, kept: int, key=(7, 0)):
    """A stand-in for a compiled graph that keeps ``kept`` bytes until its backward."""
    comp.add("a report")
    comp.keep(key, kept)
    return comp.counted(lambda x: [torch.tanh(x)], key=key)


def test_a_graph_run_several_times_before_its_backward_warns_with_the_excess(caplog):
    comp = compilation_for({"memory_budget": "10MiB"})
    run = watched(comp, 1000)
    x = torch.randn(8, requires_grad=True)
    with caplog.at_level("WARNING", logger="remat"):
        sum(run(x)[0].sum() for _ in range(3)).backward()
    assert comp.excess_bytes == 2000  # 3 runs kept 3000 B, the plan counted 1000 B
    assert "remat[graph0]" in caplog.text and "this graph ran 3 times" in caplog.text
    assert f"memory_budget={10 * MiB - 2000} instead of {10 * MiB}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="remat"):
        for _ in range(2):  # one run per backward: what the plan counted
            run(x)[0].sum().backward()
    assert comp.excess_bytes == 2000 and not caplog.text


def test_a_call_whose_backward_never_runs_stops_counting_when_its_graph_is_freed(caplog):
    comp = compilation_for({"memory_budget": "10MiB"})
    run = watched(comp, 1000)
    x = torch.randn(8, requires_grad=True)
    run(x)  # an evaluation under grad mode: its outputs are dropped, autograd frees its graph
    with caplog.at_level("WARNING", logger="remat"):
        run(x)[0].sum().backward()
    assert comp.excess_bytes == 0 and not caplog.text
