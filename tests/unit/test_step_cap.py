"""What a graph's cap gives up to memory held outside it (``backend._taken_off_cap``)."""
import pytest

from remat.backend import _taken_off_cap
from remat.config import RematConfig


@pytest.mark.parametrize("budget, expected", [
    ("6MiB", 1000 + 300),  # the step's byte cap: earlier graphs' kept bytes and the outside buffers
    ("50%", 300),          # a ratio of this graph's own plain peak: only the outside buffers
    ("min", 0),            # the floor is the floor
])
def test_cap_gives_up_what_the_budget_kind_says(budget, expected):
    cfg = RematConfig.from_options({"memory_budget": budget})
    assert _taken_off_cap(cfg, resident=1000 + 300, outside=300) == expected
