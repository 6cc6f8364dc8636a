import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_profile_cache(tmp_path_factory):
    """The suite does not read or write the user's profile cache (measured op times, scratch bytes
    and this machine's rates, which the CPU roofline uses when present): every run plans as a clean
    machine (CI) does, whatever ``remat profile`` wrote before. ``REMAT_CACHE_DIR`` set by the caller wins."""
    if "REMAT_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["REMAT_CACHE_DIR"] = str(tmp_path_factory.mktemp("remat_cache"))
    yield
    del os.environ["REMAT_CACHE_DIR"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no Dynamo cache, no Inductor/AOT caches (so the remat
    partitioner runs and reports), and eager-compatible RNG so dropout matches eager."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, fallback_random=True):
        yield
    torch._dynamo.reset()
