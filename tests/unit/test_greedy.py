"""The greedy's incremental evaluation (``remat.solvers._evaluation``) against the full one."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from remat.solvers._core import NONE, OFF, REC, STORE, Structure
from remat.solvers._evaluation import Evaluation

from .synthetic import fuzz_problem
from .test_solver_fuzz import with_random_kernels


def _random_changes(rng, st: Structure) -> dict[int, int]:
    """A few candidates given a code that they may take."""
    out = {}
    for c in rng.sample(st.cands, min(len(st.cands), rng.randint(1, 3))):
        codes = [STORE, NONE] + [REC] * c.rec_ok + [OFF] * c.off_ok
        out[c.idx] = rng.choice(codes)
    return out


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), kernels=hst.booleans())
def test_incremental_evaluation_matches_the_full_one(rng, kernels):
    """After every change of a few codes (any order, undone too), ``need``, ``S``, ``last_need``
    and the profile equal ``Structure.evaluate``'s for the same codes."""
    p = fuzz_problem(rng)
    st = Structure(with_random_kernels(p, rng) if kernels else p)
    if not st.cands:
        return
    ev = Evaluation(st, np.array([STORE if c.d >= 0 else NONE for c in st.cands], dtype=np.int64))
    for step in range(12):
        snap = ev.snapshot() if step % 4 == 3 else None
        ev.set(_random_changes(rng, st))
        if snap is not None:
            ev.restore(snap)
        mem, need, S, ln = st.evaluate(ev.codes)
        assert ev.need.tolist() == list(need)
        assert ev.S[ev.need].tolist() == np.array(S)[ev.need].tolist()
        assert ev.ln[ev.need].tolist() == np.array(ln)[ev.need].tolist()
        assert ev.profile().tolist() == mem.tolist()
