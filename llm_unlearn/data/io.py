"""Reading record files with errors that say where and what to fix, plus cross-split checks.

Accepted layouts (all loadable with `datasets.load_dataset("json", data_files=...)` as well):
* JSON Lines: one JSON object per line (TOFU's files);
* a JSON list of objects;
* a JSON list of strings, each becoming {"text": s} (MUSE raw/privleak text dumps).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file or split is not what the toolkit expects; the message names the file, row and fix."""


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_json_list(text: str, where: str) -> list[tuple[int, object]]:
    """Parse a top-level JSON list element by element, keeping each element's line number."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, object]] = []
    pos = _skip_whitespace(text, text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        return items
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}, line {err.lineno}: malformed JSON ({err.msg}); expected a JSON list of objects or strings"
            ) from err
        items.append((_line_of(text, pos), value))
        pos = _skip_whitespace(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_whitespace(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            rest = text[pos + 1 :].strip()
            if rest:
                line = _line_of(text, pos + 1 + text[pos + 1 :].index(rest[0]))
                raise DataError(f"{where}, line {line}: unexpected text after the closing ']' of the JSON list")
            return items
        line = _line_of(text, min(pos, len(text) - 1))
        raise DataError(f"{where}, line {line}: expected ',' or ']' between list elements")


def _parse_json_lines(text: str, where: str) -> list[tuple[int, object]]:
    items: list[tuple[int, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}, line {number}: malformed JSON ({err.msg}); expected one JSON object per line (JSON Lines)"
            ) from err
    return items


def _to_records(items: list[tuple[int, object]], where: str, allow_strings: bool) -> list[tuple[int, dict]]:
    """Objects stay as they are; a list made only of strings becomes {"text": s} records."""
    if allow_strings and items and all(isinstance(value, str) for _, value in items):
        return [(line, {"text": value}) for line, value in items]
    records = []
    for line, value in items:
        if not isinstance(value, dict):
            expected = "a JSON object (or a list made only of strings)" if allow_strings else "a JSON object"
            raise DataError(f"{where}, line {line}: found a JSON {type(value).__name__}; expected {expected}")
        records.append((line, value))
    return records


def validate_records(
    records: Sequence[dict], where: str, required_keys: Iterable[str] = (), lines: Sequence[int] | None = None
) -> None:
    """Raise if the split is empty or a record lacks a required key (lines: file line of each record)."""
    required = tuple(required_keys)
    if len(records) == 0:
        raise DataError(f"{where}: the split has no records; expected at least one row")
    for i, record in enumerate(records):
        missing = [key for key in required if key not in record]
        if missing:
            place = f"line {lines[i]}" if lines is not None else f"row {i}"
            raise DataError(
                f"{where}, {place}: missing key {missing[0]!r}; every record needs {', '.join(required)} "
                f"(found {', '.join(sorted(record)) or 'no keys'})"
            )


def read_records(path: str | os.PathLike, required_keys: Iterable[str] = ()) -> list[dict]:
    """Read a JSON list, JSON Lines file, or JSON list of strings into a list of dicts.

    Raises DataError naming the file and line for malformed JSON, non-object rows, missing keys, or an
    empty file/split.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{where}: the file is empty; expected JSON Lines or a JSON list of records")
    if stripped[0] == "[":
        items = _parse_json_list(text, where)
        records = _to_records(items, where, allow_strings=True)
    else:
        items = _parse_json_lines(text, where)
        records = _to_records(items, where, allow_strings=False)
    validate_records([r for _, r in records], where, required_keys, lines=[line for line, _ in records])
    return [record for _, record in records]


def with_index(records: Iterable[dict], start: int = 0) -> list[dict]:
    """Copies of the records with `index` = their row position (plus `start`), replacing any existing one."""
    return [{**record, "index": start + i} for i, record in enumerate(records)]


def check_aligned(base: Sequence[dict], perturbed: Sequence[dict], name: str) -> None:
    """Perturbed rows must ask the same questions, in the same order, as their base split."""
    if len(base) != len(perturbed):
        raise DataError(
            f"{name}: has {len(perturbed)} rows but its base split has {len(base)}; "
            "perturbed rows must match the base split one to one"
        )
    for i, (row, other) in enumerate(zip(base, perturbed)):
        if row.get("question") != other.get("question"):
            raise DataError(
                f"{name}, row {i}: question {other.get('question')!r} differs from the base split's "
                f"{row.get('question')!r}; perturbed rows must be in the same order as their base split"
            )


def warn_overlap(forget: Sequence[dict], retain: Sequence[dict]) -> int:
    """Log how many forget questions also appear in the retain set (such rows blur what forgetting means)."""
    retain_questions = {row.get("question") for row in retain}
    count = sum(1 for row in forget if row.get("question") in retain_questions)
    if count:
        logger.warning("%d of %d forget questions also appear in the retain set", count, len(forget))
    return count
