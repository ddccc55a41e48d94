"""Non-finite per-sample values (a diverged model's NaN or inf): finding them and saying why an aggregate is null.

Metric functions never clamp a NaN or inf into a confident number; the summary loop turns an aggregate over one
into null, with a reason naming the set, metric and rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def is_nonfinite(value) -> bool:
    """A NaN or infinite number, or a list holding one (perturbed NLLs); strings and flags never are."""
    if isinstance(value, (list, tuple)):
        return any(is_nonfinite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def nonfinite_rows(values: dict) -> list[str]:
    """Indices (keys of an index -> value dict) whose value is non-finite, in numeric order."""
    return sorted((key for key, value in values.items() if is_nonfinite(value)), key=int)


def nonfinite_table(per_sample: dict) -> dict[str, dict[str, list[str]]]:
    """set -> metric -> indices of every non-finite per-sample value ({} when all are finite)."""
    table: dict[str, dict[str, list[str]]] = {}
    for set_name, metrics in per_sample.items():
        for metric, values in metrics.items():
            if rows := nonfinite_rows(values):
                table.setdefault(set_name, {})[metric] = rows
    return table


def _row_list(rows: list[str], limit: int = 10) -> str:
    shown = ", ".join(rows[:limit])
    return f"[{shown}, ... ({len(rows)} in all)]" if len(rows) > limit else f"[{shown}]"


def nonfinite_reason(per_sample: dict, sources: Sequence[tuple[str, str]], whose: str = "") -> str | None:
    """Why an aggregate over `sources` ((set, metric) pairs of `per_sample`) is null, naming the non-finite rows;
    None when every value is finite. `whose` prefixes the message (e.g. "the reference log's ")."""
    found = []
    for set_name, metric in sources:
        if rows := nonfinite_rows(per_sample.get(set_name, {}).get(metric, {})):
            found.append(f"'{set_name}' {metric} at rows {_row_list(rows)}")
    if not found:
        return None
    return f"{whose}non-finite (NaN or inf) per-sample values: " + "; ".join(found)
