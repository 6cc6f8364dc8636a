"""remat's copy ops, run eagerly on the CPU (where they are plain copies), and the refusal of
offload=True on a CPU graph, where a host copy is the same memory and lowers no peak."""

from __future__ import annotations

import pytest
import torch

import remat
from remat.passes.offload_ops import FREE, TO_DEVICE, TO_HOST, WAIT_COPY


def test_round_trip_and_free():
    x = torch.randn(4, 6)
    host = WAIT_COPY(TO_HOST(x))
    assert torch.equal(host, x) and host.data_ptr() != x.data_ptr()
    FREE(x, host)
    assert x.untyped_storage().nbytes() == 0  # the device copy is gone
    back = WAIT_COPY(TO_DEVICE(host, torch.device("cpu"), [4, 6], [6, 1]))
    assert torch.equal(back, host)


def test_layout_is_restored():
    x = torch.randn(6, 4).t()  # non-contiguous
    back = TO_DEVICE(TO_HOST(x), torch.device("cpu"), list(x.shape), list(x.stride()))
    assert back.stride() == x.stride() and torch.equal(back, x)


def test_free_leaves_shared_storage_alone():
    base = torch.randn(8)
    part = base[2:6]
    FREE(part, part)
    assert base.untyped_storage().nbytes() == 8 * 4  # a slice does not own its storage
    whole = base.view(2, 4)
    FREE(whole, whole)
    assert base.untyped_storage().nbytes() == 0


def test_offload_on_a_cpu_graph_reaches_the_user_as_a_config_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    with pytest.raises(remat.ConfigError, match="offload=True on a CPU graph.*drop offload"):
        remat.analyze(model, (torch.randn(4, 8),), memory_budget="80%", offload=True)
