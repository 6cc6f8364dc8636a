"""A plan: one decision per needed activation, plus how the solver got there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Decision(str, Enum):
    """What happens to an activation between its last forward use and its backward need."""

    STORE = "store"
    RECOMPUTE = "recompute"
    OFFLOAD = "offload"

    def __str__(self) -> str:  # readable in tables and f-strings
        return self.value


@dataclass(frozen=True)
class Plan:
    """Decisions for the needed activations of a ``Problem`` and the solver's account of them.

    ``decisions`` names exactly the activations that the plan needs (see ``remat.problem``);
    ``objective`` is the added step time in seconds that the solver predicts; ``bound`` and
    ``gap`` come from an ILP (None for heuristics); ``status`` is "optimal", "feasible" (time
    limit or gap reached with a solution) or "heuristic".
    """

    decisions: dict[str, Decision]
    solver: str
    status: str = "heuristic"
    objective: float = 0.0
    bound: float | None = None
    gap: float | None = None
    solve_time_s: float = 0.0
    budget_bytes: int | None = None
    info: dict = field(default_factory=dict, compare=False)

    def names(self, decision: Decision) -> list[str]:
        return [n for n, d in self.decisions.items() if d is decision]

    def digest(self) -> str:
        """16 hex digits of the decisions: equal on two ranks (or runs) iff they decided alike."""
        import hashlib

        decisions = sorted((name, d.value) for name, d in self.decisions.items())
        return hashlib.sha256(json.dumps(decisions).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "decisions": {k: v.value for k, v in self.decisions.items()},
            "solver": self.solver,
            "status": self.status,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "solve_time_s": self.solve_time_s,
            "budget_bytes": self.budget_bytes,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(
            decisions={k: Decision(v) for k, v in d["decisions"].items()},
            solver=d.get("solver", "unknown"),
            status=d.get("status", "heuristic"),
            objective=float(d.get("objective", 0.0)),
            bound=d.get("bound"),
            gap=d.get("gap"),
            solve_time_s=float(d.get("solve_time_s", 0.0)),
            budget_bytes=d.get("budget_bytes"),
            info=dict(d.get("info", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_dict(json.loads(Path(path).read_text()))


def status_words(plan: Plan, gap_target: float) -> str:
    """The solver's account in words: 'optimal', 'within 1.0 % of the best possible' (stopped at
    the gap asked for), 'time limit: best found, gap 4.6 %' (or 'node budget: ...', when the ILP's
    work budget ended it: ``plan.info["stopped_by"]``), or a heuristic's 'no optimality bound'."""
    if plan.status == "optimal":
        return "optimal"
    if plan.status == "feasible":
        stopped = plan.info.get("stopped_by") or "time limit"
        if plan.gap is None:
            return f"{stopped}: best found, no bound on the best possible"
        if plan.gap <= gap_target + 1e-12:
            return f"within {100 * gap_target:.1f} % of the best possible"
        return f"{stopped}: best found, gap {100 * plan.gap:.1f} %"
    return f"{plan.status}: no optimality bound"
