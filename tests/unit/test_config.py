"""Options: every valid form parses; every malformed one raises ConfigError naming what is valid."""

from fractions import Fraction

import re

import numpy as np
import pytest
import torch

from remat.config import Budget, RematConfig, parse_budget
from remat.cost import device_spec
from remat.errors import ConfigError, InfeasibleBudgetError


@pytest.mark.parametrize(
    "value, expected",
    [
        (314572800, Budget(bytes=314572800)),
        ("300MiB", Budget(bytes=300 * 2**20)),
        ("300 MiB", Budget(bytes=300 * 2**20)),
        ("6GB", Budget(bytes=6 * 10**9)),
        ("1.5GiB", Budget(bytes=int(1.5 * 2**30))),
        ("1024", Budget(bytes=1024)),
        ("2g", Budget(bytes=2 * 2**30)),
        ("300M", Budget(bytes=300 * 2**20)),  # bare letters are binary
        ("300MB", Budget(bytes=300 * 10**6)),  # decimal
        ("4KB", Budget(bytes=4000)),
        ("4KiB", Budget(bytes=4096)),
        ("2TB", Budget(bytes=2 * 10**12)),
        ("1tib", Budget(bytes=2**40)),
        ("64B", Budget(bytes=64)),
        (np.int64(6291456), Budget(bytes=6291456)),
        (np.int32(4096), Budget(bytes=4096)),
        (np.uint16(512), Budget(bytes=512)),
        (torch.tensor(1024), Budget(bytes=1024)),
        (np.array(2048), Budget(bytes=2048)),
        (np.float32(0.5), Budget(ratio=0.5)),
        (np.float64(0.25), Budget(ratio=0.25)),
        (torch.tensor(0.5), Budget(ratio=0.5)),
        (Fraction(1, 4), Budget(ratio=0.25)),
        ("min", Budget(minimum=True)),
        (" MIN ", Budget(minimum=True)),
        (0.5, Budget(ratio=0.5)),
        (1.0, Budget(ratio=1.0)),
        ("50%", Budget(ratio=0.5)),
        ("12.5%", Budget(ratio=0.125)),
        (None, None),
    ],
)
def test_budget_forms(value, expected):
    assert parse_budget(value) == expected


BAD_BUDGETS = [
    0, -5, 0.0, 1.5, -0.1, float("nan"), float("inf"), "abc", "300XB", "0MiB", "150%", "0%", "-5%", "1.5", "",
    "0.1B", "minimum", True, False, [1], "MiB", np.int64(0), np.int32(-1), np.float32(1.5), np.bool_(True),
    torch.tensor(True), torch.tensor(0), torch.tensor(2.0), torch.tensor([1024]), np.array([0.5]), 1 + 0j,
]


@pytest.mark.parametrize("value", BAD_BUDGETS, ids=repr)
def test_bad_budgets_echo_the_input(value):
    with pytest.raises(ConfigError, match="memory_budget must be") as e:
        parse_budget(value)
    assert repr(value) in str(e.value)


def test_budget_help_documents_units():
    with pytest.raises(ConfigError) as e:
        parse_budget("lots")
    msg = str(e.value)
    for unit in ("KB", "MB", "GB", "KiB", "MiB", "GiB", "'300M' is 300 MiB", "'min'", "50%"):
        assert unit in msg, unit
    doc = RematConfig.__doc__
    assert '"300M" is 300 MiB' in doc and "10**6" in doc and "2**20" in doc and '"min"' in doc


def test_ratio_resolves_against_baseline():
    assert parse_budget("50%").resolve(1000) == 500
    assert parse_budget(np.float32(0.5)).resolve(1000) == 500
    assert parse_budget("300MiB").resolve(1) == 300 * 2**20
    assert str(parse_budget("12.5%")) == "12.5% of baseline" and str(parse_budget("1KiB")) == "1024 bytes"


@pytest.mark.parametrize("value", ["1e-9%", 1e-12, np.float32(1e-12)], ids=repr)
def test_ratio_under_one_byte_names_what_the_user_wrote(value):
    budget = parse_budget(value)
    with pytest.raises(ConfigError, match="less than 1 byte") as e:
        budget.resolve(1_000_000)
    assert repr(value) in str(e.value) and "1000000 bytes" in str(e.value)


def test_min_budget_is_resolved_by_the_planner_not_by_resolve():
    budget = parse_budget("min")
    assert budget.minimum and budget.bytes is None and budget.ratio is None
    assert "min" in str(budget)
    with pytest.raises(ValueError, match="smallest peak"):
        budget.resolve(1000)
    assert RematConfig.from_options({"memory_budget": "min"}).memory_budget == Budget(minimum=True)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        RematConfig.from_options({"memory_budgte": "1GiB"})
    msg = str(e.value)
    assert "memory_budgte" in msg and "memory_budget" in msg and "solver" in msg


