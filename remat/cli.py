"""The ``remat`` command: plan a model's training step offline, sweep caps, show saved plans.

    remat analyze examples/gpt.py:factory --budget 60% [--device h100] [--json plan.json]
                  [--plot timeline.png] [--measure] [-a batch=16 -a layers=8]
    remat pareto  examples/gpt.py:factory --budgets 90%,70%,50%,30%,min --plot pareto.png
    remat show    plan.json [--plot timeline.png]     (or a sweep saved with remat pareto --json)
    remat profile [--device cuda] [--sizes 512,1024,2048]

TARGET is ``FILE.py:FACTORY`` or ``package.module:FACTORY`` (FACTORY defaults to ``factory``). The
factory returns ``(model, example_inputs)`` or ``(model, example_inputs, loss_fn)``; ``-a KEY=VALUE``
passes keyword arguments to it (values are Python literals, else strings). By default the factory
runs under a FakeTensorMode: parameters and inputs are fake tensors, so a model too large for this
machine can still be analysed; ``--real`` builds real tensors (``--measure`` always does).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import os
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_USAGE = 2  # bad command line, file, factory or budget
EXIT_FAILED = 1  # the analysis itself failed (infeasible cap, error in the model...)
DEFAULT_ROWS = 16  # rows of the decision table by default (--rows all shows every one)


class CLIError(Exception):
    """An error the command reports as one line (exit status ``code``)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# ---- loading a factory ---------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, str]:
    """'examples/gpt.py:factory' -> ('examples/gpt.py', 'factory'); the factory defaults to 'factory'."""
    source, sep, name = target.rpartition(":")
    if not sep:
        source, name = target, "factory"
    if not source or not name:
        raise CLIError(f"target {target!r} must be FILE.py:FACTORY or module:FACTORY")
    if not name.isidentifier():
        raise CLIError(f"factory name {name!r} in {target!r} is not a Python identifier")
    return source, name


def _is_file_source(source: str) -> bool:
    return source.endswith(".py") or os.sep in source or "/" in source or Path(source).is_file()


def load_module(source: str):
    """Import a module from a file path or a dotted module name (the current directory first)."""
    if _is_file_source(source):
        path = Path(source)
        if not path.is_file():
            raise CLIError(f"no such file: {source}")
        name = f"_remat_factory_{abs(hash(str(path.resolve())))}_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CLIError(f"cannot load {source} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        parent = str(path.resolve().parent)
        added = parent not in sys.path
        if added:
            sys.path.insert(0, parent)  # like `python FILE.py`: its siblings are importable
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise CLIError(f"importing {source} failed: {type(e).__name__}: {_first_line(e)}", EXIT_FAILED) from e
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        if e.name and source.startswith(e.name):
            raise CLIError(f"no such file or module: {source}") from e
        raise CLIError(f"importing {source} failed: {type(e).__name__}: {_first_line(e)}", EXIT_FAILED) from e
    except Exception as e:
        raise CLIError(f"importing {source} failed: {type(e).__name__}: {_first_line(e)}", EXIT_FAILED) from e


def load_factory(target: str) -> Callable[..., Any]:
    """The callable named by ``FILE.py:FACTORY`` or ``module:FACTORY``."""
    source, name = split_target(target)
    module = load_module(source)
    fn = getattr(module, name, None)
    if fn is None:
        avail = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
                       and not isinstance(v, type))
        hint = f" (functions there: {', '.join(avail)})" if avail else ""
        raise CLIError(f"{source} has no factory {name!r}{hint}")
    if not callable(fn):
        raise CLIError(f"{source}:{name} is a {type(fn).__name__}, not a callable factory")
    return fn


