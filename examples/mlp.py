"""The core issue's MLP: 3 blocks of Linear(1024, 4096) - GELU - Linear(4096, 1024), batch 4096.

    python examples/mlp.py --budget 300MiB
    python examples/mlp.py --budget 40MiB --d 256 --hidden 1024 --batches 1024,4096,2560 --range 1024:4096

``factory()`` is also a factory for the ``remat`` command and the benchmarks.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, d: int = 1024, hidden: int = 4096, blocks: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) for _ in range(blocks)
        )

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def factory(batch: int = 4096, d: int = 1024, hidden: int = 4096, blocks: int = 3):
    """(model, example_inputs, loss_fn): the loss is the sum of the outputs."""
    torch.manual_seed(0)
    return MLP(d, hidden, blocks), (torch.randn(batch, d),), lambda out: out.sum()


def main(argv=None) -> None:
    from remat import reports
    from remat.planning import summary_line
    from remat.errors import fmt_bytes
    from remat.measure import measure_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="300MiB")
    ap.add_argument("--batches", default="4096", help="batch sizes to train with, in order (e.g. 1024,2048,4096)")
    ap.add_argument("--range", default=None, metavar="LO:HI",
                    help="mark the batch dimension dynamic over LO..HI (mark_dynamic): one plan for every size")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, _, loss_fn = factory(1, args.d, args.hidden, args.blocks)
    step = torch.compile(lambda x: loss_fn(model(x)), backend="remat", options={"memory_budget": args.budget})
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, args.d)
        if args.range:
            lo, hi = (int(v) for v in args.range.split(":"))
            torch._dynamo.mark_dynamic(x, 0, min=lo, max=hi)
        step(x).backward()
        for p in model.parameters():
            p.grad = None
        measured = measure_step(lambda: step(x).backward())
        print(f"batch {batch}: measured peak {fmt_bytes(measured.peak_bytes)} ({measured.seconds:.2f} s, profiled); "
              f"plans so far {len(reports(step))}")
    for r in reports(step):
        print(summary_line(r))


if __name__ == "__main__":
    main()
