"""remat: peak-memory-capped rematerialization for torch.compile.

    torch.compile(model, backend="remat", options={"memory_budget": "6GiB"})
    report = remat.analyze(model, example_inputs, memory_budget="50%")
"""

from ._version import __version__  # noqa: E402

from .config import RematConfig  # noqa: E402
from .errors import ConfigError, InfeasibleBudgetError, PlanError, RematError  # noqa: E402
from .plan import Decision, Plan  # noqa: E402
from .problem import Activation, Problem, Slot  # noqa: E402


def remat_backend(gm, example_inputs, options=None, **kw):
    """The torch.compile backend, registered as "remat" through an entry point."""
    from .backend import remat_backend as _backend

    return _backend(gm, example_inputs, options=options, **kw)


def reports(compiled):
    """The GraphReports that remat made for what ``torch.compile(..., backend="remat")`` returned."""
    from .compilation import reports as _reports

    return _reports(compiled)


def analyze(model, example_inputs, memory_budget=None, loss_fn=None, **options):
    """Plan a model's training step offline (fake tensors, no step runs); returns a Report."""
    from .analyze import analyze as _analyze

    # (importing the submodule rebinds ``remat.analyze`` to it; the module is callable as this function)
    return _analyze(model, example_inputs, memory_budget=memory_budget, loss_fn=loss_fn, **options)


def pareto(model, example_inputs, budgets=("90%", "80%", "70%", "60%", "50%", "40%", "30%"), loss_fn=None,
           progress=True, plot=None, **options):
    """Sweep caps (trace once, solve per cap): predicted peak vs predicted step-time overhead."""
    from .pareto import pareto as _pareto

    # (importing the submodule rebinds ``remat.pareto`` to it; the module is callable as this function)
    return _pareto(model, example_inputs, budgets=budgets, loss_fn=loss_fn, progress=progress, plot=plot, **options)


__all__ = [
    "Activation", "ConfigError", "Decision", "InfeasibleBudgetError", "Plan", "PlanError",
    "Problem", "RematConfig", "RematError", "Slot", "analyze", "pareto", "remat_backend", "reports",
]