def parse_factory_args(pairs: Sequence[str]) -> dict[str, Any]:
    """['batch=4', 'name=tiny'] -> {'batch': 4, 'name': 'tiny'} (Python literals, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"factory argument {pair!r} must be KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def check_built(result: Any, target: str) -> tuple[Any, tuple, Callable | None]:
    """Validate what a factory returned: (model, example_inputs[, loss_fn])."""
    import torch

    expected = "(model, example_inputs) or (model, example_inputs, loss_fn)"
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise CLIError(f"factory {target} must return {expected}; got {got}")
    model, inputs = result[0], result[1]
    loss_fn = result[2] if len(result) == 3 else None
    if not callable(model):
        raise CLIError(f"factory {target} returned a model that is not callable ({type(model).__name__})")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise CLIError(f"factory {target} returned example_inputs of type {type(inputs).__name__}; "
                       "expected a tensor or a tuple of inputs")
    if loss_fn is not None and not callable(loss_fn):
        raise CLIError(f"factory {target} returned a loss_fn that is not callable ({type(loss_fn).__name__})")
    return model, tuple(inputs), loss_fn


def build(target: str, factory_args: dict[str, Any], fake: bool) -> tuple[Any, tuple, Callable | None]:
    """Run the factory (under a FakeTensorMode when ``fake``) and validate its result."""
    fn = load_factory(target)
    try:
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            with FakeTensorMode(allow_non_fake_inputs=True):
                result = fn(**factory_args)
        else:
            result = fn(**factory_args)
    except TypeError as e:
        if "argument" in str(e) and factory_args:
            raise CLIError(f"factory {target} does not take {sorted(factory_args)}: {_first_line(e)}") from e
        raise CLIError(f"factory {target} raised TypeError: {_first_line(e)}", EXIT_FAILED) from e
    except CLIError:
        raise
    except Exception as e:
        hint = " (it ran on fake tensors; try --real)" if fake else ""
        raise CLIError(f"factory {target} raised {type(e).__name__}: {_first_line(e)}{hint}", EXIT_FAILED) from e
    return check_built(result, target)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_budget(value: str | None):
    from .config import parse_budget
    from .errors import ConfigError

    if value is None:
        return None
    try:
        parse_budget(value)
    except ConfigError as e:
        raise CLIError(f"bad --budget {value!r}: {e}") from None
    return value


def _check_budgets(value: str) -> list[str]:
    from .config import parse_budget
    from .errors import ConfigError

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise CLIError(f"bad --budgets {value!r}: give a comma-separated list such as 90%,70%,50%,min")
    for v in items:
        if v.lower() == "min":
            continue
        try:
            parse_budget(v)
        except ConfigError as e:
            raise CLIError(f"bad budget {v!r} in --budgets: {e}") from None
    return items


def _options(args) -> dict[str, Any]:
    from .config import RematConfig
    from .errors import ConfigError

    opts: dict[str, Any] = {"solver": args.solver, "device": args.device}
    if args.time_limit is not None:
        opts["time_limit"] = args.time_limit
    if args.offload != "auto":
        opts["offload"] = args.offload == "on"
    if args.host_bandwidth is not None:
        opts["host_bandwidth"] = args.host_bandwidth
    try:
        RematConfig.from_options(opts)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    return opts


def _param_count(model: Any) -> str:
    try:
        n = sum(p.numel() for p in model.parameters())
    except Exception:
        return ""
    return f", {n / 1e6:.2f} M parameters" if n >= 1e4 else f", {n} parameters"


# ---- commands ------------------------------------------------------------------------------------


def cmd_analyze(args) -> int:
    budget = _check_budget(args.budget)
    opts = _options(args)
    fargs = parse_factory_args(args.factory_arg)
    from .analyze import analyze

    fake = not (args.real or args.measure)
    model, inputs, loss_fn = build(args.target, fargs, fake=fake)
    print(f"model: {args.target} ({'fake' if fake else 'real'} tensors{_param_count(model)})")
    t0 = time.perf_counter()
    report = analyze(model, inputs, memory_budget=budget, loss_fn=loss_fn, **opts, **_ranges(args.range))
    elapsed = time.perf_counter() - t0
    print(_fit(report.summary()))
    for line in report.dynamic_lines():
        print(_fit(line))
    print(_fit(f"predicted step {_fmt_time(report.step_time_s)} without remat, +{_fmt_time(report.added_time_s)} "
               f"({report.overhead:.1%}) with the plan; analysis took {elapsed:.1f} s"))
    if not args.no_table:
        _print_table(report, args.rows)
    _write_outputs(report, args)
    if args.measure:
        print()
        print("\n".join(_measured_lines(model, inputs, loss_fn, report, budget, opts)))
    return 0


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def _fit(text: str) -> str:
    """``text`` wrapped to the terminal's width, continuation lines indented."""
    return textwrap.fill(text, _width(), subsequent_indent="    ", break_on_hyphens=False)


def _print_table(report: Any, rows: str) -> None:
    """The decision table: the rows that matter most (``rows``: a number or 'all'), within the
    terminal's width."""
    print()
    print(report.explain().table(max_rows=_row_count(rows), width=_width()))


