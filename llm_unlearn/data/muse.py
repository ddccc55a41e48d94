"""MUSE-News layout (Shi et al., 2024): subsets and splits, loaded from a local folder or the Hub.

Local layout: `<source>/<subset>/<split>.json` (or `.jsonl`), each a JSON list of objects, JSON Lines, or a
JSON list of strings (read as {"text": s}). A source that is not a local folder is a Hub id
(`muse-bench/MUSE-News`) loaded with `datasets.load_dataset(source, subset, split=split)`.
Every record gets `index` = its row position in its split.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_unlearn.data.io import DataError, read_records, validate_records, with_index

MUSE_NEWS_HUB_ID = "muse-bench/MUSE-News"

MUSE_LAYOUT: dict[str, tuple[str, ...]] = {
    "knowmem": ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"),
    "verbmem": ("forget",),
    "privleak": ("forget", "retain", "holdout"),
    "raw": ("forget", "retain1", "retain2", "holdout"),
}
MUSE_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "knowmem": ("question", "answer"),
    "verbmem": ("prompt", "gt"),
    "privleak": ("text",),
    "raw": ("text",),
}


def _check_names(subset: str, split: str | None = None) -> None:
    if subset not in MUSE_LAYOUT:
        raise DataError(f"unknown MUSE subset {subset!r}; valid subsets: {', '.join(MUSE_LAYOUT)}")
    if split is not None and split not in MUSE_LAYOUT[subset]:
        raise DataError(
            f"unknown split {split!r} of MUSE subset {subset!r}; valid splits: {', '.join(MUSE_LAYOUT[subset])}"
        )


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir() or source.startswith(("/", ".", "~"))


def load_muse_split(source: str, subset: str, split: str) -> list[dict]:
    """One MUSE split as records with `index`; from `<source>/<subset>/<split>.json|.jsonl`, else the Hub."""
    _check_names(subset, split)
    required = MUSE_REQUIRED_KEYS[subset]
    if _is_local(source):
        folder = Path(source).expanduser() / subset
        candidates = [folder / f"{split}.json", folder / f"{split}.jsonl"]
        for path in candidates:
            if path.is_file():
                return with_index(read_records(path, required))
        raise DataError(f"MUSE split {subset}/{split} not found: expected {candidates[0]} or {candidates[1]}")
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, subset, split=split)
    except Exception as err:  # datasets raises many types (offline, missing config, network)
        raise DataError(
            f"could not load MUSE split {subset}/{split} from the Hub dataset {source!r} "
            f"({type(err).__name__}: {err}); when offline, give a local folder in the MUSE layout"
        ) from err
    records = [dict(row) for row in dataset]
    validate_records(records, f"{source} [{subset}/{split}]", required)
    return with_index(records)


EVALUATION_SUBSETS = ("knowmem", "verbmem", "privleak")  # what the MUSE suite reads; "raw" is training text


def load_muse(
    source: str = MUSE_NEWS_HUB_ID, subsets: tuple[str, ...] | None = None
) -> dict[str, dict[str, list[dict]]]:
    """The splits of `subsets` (default: every subset of the layout): {subset: {split: records}}."""
    for subset in subsets or ():
        _check_names(subset)
    return {
        subset: {split: load_muse_split(source, subset, split) for split in splits}
        for subset, splits in MUSE_LAYOUT.items()
        if subsets is None or subset in subsets
    }


def write_muse_folder(data: dict[str, dict[str, list[dict]]], folder: str | Path) -> Path:
    """Write {subset: {split: records}} as `<folder>/<subset>/<split>.json` (JSON Lines); returns the folder.

    Only layout names are accepted, and each split must be non-empty and carry its subset's keys, so what
    is written always loads back with `load_muse`. `index` is not written (loading assigns it).
    """
    folder = Path(folder)
    for subset, splits in data.items():
        for split, records in splits.items():
            _check_names(subset, split)
            validate_records(records, f"{subset}/{split}", MUSE_REQUIRED_KEYS[subset])
    for subset, splits in data.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        for split, records in splits.items():
            lines = [json.dumps({k: v for k, v in r.items() if k != "index"}, ensure_ascii=False) for r in records]
            (folder / subset / f"{split}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
