"""Evaluation logs on disk: atomic JSON writes, the per-sample layout, and reference (retain model) logs.

per_sample.json maps set -> metric -> str(index) -> value. Every evaluated set also carries a
`question_hash` entry (sha256 prefix of the question, prompt or text), so that a reference log can be checked
to come from the same split before composite metrics compare the two. The settings that change the compared
values (label mode, prompt format, min_k, ...) are checked against the reference's summary.json the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
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


class ReferenceMismatchError(ValueError):
    """The reference log was evaluated with a setting that changes the values a composite metric compares."""


class _NotRecorded:
    def __repr__(self) -> str:
        return "NOT_RECORDED"


NOT_RECORDED = _NotRecorded()


@dataclass
class ReferenceLog:
    """The retain model's per-sample log (and its summary when present beside it)."""

    path: Path
    per_sample: dict
    summary: dict | None

    def values(self, set_name: str, metric: str) -> dict[str, Any] | None:
        return self.per_sample.get(set_name, {}).get(metric)

    def recorded(self, path: Sequence[str]) -> Any:
        """The value at `path` in the reference's summary.json (e.g. ("options", "min_k")), or NOT_RECORDED when
        there is no summary or it predates that field."""
        node: Any = self.summary
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return NOT_RECORDED
            node = node[key]
        return node


def load_reference_log(path: str | os.PathLike) -> ReferenceLog:
    """Load a reference log from a per_sample.json file or the run folder that holds one."""
    path = Path(path)
    file = path / PER_SAMPLE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"reference log {path}: expected a {PER_SAMPLE_FILE} file or a run folder containing one "
            "(the retain model's evaluation output)"
        )
    with open(file) as stream:
        try:
            per_sample = json.load(stream)
        except json.JSONDecodeError as err:
            raise ValueError(f"reference log {file}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(per_sample, dict):
        raise ValueError(f"reference log {file}: expected an object mapping set -> metric -> index -> value")
    summary_file = file.parent / SUMMARY_FILE
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return ReferenceLog(path=file, per_sample=per_sample, summary=summary)


def as_reference(reference_log: str | os.PathLike | ReferenceLog | None) -> ReferenceLog | None:
    if reference_log is None or isinstance(reference_log, ReferenceLog):
        return reference_log
    return load_reference_log(reference_log)


def _preview(keys) -> str:
    keys = sorted(keys, key=lambda k: (len(k), k))
    return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")


def check_same_split(hashes: dict[str, str], reference: ReferenceLog, set_name: str) -> None:
    """Raise unless the reference log covers exactly these indices of `set_name` with the same questions."""
    theirs = reference.values(set_name, HASH_KEY)
    if theirs is None:
        raise ValueError(
            f"reference log {reference.path} has no '{set_name}' set (or no {HASH_KEY}); evaluate the retain "
            f"model on the same '{set_name}' split with run_evaluation and pass its {PER_SAMPLE_FILE}"
        )
    if set(theirs) != set(hashes):
        only_ours = set(hashes) - set(theirs)
        only_theirs = set(theirs) - set(hashes)
        raise ValueError(
            f"reference log {reference.path} is for a different '{set_name}' split: {len(theirs)} rows vs "
            f"{len(hashes)} here; indices only here: [{_preview(only_ours)}], only in the reference: "
            f"[{_preview(only_theirs)}]. Evaluate the retain model on the same split (and truncate_rows)."
        )
    differing = [index for index, digest in hashes.items() if theirs[index] != digest]
    if differing:
        raise ValueError(
            f"reference log {reference.path}: '{set_name}' questions differ at indices [{_preview(differing)}]; "
            "it was evaluated on other data under the same indices"
        )


@dataclass(frozen=True)
class SettingCheck:
    """One setting of this run, compared with the same entry of the reference's summary.json.

    path: where the setting sits in summary.json, e.g. ("options", "min_k").
    strict: a mismatch raises ReferenceMismatchError (it changes values a composite metric compares); otherwise
        it becomes a note in the summary.
    consequence: what a mismatch does to the results, for the message.
    """

    path: tuple[str, ...]
    value: Any
    strict: bool
    consequence: str


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as summary.json stores them


def check_settings(reference: ReferenceLog | None, checks: Sequence[SettingCheck]) -> list[str]:
    """Compare this run's settings with the reference's summary.json: raise on a strict mismatch, note the rest.

    A reference without summary.json, or one whose summary predates a setting, cannot be checked for it: that
    becomes a note, never an error.
    """
    if reference is None or not checks:
        return []
    names = ", ".join(".".join(check.path) for check in checks)
    if reference.summary is None:
        return [
            f"reference log {reference.path} has no {SUMMARY_FILE} beside it: its settings ({names}) could not be "
            "compared with this run's"
        ]
    notes = []
    for check in checks:
        name = ".".join(check.path)
        theirs = reference.recorded(check.path)
        if theirs is NOT_RECORDED:
            notes.append(f"the reference {SUMMARY_FILE} does not record {name} (an older log): not compared")
            continue
        ours = _as_json(check.value)
        if theirs == ours:
            continue
        message = f"the reference log was evaluated with {name}={theirs!r}, this run with {name}={ours!r}"
        if check.strict:
            raise ReferenceMismatchError(
                f"{message}: {check.consequence}. Evaluate the retain model with the same {name} (reference log "
                f"{reference.path})"
            )
        notes.append(f"{message}: {check.consequence}")
    return notes


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