def _row_count(value: str) -> int | None:
    """--rows: 'all' -> None (every row), else a positive number."""
    if str(value).lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise CLIError(f"bad --rows {value!r}: give a positive number or 'all'")
    return n


def _ranges(values: Sequence[str] | None) -> dict[str, Any]:
    """--range x.0=LO:HI (repeatable) as the ``dynamic_range`` option ({} when none is given)."""
    out = {}
    for value in values or ():
        key, _, span = value.partition("=")
        lo, _, hi = span.partition(":")
        if not (key and lo.strip().isdigit() and hi.strip().isdigit()):
            raise CLIError(f"bad --range {value!r}: give an input dimension and its sizes, e.g. x.0=1:64 "
                           "(dimension 0 of the model's argument x) or 0.1=64:512 (dimension 1 of the first input)")
        out[key] = (int(lo), int(hi))
    return {"dynamic_range": out} if out else {}


def _write_outputs(report: Any, args) -> None:
    if getattr(args, "json", None):
        print(f"wrote {report.to_json(args.json)}")
    if args.plot:
        print(f"wrote {report.timeline(args.plot)}")
    if getattr(args, "plot_sizes", None):
        if report.graph.dynamic is None:
            raise CLIError("--plot-sizes draws the peak vs a dynamic size: give --range too")
        print(f"wrote {report.peak_vs_size(args.plot_sizes)}")
    if getattr(args, "memory_snapshot", None):
        path = report.to_memory_snapshot(args.memory_snapshot)
        print(f"wrote {path} (open it at https://pytorch.org/memory_viz)")


def _measured_lines(model: Any, inputs: tuple, loss_fn: Callable | None, report: Any, budget: str | None,
                    opts: dict[str, Any]) -> list[str]:
    """Compile and run a real step with backend remat at ``budget`` (as the user gave it: a ratio
    is then of plain torch.compile's compiled code) and with plain torch.compile: per graph, the
    predicted, code and measured peaks side by side with their ratios to the measured one, the cap
    and what it was checked against, and both step times."""
    from .analyze import measure_peaks
    from .errors import fmt_bytes
    from .report import peak_figures

    plain_model = report.graph.reference_peak_bytes if "modelled" in report.graph.reference else None
    peaks = measure_peaks(model, inputs, loss_fn, memory_budget=budget, plain_predicted=plain_model, **opts)
    lines = [f"measured: one real step compiled with backend remat (memory_budget={budget}) and one with plain "
             "torch.compile; peaks above what was resident before the step:", ""]
    lines += _peak_table(peaks)
    if len(peaks.reports) == 1:
        lines += ["", peak_figures(peaks.reports[0])[-1]]
    elif peaks.cap_bytes is not None:
        lines += ["", f"cap {fmt_bytes(peaks.cap_bytes)} on the step; each graph planned under its share, less what is "
                      "held outside it while it runs"]
    elif peaks.reports:
        lines += ["", "'min' planned each graph at its own floor, counting nothing held outside it: no cap on the step"]
    if plain_model is not None and report.budget_bytes != peaks.cap_bytes:
        lines.append(f"(the offline plan above was capped at {fmt_bytes(report.budget_bytes)}: there the ratio is of "
                     "remat's model of plain torch.compile, here of its compiled code)")
    m, plain = peaks.remat.measured_bytes, peaks.plain.measured_bytes
    if peaks.cap_bytes is not None:
        ok = m <= peaks.cap_bytes
        lines.append(f"{'OK' if ok else 'OVER'}: the measured peak is {'within' if ok else 'over'} the cap "
                     f"({m / peaks.cap_bytes:.3f} of it)")
    lines.append(f"remat's measured peak is {m / plain:.3f} of plain torch.compile's ({fmt_bytes(m)} / {fmt_bytes(plain)}); "
                 f"step: plain torch.compile {_fmt_time(peaks.plain_step_s)}, remat {_fmt_time(peaks.remat_step_s)} "
                 "(medians of unprofiled steps)")
    return lines


def _peak_table(peaks: Any) -> list[str]:
    """Rows: each remat graph (with what the step holds outside it), remat's step when it has
    several graphs, plain torch.compile; columns: predicted, code, measured, ratios to measured."""
    from .errors import fmt_bytes

    rows = list(peaks.graphs) + ([peaks.remat] if len(peaks.graphs) != 1 else []) + [peaks.plain]
    if len(peaks.graphs) == 1:
        rows[0] = dataclasses.replace(rows[0], measured_bytes=peaks.remat.measured_bytes)

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else fmt_bytes(v)

    head = ["", "predicted", "Inductor's code", "measured", "predicted/measured", "code/measured"]
    body = [[r.label, cell(r.predicted_bytes), cell(r.code_bytes), cell(r.measured_bytes),
             cell(r.ratio(r.predicted_bytes)), cell(r.ratio(r.code_bytes))] for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in [head] + body]


