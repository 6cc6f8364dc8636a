"""RematConfig: the user's options, parsed and checked once, frozen afterwards."""

from __future__ import annotations

import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .errors import ConfigError

_UNITS = {  # decimal units are powers of 10, binary ones (and the bare letters) powers of 2
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*|%)\s*$")
MIN_BUDGET = "min"

SOLVER_NAMES = ("ilp", "greedy", "store_all", "recompute_all")
ON_INFEASIBLE = ("error", "min")
LAYER_MODES = ("auto", "mix", "tie", "free")
RANK_MODES = ("agree", "local")
BUDGET_HELP = (
    "memory_budget must be bytes (an integer, e.g. 314572800), a string with a unit "
    "('300MiB', '6GB', '1.5GiB'; decimal KB, MB, GB, TB are powers of 1000, binary KiB, MiB, GiB, "
    "TiB and the bare K, M, G, T powers of 1024, so '300M' is 300 MiB; B or no unit: bytes), "
    "a ratio of the no-remat peak in (0, 1] (0.5 or '50%'), or 'min' (the smallest peak remat reaches)"
)
OFFLOAD_ON_CPU_HELP = (
    "offload=True on a CPU graph: host memory is the CPU's own memory there, so a copy to host "
    "frees nothing and the step's peak stays where it was (over the cap); drop offload (remat "
    "recomputes instead), or name a GPU cost model (e.g. device='h100') to plan as if the graph "
    "ran on that GPU (the CPU run will not follow the plan's peak)"
)


@dataclass(frozen=True)
class Budget:
    """A cap on the step's peak: absolute bytes, a ratio of the no-remat peak, or the smallest
    peak remat reaches (``minimum``; the planner finds that figure, ``resolve`` cannot).
    ``text`` is what the user wrote (its repr), for messages."""

    bytes: int | None = None
    ratio: float | None = None
    minimum: bool = False
    text: str = field(default="", compare=False)

    def resolve(self, baseline_peak_bytes: int) -> int:
        """The cap in bytes, given the no-remat peak."""
        if self.minimum:
            raise ValueError(
                "memory_budget 'min' has no fixed byte count: it is the smallest peak a plan "
                "reaches (remat.solvers.min_peak on the graph's Problem); resolve it there"
            )
        if self.bytes is not None:
            return self.bytes
        nbytes = int(self.ratio * baseline_peak_bytes)
        if nbytes < 1 <= baseline_peak_bytes:
            raise ConfigError(
                f"memory_budget {self.text or repr(self.ratio)} of this graph's no-remat peak "
                f"({baseline_peak_bytes} bytes) is less than 1 byte; {BUDGET_HELP}"
            )
        return nbytes

    def __str__(self) -> str:
        if self.minimum:
            return "min (the smallest reachable peak)"
        return f"{self.bytes} bytes" if self.bytes is not None else f"{self.ratio * 100:g}% of baseline"


def parse_budget(value: Any) -> Budget | None:
    """Parse a memory_budget option; None means no budget (plain Inductor).

    Any integer (``numbers.Integral``: Python, numpy, a 0-d integer tensor) is bytes; any other
    real number (``numbers.Real``, a 0-d float tensor) is a ratio of the no-remat peak in (0, 1];
    bools are refused; strings are described in ``BUDGET_HELP``. Messages echo ``value``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_budget_string(value)
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ConfigError(f"{BUDGET_HELP}; got {type(value).__name__} {value!r}")
    if isinstance(number, numbers.Integral):
        if number <= 0:
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (bytes must be > 0)")
        return Budget(bytes=int(number), text=repr(value))
    if not 0.0 < number <= 1.0:
        raise ConfigError(f"{BUDGET_HELP}; got {value!r} (a non-integer number is a ratio in (0, 1])")
    return Budget(ratio=float(number), text=repr(value))


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array (numpy scalars included) as the Python number it holds."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    return value


def _parse_budget_string(value: str) -> Budget:
    if value.strip().lower() == MIN_BUDGET:
        return Budget(minimum=True, text=repr(value))
    m = _BUDGET_RE.match(value)
    if not m:
        raise ConfigError(f"{BUDGET_HELP}; got {value!r}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if not (0.0 < number <= 100.0):
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (percent must be in (0, 100])")
        return Budget(ratio=number / 100.0, text=repr(value))
    if unit == "":
        if number != int(number):
            raise ConfigError(f"{BUDGET_HELP}; got {value!r} (bytes must be whole)")
        unit = "b"
    if unit not in _UNITS:
        raise ConfigError(f"{BUDGET_HELP}; unknown unit {m.group(2)!r} in {value!r}")
    nbytes = int(number * _UNITS[unit])
    if nbytes <= 0:
        raise ConfigError(f"{BUDGET_HELP}; got {value!r} (less than 1 byte)")
    return Budget(bytes=nbytes, text=repr(value))


OUTSIDE_BYTES_HELP = (
    "outside_bytes must be None (found from FSDP2's parameter groups, remat.outside_memory), bytes the step "
    "allocates outside remat's graphs while they run (an integer >= 0, or a string with a unit: '300MiB', '2GB')"
)


def parse_outside_bytes(value: Any) -> int | None:
    """Validate ``outside_bytes``: None, an integer >= 0, or a string of bytes with a unit (ConfigError
    echoes ``value``; a ratio or "min" is not a number of bytes)."""
    return None if value is None else _parse_bytes(value, OUTSIDE_BYTES_HELP)


LOSS_OUTSIDE_HELP = (
    "loss_outside must be 'auto' (two buffers the size of the graph's outputs that need a gradient, none when "
    "one of them is a scalar: a loss computed inside), or the bytes that a loss computed outside the compiled "
    "graph allocates between its forward and its backward (an integer >= 0, or a string with a unit: '8MiB')"
)


def parse_loss_outside(value: Any) -> str | int:
    """Validate ``loss_outside``: "auto", an integer >= 0, or a string of bytes with a unit."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _parse_bytes(value, LOSS_OUTSIDE_HELP)


