"""Regional compilation: blocks marked with torch.compiler.nested_compile_region under backend remat.

Torch partitions a region's joint graph once (through remat's partitioner, as a graph of its
own), and the step's joint graph calls the region through ``invoke_subgraph`` ops whose outputs
are the region's results and what it saves for its backward. remat plans those outputs like any
activation: storing one keeps it, recomputing one runs the region's forward again in the
backward. The memory that a region's call uses inside it is not in the step's model; the check of
Inductor's code (``inductor_check``, on by default) is what keeps the measured peak under the cap.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import remat
from remat.measure import measure_step

torch.set_num_threads(2)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    @torch.compiler.nested_compile_region
    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.ln(x))))


class Stack(nn.Module):
    def __init__(self, d: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(blocks))
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x).square().mean()


def _compiled_step_matches_eager(model: Stack, x: torch.Tensor, options: dict):
    """The compiled step (its loss and every gradient equal eager's) and its graph's report, whose
    plan recomputes something and whose Problem holds the region calls as ops."""
    ref = copy.deepcopy(model)
    ref_loss = ref(x)
    ref_loss.backward()
    step = torch.compile(model, backend="remat", options=options)
    loss = step(x)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda s: f"{name}: {s}")
    report = remat.reports(step)[-1]  # the step's graph (the region's own may come first)
    assert "invoke_subgraph" in {a.op for a in report.problem.activations}  # the calls are ops here
    assert report.plan.names(remat.Decision.RECOMPUTE)  # the cap is below store-all
    return step, report


def test_nested_compile_region_plans_its_calls_and_matches_eager():
    """One compile (no plain-compile reference, no check of Inductor's code): the cheap CI check."""
    torch.manual_seed(0)
    _compiled_step_matches_eager(Stack(d=16, blocks=3), torch.randn(64, 16),
                                 {"memory_budget": "75%", "inductor_check": False})


@pytest.mark.slow
def test_nested_compile_region_matches_eager_under_the_cap():
    """Default options (three compiles: plain compile's peak, the plan, Inductor's check): the
    measured peak stays under the cap."""
    torch.manual_seed(0)
    model, x = Stack(), torch.randn(256, 32)
    step, report = _compiled_step_matches_eager(model, x, {"memory_budget": "75%"})
    for p in model.parameters():
        p.grad = None
    measured = measure_step(lambda: step(x).backward())
    assert measured.peak_bytes <= report.budget_bytes
    assert measured.peak_bytes < report.baseline_peak_bytes