def cmd_pareto(args) -> int:
    budgets = _check_budgets(args.budgets)
    opts = _options(args)
    fargs = parse_factory_args(args.factory_arg)
    from .pareto import pareto

    fake = not args.real
    model, inputs, loss_fn = build(args.target, fargs, fake=fake)
    print(f"model: {args.target} ({'fake' if fake else 'real'} tensors{_param_count(model)})")
    result = pareto(model, inputs, budgets=budgets, loss_fn=loss_fn, progress=not args.no_progress, **opts)
    print(result.table())
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {result.plot(args.plot)}")
    return 0


def cmd_show(args) -> int:
    """Print a report saved with ``remat analyze --json`` or a sweep saved with ``remat pareto --json``."""
    import json

    path = Path(args.report)
    if not path.is_file():
        raise CLIError(f"no such file: {args.report}")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise CLIError(f"{args.report} is not JSON: {_first_line(e)}") from None
    if isinstance(data, dict) and "points" in data:
        return _show_pareto(data, args)
    from .report import Report

    try:
        report = Report.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CLIError(f"{args.report} is neither a remat report nor a Pareto sweep ({_first_line(e)})") from None
    print(_fit(report.summary()))
    if not args.no_table:
        _print_table(report, args.rows)
    _write_outputs(report, args)
    return 0


def _show_pareto(data: dict, args) -> int:
    from .pareto import ParetoResult

    try:
        result = ParetoResult.from_dict(data)
    except (ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{args.report} is not a remat Pareto sweep: {_first_line(e)}") from None
    print(result.table())
    if args.plot:
        print(f"wrote {result.plot(args.plot)}")
    return 0


def _fmt_rate(rate: float, unit: str) -> str:
    """1.2e12 -> '1.20 T' + unit (decimal prefixes, as FLOP/s and GB/s are quoted)."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if rate >= scale:
            return f"{rate / scale:.2f} {prefix}{unit}"
    return f"{rate:.0f} {unit}"


def cmd_profile(args) -> int:
    """Measure this machine's rates (matmul FLOP/s per dtype, memory bandwidth, elementwise rate,
    Inductor's CPU random draw and bool load / store, on the CPU the times of small fp32 matmuls,
    host link on CUDA), print them and keep them in the profile cache that compiles read:
    measured costs use them, and so does the CPU's roofline (``remat.profile.profiled_spec``)."""
    import torch

    from .cost import DEVICES
    from .measure import matmul_flops
    from .profile import (BANDWIDTH_KEY, BOOL_LOAD_KEY, BOOL_STORE_KEY, ELEMENTWISE_KEY, RANDOM_KEY, ProfileCache,
                          measure_bandwidth, measure_cpu_rate, measure_elementwise_rate, measure_link, profiled_spec)

    device = args.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"bad --threads {args.threads}: give a number of threads >= 1")
        torch.set_num_threads(args.threads)  # a CPU profile holds for one thread count
    try:
        sizes = tuple(int(n) for n in args.sizes.split(","))
    except ValueError:
        raise CLIError(f"bad --sizes {args.sizes!r}: give comma-separated integers such as 512,1024") from None
    cache = ProfileCache.for_device(device, enabled=not args.no_cache)
    print(f"device: {cache.device} (torch {torch.__version__})")
    on_cuda = device.startswith("cuda")
    # a CPU without bf16 units emulates it (this AMD EPYC at 1 thread: 0.3-0.5 GFLOP/s, 7 s a call at
    # n=1024, about a minute at 2048); no CPU roofline reads it (``profiled_spec``: float32's), so
    # a CPU times it at the smallest size only
    low = ((torch.bfloat16, torch.float16), sizes) if on_cuda else ((torch.bfloat16,), (min(sizes),))
    rates = {**matmul_flops(device, (torch.float32,), sizes, cache, min_run_time=args.min_time),
             **matmul_flops(device, *low, cache, min_run_time=args.min_time)}
    for name, rate in rates.items():
        n = ",".join(map(str, sizes if name == "float32" else low[1]))
        print(f"  matmul {name:<9}  {_fmt_rate(rate, 'FLOP/s')}  (torch.mm, best of n = {n})")
    if not on_cuda:
        print(f"  (on a CPU bfloat16 is timed at n = {low[1][0]} only: slow where emulated, and no CPU roofline reads it)")
    cached = " (from the cache)" if cache.get(BANDWIDTH_KEY) is not None else ""
    bandwidth = measure_bandwidth(device, cache, nbytes=args.copy_bytes)
    print(f"  memory bandwidth  {_fmt_rate(bandwidth, 'B/s')}  (copy, read + write){cached}")
    cached = " (from the cache)" if cache.get(ELEMENTWISE_KEY) is not None else ""
    elementwise = measure_elementwise_rate(device, cache)
    print(f"  elementwise       {_fmt_rate(elementwise, 'op/s')}  (transcendental: sigmoid, exp, tanh in cache){cached}")
    for key, label, what in ((RANDOM_KEY, "random draws", "Inductor's seeded CPU draw, a dropout mask's"),
                             (BOOL_STORE_KEY, "bool store", "a bool written through VecMask"),
                             (BOOL_LOAD_KEY, "bool load", "a bool read through VecMask")):
        cached = " (from the cache)" if cache.get(key) is not None else ""
        rate = measure_cpu_rate(key, device, cache)
        if rate is not None:
            print(f"  {label:17s} {_fmt_rate(rate, 'el/s')}  ({what}){cached}")
    if not on_cuda:
        _profile_matmul_table(cache, rates["float32"])
    link = measure_link(device, cache, nbytes=args.copy_bytes or 1 << 28)
    if link is not None:
        print(f"  host link         {_fmt_rate(link.to_host, 'B/s')} to host, {_fmt_rate(link.to_device, 'B/s')} to device (pinned)")
    print(f"cache: {cache.path}" if cache.path is not None else "cache: off (memory only)")
    if cache.path is not None and not device.startswith("cuda"):
        print(f"roofline of device='auto' at {torch.get_num_threads()} threads: {profiled_spec(DEVICES['cpu'], device).rates_note()}")
    return 0