def _parse_bytes(value: Any, help_text: str) -> int:
    """A number of bytes >= 0: an integer, or a string with a unit (ConfigError: ``help_text`` and
    ``value``)."""
    if isinstance(value, str):
        m = _BUDGET_RE.match(value)
        unit = (m.group(2).lower() or "b") if m else ""
        if unit not in _UNITS:
            raise ConfigError(f"{help_text}; got {value!r}")
        return int(float(m.group(1)) * _UNITS[unit])
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 0:
        raise ConfigError(f"{help_text}; got {value!r}")
    return int(number)


DYNAMIC_RANGE_HELP = (
    "dynamic_range must be a pair (lo, hi) of sizes 1 <= lo <= hi for every dynamic size, or a dict of "
    "such pairs keyed by a size symbol ('s77') or an input dimension 'NAME.DIM' ('x.0'), e.g. {'x.0': (1, 64)}"
)
ALL_SIZES = "*"  # the key of a dynamic_range pair that applies to every dynamic size


def parse_dynamic_range(value: Any) -> tuple[tuple[str, tuple[int, int]], ...] | None:
    """Validate ``dynamic_range``: None, a pair (every dynamic size, key ``ALL_SIZES``) or a dict
    of pairs; returned as sorted (key, (lo, hi)) items, hashable (ConfigError echoes ``value``)."""
    if value is None:
        return None
    if isinstance(value, tuple) and value and all(isinstance(item, tuple) and len(item) == 2 and
                                                  isinstance(item[0], str) for item in value):
        value = dict(value)  # already parsed
    items = value.items() if isinstance(value, Mapping) else [(ALL_SIZES, value)]
    out = []
    for key, pair in items:
        if not isinstance(key, str) or not key or not _is_size_pair(pair):
            raise ConfigError(f"{DYNAMIC_RANGE_HELP}; got {value!r}")
        out.append((key, (int(pair[0]), int(pair[1]))))
    if not out:
        raise ConfigError(f"{DYNAMIC_RANGE_HELP}; got {value!r}")
    return tuple(sorted(out))


def _is_size_pair(pair: Any) -> bool:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair):
        return False
    return 1 <= pair[0] <= pair[1]


