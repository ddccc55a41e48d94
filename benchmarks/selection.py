"""The benchmark's model-selection rule, as pure functions over result dicts (the run JSON as written).

Every run is the last checkpoint of one fixed budget. A run passes when its model utility is at least
`fraction` × the target model's. A learning-rate grid is evaluated largest first and stops at the first pass;
when none passes, the smallest is kept and flagged. MOX: a grid point is one memorization run swept over α, and
α* is the largest α that passes. Model utility needs no retain model, so the rule never peeks at the oracle.
"""

from __future__ import annotations

UTILITY_FRACTION = 0.9
SELECTION_RULE = (
    "Every run is the last checkpoint of one fixed budget (same optimizer steps and batch sizes for every method). "
    "Learning rate: the largest in the method family's grid whose model utility is at least "
    f"{UTILITY_FRACTION:g} x the target model's (grid evaluated largest first, stopping at the first pass; "
    "when none passes the smallest is kept and flagged). MOX: α* = the largest α in the sweep that passes the "
    "same rule for MOX-LoRA plain; the other MOX variants use α*. Model utility needs no retain model, so the "
    "rule never peeks at the oracle."
)


def passes(result: dict, target_utility: float | None, fraction: float = UTILITY_FRACTION) -> bool:
    """Utility (the result's utility_metric; model utility when it names none) at least `fraction` × the
    target's; a failed run, a null utility or no target never pass."""
    utility = (result.get("metrics") or {}).get(result.get("utility_metric", "model_utility"))
    if utility is None or target_utility is None:
        return False
    return utility >= fraction * target_utility


def alpha_star(sweep: dict[float, dict], target_utility: float | None, fraction: float = UTILITY_FRACTION):
    """The largest α whose result passes, or None when none does."""
    passing = [alpha for alpha, result in sweep.items() if passes(result, target_utility, fraction)]
    return max(passing) if passing else None


def _next_point(grid, passed: list[bool]) -> float | None:
    if any(passed) or len(passed) >= len(grid):
        return None
    return grid[len(passed)]


def next_learning_rate(grid, results: list[dict], target_utility, fraction: float = UTILITY_FRACTION):
    """The grid point to evaluate next, given the results of the points before it (in grid order): None once one
    passed or the grid is exhausted."""
    return _next_point(grid, [passes(result, target_utility, fraction) for result in results])


def next_sweep_learning_rate(grid, sweeps: list[dict[float, dict]], target_utility, fraction=UTILITY_FRACTION):
    """As next_learning_rate for MOX, where each evaluated point is an α sweep {α: result}; a point passes when
    any of its α does."""
    return _next_point(grid, [alpha_star(sweep, target_utility, fraction) is not None for sweep in sweeps])


def grid_choice(results: list[dict], target_utility: float | None, fraction: float = UTILITY_FRACTION) -> dict:
    """The choice along a grid from its results in evaluation order: the first that passes, else the last
    (the smallest learning rate), flagged by met_rule = False."""
    for result in results:
        if passes(result, target_utility, fraction):
            return {"run": result["run"], "met_rule": True, "evaluated": [r["run"] for r in results]}
    return {"run": results[-1]["run"], "met_rule": False, "evaluated": [r["run"] for r in results]}


def sweep_choice(grid, sweeps: list[dict[float, dict]], target_utility: float | None, fraction=UTILITY_FRACTION):
    """MOX over a learning-rate grid of α sweeps (one {α: result} per evaluated point, in grid order):
    (lr*, α*, met_rule). The first point with a passing α wins with its largest passing α; when none passes,
    the smallest learning rate and the smallest α, flagged."""
    for lr, sweep in zip(grid, sweeps):
        best = alpha_star(sweep, target_utility, fraction)
        if best is not None:
            return lr, best, True
    return grid[len(sweeps) - 1], min(sweeps[-1]), False
