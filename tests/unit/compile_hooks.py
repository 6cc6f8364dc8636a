"""A hook on the check loop for tests that compare a plan with the code Inductor made for it."""

import remat.backend as backend
import remat.inductor_check as inductor_check
from remat.kernel_groups import scheduler_groups


def record_compiles(mp) -> tuple[list, list]:
    """Patch (with MonkeyPatch ``mp``) the check loop so that each compile appends its (report,
    code's peak) to ``compiled`` and each graph Inductor schedules its kernel groups to
    ``recorded``; returns (recorded, compiled), filled as the compiles run."""
    recorded, compiled = [], []
    original = backend._compile_checked

    def checked(*args, **kwargs):
        out = original(*args, **kwargs)
        compiled.append(out[1:3])
        return out

    mp.setattr(inductor_check, "scheduler_groups", lambda nodes: recorded.append(scheduler_groups(nodes)) or recorded[-1])
    mp.setattr(backend, "_compile_checked", checked)
    return recorded, compiled
