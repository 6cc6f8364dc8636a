"""End to end: a dropout mask that the plan recomputes in the backward is the forward's, bit for bit.

Both ways random numbers reach the graph: Inductor's seeded random prims (``fallback_random``
off, the default) and eager's ``native_dropout`` (``fallback_random`` on, as the test suite runs).
"""

import copy

import pytest
import torch

import remat

P = 0.4


class Dropped(torch.nn.Module):
    """``y = dropout(x * w)`` with ``x * w`` never zero: ``y != 0`` is the forward's mask, and the
    input's gradient is nonzero exactly where the backward's mask keeps an element."""

    def __init__(self, d: int = 256) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.rand(d) + 0.5)
        self.drop = torch.nn.Dropout(P)

    def forward(self, x):
        y = self.drop(x * self.w)
        return y, (y * y).sum()


@pytest.mark.parametrize("fallback_random", [False, True])
def test_the_recomputed_mask_is_the_forward_mask(fallback_random):
    model, x = Dropped(), (torch.rand(64, 256) + 0.5).requires_grad_()
    options = {"memory_budget": "1GiB", "solver": "recompute_all"}  # recompute whatever can be
    with torch._inductor.config.patch(fallback_random=fallback_random):
        step = torch.compile(model, backend="remat", options=options)
        y, loss = step(x)
        loss.backward()
    (report,) = remat.reports(step)
    assert ("dropout_mask" if fallback_random else "inductor_random") in report.backward_code
    kept = y.detach() != 0
    assert 0.4 < kept.float().mean() < 0.8  # a real draw
    assert torch.equal(x.grad != 0, kept)
    # the gradient with the forward's own mask: d(y*y)/dx = 2 y * mask / (1 - p) * w
    torch.testing.assert_close(x.grad, 2 * y.detach() * kept / (1 - P) * model.w.detach(), rtol=1e-6, atol=0)


class TwoDropouts(torch.nn.Module):
    def __init__(self, d: int = 32, h: int = 128) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(d, h), torch.nn.Linear(h, h), torch.nn.Linear(h, d)
        self.drop = torch.nn.Dropout(0.25)

    def forward(self, x):
        return self.l3(self.drop(torch.relu(self.l2(self.drop(torch.relu(self.l1(x)))))))


def test_replayed_dropout_matches_eager_and_leaves_the_stream_as_eager_does():
    """Under fallback_random (eager's streams): loss, gradients and the generator after the step."""
    torch.manual_seed(0)
    model, x = TwoDropouts(), torch.randn(512, 32)
    ref = copy.deepcopy(model)
    torch.manual_seed(11)
    ref(x).pow(2).mean().backward()
    ref_after = torch.get_rng_state()

    step = torch.compile(lambda v: model(v).pow(2).mean(), backend="remat", options={"memory_budget": "min"})
    torch.manual_seed(11)
    step(x).backward()
    (report,) = remat.reports(step)
    assert "dropout_mask" in report.backward_code  # the floor recomputes a mask
    assert torch.equal(torch.get_rng_state(), ref_after)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda s: f"{name}: {s}")
