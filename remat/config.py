"""RematConfig: the user's options, parsed and checked once, frozen afterwards."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .errors import ConfigError

_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*|%)\s*$")

SOLVER_NAMES = ("ilp", "greedy", "store_all", "recompute_all")
BUDGET_HELP = (
    "memory_budget must be bytes (int, e.g. 314572800), a string with a unit "
    "('300MiB', '6GB', '1.5GiB'; units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), "
    "or a ratio of the no-remat peak in (0, 1] (0.5 or '50%')"
)


@dataclass(frozen=True)
class Budget:
    """A cap on the step's peak: absolute bytes, or a ratio of the no-remat peak."""

    bytes: int | None = None
    ratio: float | None = None

    def resolve(self, baseline_peak_bytes: int) -> int:
        if self.bytes is not None:
            return self.bytes
        return int(self.ratio * baseline_peak_bytes)

    def __str__(self) -> str:
        return f"{self.bytes} bytes" if self.bytes is not None else f"{self.ratio:.0%} of baseline"


def parse_budget(value: Any) -> Budget | None:
    """Parse a memory_budget option; None means no budget (plain Inductor)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{BUDGET_HELP}; got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (must be > 0)")
        return Budget(bytes=value)
    if isinstance(value, float):
        if not (0.0 < value <= 1.0):
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (a float is a ratio in (0, 1])")
        return Budget(ratio=value)
    if isinstance(value, str):
        m = _BUDGET_RE.match(value)
        if not m:
            raise ConfigError(f"{BUDGET_HELP}; got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            if not (0.0 < number <= 100.0):
                raise ConfigError(f"{BUDGET_HELP}; got {value!r} (percent must be in (0, 100])")
            return Budget(ratio=number / 100.0)
        if unit == "":
            if number != int(number):
                raise ConfigError(f"{BUDGET_HELP}; got {value!r} (bytes must be whole)")
            unit = "b"
        if unit not in _UNITS:
            raise ConfigError(f"{BUDGET_HELP}; unknown unit {m.group(2)!r} in {value!r}")
        nbytes = int(number * _UNITS[unit])
        if nbytes <= 0:
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (must be > 0)")
        return Budget(bytes=nbytes)
    raise ConfigError(f"{BUDGET_HELP}; got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class RematConfig:
    """Options of the remat backend and of ``remat.analyze``.

    memory_budget: cap on the step's peak of memory above what was resident before it
        (activations, temporaries and the gradients the step produces); None = plain Inductor.
    solver: "ilp" (default), "greedy", "store_all" or "recompute_all".
    time_limit: seconds the solver may take.
    device: cost-model device: "auto", "cpu", "a100", "h100", "h200", or a dict
        {"peak_flops": float, "bandwidth": float[, "host_bandwidth": float]}.
    gap: relative MIP gap at which the ILP stops (0.01 = within 1 % of optimal).
    offload: allow OFFLOAD decisions (copy to host memory and prefetch back); None = on for CUDA
        graphs, off elsewhere (on the CPU, host memory is the device memory: nothing is saved).
    host_bandwidth: bytes/s of the device<->host link per direction for the cost model; None =
        the device spec's (e.g. 25e9 for h100/h200: half the measured PCIe rate).
    reserve: fraction of the cap kept free for memory the model does not see (workspaces that
        ops allocate inside, such as convolution and attention scratch): plans target
        cap * (1 - reserve), or the smallest reachable peak when that is higher but still under
        the cap; Inductor's estimate after fusion must leave it free too (else the graph is
        planned again, lower). 0 plans right up to the cap.
    inductor_check: after fusion, compare Inductor's own peak estimate with the cap and plan a
        graph again, lower, when it is over (``remat.inductor_check``); False skips the estimate
        and the re-plans (the backward then compiles lazily, at the first backward call).
    verbose: print a one-line summary of every plan.
    """

    memory_budget: Budget | None = None
    solver: str = "ilp"
    time_limit: float = 60.0
    device: Any = "auto"
    gap: float = 0.01
    offload: bool | None = None
    host_bandwidth: float | None = None
    reserve: float = 0.05
    inductor_check: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.memory_budget is not None and not isinstance(self.memory_budget, Budget):
            object.__setattr__(self, "memory_budget", parse_budget(self.memory_budget))
        if self.solver not in SOLVER_NAMES:
            raise ConfigError(f"solver must be one of {', '.join(SOLVER_NAMES)}; got {self.solver!r}")
        if isinstance(self.time_limit, bool) or not isinstance(self.time_limit, (int, float)) or not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a positive number of seconds; got {self.time_limit!r}")
        if isinstance(self.gap, bool) or not isinstance(self.gap, (int, float)) or not 0 <= self.gap < 1:
            raise ConfigError(f"gap must be a number in [0, 1); got {self.gap!r}")
        r = self.reserve
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"reserve must be a fraction of the cap in [0, 1); got {r!r}")
        if not isinstance(self.inductor_check, bool):
            raise ConfigError(f"inductor_check must be True or False; got {self.inductor_check!r}")
        if self.offload is not None and not isinstance(self.offload, bool):
            raise ConfigError(f"offload must be True, False or None (auto); got {self.offload!r}")
        hb = self.host_bandwidth
        if hb is not None and (isinstance(hb, bool) or not isinstance(hb, (int, float)) or not hb >= 0):
            raise ConfigError(f"host_bandwidth must be a number of bytes/s >= 0 (e.g. 50e9); got {hb!r}")
        if self.offload is True and hb == 0:
            raise ConfigError("offload=True needs host_bandwidth > 0 (or None for the device's link)")
        from .cost import device_spec  # validates the device option

        device_spec(self.device)
        if isinstance(self.device, dict):  # keep the config hashable
            object.__setattr__(self, "device", tuple(sorted(self.device.items())))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "RematConfig":
        options = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown remat option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")
        return cls(**options)

    def planning_target(self, cap: int | None) -> int | None:
        """The peak that plans aim for: the cap less the reserve."""
        return None if cap is None else int(cap * (1 - self.reserve))

    def offload_bandwidth(self, on_cuda: bool) -> float:
        """Host-link bytes/s that the Problem gets: 0 when offload is off for this graph."""
        from .cost import device_spec

        enabled = on_cuda if self.offload is None else self.offload
        if not enabled:
            return 0.0
        return float(self.host_bandwidth if self.host_bandwidth is not None else device_spec(self.device).host_bandwidth)

    def key(self) -> str:
        """Everything that drives a decision, as a stable string (for cache keys)."""
        d = asdict(self)
        d.pop("verbose")
        return repr(sorted(d.items()))
