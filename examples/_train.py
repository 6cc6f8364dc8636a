"""The examples' shared main loop: a few training steps with the remat backend, then a report.

The last step runs under the memory measurement (profiler allocation events on CPU); the report
prints, per planned graph, the baseline peak, the cap, the predicted and measured peaks, the
decisions and the solver's account. Exits 1 when the measured peak is over the cap.
"""

from __future__ import annotations

import time

import torch


def train_and_report(model, inputs, loss_fn, opt, options: dict, steps: int) -> None:
    from remat import Decision
    from remat import reports as reports_of
    from remat.errors import fmt_bytes
    from remat.measure import measure_step

    step_fn = torch.compile(lambda *xs: loss_fn(model(*xs)), backend="remat", options=options)
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
    print()
    reports = reports_of(step_fn)
    for r in reports:
        counts = {d.value: len(r.plan.names(d)) for d in Decision}
        print(f"graph {r.problem.name}: {len(r.problem.slots)} slots, {len(r.problem.activations)} activations")
        print(f"  baseline peak (no remat) : {fmt_bytes(r.baseline_peak_bytes)}")
        print(f"  cap                      : {fmt_bytes(r.budget_bytes)}")
        print(f"  predicted peak           : {fmt_bytes(r.timeline.peak_bytes)}")
        if r.inductor_peak_bytes is not None:
            again = ""
            if r.plans_made > 1:
                again = f"  (graph planned {r.plans_made} times: the first estimate was over the cap)"
            print(f"  Inductor's estimate      : {fmt_bytes(r.inductor_peak_bytes)}{again}")
        if measured is not None:
            print(f"  measured peak            : {fmt_bytes(measured)}  (one real step, above resident memory)")
        print(f"  decisions                : {counts}")
        print(f"  added time (predicted)   : {r.plan.objective * 1e3:.2f} ms")
        print(f"  solver                   : {r.plan.solver}, {r.plan.status}, {r.plan.solve_time_s:.2f} s")
        recomputed = r.plan.names(Decision.RECOMPUTE)
        if recomputed:
            print(f"  recomputed               : {', '.join(recomputed[:8])}{' ...' if len(recomputed) > 8 else ''}")
    if measured is not None and reports:
        ok = all(measured <= r.budget_bytes for r in reports)
        print(f"\nmeasured peak {'<=' if ok else '>'} cap: {'OK' if ok else 'OVER'}")
        if not ok:
            raise SystemExit(1)