@dataclass(frozen=True)
class RematConfig:
    """Options of the remat backend and of ``remat.analyze``.

    memory_budget: cap on the step's peak of memory above what was resident before it
        (activations, temporaries and the gradients the step produces): bytes (an integer, or a
        string with a unit: decimal KB/MB/GB/TB = 10**3/10**6/10**9/10**12, binary KiB/MiB/GiB/TiB
        and the bare K/M/G/T = 2**10/2**20/2**30/2**40, so "300M" is 300 MiB), a ratio of the
        peak of plain torch.compile on the same graph (0.5 or "50%"), or "min": the smallest peak remat reaches; None = plain
        Inductor.
    solver: "ilp" (default), "greedy", "store_all" or "recompute_all".
    time_limit: seconds the planning under a cap may take; within it, work budgets end the solver
        (``remat.solvers.ilp``: branch-and-bound nodes), so that a busy machine makes the same plan.
    device: cost-model device: "auto", "cpu", "a100", "h100", "h200", or a dict
        {"peak_flops": float, "bandwidth": float[, "host_bandwidth": float]}.
    gap: relative MIP gap at which the ILP stops (0.01 = within 1 % of optimal).
    offload: allow OFFLOAD decisions (copy to host memory and prefetch back); None = on for CUDA
        graphs, off elsewhere (on the CPU, host memory is the device memory: nothing is saved,
        so True on a CPU graph is a ConfigError unless ``device`` names a GPU cost model).
    host_bandwidth: bytes/s of the device<->host link per direction for the cost model; None =
        the device spec's (e.g. 25e9 for h100/h200: half the measured PCIe rate).
    reserve: fraction of the cap kept free for memory that Inductor's code does not show:
        scratch of ops that cannot be timed on random inputs, and on CUDA what the caching
        allocator holds beyond the 512 B rounding that the code walk counts (a cached block it does
        not split). Extern kernels' scratch is measured, the loss and its seed gradient that the
        caller holds across the backward are counted beside the code, and a loss computed outside
        from the outputs is planned for apart (``loss_outside``). On the CPU the step's peak so
        read is the measured one within 8 B on every quick example, so the default is 0.01. Plans target
        cap * (1 - reserve), or the smallest reachable peak when that is higher but still under
        the cap; the code's peak must leave it free too (else the graph is planned again, lower),
        and "min" reports its code's peak / (1 - reserve). 0 plans right up to the cap.
    inductor_check: after fusion, read the peak that Inductor's generated code allocates
        (``remat.inductor_check``) and plan a graph again: lower while it does not leave the reserve
        free, higher while it leaves more than two reserves free (``remat.backend``); False skips
        the check and the re-plans (the backward then compiles lazily, at the first backward call).
    on_infeasible: what a cap that no plan meets does: "error" (default) raises
        InfeasibleBudgetError naming the smallest reachable peak; "min" plans at that peak
        instead, with a warning naming both figures.
    cost_model: how op and transfer times are priced: "measured" (each op signature timed on the
        graph's device with real random inputs, a copy bandwidth and the host link measured, all
        cached on disk: ``remat.profile``), "roofline" (``remat.cost``: FLOPs and bytes against the
        ``device`` spec), or the path of a saved profile (a ``remat.profile`` cache file: its
        timings, nothing measured). "auto" (default) is "measured" for CUDA graphs and "roofline"
        on the CPU, where op timings taken while other threads and processes share the cores are
        dominated by scheduling contention (a 1024x256 add: 0.52 ms at 1 thread, 23.9 ms at 2 on a
        busy 2-core machine), and in ``remat.analyze``, whose graph holds fake tensors (no step
        runs). Ops that cannot be timed fall back to the roofline.
    layers: how the ILP treats repeated layers (``Problem.layers``, found by ``remat.structure``):
        "auto" (default) runs "mix" when a layer class has 8 or more layers, else "free", and stops
        that mix after its tied solve at the cap, keeping the tied and the greedy plans, when the
        greedy plan is already as cheap as the tied one or the rest would not fit in half the time
        left (``plan.info["mix_skipped"]``); "mix"
        plans one layer class at a few caps, lets an outer model pick one of those layer plans per
        layer under every memory row, then re-solves tied by that choice (first and last layer
        free): within 0.1 % of "free" at 12 and 24 GPT-2-small layers (benchmarks/solve_time.py);
        "free" decides each activation on its own; "tie" gives corresponding activations of
        identical layers one decision (smallest model, +11 % to +32 % added time).
    dynamic_range: the sizes a dynamic-shape graph must fit the cap at (``remat.symbolic``): a
        pair ``(lo, hi)`` for every dynamic size of the graph, or a dict of pairs keyed by a size
        symbol ("s77") or by an input dimension, "NAME.DIM" ("x.0": dimension 0 of the argument
        named x). The plan is made at the range's worst corner and its peak proven <= the cap over
        the whole range. None (default): the ranges of ``mark_dynamic(x, 0, min=, max=)``, else the
        plan is made for the sizes traced.
    outside_bytes: bytes that the step allocates outside remat's graphs while a graph runs (buffers of
        a data-parallel wrapper, a framework's caches), taken off a byte cap (``remat.outside_memory``).
        None (default): found from the module being run when it is an FSDP2 module (its all-gathered
        parameters, the next group's prefetch, a reduce-scatter buffer, sharded gradients); 0 for
        anything else (DDP's gradient buckets are allocated before the step: nothing to take off).
    loss_outside: bytes that a loss computed outside the compiled graph, from its outputs, allocates
        between the graph's forward and its backward, while everything the graph keeps is live
        (``remat.backend.loss_room``): planned for at the end of the forward, and added to the
        code's peak there, in the plans and in plain torch.compile's peak that a ratio refers to.
        "auto" (default): two buffers the size of the outputs that need a gradient (cross-entropy's
        log-softmax and its gradient: transformers Llama's logits, compiled alone, measured 3.7 MiB
        over its graph's code for 2 MiB of logits), none when one of them is a scalar (a loss
        computed inside the graph); 0 when nothing outside reads the outputs. With a loss
        outside, the outputs are counted as held by the caller until the backward ends.
    ranks: under torch.distributed with several ranks: "agree" (default): every rank checks that it
        captured the same graph as rank 0, which plans for all (``remat.ranks``); "local": each rank
        plans its own graphs (pipeline stages, ranks that compile different graphs; measured op
        times may then make plans differ between ranks that run the same graph).
    verbose: print a one-line summary of every plan.
    """

    memory_budget: Budget | None = None
    solver: str = "ilp"
    time_limit: float = 60.0
    device: Any = "auto"
    gap: float = 0.01
    offload: bool | None = None
    host_bandwidth: float | None = None
    reserve: float = 0.01
    inductor_check: bool = True
    on_infeasible: str = "error"
    cost_model: str = "auto"
    layers: str = "auto"
    dynamic_range: Any = None
    outside_bytes: Any = None
    loss_outside: Any = "auto"
    ranks: str = "agree"
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
        if self.on_infeasible not in ON_INFEASIBLE:
            raise ConfigError(
                f"on_infeasible must be one of {', '.join(map(repr, ON_INFEASIBLE))} (raise, or plan at the "
                f"smallest reachable peak); got {self.on_infeasible!r}"
            )
        from .cost import device_spec  # validate the device and cost options
        from .profile import parse_cost_model

        object.__setattr__(self, "cost_model", parse_cost_model(self.cost_model))
        if self.layers not in LAYER_MODES:
            raise ConfigError(
                f"layers must be 'auto' (mix for 8 or more identical layers, else free), 'mix' (a layer "
                f"plan per layer from a menu of tied plans), 'tie' (one decision per position of identical "
                f"layers) or 'free' (each activation on its own); got {self.layers!r}"
            )
        if self.offload is not None and not isinstance(self.offload, bool):
            raise ConfigError(f"offload must be True, False or None (auto); got {self.offload!r}")
        hb = self.host_bandwidth
        if hb is not None and (isinstance(hb, bool) or not isinstance(hb, (int, float)) or not hb >= 0):
            raise ConfigError(f"host_bandwidth must be a number of bytes/s >= 0 (e.g. 50e9); got {hb!r}")
        if self.offload is True and hb == 0:
            raise ConfigError("offload=True needs host_bandwidth > 0 (or None for the device's link)")
        device_spec(self.device)
        object.__setattr__(self, "dynamic_range", parse_dynamic_range(self.dynamic_range))
        object.__setattr__(self, "outside_bytes", parse_outside_bytes(self.outside_bytes))
        object.__setattr__(self, "loss_outside", parse_loss_outside(self.loss_outside))
        if self.ranks not in RANK_MODES:
            raise ConfigError(
                f"ranks must be 'agree' (rank 0 plans every graph for all ranks, which must capture the same "
                f"graphs) or 'local' (each rank plans its own graphs, e.g. pipeline stages); got {self.ranks!r}")
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
        """The peak that plans aim for, and that Inductor's code must stay under: the cap less the reserve."""
        return None if cap is None else int(cap * (1 - self.reserve))

    def offload_bandwidth(self, on_cuda: bool) -> float:
        """Host-link bytes/s that the Problem gets: 0 when offload is off for this graph.

        offload=True on a CPU graph raises ConfigError unless ``device`` names a GPU cost model
        (planning as if for that GPU): there, host memory is the memory the cap counts.
        """
        from .cost import device_spec

        enabled = on_cuda if self.offload is None else self.offload
        if not enabled:
            return 0.0
        if not on_cuda and not self.models_a_gpu():
            raise ConfigError(OFFLOAD_ON_CPU_HELP)
        return float(self.host_bandwidth if self.host_bandwidth is not None else device_spec(self.device).host_bandwidth)

    def resolved_cost_model(self, on_cuda: bool, offline: bool = False) -> str:
        """"measured", "roofline" or a saved profile's path: what ``cost_model`` means for a graph
        (``offline``: planned by ``remat.analyze`` on fake tensors)."""
        if self.cost_model != "auto":
            return self.cost_model
        return "measured" if on_cuda and not offline else "roofline"

    def models_a_gpu(self) -> bool:
        """True when ``device`` names a cost model other than the CPU's ("auto" follows the graph)."""
        from .cost import device_spec

        auto = isinstance(self.device, str) and self.device.lower() == "auto"
        return not auto and device_spec(self.device).name != "cpu"

    def key(self) -> str:
        """Everything that drives a decision, as a stable string (for cache keys)."""
        d = asdict(self)
        d.pop("verbose")
        if d["memory_budget"] is not None:
            d["memory_budget"].pop("text")  # "300MiB" and 314572800 decide alike
        return repr(sorted(d.items()))
