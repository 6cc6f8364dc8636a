"""A step's accounting across its graphs (``remat.compilation.Compilation``), mostly without
compiling: what earlier graphs keep, the plain-compile step that a ratio budget refers to, what
the caller holds through the backward, and a graph's other runs per step (small compiles plan them)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from remat.backend import _taken_off_cap
from remat.compilation import Compilation
from remat.config import RematConfig

FIRST, SECOND, THIRD = (7, 0), (8, 0), (9, 0)


def planned(comp: Compilation, key, kept: int) -> None:
    """What the backend's ``_record`` does for a planned graph."""
    comp.add("a report")
    comp.keep(key, kept)


def test_a_ratio_refers_to_plain_compiles_step_as_far_as_each_graph():
    comp = Compilation({"memory_budget": "50%"})
    assert comp.plain_step_peak(FIRST, peak=5000, kept=1500) == 5000  # nothing before the first graph
    planned(comp, FIRST, 700)  # remat's plan of it keeps less than plain's partition
    assert comp.plain_step_peak(SECOND, peak=4000, kept=None) == 4000 + 1500
    assert comp.resident_before(SECOND) == 700
    planned(comp, SECOND, 900)  # plain's figure not read: remat's counts for it
    assert comp.plain_step_peak(THIRD, peak=3000, kept=100) == 3000 + 1500 + 900
    assert comp.plain_step_peak(THIRD, peak=None, kept=100) is None  # no code read: no reference


def test_a_graph_holds_its_saved_bytes_and_inputs_made_earlier_not_its_outputs_gradients():
    comp = Compilation({"memory_budget": "6MiB"})
    comp.graph_io(FIRST, grad_outputs=400, made_inputs=0)
    planned(comp, FIRST, 1000)  # its backward receives 600 saved bytes and 400 of gradients
    comp.graph_io(SECOND, grad_outputs=0, made_inputs=300)  # it reads 300 bytes that the first one made
    assert comp.resident_before(SECOND) == 600 + 300
    assert comp.plain_step_peak(SECOND, peak=100, kept=None) == 100 + 600 + 300
    planned(comp, SECOND, 50)  # its code does not count the input it saves: held until its backward
    assert comp.kept_bytes == {FIRST: 600, SECOND: 50 + 300}


def test_a_recompile_replaces_plain_figures_too():
    comp = Compilation({"memory_budget": "50%"})
    comp.plain_step_peak(FIRST, peak=5000, kept=1500)
    planned(comp, FIRST, 700)
    comp.plain_step_peak(FIRST, peak=4000, kept=1200)  # the frame compiles again (guards failed)
    planned(comp, FIRST, 600)
    assert comp.plain_step_peak(SECOND, peak=100, kept=None) == 100 + 1200
    assert comp.kept_before(SECOND) == 600


@pytest.mark.parametrize("budget, step_reference, expected", [
    ("6MiB", False, 1300),  # the step's byte cap: earlier graphs' kept bytes and the outside buffers
    ("50%", True, 1300),    # a ratio of plain compile's step: the same
    ("50%", False, 300),    # a ratio of the graph's own modelled plain peak: only the outside buffers
    ("min", True, 0),       # each graph's floor is its own
])
def test_what_a_graphs_cap_gives_up(budget, step_reference, expected):
    cfg = RematConfig.from_options({"memory_budget": budget})
    assert _taken_off_cap(cfg, resident=1000 + 300, outside=300, step_reference=step_reference) == expected


def graph_report(kept: int, resident: int, budget: int, room: int = 0):
    """The figures of a GraphReport that the check of a caller's loss reads."""
    from types import SimpleNamespace

    return SimpleNamespace(kept_bytes=kept, resident_before_bytes=resident, step_cap_bytes=budget + resident,
                           dynamic=None, problem=SimpleNamespace(name="graph0"), other_runs_bytes=0,
                           loss_room_bytes=room)


