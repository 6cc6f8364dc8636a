"""Report.explain / timeline / to_json, remat.report.load, and remat.pareto on a tiny MLP."""

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import remat  # noqa: E402
from remat.report import ExplainRow, Report, load, load_plan  # noqa: E402
from remat.plan import Decision  # noqa: E402
from remat.simulate import check  # noqa: E402

from .factories import mlp  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def built():
    return mlp()


@pytest.fixture(scope="module")
def report(built):
    model, inputs, loss_fn = built
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        return remat.analyze(model, inputs, memory_budget="80%", loss_fn=loss_fn, time_limit=30)


@pytest.fixture(scope="module")
def sweep(built):
    model, inputs, loss_fn = built
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        return remat.pareto(model, inputs, budgets=["95%", "80%", "65%", "5%"], loss_fn=loss_fn,
                            progress=False, time_limit=30)


def test_report_basics(report):
    assert isinstance(report, Report)
    assert report.budget_bytes == int(0.8 * report.baseline_peak_bytes)
    assert report.predicted_peak_bytes <= report.budget_bytes < report.baseline_peak_bytes
    assert report.plan.names(Decision.RECOMPUTE), "a cap under the baseline must recompute something"
    assert report.baseline.peak_bytes == report.baseline_peak_bytes
    assert report.step_time_s > 0 and 0 < report.overhead < 1
    assert "remat[" in report.summary()


def test_explain_one_row_per_decision(report):
    rows = report.explain()
    assert len(rows) == len(report.plan.decisions)
    assert {r.name for r in rows} == set(report.plan.decisions)
    for r in rows:
        assert isinstance(r, ExplainRow)
        assert r.decision is report.plan.decisions[r.name]
        a = report.problem.activation(r.name)
        assert (r.op, r.bytes, r.shape, r.dtype) == (a.op, a.bytes, tuple(a.shape), a.dtype)
        assert r.why.startswith(r.decision.value + ":")
        if r.decision is Decision.RECOMPUTE:
            assert r.cost_s == pytest.approx(a.compute_time)
            assert "to redo" in r.why and ("saves" in r.why or "frees" in r.why)
        else:
            assert "read by backward at slot" in r.why or "recompute" in r.why
    # the recomputed values together explain the whole drop of the peak: at least one saves bytes there
    assert any(r.peak_saving_bytes > 0 for r in rows if r.decision is Decision.RECOMPUTE)
    counts = rows.counts()
    assert counts["recompute"] == len(report.plan.names(Decision.RECOMPUTE))
    text = str(rows)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["source", "node", "shape", "dtype", "bytes", "decision"]
    assert len(lines) == 2 + len(rows)
    assert all(name in text for name in report.plan.decisions)
    md = rows.to_markdown()
    assert md.startswith("| source | node |") and md.count("\n") == len(rows) + 1
    assert "more rows" in rows.table(max_rows=1) or len(rows) <= 1


def test_explain_without_budget_stores_everything(built):
    model, inputs, loss_fn = built
    with torch._inductor.config.patch(force_disable_caches=True):
        rep = remat.analyze(model, inputs, loss_fn=loss_fn)
    rows = rep.explain()
    assert rows and all(r.decision is Decision.STORE for r in rows)
    assert all("no cap" in r.why for r in rows if r.decision is Decision.STORE and "cannot" not in r.why)


def test_json_round_trip(report, tmp_path):
    path = report.to_json(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "remat.report/1" and data["budget_bytes"] == report.budget_bytes
    back = load(path)
    assert back.plan == report.plan
    assert back.problem == report.problem
    assert back.budget_bytes == report.budget_bytes
    assert back.baseline_peak_bytes == report.baseline_peak_bytes
    assert back.config == report.config
    tl = check(back.problem, back.plan, back.budget_bytes)
    assert tl.peak_bytes == report.predicted_peak_bytes
    assert back.summary() == report.summary()
    assert [r.why for r in back.explain()] == [r.why for r in report.explain()]
    assert load_plan(path) == report.plan
    report.plan.save(tmp_path / "bare.json")
    assert load_plan(tmp_path / "bare.json") == report.plan


def test_timeline_png(report, tmp_path):
    out = report.timeline(tmp_path / "sub" / "timeline.png")
    assert out.read_bytes()[:8] == PNG


def test_pareto_points(sweep, tmp_path):
    assert [p.label for p in sweep] == ["95%", "80%", "65%", "5%"]
    feasible = sweep.feasible
    assert len(feasible) >= 2
    peaks = [p.predicted_peak_bytes for p in feasible]
    assert peaks == sorted(peaks, reverse=True), peaks
    for p in feasible:
        assert p.predicted_peak_bytes <= p.budget_bytes
        assert p.overhead >= 0 and p.counts["store"] + p.counts["recompute"] + p.counts["offload"] > 0
    overheads = [p.overhead for p in feasible]
    assert overheads == sorted(overheads)
    tiny = sweep[-1]
    assert not tiny.feasible and "infeasible" in tiny.error  # 5% of the baseline: no plan reaches it
    assert sweep.plot(tmp_path / "pareto.png").read_bytes()[:8] == PNG
    assert "baseline" in sweep.table()
    assert json.dumps(sweep.to_dict())


def test_pareto_min_budget(built):
    model, inputs, loss_fn = built
    with torch._inductor.config.patch(force_disable_caches=True):
        res = remat.pareto(model, inputs, budgets=["min"], loss_fn=loss_fn, progress=False, time_limit=30)
    (p,) = res
    assert p.feasible and p.predicted_peak_bytes == p.budget_bytes < res.baseline_peak_bytes


def test_analyze_module_is_callable(built):
    import remat.analyze as A

    assert callable(remat.analyze) and A.Report is Report


def test_offload_rows_and_round_trip(tmp_path):
    """With offload on (an H100 cost model), caps are met by copying to host: rows say so."""
    model, inputs, loss_fn = mlp(batch=4096, blocks=4)
    with torch._inductor.config.patch(force_disable_caches=True):
        rep = remat.analyze(model, inputs, memory_budget="80%", loss_fn=loss_fn, offload=True, device="h100",
                            time_limit=30)
    rows = [r for r in rep.explain() if r.decision is Decision.OFFLOAD]
    assert rows, "expected OFFLOAD decisions"
    for r in rows:
        assert r.why.startswith("offload: ") and "on host from slot" in r.why and "prefetched from slot" in r.why
        assert "unhidden" in r.why and "each way" in r.cost
        assert r.cost_s == pytest.approx(r.bytes / rep.problem.host_bandwidth)
    assert rep.memory.host_peak_bytes > 0 and "offload on" not in rep.summary()
    with torch._inductor.config.patch(force_disable_caches=True):
        roomy = remat.analyze(model, inputs, memory_budget=2 * rep.baseline_peak_bytes, loss_fn=loss_fn,
                              offload=True, device="h100")
    assert not roomy.plan.names(Decision.OFFLOAD) and "offloadable activations chosen" in roomy.summary()
    assert rep.timeline(tmp_path / "t.png").read_bytes()[:8] == PNG
    back = load(rep.to_json(tmp_path / "o.json"))
    assert back.plan == rep.plan and back.config == rep.config and back.config.offload is True
    check(back.problem, back.plan, back.budget_bytes)
