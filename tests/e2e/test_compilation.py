"""One Compilation per torch.compile call: its own reports, remat's errors by their own type."""

import logging
import threading

import pytest
import torch

import remat

torch.set_num_threads(2)


def tanh_stack(depth: int = 6, width: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh()) for _ in range(depth)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 8))


def batch(rows: int = 2048) -> torch.Tensor:
    return torch.randn(rows, 64, generator=torch.Generator().manual_seed(1))


def test_each_compiled_model_keeps_its_own_reports():
    a, b = tanh_stack(), tanh_stack(depth=4)
    ca = torch.compile(a, backend="remat", options={"memory_budget": "80%"})
    cb = torch.compile(lambda x: b(x).sum(), backend="remat", options={"memory_budget": "90%"})
    assert remat.reports(ca) == [] and remat.reports(cb) == []
    ca(batch()).sum().backward()
    cb(batch()).backward()
    (ra,), (rb,) = remat.reports(ca), remat.reports(cb)
    assert ra is not rb
    # a ratio is a fraction of plain torch.compile's peak, read from its compiled code
    assert ra.reference == rb.reference == "plain torch.compile (its compiled code)"
    assert ra.budget_bytes == int(0.8 * ra.reference_peak_bytes)
    assert rb.budget_bytes == int(0.9 * rb.reference_peak_bytes)
    assert len(ra.problem.activations) > len(rb.problem.activations)  # 6 layers vs 4


def test_reports_refuses_what_torch_compile_did_not_make():
    with pytest.raises(TypeError, match="torch.compile"):
        remat.reports(tanh_stack())


def test_threads_compiling_at_once_do_not_mix_reports():
    models = [tanh_stack(depth=d) for d in (4, 6)]
    compiled = [torch.compile(m, backend="remat", options={"memory_budget": "90%"}) for m in models]
    errors = []

    def run(c):
        try:
            c(batch()).sum().backward()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in compiled]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sizes = [len(r.problem.activations) for c in compiled for r in remat.reports(c)]
    assert len(sizes) == 2 and sizes[0] < sizes[1]


def test_infeasible_cap_is_caught_by_its_own_type_at_the_call():
    compiled = torch.compile(tanh_stack(), backend="remat", options={"memory_budget": 4096})
    with pytest.raises(remat.InfeasibleBudgetError) as info:
        compiled(batch()).sum().backward()
    err = info.value
    assert isinstance(err, remat.RematError)
    assert err.budget_bytes == 4096 and err.min_peak_bytes > 4096
    message = str(err)
    assert "graph0" in message and "memory_budget" in message and "'min'" in message


def test_malformed_option_is_a_config_error_at_the_call():
    compiled = torch.compile(tanh_stack(), backend="remat", options={"memory_budget": "fifty"})
    with pytest.raises(remat.ConfigError, match="fifty"):
        compiled(batch())


def test_a_budget_without_backward_says_it_does_nothing(caplog):
    compiled = torch.compile(tanh_stack(), backend="remat", options={"memory_budget": "50%"})
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="remat"):
        compiled(batch())
    assert "no backward to plan" in caplog.text
    assert remat.reports(compiled) == []


def test_a_ratio_is_a_fraction_of_plain_compiles_measured_peak():
    from remat.measure import measure_step

    model = tanh_stack(depth=8)
    x = batch(4096)

    def measured(step):
        step(x).backward()
        for p in model.parameters():
            p.grad = None
        return measure_step(lambda: step(x).backward()).peak_bytes

    plain = measured(torch.compile(lambda x: model(x).sum()))
    capped = torch.compile(lambda x: model(x).sum(), backend="remat", options={"memory_budget": "75%"})
    peak = measured(capped)
    (report,) = remat.reports(capped)
    assert report.reference_peak_bytes == pytest.approx(plain, rel=0.01)
    assert peak <= 0.75 * plain * 1.01


def test_a_cap_under_the_models_floor_is_kept_when_inductors_code_meets_it():
    """The model over-predicts this graph (4.75 KiB at best): the cap of plain torch.compile's
    peak is planned at the model's floor, and the compiled code (2.6 KiB) meets it."""

    class NormThenLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.lin = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)

        def forward(self, x):
            h = self.ln(x)
            return self.lin(h), h

    torch.manual_seed(0)
    model, x = NormThenLinear(), torch.randn(8, 16)
    # the loss outside is two sums, which allocate nothing beside the outputs: loss_outside=0
    compiled = torch.compile(model, backend="remat", options={"memory_budget": 1.0, "loss_outside": 0})
    out, h = compiled(x)
    (out.sum() + h.sum()).backward()
    (report,) = remat.reports(compiled)
    assert report.plan.info["model_floor"] > report.budget_bytes >= report.inductor_peak_bytes


def test_meta_device_is_refused_with_a_clear_error():
    model = tanh_stack(depth=2).to("meta")
    with pytest.raises(remat.ConfigError, match="meta device"):
        remat.analyze(model, torch.randn(64, 64, device="meta"), memory_budget="50%")
    compiled = torch.compile(model, backend="remat", options={"memory_budget": "50%"})
    with pytest.raises(remat.ConfigError, match="meta device"):
        compiled(torch.randn(64, 64, device="meta")).sum().backward()


def test_a_byte_cap_that_plain_compile_meets_runs_plain_compile(monkeypatch):
    """Under a byte cap, a plan that adds time is replaced by plain torch.compile where plain's
    code leaves the reserve free (the model can over-predict plain's peak). Plain's peak is
    reported lower here than it is, so that the cap that makes remat recompute also fits plain."""
    from remat import backend

    real = backend.plain_compile
    calls = []

    def plain_that_fits(gm, example_inputs, sizes=None, room=0):
        compiled, peak, kept = real(gm, example_inputs, sizes, room)
        calls.append(peak)
        return compiled, 1, kept

    monkeypatch.setattr(backend, "plain_compile", plain_that_fits)
    model, x = tanh_stack(depth=4), batch(512)
    reference = tanh_stack(depth=4)
    reference(x).sum().backward()
    compiled = torch.compile(model, backend="remat", options={"memory_budget": "600KiB"})
    compiled(x).sum().backward()
    (report,) = remat.reports(compiled)
    assert report.timeline.added_time > 0 and calls  # the plan recomputes: plain was compiled to see
    assert report.compiled_with == "plain torch.compile" and report.inductor_peak_bytes == 1
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