def test_a_loss_outside_the_graph_that_was_not_planned_for_and_can_exceed_the_cap_is_warned_of(caplog):
    from remat.backend import _warn_loss_outside

    with caplog.at_level("WARNING", logger="remat"):
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=1400, room=100), unplanned=500)
    assert "remat[graph0]" in caplog.text and "loss_outside=600" in caplog.text
    assert "up to 100 B over the cap of 1.56 KiB" in caplog.text  # 200 + 1000 + 500 - (1400 + 200)
    caplog.clear()
    with caplog.at_level("WARNING", logger="remat"):
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=2200), unplanned=500)
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=1000), unplanned=0)  # all planned for
    assert not caplog.text


def _dynamo_graph(fn, *inputs):
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep_graph)(*inputs)
    return graphs[0]


def test_the_outputs_a_loss_reads_are_those_that_need_a_gradient():
    from remat.backend import grad_output_bytes

    weight = torch.nn.Parameter(torch.randn(16, 8))
    graph = _dynamo_graph(lambda x: (x @ weight, x.sum(), (x @ weight).detach()), torch.randn(4, 16))
    assert grad_output_bytes(graph) == 4 * 8 * 4  # the product only: the sum needs no gradient, nor the copy


def test_a_loss_outside_is_planned_for_unless_the_graph_returns_a_scalar_that_needs_a_gradient():
    from remat.backend import loss_room

    weight = torch.nn.Parameter(torch.randn(16, 8))
    logits = _dynamo_graph(lambda x: x @ weight, torch.randn(4, 16))
    torch._dynamo.reset()
    with_loss = _dynamo_graph(lambda x: ((x @ weight).sum(), x @ weight), torch.randn(4, 16))
    assert loss_room(logits, "auto") == 2 * 4 * 8 * 4  # log-softmax and its gradient, each the logits' size
    assert loss_room(with_loss, "auto") == 0  # the loss is computed inside
    assert loss_room(logits, 0) == 0 and loss_room(with_loss, 1000) == 1000  # the option as given


def _read_code(forward_peak: int, backward_peak: int, kept: int | None):
    from remat.wrapper_memory import WrapperPeak

    walks = [WrapperPeak(forward_peak, 0), WrapperPeak(backward_peak, kept)] if kept is not None else None
    return SimpleNamespace(peak_bytes=max(forward_peak, backward_peak), walks=walks)


def test_a_graphs_step_peak_is_its_code_peak_or_what_it_keeps_with_the_loss_room_and_its_held_outputs():
    from remat.backend import step_peak

    assert step_peak(_read_code(1000, 900, 600), 300) == 1000  # the forward's peak is higher
    assert step_peak(_read_code(1000, 900, 800), 300) == 1100  # the loss outside, after the forward, is the step's peak
    assert step_peak(_read_code(1000, 900, 600), 300, held=200) == 1100  # the outputs held beside the backward's peak
    assert step_peak(_read_code(1000, 900, 800), 300, held=200) == 1300  # and beside the loss
    assert step_peak(_read_code(1000, 900, 800), 0, held=8) == 1000  # the loss inside: only it and its seed held
    assert step_peak(_read_code(1000, 995, 800), 0, held=8) == 1003  # beside the backward's peak
    assert step_peak(_read_code(1000, 900, None), 300) == 1000  # the backward's inputs not read
    assert step_peak(SimpleNamespace(peak_bytes=None, walks=None), 300) is None  # nothing read


def test_the_bytes_held_are_the_loss_its_seed_and_the_outputs_a_loss_outside_reads():
    from remat.backend import held_output_bytes

    weight = torch.nn.Parameter(torch.randn(16, 8))
    graph = _dynamo_graph(lambda x: (x @ weight, (x @ weight).sum(), x + 1), torch.randn(4, 16))
    # the outputs a loss outside reads (not what needs no gradient), each loss (the scalar output and
    # the one outside) and the seed gradient autograd makes for it
    assert held_output_bytes(graph, room=1) == 4 * 8 * 4 + 2 * (4 + 4)
    assert held_output_bytes(graph, room=0) == 2 * 4  # the loss inside and its seed


