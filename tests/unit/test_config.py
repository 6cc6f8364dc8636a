"""Options: every valid form parses; every malformed one raises ConfigError naming what is valid."""

import pytest

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
        (0.5, Budget(ratio=0.5)),
        (1.0, Budget(ratio=1.0)),
        ("50%", Budget(ratio=0.5)),
        ("12.5%", Budget(ratio=0.125)),
        (None, None),
    ],
)
def test_budget_forms(value, expected):
    assert parse_budget(value) == expected


@pytest.mark.parametrize("value", [0, -5, 0.0, 1.5, -0.1, "abc", "300XB", "0MiB", "150%", "0%", "1.5", "", True, [1], "MiB"])
def test_bad_budgets(value):
    with pytest.raises(ConfigError, match="memory_budget must be"):
        parse_budget(value)


def test_ratio_resolves_against_baseline():
    assert parse_budget("50%").resolve(1000) == 500
    assert parse_budget("300MiB").resolve(1) == 300 * 2**20


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
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        RematConfig.from_options(options)


def test_config_key_covers_every_decision_option():
    a = RematConfig.from_options({"memory_budget": "1GiB"})
    for change in ({"memory_budget": "2GiB"}, {"solver": "greedy"}, {"time_limit": 5}, {"device": "h100"}, {"gap": 0.0}):
        assert RematConfig.from_options({"memory_budget": "1GiB", **change}).key() != a.key()
    assert RematConfig.from_options({"memory_budget": "1GiB", "verbose": True}).key() == a.key()


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
    assert forced.offload_bandwidth(on_cuda=False) == 1e12
    assert RematConfig.from_options({"offload": False}).offload_bandwidth(on_cuda=True) == 0.0


def test_reserve():
    cfg = RematConfig.from_options({"reserve": 0.1})
    assert cfg.planning_target(1000) == 900 and cfg.planning_target(None) is None
    for bad in (-0.1, 1.0, "5%", True):
        with pytest.raises(ConfigError, match="reserve must be"):
            RematConfig.from_options({"reserve": bad})
