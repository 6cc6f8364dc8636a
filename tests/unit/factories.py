"""Tiny factories for the ``remat`` command's tests (``tests/unit/factories.py:NAME``)."""

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, d=64, hidden=256, blocks=2):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) for _ in range(blocks)
        )

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def mlp(batch: int = 128, blocks: int = 2):
    """(model, example_inputs, loss_fn)."""
    torch.manual_seed(0)
    return MLP(blocks=blocks), (torch.randn(batch, 64),), lambda out: out.pow(2).mean()


def mlp_pair(batch: int = 128):
    """(model, example_inputs): the default loss (sum of the outputs) applies."""
    torch.manual_seed(0)
    return MLP(), torch.randn(batch, 64)


def wrong_type():
    return 42


def wrong_length():
    model, inputs, loss = mlp()
    return model, inputs, loss, "extra"


def raises():
    raise RuntimeError("this factory is broken")


not_callable = 3
