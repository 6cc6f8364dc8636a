"""The examples' shared main loop: a few training steps with the remat backend, then a report.

The last step runs under the memory measurement (profiler allocation events on CPU); then plain
``torch.compile`` (Inductor's own partition) of the same step is measured the same way. The report
prints, per planned graph, the baseline peak, the cap, each figure of the peak named once (the
model's prediction, Inductor's estimate, the measured peak) with the one the cap was checked
against, the decisions and the solver's account in words, and the measured peak and step time of
remat beside plain torch.compile's. Exits 1 when the measured peak is over the cap.
"""

from __future__ import annotations

import time

import torch


def train_and_report(model, inputs, loss_fn, opt, options: dict, steps: int) -> None:
    from remat import reports as reports_of
    from remat.measure import measure_plain_compile, measure_step, median_seconds

    step_fn = torch.compile(lambda *xs: loss_fn(model(*xs)), backend="remat", options=options)

    def one_step():
        opt.zero_grad(set_to_none=True)
        step_fn(*inputs).backward()

    measured = None
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if step == steps - 1 and step > 0:
            measured = measure_step(lambda: step_fn(*inputs).backward()).peak_bytes
            loss = None
        else:
            loss = step_fn(*inputs)
            loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if loss is not None:
            print(f"step {step}: loss {loss.item():.4f} ({dt:.2f} s{', includes compilation' if step == 0 else ''})")
        else:
            print(f"step {step}: measured step ({dt:.2f} s, profiled)")
    reports = reports_of(step_fn)
    remat_s = median_seconds(one_step, 3)
    opt.zero_grad(set_to_none=True)
    print()
    from remat.config import RematConfig

    gap = RematConfig.from_options(options).gap
    for r in reports:
        _print_graph(r, measured, gap)
    if measured is not None:
        plain = measure_plain_compile(model, inputs, loss_fn)
        print(f"\nplain torch.compile: measured peak {_fmt_bytes(plain.peak_bytes)}, step {plain.step_s * 1e3:.1f} ms")
        print(f"remat              : measured peak {_fmt_bytes(measured)}, step {remat_s * 1e3:.1f} ms"
              "  (step times: medians of 3 unprofiled steps)")
    if measured is not None and reports:
        ok = all(measured <= r.budget_bytes for r in reports)
        print(f"\nmeasured peak {'<=' if ok else '>'} cap: {'OK' if ok else 'OVER'}")
        if not ok:
            raise SystemExit(1)


def _fmt_bytes(n: int) -> str:
    from remat.errors import fmt_bytes

    return fmt_bytes(n)


def _print_graph(r, measured: int | None, gap: float) -> None:
    """One planned graph: its size, the peak figures (each named once), decisions and solver."""
    from remat import Decision
    from remat.report import peak_figures, source_of, status_words

    counts = {d.value: len(r.plan.names(d)) for d in Decision}
    print(f"graph {r.problem.name}: {len(r.problem.slots)} slots, {len(r.problem.activations)} activations")
    print(f"  baseline peak (no remat, model) : {_fmt_bytes(r.baseline_peak_bytes)}")
    for line in peak_figures(r, measured):
        print(f"  {line}")
    print(f"  decisions                       : {counts}")
    print(f"  added time (model)              : {r.plan.objective * 1e3:.2f} ms")
    print(f"  solver                          : {r.plan.solver}, {status_words(r.plan, gap)}, {r.plan.solve_time_s:.2f} s")
    recomputed = [source_of(r.problem.activation(n)) for n in r.plan.names(Decision.RECOMPUTE)]
    if recomputed:
        print(f"  recomputed                      : {', '.join(recomputed[:6])}{' ...' if len(recomputed) > 6 else ''}")
