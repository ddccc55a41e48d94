"""The benchmark's model-selection rule, as pure functions over result dicts (the run JSON as written).

Every run is the last checkpoint of one fixed budget. A run passes when its model utility is at least
`fraction` × the target model's. A learning-rate grid is evaluated largest first and stops at the first pass;
when none passes, the smallest is kept and flagged. MOX: a grid point is one memorization run swept over α, and
α* is the largest α that passes. Model utility needs no retain model, so the rule never peeks at the oracle.
"""

from __future__ import annotations

import math

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


# ---- α on a forget validation split (a MOX variant of the protocol scale) ---------------------------------------

VALIDATION_RULE = (
    "α chosen on a forget validation split: the forget rows are split by position (even positions validate, odd "
    "ones test). Among the α of plain MOX's sweep at lr* that pass the utility rule, the chosen α is the one whose "
    "unlearned model tells the validation rows from the holdout rows least well (loss-based membership AUC "
    "closest to 0.5; the larger α on a tie). Holdout rows were never trained on, so the rule needs no retain "
    "model. Forget quality is then reported on the test rows only, for every method it is compared with."
)


def forget_split(result: dict) -> tuple[list[str], list[str]] | None:
    """(validation rows, test rows) of the result's forget set: even and odd positions in row order; None when
    the result kept no per-row values."""
    rows = (result.get("per_sample") or {}).get("forget", {}).get("mia_loss")
    if not rows:
        return None
    ordered = sorted(rows, key=int)
    return ordered[0::2], ordered[1::2]


def validation_auc(result: dict, rows: list[str]) -> float | None:
    """Loss-based membership AUC of the forget `rows` against every holdout row (None without per-row values)."""
    from llm_unlearn.evaluation.mia import mia_auc

    per_sample = result.get("per_sample") or {}
    forget = per_sample.get("forget", {}).get("mia_loss") or {}
    holdout = per_sample.get("holdout", {}).get("mia_loss") or {}
    if not holdout or any(row not in forget for row in rows):
        return None
    value = mia_auc([forget[row] for row in rows], list(holdout.values()))
    return value if math.isfinite(value) else None


def validated_alpha(sweep: dict[float, dict], target_utility, fraction: float = UTILITY_FRACTION):
    """(chosen α or None, {α: {"passes", "validation_mia_auc"}}) by VALIDATION_RULE over an α sweep."""
    table = {}
    for alpha, result in sweep.items():
        split = forget_split(result)
        auc = validation_auc(result, split[0]) if split else None
        table[alpha] = {"passes": passes(result, target_utility, fraction), "validation_mia_auc": auc}
    candidates = [a for a, row in table.items() if row["passes"] and row["validation_mia_auc"] is not None]
    if not candidates:
        return None, table
    return min(candidates, key=lambda a: (abs(table[a]["validation_mia_auc"] - 0.5), -a)), table


def forget_quality_on_test_rows(result: dict, reference: dict) -> float | None:
    """Forget quality (KS p-value of truth ratios against the retain model's) on the test rows of the forget
    split only; None when either result kept no per-row truth ratios."""
    from llm_unlearn.evaluation.metrics import forget_quality

    split = forget_split(result)
    ours = (result.get("per_sample") or {}).get("forget", {}).get("truth_ratio") or {}
    theirs = (reference.get("per_sample") or {}).get("forget", {}).get("truth_ratio") or {}
    if not split or any(row not in ours or row not in theirs for row in split[1]):
        return None
    return forget_quality([ours[row] for row in split[1]], [theirs[row] for row in split[1]])