def test_the_loss_and_its_seed_held_by_the_caller_are_in_the_model_and_the_steps_peak():
    # ``loss = f(x); loss.backward()`` holds the loss and autograd's seed for it through the
    # backward: the measured step was 8 B over the code's peak and 4 B over the model's
    import remat
    from remat.measure import measure_step

    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    x = torch.randn(32, 64)
    step = torch.compile(lambda x: mlp(x).square().mean(), backend="remat", options={"memory_budget": "min"})
    step(x).backward()
    measured = measure_step(lambda: step(x).backward()).peak_bytes
    (report,) = remat.reports(step)
    assert report.inductor_peak_bytes == measured == report.timeline.peak_bytes


def test_a_loss_outside_peaks_with_the_outputs_gradient_it_made_before_the_backward():
    # ``out = model(x); cross_entropy(out, y).backward()``: between the graph's forward and its
    # backward the loss holds its log-softmax, that one's gradient, the logits' gradient it has just
    # made (the backward's tangent) and itself with its seed, while the caller holds ``out``; the
    # model missed the tangent and the 8 B (1,589,248 B where the step measured 2,113,544)
    import remat
    from remat.measure import measure_step

    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 512))
    x, y = torch.randn(256, 8), torch.randint(0, 512, (256,))
    step = torch.compile(mlp, backend="remat", options={"memory_budget": "min"})

    def train_step():
        out = step(x)
        torch.nn.functional.cross_entropy(out, y).backward()

    train_step()
    measured = measure_step(train_step).peak_bytes
    (report,) = remat.reports(step)
    forward_end = report.timeline.device_bytes[report.captured.problem.num_forward - 1]
    assert forward_end == report.timeline.peak_bytes == report.inductor_peak_bytes == measured


def test_a_graph_run_four_times_per_step_counts_what_three_other_runs_hold():
    from remat.backend import _plan_for_runs
    from remat.compilation import NO_RUNS, Runs
    from remat.outside_memory import OutsideMemory

    comp = Compilation({"memory_budget": "4MiB"})
    comp.graph_io(FIRST, grad_outputs=100, made_inputs=300)
    comp._outside[FIRST] = OutsideMemory((("gathered parameters", 320),), "FSDP2", runs=4)
    assert comp.runs(FIRST) == Runs(others=3, held_inputs=300, grad_outputs=100)
    # a backward that receives 1100 bytes: 1000 saved, 100 of output gradients (not held yet)
    assert comp.more_runs_bytes(FIRST, 1100) == 3 * (1000 + 300) == Runs(3, 300, 100).held_bytes(1100)
    assert _plan_for_runs(RematConfig.from_options({"memory_budget": "4MiB"}), comp, FIRST) == comp.runs(FIRST)
    assert _plan_for_runs(RematConfig.from_options({"memory_budget": "min"}), comp, FIRST) == NO_RUNS


def test_plain_compile_replaces_a_plan_only_when_its_code_fits_with_its_other_runs():
    from remat.backend import _plain_within
    from remat.compilation import Runs

    plain = ("plain compiled", 1000, 1100)  # its code peaks at 1000, its backward receives 1100
    runs = Runs(others=3, held_inputs=300, grad_outputs=100)
    assert _plain_within(None, None, plain, cap=4900, runs=runs) == ("plain compiled", 1000 + 3900, 1100)
    assert _plain_within(None, None, plain, cap=4899, runs=runs) is None
    assert _plain_within(None, None, plain, cap=1000) == plain


