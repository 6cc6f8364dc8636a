"""Tiny factories for the ``remat`` command's tests (``tests/unit/factories.py:NAME``)."""

import torch

from examples.mlp import MLP


def mlp(batch: int = 128, blocks: int = 2):
    """(model, example_inputs, loss_fn)."""
    torch.manual_seed(0)
    return MLP(d=64, hidden=256, blocks=blocks), (torch.randn(batch, 64),), lambda out: out.pow(2).mean()


def mlp_pair(batch: int = 128):
    """(model, example_inputs): the default loss (sum of the outputs) applies."""
    torch.manual_seed(0)
    return MLP(d=64, hidden=256, blocks=2), torch.randn(batch, 64)


def wrong_type():
    return 42


def wrong_length():
    model, inputs, loss = mlp()
    return model, inputs, loss, "extra"


def raises():
    raise RuntimeError("this factory is broken")


not_callable = 3
