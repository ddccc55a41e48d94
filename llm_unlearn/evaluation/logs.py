"""Evaluation logs on disk: atomic JSON writes, the per-sample layout, and what a suite returns.

per_sample.json maps set -> metric -> str(index) -> value. Every evaluated set also carries a
`question_hash` entry (sha256 prefix of the question, prompt or text), so that a reference log can be checked
to come from the same split before composite metrics compare the two (reference.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PER_SAMPLE_FILE = "per_sample.json"
SUMMARY_FILE = "summary.json"
STEPS_FILE = "eval_steps.jsonl"
HASH_KEY = "question_hash"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, then os.replace: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(obj, stream, indent=1)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as stream:
        stream.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
    return rows


@dataclass
class EvalResult:
    """What a suite returns: per-sample values, summary metrics (None where they cannot be computed, with the
    reason in `null_reasons`), free-form notes, and the settings that produced them (`meta`)."""

    suite: str
    per_sample: dict[str, dict[str, dict[str, Any]]]
    metrics: dict[str, float | None]
    null_reasons: dict[str, str]
    notes: list[str]
    meta: dict

    def summary(self) -> dict:
        return {
            "suite": self.suite,
            "metrics": self.metrics,
            "null_reasons": self.null_reasons,
            "notes": self.notes,
            **self.meta,
        }


def indexed_records(
    records: Sequence[dict],
    where: str,
    required: Sequence[str],
    missing_hint: str = "",
    duplicate_hint: str = "",
    check: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Copies of `records` with an int `index` (their position when absent), after checking each row, in order,
    for the `required` keys, with `check(row, record)`, and for an index seen before (indices key per-sample
    logs). `where` names the set in the messages."""
    out, seen = [], set()
    for row, record in enumerate(records):
        if missing := [key for key in required if key not in record]:
            raise ValueError(f"{where}, row {row}: missing {missing}; expected keys {required}{missing_hint}")
        if check is not None:
            check(row, record)
        index = int(record.get("index", row))
        if index in seen:
            raise ValueError(f"{where}, row {row}: duplicate index {index}{duplicate_hint}")
        seen.add(index)
        out.append({**record, "index": index})
    return out


def merge_per_sample(shards: list[dict]) -> dict:
    """Merge per-process set -> metric -> index -> value dicts; indices come out sorted numerically."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for part in shards:
        for set_name, metrics in part.items():
            for metric, values in metrics.items():
                merged.setdefault(set_name, {}).setdefault(metric, {}).update(values)
    for metrics in merged.values():
        for metric, values in metrics.items():
            metrics[metric] = dict(sorted(values.items(), key=lambda item: int(item[0])))
    return merged


def sorted_values(per_sample: dict, set_name: str, metric: str) -> list:
    """Values of one metric on one set in index order ([] when absent)."""
    values = per_sample.get(set_name, {}).get(metric, {})
    return [values[key] for key in sorted(values, key=int)]
