"""The benchmark's selection rule on hand-built result dicts (the run JSON as written), no model involved."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import selection  # noqa: E402

TARGET = 0.5  # target model utility: a run passes at 0.9 x 0.5 = 0.45 or more


def result(run: str, utility) -> dict:
    return {"run": run, "metrics": {"model_utility": utility}}


FAILED = {"run": "broken", "status": "failed", "error": "RuntimeError: boom", "metrics": {}}


def test_passes_at_the_fraction_of_the_target_and_never_without_a_utility():
    assert selection.passes(result("a", 0.45), TARGET)  # exactly 0.9 x 0.5
    assert not selection.passes(result("a", 0.449), TARGET)
    assert selection.passes(result("a", 0.3), TARGET, fraction=0.6)  # 0.6 x 0.5 = 0.3
    assert not selection.passes(result("a", None), TARGET)  # null utility (non-finite metric)
    assert not selection.passes({"run": "a"}, TARGET)  # no metrics at all
    assert not selection.passes(FAILED, TARGET)
    assert not selection.passes(result("a", 0.9), None)  # the target's utility is unknown


def test_the_grid_is_walked_largest_first_until_one_passes():
    grid = (3e-3, 1e-3, 3e-4)
    assert selection.next_learning_rate(grid, [], TARGET) == 3e-3
    assert selection.next_learning_rate(grid, [result("lr3e-3", 0.1)], TARGET) == 1e-3
    assert selection.next_learning_rate(grid, [result("lr3e-3", 0.1), result("lr1e-3", 0.46)], TARGET) is None
    # a failed run counts as not passing: the next point is tried
    assert selection.next_learning_rate(grid, [FAILED], TARGET) == 1e-3
    three = [result("lr3e-3", 0.1), FAILED, result("lr3e-4", None)]
    assert selection.next_learning_rate(grid, three, TARGET) is None  # the grid is exhausted


def test_the_first_pass_wins_and_when_none_passes_the_smallest_is_kept_flagged():
    walked = [result("lr3e-3", 0.2), result("lr1e-3", 0.47)]
    assert selection.grid_choice(walked, TARGET) == {
        "run": "lr1e-3",
        "met_rule": True,
        "evaluated": ["lr3e-3", "lr1e-3"],
    }
    none = [result("lr3e-3", 0.2), FAILED, result("lr3e-4", None)]
    assert selection.grid_choice(none, TARGET) == {
        "run": "lr3e-4",
        "met_rule": False,
        "evaluated": ["lr3e-3", "broken", "lr3e-4"],
    }


def test_alpha_star_is_the_largest_passing_alpha():
    sweep = {16.0: result("a16", 0.1), 8.0: result("a8", 0.46), 4.0: result("a4", 0.5), 2.0: FAILED}
    assert selection.alpha_star(sweep, TARGET) == 8.0
    assert selection.alpha_star({8.0: result("a8", None), 4.0: FAILED}, TARGET) is None


def test_the_mox_sweep_stops_at_the_first_learning_rate_with_a_passing_alpha():
    grid = (3e-4, 1e-4)
    failing = {8.0: result("a8", 0.1), 4.0: result("a4", 0.2)}
    passing = {8.0: result("a8", 0.2), 4.0: result("a4", 0.48)}
    assert selection.next_sweep_learning_rate(grid, [], TARGET) == 3e-4
    assert selection.next_sweep_learning_rate(grid, [failing], TARGET) == 1e-4
    assert selection.next_sweep_learning_rate(grid, [passing], TARGET) is None
    assert selection.sweep_choice(grid, [failing, passing], TARGET) == (1e-4, 4.0, True)
    assert selection.sweep_choice(grid, [passing], TARGET) == (3e-4, 4.0, True)
    # nothing passes anywhere: the smallest learning rate and the smallest α, flagged
    assert selection.sweep_choice(grid, [failing, failing], TARGET) == (1e-4, 4.0, False)
    assert selection.sweep_choice((1e-3,), [{2.0: FAILED, 0.5: FAILED}], TARGET) == (1e-3, 0.5, False)
