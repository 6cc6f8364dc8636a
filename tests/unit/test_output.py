"""What a person reads: one planning path (Pareto point == analyze plan), tables within a width,
solver status in words, sources by module, layer marks, the memory-visualizer snapshot, and the
`remat show` / `remat profile` / `--help` outputs."""

import json
import pickle

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import remat  # noqa: E402
from remat.cli import build_parser, main  # noqa: E402
from remat.plan import Decision, Plan  # noqa: E402
from remat.problem import BACKWARD, FORWARD, Activation, Problem, Slot  # noqa: E402
from remat.report import explain_plan, layer_starts, memory_snapshot, status_words  # noqa: E402
from remat.simulate import simulate, store_all_plan  # noqa: E402

from .factories import mlp  # noqa: E402

torch.set_num_threads(2)
CAP = "70%"


@pytest.fixture(scope="module")
def planned():
    """remat.analyze and remat.pareto of one small MLP at the same cap."""
    model, inputs, loss_fn = mlp(blocks=3)
    with torch._inductor.config.patch(force_disable_caches=True):
        rep = remat.analyze(model, inputs, memory_budget=CAP, loss_fn=loss_fn, time_limit=30)
        sweep = remat.pareto(model, inputs, budgets=[CAP, "min"], loss_fn=loss_fn, progress=False, time_limit=30)
    return rep, sweep


def test_pareto_point_is_the_analyze_plan(planned):
    rep, sweep = planned
    point = sweep[0]
    assert point.feasible and point.budget_bytes == rep.budget_bytes
    assert point.target_bytes == rep.plan.budget_bytes < rep.budget_bytes  # the reserve, as compiling plans
    assert point.predicted_peak_bytes == rep.predicted_peak_bytes
    assert point.report.decisions == rep.decisions
    assert point.added_time_s == pytest.approx(rep.added_time_s)
    assert "less the reserve" in sweep.table()
    low = sweep[1]
    assert low.feasible and low.predicted_peak_bytes <= low.budget_bytes == low.target_bytes


def test_report_names_each_figure_once(planned):
    rep = planned[0]
    lines = rep.figures(measured_bytes=12345)
    assert [ln.split()[0] for ln in lines] == ["model", "measured", "cap"]
    assert "checked against the model prediction" in lines[-1] and "planned at" in lines[-1]
    summary = rep.summary()
    assert summary.count("predict") == 1 and rep.status_words in summary and "feasible" not in summary


def test_table_fits_the_width(planned):
    rows = planned[0].explain()
    assert len(rows) > 6
    for width in (50, 80, 120):
        text = rows.table(max_rows=6, width=width)
        lines = text.splitlines()
        assert all(len(ln) <= width for ln in lines), max(map(len, lines))
        rows_lines = [ln for ln in lines if not ln.startswith("    ")]  # a narrow table puts "why" below
        assert len(rows_lines) == 2 + 6 + 1 and lines[-1].startswith(f"... {len(rows) - 6} more rows")
        flat = " ".join(text.split())
        assert all(" ".join(r.why.split()) in flat for r in rows.top(6))  # reasons wrapped below, not cut
    assert "\u2026" in rows.table(width=50)
    assert len(rows.table().splitlines()) == 2 + len(rows)  # no width, no cap: everything


def test_top_rows_are_the_ones_that_matter(planned):
    rows = planned[0].explain()
    top = rows.top(4)
    assert len(top) == 4
    best_saving = max(rows, key=lambda r: r.peak_saving_bytes)
    costliest = max((r for r in rows if r.decision is not Decision.STORE), key=lambda r: r.cost_s)
    assert best_saving.name in {r.name for r in top} and costliest.name in {r.name for r in top}
    order = [r.name for r in rows]
    assert [r.name for r in top] == sorted((r.name for r in top), key=order.index)  # creation order kept


def _plan(status: str, gap):
    return Plan(decisions={}, solver="ilp", status=status, gap=gap)


def test_status_in_words():
    assert status_words(_plan("optimal", 0.0), 0.01) == "optimal"
    assert status_words(_plan("feasible", 0.008), 0.01) == "within 1.0 % of the best possible"
    assert status_words(_plan("feasible", 0.046), 0.01) == "time limit: best found, gap 4.6 %"
    budget_ended = Plan(decisions={}, solver="ilp", status="feasible", gap=0.046, info={"stopped_by": "node budget"})
    assert status_words(budget_ended, 0.01) == "node budget: best found, gap 4.6 %"
    assert "no bound" in status_words(_plan("feasible", None), 0.01)
    assert "no optimality bound" in status_words(_plan("heuristic", None), 0.01)


