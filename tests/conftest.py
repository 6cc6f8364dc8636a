import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no Dynamo cache, no Inductor/AOT caches (so the remat
    partitioner runs and reports), and eager-compatible RNG so dropout matches eager."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, fallback_random=True):
        yield
    torch._dynamo.reset()