@pytest.mark.parametrize("checked", [pytest.param(True, marks=pytest.mark.slow), False])
def test_a_compiled_graph_that_runs_four_times_is_planned_with_its_other_runs(monkeypatch, checked):
    """Told that its graph runs 4 times per step (as FSDP2's blocks of one class do), the backend
    plans it with the 3 other runs in the Problem: at a cap that storing everything meets for one
    run (0.96 MiB measured), it recomputes (2.62 MiB if it stored all), and its code's peak with what
    the other runs hold meets the cap (``checked``: read from Inductor's code, 2 compiles, about 25 s
    on 2 idle cores; else the model's)."""
    import torch

    import remat
    from remat import compilation
    from remat.outside_memory import OutsideMemory
    from remat.plan import Decision
    from remat.simulate import store_all_peak

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = torch.randn(256, 64, requires_grad=True)
    monkeypatch.setattr(compilation, "outside_memory", lambda: OutsideMemory(runs=4))
    four = torch.compile(model, backend="remat", options={"memory_budget": "1.5MiB", "inductor_check": checked})
    four(x * 1).sum().backward()  # an input made earlier in the step: every run holds it
    report = remat.reports(four)[0]
    assert report.problem.other_runs == 3 and report.problem.run_held_bytes == 256 * 64 * 4
    assert store_all_peak(dataclasses.replace(report.problem, other_runs=0)) <= report.budget_bytes
    assert store_all_peak(report.problem) > report.budget_bytes and report.plan.names(Decision.RECOMPUTE)
    assert report.other_runs_bytes >= 3 * 256 * 64 * 4
    assert report.timeline.peak_bytes <= report.budget_bytes
    if checked:
        assert report.inductor_peak_bytes <= report.budget_bytes  # the code's peak with the other runs'
    assert "3 more runs of this graph per step holding" in remat.planning.summary_line(report)


def test_a_loss_outside_is_live_with_everything_the_forward_keeps():
    from remat.planning import with_loss_room
    from remat.simulate import simulate, store_all_plan
    from tests.unit.synthetic import chain_problem

    problem = chain_problem(layers=4, width=100)
    room = 1_000
    roomy = with_loss_room(problem, room)
    last = problem.num_forward - 1
    before, after = (simulate(p, store_all_plan(p)).device_bytes for p in (problem, roomy))
    assert after[last] == before[last] + room  # at the forward's last slot, over all it keeps
    assert [a for i, a in enumerate(after) if i != last] == [b for i, b in enumerate(before) if i != last]
    assert with_loss_room(problem, 0) is problem


def _layout_copy_of(model, x) -> int:
    """``planning.layout_copy_bytes`` of the joint graph of ``model(x).sum()``."""
    from torch._inductor.custom_graph_pass import CustomPartitionerFn

    from remat.analyze import capture_step
    from remat.backend import _Stop
    from remat.planning import _prepare_joint, forward_nodes, layout_copy_bytes

    class Probe(CustomPartitionerFn):
        def __call__(self, gm, joint_inputs, **kw):
            n = kw["num_fwd_outputs"]
            joint, info = _prepare_joint(gm, n, kw.get("static_lifetime_input_indices"))
            raise _Stop(layout_copy_bytes(joint, forward_nodes(joint, info), n))

        def uuid(self):
            return None

    return capture_step(model, (x,), lambda out: out.sum(), Probe())


def test_autograd_copies_the_largest_channels_last_conv_weight_gradient_after_the_backward():
    # Inductor lays a graph with 2-D convolutions out channels-last and its backward returns their
    # weights' gradients so; AccumulateGrad copies each into its weight's strides (the fuzzer's seed
    # 18, case 10: +3,456 B at ``new_empty_strided`` after the backward returned)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3))
    x = torch.randn(1, 3, 8, 8)
    assert _layout_copy_of(net, x) == 16 * 8 * 3 * 3 * 4
    net[2].weight.requires_grad_(False)  # no gradient, no copy: the first conv's weight is the largest
    assert _layout_copy_of(net, x) == 8 * 3 * 3 * 3 * 4
    linear = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
    assert _layout_copy_of(linear, torch.randn(4, 8)) == 0
