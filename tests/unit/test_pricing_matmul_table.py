"""Small matmuls priced by the table of times that ``remat profile`` measured (``remat.cost.MatmulTable``,
``remat.pricing.table_matmul_time``), not by the FLOP rate of large matmuls: on this CPU a narrow
one runs several times slower than that rate, and the ILP then recomputes the pointwise value that
the roofline priced higher. Nothing here times anything: the tables are made up."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from remat import profile
from remat.capture import capture
from remat.cost import DEVICES, MatmulTable
from remat.plan import Decision
from remat.pricing import table_matmul_time
from remat.profile import MATMUL_TABLE_KEY, ProfileCache, machine_spec, matmul_points, measure_matmul_table
from remat.simulate import store_all_peak
from remat.solvers import get_solver

from .test_capture import trace_joint
from .test_profile import op_nodes

SLOW = 1e-3  # seconds the made-up table gives every matmul: 100x the roofline of the test's


def power_law(kind: str = "mm", layouts=("NN", "NT"), sizes=(4, 16, 64)) -> MatmulTable:
    """A table whose time is m * k * n nanoseconds at every point (exact under log-log interpolation)."""
    return MatmulTable(tuple(((kind, layout, m, k, n), m * k * n * 1e-9)
                             for layout in layouts for m in sizes for k in sizes for n in sizes))


def test_the_table_gives_its_points_and_interpolates_a_power_law_exactly():
    table = power_law()
    assert table.seconds("mm", "NT", 16, 4, 64) == pytest.approx(16 * 4 * 64 * 1e-9)
    assert table.seconds("mm", "NN", 32, 8, 40) == pytest.approx(32 * 8 * 40 * 1e-9)  # between points


def test_the_table_counts_a_size_under_its_smallest_as_the_smallest_and_knows_nothing_above_or_elsewhere():
    table = power_law(layouts=("NN",))
    assert table.seconds("mm", "NN", 1, 16, 16) == table.seconds("mm", "NN", 4, 16, 16)
    assert table.seconds("mm", "NN", 65, 16, 16) is None  # above the grid: the roofline's
    assert table.seconds("mm", "NT", 16, 16, 16) is None  # a layout not measured
    assert table.seconds("bmm", "NN", 16, 16, 16) is None


def test_a_point_missing_around_a_shape_leaves_it_to_the_roofline():
    full = power_law()
    table = MatmulTable(tuple(p for p in full.points if p[0] != ("mm", "NN", 64, 64, 64)))
    assert table.seconds("mm", "NN", 32, 32, 32) is None
    assert table.seconds("mm", "NN", 16, 16, 16) == full.seconds("mm", "NN", 16, 16, 16)


def spec_with(table: MatmulTable | None):
    return dataclasses.replace(DEVICES["cpu"], matmul_table=table)


def matmul_node(fn, *inputs, op="aten.mm.default"):
    return op_nodes(fn, *inputs)[op]


def test_a_linear_is_priced_by_its_layout_and_a_weight_gradient_is_left_to_the_roofline():
    nn_only = spec_with(power_law(layouts=("NN",)))
    x, w = torch.randn(16, 4), torch.randn(64, 4)
    linear = matmul_node(lambda a, b: a @ b.t(), x, w)  # the weight transposed: "NT"
    assert table_matmul_time(linear, nn_only) is None
    assert table_matmul_time(linear, spec_with(power_law())) == pytest.approx(16 * 4 * 64 * 1e-9)
    grad_w = matmul_node(lambda g, a: g.t() @ a, torch.randn(16, 64), x)  # first operand transposed
    assert table_matmul_time(grad_w, spec_with(power_law())) is None
    assert table_matmul_time(matmul_node(lambda a, b: a @ b, x, torch.randn(4, 64)), spec_with(None)) is None


def test_an_addmm_costs_its_mm_and_a_bmm_its_batchs_share_of_the_tables_batch():
    spec = spec_with(dataclasses.replace(power_law("bmm"), points=power_law("bmm").points + power_law().points,
                                         bmm_batch=8))
    addmm = matmul_node(lambda b, a, w: torch.addmm(b, a, w), torch.randn(64), torch.randn(16, 4), torch.randn(4, 64),
                        op="aten.addmm.default")
    assert table_matmul_time(addmm, spec) == pytest.approx(16 * 4 * 64 * 1e-9)
    bmm = matmul_node(torch.bmm, torch.randn(2, 16, 4), torch.randn(2, 4, 64), op="aten.bmm.default")
    assert table_matmul_time(bmm, spec) == pytest.approx(16 * 4 * 64 * 1e-9 * 2 / 8)


def test_a_convolution_costs_its_im2col_matmul_in_chunks_of_the_tables_rows():
    spec = spec_with(power_law())
    conv = lambda x, w: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    small = matmul_node(conv, torch.randn(2, 4, 4, 4), torch.randn(4, 4, 3, 3), op="aten.convolution.default")
    assert table_matmul_time(small, spec) == pytest.approx(2 * 16 * 36 * 4 * 1e-9)  # M 32, K 4 x 9, N 4
    tall = matmul_node(conv, torch.randn(8, 4, 8, 8), torch.randn(4, 4, 3, 3), op="aten.convolution.default")
    assert table_matmul_time(tall, spec) == pytest.approx(8 * 64 * 36 * 4 * 1e-9)  # M 512: 8 chunks of 64
    grouped = matmul_node(lambda x, w: torch.nn.functional.conv2d(x, w, padding=1, groups=2),
                          torch.randn(2, 4, 4, 4), torch.randn(4, 2, 3, 3), op="aten.convolution.default")
    assert table_matmul_time(grouped, spec) is None
    assert table_matmul_time(small, spec_with(None)) is None


def narrow_matmul_or_exp(x, w, z, y, z2):
    """Two activations that backward reads, both live at the forward's end, where a temporary (the
    repeat) makes the peak: ``mm`` (256 x 8: x @ w, a narrow matmul) and ``exp`` (1024 x 8)."""
    return ((x @ w) * z).sum() + (y.exp() * z2).sum() + x.repeat(8, 1).sum()


def planned(spec):
    torch.manual_seed(0)
    inputs = (torch.randn(256, 16), torch.randn(16, 8), torch.randn(256, 8, requires_grad=True),
              torch.randn(1024, 8), torch.randn(1024, 8, requires_grad=True))
    joint, fwd, n = trace_joint(narrow_matmul_or_exp, *inputs)
    problem = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=spec).problem
    return problem, get_solver("ilp")(problem, store_all_peak(problem) - 1, time_limit=30)


def test_the_ilp_recomputes_the_exp_where_the_table_prices_the_narrow_matmul_above_it():
    _, roofline = planned(spec_with(None))
    assert (roofline.decisions["mm"], roofline.decisions["exp"]) == (Decision.RECOMPUTE, Decision.STORE)
    slow = MatmulTable(tuple(((kind, layout, m, k, n), SLOW) for kind in ("mm",) for layout in ("NN", "NT")
                             for m in (64, 1024) for k in (4, 64) for n in (4, 64)))
    problem, plan = planned(spec_with(slow))
    assert problem.activation("mm").compute_time == pytest.approx(SLOW)
    assert problem.activation("exp").compute_time < SLOW / 10
    assert (plan.decisions["mm"], plan.decisions["exp"]) == (Decision.STORE, Decision.RECOMPUTE)


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    """Every table point 'measures' m * k * n ns (what was asked is kept); caches in ``tmp_path``."""
    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("REMAT_CACHE", raising=False)
    asked = []

    def fake(kind, layout, m, k, n, min_run_time):
        asked.append((kind, layout, m, k, n))
        return m * k * n * 1e-9

    monkeypatch.setattr(profile, "_matmul_seconds", fake)
    return asked


def test_the_table_is_measured_once_over_its_passes_then_read_from_the_cache_file(fake_timing):
    cache = ProfileCache.for_device("cpu")
    cache.put("matmul_flops float32 n=512", 1e11)
    cache.put("bandwidth", 1e10)
    table = measure_matmul_table(cache, passes=2)
    points = matmul_points()
    assert len(fake_timing) == 2 * len(points) and len(table.points) == len(points)
    assert all(2 * (32 if kind == "bmm" else 1) * m * k * n <= 1 << 26 for kind, _, m, k, n in points)
    again = measure_matmul_table(ProfileCache.for_device("cpu"))
    assert again == table and len(fake_timing) == 2 * len(points)  # from the file: nothing timed
    assert json.loads(cache.path.read_text())["entries"][MATMUL_TABLE_KEY]["bmm_batch"] == table.bmm_batch
    assert machine_spec("auto").matmul_table == table


def test_a_profile_without_the_table_prices_every_matmul_by_the_roofline(fake_timing):
    cache = ProfileCache.for_device("cpu")
    cache.put("matmul_flops float32 n=512", 1e11)
    cache.put("bandwidth", 1e10)
    spec = machine_spec("auto")
    assert spec.rates != "constants" and spec.matmul_table is None
    assert table_matmul_time(matmul_node(torch.mm, torch.randn(16, 4), torch.randn(4, 8)), spec) is None