def _layered_problem(modules: dict[int, str] | None = None) -> Problem:
    """Two identical layers of two activations each: forward slots 0-3, backward slots 4-7."""
    slots = [Slot(f"f{i}", FORWARD, 1e-3, 100) for i in range(4)] + [Slot(f"b{i}", BACKWARD, 1e-3, 100) for i in range(4)]
    acts = [Activation(f"a{i}", "_scaled_dot_product_flash_attention_for_cpu.default" if i % 2 else "mul.Tensor",
                       1000, 1e-4, created=i, last_forward_use=i, backward_uses=(7 - i,),
                       **({"module": modules[i]} if modules and i in modules else {}))
            for i in range(4)]
    return Problem(slots, acts, name="layered")


def test_sources_name_the_module():
    if "module" not in Activation.__dataclass_fields__:
        pytest.skip("Activation has no module field yet")
    problem = _layered_problem({1: "blocks.3.attn"})
    plan = Plan(decisions=store_all_plan(problem), solver="store_all")
    rows = {r.name: r for r in explain_plan(problem, plan, simulate(problem, plan), None)}
    assert rows["a1"].source == "blocks.3.attn (sdpa)" and rows["a1"].module == "blocks.3.attn"
    assert rows["a0"].source == "mul (pointwise)"  # no module recorded: the op and its kind
    assert rows["a1"].as_dict()["source"] == "blocks.3.attn (sdpa)"


def test_layer_starts_mark_each_layer():
    if "layers" not in Problem.__dataclass_fields__:
        pytest.skip("Problem has no layers field yet")
    p = _layered_problem()
    p = Problem(p.slots, p.activations, name=p.name, layers=((("a0", "a1"), ("a2", "a3")),))
    # layer 1 starts at forward slot 0, layer 2 at 2; their backwards begin at slots 6 and 4
    assert layer_starts(p) == [0, 2, 4, 6]
    assert layer_starts(_layered_problem()) == []


def _running_peak(trace: list[dict]) -> tuple[int, int]:
    live = peak = 0
    for e in trace:
        live += e["size"] if e["action"] == "alloc" else -e["size"] if e["action"] == "free_completed" else 0
        peak = max(peak, live)
    return peak, live


def test_memory_snapshot_opens_with_torchs_reader(planned, tmp_path):
    from torch.cuda import _memory_viz

    rep = planned[0]
    data = pickle.loads(rep.to_memory_snapshot(tmp_path / "predicted.pickle").read_bytes())
    (trace,) = data["device_traces"]
    assert {e["action"] for e in trace} == {"alloc", "free_requested", "free_completed"}
    peak, left = _running_peak(trace)
    assert peak == rep.predicted_peak_bytes and left == 0
    text = _memory_viz.trace(data)  # its TOTAL MEM line is not a total (the loop index overwrites it)
    assert f"{len(trace)} entries" in text and text.count(" = MEM[") == sum(e["action"] == "alloc" for e in trace)
    assert "snapshot.pickle" in _memory_viz.trace_plot(data)
    assert "segments: 1" in _memory_viz.segsum(data)
    assert _memory_viz.memory(data, format_flamegraph=lambda text: text).count("\n") >= 1
    base = memory_snapshot(rep.problem, store_all_plan(rep.problem))
    assert _running_peak(base["device_traces"][0])[0] == rep.baseline_peak_bytes


def test_memory_snapshot_holds_readers_moved_after_a_recomputing_kernel():
    """A reader of a value recomputed inside a backward kernel runs after that kernel; what it
    keeps live until then is the simulator's, not an activation's: the snapshot shows it."""
    from remat.simulate import simulate

    from .test_simulate import moved_problem

    p = moved_problem()
    plan = Plan(decisions={"u": Decision.STORE, "v": Decision.RECOMPUTE, "w": Decision.STORE}, solver="test")
    tl = simulate(p, plan)
    assert tl.peak_bytes > max(s.fixed_bytes for s in p.slots) + 1000
    assert _running_peak(memory_snapshot(p, plan)["device_traces"][0]) == (tl.peak_bytes, 0)


def test_show_reshows_a_pareto_sweep(planned, capsys, tmp_path):
    sweep = planned[1]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep.to_dict()))
    assert main(["show", str(path), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(sweep.table()) and "p.png" in out
    path.write_text(json.dumps({"neither": 1}))
    assert main(["show", str(path)]) == 2
    assert "neither a remat report nor a Pareto sweep" in capsys.readouterr().err


def test_help_has_no_rst_markup():
    text = build_parser().format_help()
    assert "``" not in text and "remat profile" in text


def test_profile_command(capsys):
    code = main(["profile", "--device", "cpu", "--sizes", "32,64", "--copy-bytes", "65536", "--min-time", "0.01",
                 "--no-cache"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "matmul float32" in out and "matmul bfloat16" in out and "FLOP/s" in out
    assert "memory bandwidth" in out and "B/s" in out and "cache: off" in out