@pytest.mark.parametrize(
    "options, match",
    [
        ({"solver": "gurobi"}, "solver must be one of"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": "fast"}, "time_limit"),
        ({"gap": 1.5}, "gap"),
        ({"device": "tpu"}, "device must be"),
        ({"device": {"peak_flops": 1e12}}, "device must be"),
        ({"device": {"peak_flops": -1, "bandwidth": 1e9}}, "device must be"),
        ({"on_infeasible": "warn"}, "on_infeasible must be one of 'error', 'min'"),
        ({"on_infeasible": None}, "on_infeasible must be"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        RematConfig.from_options(options)


def test_config_key_covers_every_decision_option():
    a = RematConfig.from_options({"memory_budget": "1GiB"})
    changes = (
        {"memory_budget": "2GiB"}, {"memory_budget": "min"}, {"solver": "greedy"}, {"time_limit": 5},
        {"device": "h100"}, {"gap": 0.0}, {"on_infeasible": "min"},
    )
    for change in changes:
        assert RematConfig.from_options({"memory_budget": "1GiB", **change}).key() != a.key()
    assert RematConfig.from_options({"memory_budget": "1GiB", "verbose": True}).key() == a.key()
    assert RematConfig.from_options({"memory_budget": 2**30}).key() == a.key()  # same bytes, other spelling


def test_on_infeasible_defaults_to_error():
    assert RematConfig().on_infeasible == "error"
    assert RematConfig.from_options({"memory_budget": "50%", "on_infeasible": "min"}).on_infeasible == "min"


def test_devices():
    assert device_spec("h100").peak_flops > device_spec("cpu").peak_flops
    spec = device_spec({"peak_flops": 1e12, "bandwidth": 1e11, "host_bandwidth": 1e10})
    assert spec.host_bandwidth == 1e10
    assert RematConfig.from_options({"device": {"peak_flops": 1e12, "bandwidth": 1e11}}).device


def test_infeasible_message_names_min_peak():
    e = InfeasibleBudgetError(100 * 2**20, 150 * 2**20)
    assert "150.00 MiB" in str(e) and "100.00 MiB" in str(e) and e.min_peak_bytes == 150 * 2**20


@pytest.mark.parametrize(
    "options, match",
    [
        ({"host_bandwidth": -1.0}, "host_bandwidth must be"),
        ({"host_bandwidth": "fast"}, "host_bandwidth must be"),
        ({"offload": "yes"}, "offload must be"),
        ({"offload": True, "host_bandwidth": 0}, "offload=True needs host_bandwidth"),
        ({"inductor_check": "no"}, "inductor_check must be True or False"),
    ],
)
def test_bad_offload_options(options, match):
    with pytest.raises(ConfigError, match=match):
        RematConfig.from_options(options)


def test_offload_bandwidth_defaults():
    auto = RematConfig.from_options({"device": "h100"})
    assert auto.offload_bandwidth(on_cuda=False) == 0.0  # auto: off on CPU graphs
    assert auto.offload_bandwidth(on_cuda=True) == device_spec("h100").host_bandwidth
    forced = RematConfig.from_options({"offload": True, "host_bandwidth": 1e12})
    assert forced.offload_bandwidth(on_cuda=True) == 1e12
    assert RematConfig.from_options({"offload": False}).offload_bandwidth(on_cuda=True) == 0.0


@pytest.mark.parametrize("device", ["auto", "AUTO", "cpu"])
def test_offload_on_a_cpu_graph_is_refused(device):
    """Host copies are the CPU's own memory: offloading there cannot lower the peak."""
    cfg = RematConfig.from_options({"offload": True, "device": device})
    with pytest.raises(ConfigError, match="offload=True on a CPU graph") as e:
        cfg.offload_bandwidth(on_cuda=False)
    assert "drop offload" in str(e.value) and "device='h100'" in str(e.value)
    assert cfg.offload_bandwidth(on_cuda=True) > 0


@pytest.mark.parametrize("device", ["h100", {"peak_flops": 1e14, "bandwidth": 1e12, "host_bandwidth": 2e10}])
def test_offload_on_a_cpu_graph_with_a_gpu_cost_model_plans_for_that_gpu(device):
    cfg = RematConfig.from_options({"offload": True, "device": device})
    assert cfg.models_a_gpu() and cfg.offload_bandwidth(on_cuda=False) > 0


def test_reserve():
    cfg = RematConfig.from_options({"reserve": 0.1})
    assert cfg.planning_target(1000) == 900 and cfg.planning_target(None) is None
    for bad in (-0.1, 1.0, "5%", True):
        with pytest.raises(ConfigError, match="reserve must be"):
            RematConfig.from_options({"reserve": bad})


def test_cost_model_and_layers_defaults():
    cfg = RematConfig()
    assert (cfg.cost_model, cfg.layers) == ("auto", "auto")


@pytest.mark.parametrize("value, expected", [("measured", "measured"), ("Roofline", "roofline"), ("AUTO", "auto")])
def test_cost_model_names_are_normalised(value, expected):
    assert RematConfig.from_options({"cost_model": value}).cost_model == expected


def test_cost_model_saved_profile_becomes_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "p.json").write_text('{"format": "remat.profile/1", "entries": {}}')
    monkeypatch.chdir(tmp_path)
    assert RematConfig(cost_model="p.json").cost_model == str((tmp_path / "p.json").resolve())


@pytest.mark.parametrize(
    "options, match",
    [
        ({"cost_model": "fast"}, "cost_model must be 'auto'"),
        ({"cost_model": 1}, "cost_model must be"),
        ({"cost_model": None}, "cost_model must be"),
        ({"layers": "tied"}, "layers must be 'auto'"),
        ({"layers": None}, "layers must be"),
    ],
)
def test_bad_cost_model_and_layers(options, match):
    with pytest.raises(ConfigError, match=match):
        RematConfig.from_options(options)


@pytest.mark.parametrize(
    "cost_model, on_cuda, offline, expected",
    [
        ("auto", True, False, "measured"),
        ("auto", False, False, "roofline"),  # CPU timings on shared cores are contention
        ("auto", True, True, "roofline"),  # remat.analyze: fake tensors, no step runs
        ("measured", False, True, "measured"),
        ("roofline", True, False, "roofline"),
    ],
)
def test_resolved_cost_model(cost_model, on_cuda, offline, expected):
    assert RematConfig(cost_model=cost_model).resolved_cost_model(on_cuda, offline) == expected


def test_config_key_covers_cost_model_and_layers():
    a = RematConfig.from_options({"memory_budget": "1GiB"})
    for change in ({"cost_model": "measured"}, {"cost_model": "roofline"}, {"layers": "tie"}):
        assert RematConfig.from_options({"memory_budget": "1GiB", **change}).key() != a.key()


def test_dynamic_range_pairs_and_keys():
    assert RematConfig(dynamic_range=(1, 64)).dynamic_range == (("*", (1, 64)),)
    parsed = RematConfig(dynamic_range={"x.0": (2, 8), "s77": [1, 1]}).dynamic_range
    assert parsed == (("s77", (1, 1)), ("x.0", (2, 8)))
    assert RematConfig(dynamic_range=parsed).dynamic_range == parsed  # parsed once, kept as is
    assert "dynamic_range" in RematConfig(dynamic_range=(1, 64)).key()


@pytest.mark.parametrize("bad", [(0, 4), (5, 4), (1.5, 3), (True, 4), (1, 2, 3), "1-64", {}, {"x.0": 8}, {3: (1, 2)}])
def test_bad_dynamic_range_echoes_what_was_written(bad):
    with pytest.raises(ConfigError, match=r"dynamic_range must be a pair .*got " + re.escape(repr(bad))):
        RematConfig(dynamic_range=bad)


@pytest.mark.parametrize("value, expected", [(None, None), (0, 0), (4096, 4096), ("1.5MiB", 3 * 2**19), ("2KB", 2000),
                                             ("100", 100), (np.int64(7), 7)])
def test_outside_bytes_are_bytes(value, expected):
    assert RematConfig(outside_bytes=value).outside_bytes == expected


@pytest.mark.parametrize("bad", [-1, 1.5, True, "50%", "min", "lots", "3 parsecs"])
def test_bad_outside_bytes_echo_what_was_written(bad):
    with pytest.raises(ConfigError, match=r"outside_bytes must be None .*got " + re.escape(repr(bad))):
        RematConfig(outside_bytes=bad)


def test_ranks_modes():
    assert RematConfig().ranks == "agree" and RematConfig(ranks="local").ranks == "local"
    assert RematConfig(ranks="local").key() != RematConfig().key()
    with pytest.raises(ConfigError, match=r"ranks must be 'agree' .* or 'local' .*got 'independent'"):
        RematConfig(ranks="independent")


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), (0, 0), (4096, 4096),
                                             ("8MiB", 8 * 2**20), ("2KB", 2000)])
def test_loss_outside_is_auto_or_bytes(value, expected):
    assert RematConfig(loss_outside=value).loss_outside == expected


@pytest.mark.parametrize("bad", ["50%", "min", -1, 1.5, True, None, "lots"])
def test_bad_loss_outside_echoes_what_was_written(bad):
    with pytest.raises(ConfigError, match=r"loss_outside must be 'auto' .*got " + re.escape(repr(bad))):
        RematConfig(loss_outside=bad)
