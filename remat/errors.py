"""Errors that remat raises for bad input and for caps that no plan meets."""

from __future__ import annotations


class RematError(Exception):
    """Base class of remat's own errors."""


class ConfigError(RematError, ValueError):
    """A malformed or unknown option; the message lists what is valid."""


class PlanError(RematError):
    """A plan that the simulator rejects (a value read when not live, a cap exceeded...)."""


class InfeasibleBudgetError(RematError):
    """No plan keeps the peak under the cap; ``min_peak_bytes`` is the smallest reachable peak.
    Under dynamic shapes, ``largest_fit`` is the largest size (of the symbol the message names) at
    which a plan still meets the cap, when remat found one; None otherwise."""

    def __init__(self, budget_bytes: int, min_peak_bytes: int, detail: str = "",
                 largest_fit: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.min_peak_bytes = min_peak_bytes
        self.largest_fit = largest_fit
        msg = (
            f"memory_budget {fmt_bytes(budget_bytes)} cannot be met: the smallest peak any plan "
            f"reaches is {fmt_bytes(min_peak_bytes)} ({min_peak_bytes} bytes)"
        )
        super().__init__(msg + (f"; {detail}" if detail else ""))


def fmt_bytes(n: float) -> str:
    """Human-readable bytes in binary units: 1536 -> '1.50 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