def _profile_matmul_table(cache, flops: float) -> None:
    """Measure (or read) the CPU's table of small fp32 matmuls and print what it holds, with one
    narrow matmul's time beside its time at the fp32 matmul rate ``flops``."""
    from .profile import MATMUL_TABLE_KEY, measure_matmul_table

    cached = " (from the cache)" if cache.get(MATMUL_TABLE_KEY) is not None else ""
    table = measure_matmul_table(cache)
    example = table.seconds("mm", "NT", 1024, 16, 8)
    roofline = 2 * 1024 * 16 * 8 / flops
    print(f"  small matmuls     {len(table.points)} fp32 shapes (mm, bmm){cached}: e.g. (1024, 16) @ (16, 8) "
          f"{_fmt_time(example)}, {_fmt_time(roofline)} at the matmul rate")


def _fmt_time(s: float) -> str:
    from .report import fmt_time

    return fmt_time(s)


# ---- argument parsing ----------------------------------------------------------------------------


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of every command that builds a model: target, factory arguments, cost model, solver."""
    p.add_argument("target", metavar="FILE_OR_MODULE:FACTORY",
                   help="factory returning (model, example_inputs[, loss_fn]), e.g. examples/gpt.py:factory")
    p.add_argument("-a", "--factory-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the factory (repeatable), e.g. -a batch=16")
    p.add_argument("--device", default="auto", help="cost-model device: auto, cpu, a100, h100, h200 (default auto)")
    p.add_argument("--solver", default="ilp", help="ilp (default), greedy, store_all, recompute_all")
    p.add_argument("--time-limit", type=float, default=None, help="solver time limit in seconds")
    p.add_argument("--offload", choices=("auto", "on", "off"), default="auto",
                   help="allow OFFLOAD decisions (auto: on for CUDA graphs, off on the CPU)")
    p.add_argument("--host-bandwidth", type=float, default=None, metavar="BYTES_PER_S",
                   help="device<->host link for the cost model (default: the device's, e.g. 25e9 for h100: half the PCIe rate, as slack)")
    p.add_argument("--real", action="store_true", help="build real tensors instead of fake ones")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="plan one cap: summary, decision table, JSON, timeline plot")
    _model_arguments(p)
    p.add_argument("--budget", default=None, help="cap on the step's peak: '300MiB', '6GB', bytes, or '60%%' of the no-remat peak")
    p.add_argument("--json", metavar="PATH", help="write problem + plan + config as JSON")
    p.add_argument("--plot", metavar="PATH", help="write the memory timeline (PNG)")
    p.add_argument("--range", action="append", metavar="X.DIM=LO:HI",
                   help="plan over sizes LO..HI of an input dimension (x.0: dimension 0 of the model's argument x; "
                        "0.1: dimension 1 of the first input); repeatable. Prints the peak as a formula and at the ends")
    p.add_argument("--plot-sizes", metavar="PATH", help="with --range: write the predicted peak vs the size (PNG)")
    p.add_argument("--measure", action="store_true",
                   help="also run one real step compiled with backend remat at the budget and one with plain "
                        "torch.compile: per graph, the predicted, Inductor's code and measured peaks side by side")
    _table_arguments(p)
    p.add_argument("--memory-snapshot", metavar="PATH",
                   help="write the predicted memory timeline as a torch.cuda.memory snapshot (pickle) for pytorch.org/memory_viz")
    p.set_defaults(func=cmd_analyze)


def _add_pareto(sub) -> None:
    p = sub.add_parser("pareto", help="sweep caps: predicted peak vs predicted step-time overhead")
    _model_arguments(p)
    p.add_argument("--budgets", default="90%,80%,70%,60%,50%,40%,30%",
                   help="comma-separated caps (as --budget, or 'min' for the smallest reachable peak)")
    p.add_argument("--plot", metavar="PATH", help="write predicted peak vs overhead (PNG)")
    p.add_argument("--json", metavar="PATH", help="write the points as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pareto)


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="print (and plot) a report or a Pareto sweep saved with --json")
    p.add_argument("report", metavar="PLAN.json")
    p.add_argument("--plot", metavar="PATH", help="write the memory timeline (PNG)")
    _table_arguments(p)
    p.add_argument("--memory-snapshot", metavar="PATH", help="write the predicted memory timeline for pytorch.org/memory_viz")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=cmd_show)


def _table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", default=str(DEFAULT_ROWS), metavar="N|all",
                   help=f"rows of the decision table: the N that matter most (largest peak savings, costliest "
                        f"recomputations), or all (default {DEFAULT_ROWS})")
    p.add_argument("--no-table", action="store_true", help="do not print the decision table")


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="measure this machine's matmul FLOP/s, memory bandwidth, elementwise rate and host "
                                       "link; cache them (measured costs and the CPU's roofline use them)")
    p.add_argument("--device", dest="device_name", default=None, help="cpu or cuda[:N] (default: cuda when present)")
    p.add_argument("--sizes", default="512,1024,2048", help="square matmul sizes to time (default 512,1024,2048)")
    p.add_argument("--copy-bytes", type=int, default=None, help="bytes copied to time bandwidth and link (default: the device's)")
    p.add_argument("--min-time", type=float, default=0.1, help="seconds of timing per matmul size (default 0.1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads to measure at (default: torch's); a CPU profile serves processes with as many")
    p.add_argument("--no-cache", action="store_true", help="measure without reading or writing the profile cache")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="remat", description="Plan store / recompute / offload of a model's activations under a peak-memory cap.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_analyze, _add_pareto, _add_show, _add_profile):
        add(sub)
    return ap


def _quiet() -> None:
    """Keep stderr for our own messages: torch's one-off notices are not errors of the user's."""
    warnings.filterwarnings("ignore", message=".*dynamo_pgo force disabled.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``remat`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        if args.traceback:
            raise
        print(f"remat: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("remat: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback (--traceback shows it)
        if args.traceback:
            raise
        from .errors import ConfigError, RematError

        if isinstance(e, ConfigError):
            print(f"remat: error: {_first_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        root = _root_cause(e)
        if isinstance(root, ConfigError):
            print(f"remat: error: {_first_line(root)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(root, RematError):
            print(f"remat: error: {_first_line(root)}", file=sys.stderr)
        else:
            where = f" (in {type(e).__name__})" if root is not e else ""
            print(f"remat: error: {type(root).__name__}: {_first_line(root)}{where}; run with --traceback for details",
                  file=sys.stderr)
        return EXIT_FAILED


def _root_cause(e: BaseException) -> BaseException:
    """The remat error inside Dynamo's wrapping if there is one, else the innermost cause."""
    from .errors import RematError

    seen, cur, last = set(), e, e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, RematError):
            return cur
        last = cur
        cur = getattr(cur, "inner_exception", None) or cur.__cause__
    return last


if __name__ == "__main__":
    sys.exit(main())
