"""A model compiled alone (loss outside the compiled call) whose outputs its own backward reads:
heads ending in ReLU, Tanh, Sigmoid, Softmax or exp, a layer-norm output returned next to the
projection that reads it, an extra ``tanh`` output. Gradients equal eager at every budget."""

import copy

import pytest
import torch
import torch.nn as nn

import remat
from remat import Decision

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _reuse_compiled_kernels():
    """Keep the graph caches off (the remat partitioner must run in every test) but let Inductor
    reuse the C++ kernels it built for an identical source: the tests share most kernels."""
    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield

HEADS = {
    "relu": lambda y: (torch.relu(y),),
    "tanh": lambda y: (torch.tanh(y),),
    "sigmoid": lambda y: (torch.sigmoid(y),),
    "softmax": lambda y: (torch.softmax(y, dim=-1),),
    "exp": lambda y: (torch.exp(y),),
    "extra_tanh": lambda y: (y, y.tanh()),
}


class Model(nn.Module):
    """Linear -> GELU -> Linear, then a head whose backward reads what it returns; the "ln_lin"
    head is the smallest repro, ``h = ln(y); return lin(h), h`` (lin's weight gradient reads h)."""

    def __init__(self, head: str, d: int = 16):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), head
        if head == "ln_lin":
            self.ln, self.lin = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        y = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        if self.head == "ln_lin":
            h = self.ln(y)
            return self.lin(h), h
        return HEADS[self.head](y)


def make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return Model(kind)


def loss_outside(outputs) -> torch.Tensor:
    """A weighted sum of every output (fixed weights, so that softmax's gradient is not zero)."""
    g = torch.Generator().manual_seed(1)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)


def grads(model: nn.Module, run, x: torch.Tensor) -> dict:
    x = x.detach().clone().requires_grad_()
    loss_outside(run(x)).backward()
    return {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("budget", ["min", 1.0])
@pytest.mark.parametrize("kind", [*HEADS, "ln_lin"])
def test_outputs_read_by_backward_match_eager(kind, budget):
    model = make(kind)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    ref = grads(model, model, x)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="remat", options={"memory_budget": budget})
    got = grads(compiled_model, compiled, x)
    (report,) = remat.reports(compiled)
    if budget == "min":  # as low as it goes: under the no-remat peak, the plan recomputes
        assert report.plan.names(Decision.RECOMPUTE), (kind, report.baseline_peak_bytes, report.budget_bytes)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5, msg=lambda s: f"{kind} {budget} {name}: {s}")


class NormThenLinear(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.ln, self.lin = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        h = self.ln(x)
        return self.lin(h), h


def test_ten_line_repro():
    """The issue's repro as filed: nothing but the two outputs, at the no-remat peak."""
    torch.manual_seed(0)
    model, x = NormThenLinear(), torch.randn(8, 16)
    ref = grads(model, model, x)
    compiled_model = copy.deepcopy(model)
    got = grads(compiled_model, torch.compile(compiled_model, backend="remat", options={"memory_budget": 1.0}), x)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5)


class TinyLM(nn.Module):
    """Embedding -> two GELU MLP blocks -> logits over a vocabulary 16x the width: the logits
    (4 x 64 x 512 fp32, 512 KiB) outweigh every activation, as in a language model."""

    def __init__(self, vocab: int = 512, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(2))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


@pytest.mark.parametrize("budget", ["min", "90%"])
def test_a_cross_entropy_computed_outside_the_compiled_model_stays_under_the_cap(budget):
    """The model compiled alone, the cross-entropy after it: the loss's log-softmax and its gradient
    (two logits-sized buffers) are allocated while the graph keeps everything for its backward;
    remat plans for them ("auto") and for the logits the caller holds through the backward, and
    the measured step stays under the cap it reports."""
    from remat.measure import measure_step

    torch.manual_seed(0)
    model = TinyLM()
    tokens = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="remat", options={"memory_budget": budget})

    def step():  # the logits held until the backward ends, as a training loop's variable holds them
        model.zero_grad(set_to_none=True)
        logits = compiled(tokens)
        nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    step()  # compiles
    model.zero_grad(set_to_none=True)
    peak = measure_step(step).peak_bytes
    (report,) = remat.reports(compiled)
    assert report.loss_room_bytes == 2 * 4 * 64 * 512 * 4
    assert peak <= report.step_cap_bytes, (budget, peak, report.step_cap_bytes, report.inductor_peak_bytes)
    torch._dynamo.reset()
