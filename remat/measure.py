"""Measure the real peak memory of a training step.

CPU: torch.profiler's allocation events, summed in order; the peak of the running sum is the
step's peak of tensor memory above what was allocated before it (frees of older tensors count
as negative). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the step.
``measure_compiled_step`` compiles model+loss with ``torch.compile`` and measures one of its
steps (``measure_plain_compile``: plain Inductor; ``remat.analyze.measure_peaks``: backend "remat");
``matmul_flops`` times ``torch.mm`` per dtype (this machine's matmul rate, for ``remat profile``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch


@dataclass(frozen=True)
class StepMeasurement:
    peak_bytes: int  # peak above the memory allocated before the step
    seconds: float  # wall time of the step (profiled on CPU: slower than unprofiled)
    step_s: float | None = None  # median wall time of unprofiled steps, when timed
    # CPU: the outermost aten op running when the peak was reached ("" outside any op), and its
    # scratch there: what it had allocated at the peak beyond what it still holds when it ends
    # (an extern kernel's workspace, which Inductor's code does not show)
    peak_op: str = ""
    peak_op_scratch_bytes: int = 0


@dataclass(frozen=True)
class _Allocation:
    time_ns: int
    nbytes: int  # negative for a free
    op: object  # the outermost aten op event it happened in, or None


def _outermost_op(event):
    op, e = None, event.parent
    while e is not None:
        if e.name.startswith("aten::"):
            op = e
        e = e.parent
    return op


def _allocation_events(prof) -> list[_Allocation]:
    from torch._C._profiler import _EventType

    out = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            f = e.extra_fields
            if f.device.type == "cpu":
                out.append(_Allocation(e.start_time_ns, f.alloc_size, _outermost_op(e)))
        stack.extend(e.children)
    out.sort(key=lambda a: a.time_ns)
    return out


def _peak_of(events: list[_Allocation]) -> tuple[int, str, int]:
    """(peak of the running sum, the op it was reached in, that op's scratch at the peak)."""
    running = peak = 0
    at = -1
    for i, a in enumerate(events):
        running += a.nbytes
        if running > peak:
            peak, at = running, i
    op = events[at].op if at >= 0 else None
    if op is None:
        return peak, "", 0
    mine = [(i, a.nbytes) for i, a in enumerate(events) if a.op is op]
    held_at_peak = sum(n for i, n in mine if i <= at)
    return peak, op.name, max(0, held_at_peak - sum(n for _, n in mine))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points to /dev/null inside (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def default_loss(outputs: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the model's outputs."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError("the model returned no floating-point tensor; pass loss_fn=")
    return sum(t.sum() for t in leaves)


def measure_step(step: Callable[[], object], device: str = "cpu") -> StepMeasurement:
    """Run ``step()`` once and return its peak memory above what was allocated before it (on the
    CPU also the op that reached it and that op's scratch memory there)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return StepMeasurement(torch.cuda.max_memory_allocated() - base, time.perf_counter() - t0)
    from torch.profiler import ProfilerActivity, profile

    # kineto logs "USDT ... profiler_start/stop" and the CPU allocator warns about blocks older than
    # the profile on fd 2, at every step; torch has no setting for either. Python errors of the
    # step still propagate as exceptions; only what it writes to stderr meanwhile is dropped.
    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
    peak, op, scratch = _peak_of(_allocation_events(prof))
    return StepMeasurement(peak, seconds, peak_op=op, peak_op_scratch_bytes=scratch)


def median_seconds(step: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``repeats`` unprofiled calls of ``step``."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class _CompiledStep:
    """``model`` + loss compiled as one function (``compile_kw``: torch.compile's backend and
    options); calling it runs one training step (forward and backward), gradients cleared first."""

    def __init__(self, model, example_inputs, loss_fn, **compile_kw) -> None:
        self.inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        loss_of = loss_fn or default_loss
        self.compiled = torch.compile(lambda *xs: loss_of(model(*xs)), **compile_kw)
        self.params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []

    def clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def __call__(self) -> None:
        self.clear_grads()
        self.compiled(*self.inputs).backward()


WARM_UP_STEPS = 3  # steps after a compile run before the timed ones (the first few run slower)


def _measured(step: _CompiledStep, repeats: int) -> StepMeasurement:
    """One profiled step (its peak) and the median of ``repeats`` unprofiled ones (its time),
    after ``WARM_UP_STEPS`` untimed ones. The gradients of the step before are freed before the
    profiled one: freed inside it, the profiler can count their frees (when it tracked their
    addresses before) and the peak reads low by up to the gradients' bytes."""
    step.clear_grads()
    m = measure_step(step)
    seconds = None
    if repeats > 0:
        for _ in range(WARM_UP_STEPS):
            step()
        seconds = median_seconds(step, repeats)
    step.clear_grads()
    return replace(m, step_s=seconds)


def measure_plain_compile(model, example_inputs, loss_fn=None, repeats: int = 3) -> StepMeasurement:
    """Plain ``torch.compile`` (Inductor's own partition, no remat) of model+loss: one warm-up
    step, one measured step (its peak) and the median time of ``repeats`` unprofiled steps."""
    return measure_compiled_step(model, example_inputs, loss_fn, repeats)[0]


def measure_compiled_step(model, example_inputs, loss_fn=None, repeats: int = 3, **compile_kw):
    """``torch.compile(**compile_kw)`` of model+loss: the step that compiles, then one measured step
    and ``repeats`` timed ones (``_measured``). Returns (StepMeasurement, what torch.compile returned)."""
    torch._dynamo.reset()
    step = _CompiledStep(model, example_inputs, loss_fn, **compile_kw)
    step()  # compiles
    m = _measured(step, repeats)
    torch._dynamo.reset()
    return m, step.compiled


def matmul_flops(
    device: str = "cpu", dtypes: tuple = (torch.float32, torch.bfloat16), sizes: tuple[int, ...] = (512, 1024, 2048),
    cache=None, min_run_time: float = 0.1,
) -> dict[str, float]:
    """FLOP/s of ``torch.mm`` per dtype on ``device``: the best over square sizes of the fastest
    block of short timings (``fastest_seconds``: contention only lowers a rate). Kept in ``cache`` (a ``remat.profile.ProfileCache``) under
    'matmul_flops DTYPE n=SIZES', so a run with other sizes measures again."""
    out = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        key = f"matmul_flops {name} n={','.join(map(str, sizes))}"
        known = cache.get(key) if cache is not None else None
        if known is None:
            rates = []
            for n in sizes:
                a = torch.randn(n, n, device=device).to(dtype)
                torch.mm(a, a)  # warm-up: thread pool, library caches
                rates.append(2 * n**3 / fastest_seconds("torch.mm(a, a)", {"torch": torch, "a": a}, min_run_time))
            known = max(rates)
            if cache is not None:
                cache.put(key, known)
        out[name] = float(known)
    return out


def median_statement_seconds(stmt: str, env: dict, min_run_time: float) -> float:
    """Seconds of one run of ``stmt``: the median of blocks of timings (``block_seconds``) that
    take ``min_run_time`` together, each about a tenth of it."""
    return statistics.median(block_seconds(stmt, env, min_run_time, min_run_time / 10))


def fastest_seconds(stmt: str, env: dict, min_run_time: float, blocks: int = 50) -> float:
    """Seconds of one run of ``stmt``: the fastest of about ``blocks`` short blocks of timings that
    take ``min_run_time`` together, and of at least 10 (``block_seconds``). A machine's rate, which
    contention on shared cores only lowers and does so for longer than one short timing: on 2
    cores at load 16, one-thread element ops ran at 0.5 to 0.9 G op/s in most 20 ms windows and at
    3.5 to 4.0 in one or two of ten. Short blocks also read the rate of a burst: sigmoid, exp and
    tanh on 64 K floats ran at 0.58 G op/s in blocks of 1 to 10 runs (2 ms), at 0.39 in blocks of
    100 or more."""
    return min(block_seconds(stmt, env, min_run_time, min_run_time / blocks, min_blocks=10))


def block_seconds(stmt: str, env: dict, min_run_time: float, block_s: float, min_blocks: int = 1) -> list[float]:
    """Seconds per run of ``stmt`` in consecutive blocks of timings until ``min_run_time`` has
    passed and ``min_blocks`` are timed: a block is as many runs as take about ``block_s`` by one
    timed run before them (a run longer than that: one run a block). Timed by ``timeit`` with
    ``torch.utils.benchmark``'s clock (which synchronises the accelerator), as
    ``torch.utils.benchmark.Timer`` times, without its block sizing: ``blocked_autorange`` makes
    blocks of at least 10 ms (its overhead under 1e-4 of a block) found by a geometric series of
    calls, and ``Timer.timeit`` warms up before each block; on a 0.1 s budget of a 0.3 ms
    statement they took 0.5-0.7 s of CPU, this 0.05-0.1 s."""
    import timeit

    from torch.utils.benchmark.utils.timer import timer as clock

    timer = timeit.Timer(stmt, globals=env, timer=clock)
    one = timer.timeit(1)
    number = max(1, int(block_s / one)) if one > 0 else 1
    times, spent = [], one
    while spent < min_run_time or len(times) < min_blocks:
        times.append(timer.timeit(number) / number)
        spent += times[-1] * number
    return times
