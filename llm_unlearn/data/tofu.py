"""TOFU (Maini et al., 2024): 200 fictitious authors x 20 QA pairs, plus real-author and world-fact utility sets.

Splits load from a local folder (`<folder>/<split>.json`, JSON Lines as published) or from a Hub id through
`datasets.load_dataset(hub_id, split)` when online. Facts about the published files that the loader checks:
forgetNN is the last 2/10/20 authors of full.json and retainNN its exact complement; forgetNN_perturbed
follows forgetNN row by row; retain_perturbed is the first 400 rows of full.json (authors 0-19).

Holdout (a project choice; docs/design.md, Data and labels): the Hub-only holdoutNN splits are missing offline, so by default the
toolkit holds out the block of as many authors as the forget set that ends just before row 3600 (the first
row of forget10). That block overlaps no forgetNN and not retain_perturbed; its rows are removed from
target/retain training and from D_r, recorded in `meta`, and serve as the non-member set for MIA/privleak.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm_unlearn.data import DataConfig, QASplits
from llm_unlearn.data.io import (
    DataError,
    check_aligned,
    read_records,
    validate_records,
    warn_overlap,
    with_index,
)
from llm_unlearn.utils import sha256_file

logger = logging.getLogger(__name__)

TOFU_HUB_ID = "locuslab/TOFU"
ROWS_PER_AUTHOR = 20
# First row of forget10: a holdout block ending here never overlaps any forget split.
HOLDOUT_BLOCK_STOP = 3600
FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}
RETAIN_SPLIT_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}

TOFU_SPLITS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain90",
    "retain95",
    "retain99",
    "retain_perturbed",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
)

_QA = ("question", "answer")
_PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
REQUIRED_KEYS = {
    **{name: _QA for name in TOFU_SPLITS},
    **{f"{name}_perturbed": _PERTURBED for name in FORGET_AUTHORS},
    "retain_perturbed": _PERTURBED,
    "real_authors_perturbed": ("question", "answer", "perturbed_answer"),
    "world_facts_perturbed": ("question", "answer", "perturbed_answer"),
}

# sha256 of the published files (locuslab/TOFU, identical to ../shared/data/tofu; see its PROVENANCE.md).
TOFU_SHA256 = {
    "forget01.json": "d0047332bd27a489c552659831f4ffff080e2b9b6e063c7c951ac4de9d494a63",
    "forget01_perturbed.json": "d8d8a80bd25e853b52fad0e3301d86fa4db6bc2b665cd79ea937346186a0944a",
    "forget05.json": "88542818f98fd6f880ecaea71bc3f3e7a34f959944e5ff1cdef7ea8c5c137173",
    "forget05_perturbed.json": "7596c863a3f7eafb551a167363826f71a7327f28617a0a533fed06108a50ccdb",
    "forget10.json": "0044c8c2e70a38be93f62ec6cb1c1cc2a1f55a8df2fb549a4da2da8dde9d92f6",
    "forget10_perturbed.json": "6fbcb946c57ea1d7b2124cea0e61bf3b5409d1bc10d02368f090109450ed73c7",
    "full.json": "667baef2f26f781f1328701d8ea54bf25123ff22fb2d98574c96cd991cb54086",
    "real_authors.json": "5ed86f884ecbefc3a5db0b9dfe84ab3db710690c74d9402c0acc14bc3dd5a4b7",
    "real_authors_perturbed.json": "a23255383ac75a5fbe5acd57622a03fb9c368954fd7b2428afa152b784d9533a",
    "retain90.json": "debcf019c41db7b30b62ca6ad41fd8a4bcd29a5b321c21d2961974e308dfca55",
    "retain95.json": "6625bb8e7e01f27a237bd273b961fcf2fb51568157702acdcd934b13398aa2fc",
    "retain99.json": "e699ae5fe685996cd7d0a60cbcbeae717e989a2fd0caf00b4d545ba39ccefc61",
    "retain_perturbed.json": "fc69f33bad70d3dca65920bdb54380039e3e8872dd16bbae20c1a839b99533fb",
    "world_facts.json": "5547b07340f46755b868a525941341c3d93814b5370ae7fa10143f653a3c7033",
    "world_facts_perturbed.json": "0e171838040d0ec94b1ce248d891508e85e3b77344370077caa27b61898eb3e1",
}


def _check_split_name(split: str) -> None:
    if split not in TOFU_SPLITS:
        raise DataError(f"unknown TOFU split {split!r}; valid splits: {', '.join(TOFU_SPLITS)}")


def is_local_source(source: str) -> bool:
    """A source is a local folder when it exists, or when it is written as a path (/, ./, ../, ~)."""
    return Path(source).expanduser().is_dir() or source.startswith(("/", ".", "~"))


def _read_split(source: str, split: str) -> tuple[list[dict], dict]:
    """Records of one split (no index yet) and a description of where they came from (with sha256 when local)."""
    _check_split_name(split)
    required = REQUIRED_KEYS[split]
    if is_local_source(source):
        folder = Path(source).expanduser()
        path = folder / f"{split}.json"
        if not path.is_file():
            hint = (
                " The holdoutNN splits exist only on the Hub: set data.holdout_split to null to use the automatic"
                " holdout block, or add the file."
                if split.startswith("holdout")
                else ""
            )
            raise DataError(f"{path}: TOFU split {split!r} not found in {folder}.{hint}")
        digest = sha256_file(path)
        reference = TOFU_SHA256.get(path.name)
        info = {
            "path": str(path),
            "sha256": digest,
            "matches_published": None if reference is None else digest == reference,
        }
        if reference is not None and digest != reference:
            logger.warning("%s: sha256 %s differs from the published TOFU file (%s)", path, digest, reference)
        return read_records(path, required), info
    return _read_hub_split(source, split, required), {"hub_id": source, "config": split}


def _read_hub_split(source: str, split: str, required: tuple[str, ...]) -> list[dict]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, split, split="train")
    except Exception as err:  # datasets raises many types (offline, missing config, network)
        raise DataError(
            f"could not load TOFU split {split!r} from the Hub dataset {source!r} ({type(err).__name__}: {err}); "
            "when offline, set data.source to a local folder holding <split>.json files"
        ) from err
    records = [dict(row) for row in dataset]
    validate_records(records, f"{source} [{split}]", required)
    return records


def load_tofu_split(source: str, split: str) -> list[dict]:
    """One TOFU split as records with `index` = row position: `<source>/<split>.json` locally, else from the Hub."""
    records, _ = _read_split(source, split)
    return with_index(records)


def _same_pair(a: dict, b: dict) -> bool:
    return a["question"] == b["question"] and a["answer"] == b["answer"]


def _check_complement(full: list[dict], forget: list[dict], retain: list[dict], forget_split: str) -> None:
    retain_split = RETAIN_SPLIT_OF[forget_split]
    expected = FORGET_AUTHORS[forget_split] * ROWS_PER_AUTHOR
    if len(forget) != expected:
        raise DataError(f"{forget_split}: has {len(forget)} rows; expected {expected} (its authors x 20 questions)")
    if len(forget) + len(retain) != len(full):
        raise DataError(
            f"{forget_split} ({len(forget)} rows) and {retain_split} ({len(retain)} rows) must together make "
            f"full ({len(full)} rows)"
        )
    for i, row in enumerate(retain):
        if not _same_pair(row, full[i]):
            raise DataError(f"{retain_split}, row {i}: differs from full row {i}; it must be the first rows of full")
    offset = len(retain)
    for i, row in enumerate(forget):
        if not _same_pair(row, full[offset + i]):
            raise DataError(
                f"{forget_split}, row {i}: differs from full row {offset + i}; it must be the last rows of full"
            )


def _with_rows(records: list[dict], first_row: int, index_start: int = 0) -> list[dict]:
    """Add `index` (position in the source split) and `author` (global row // 20 in full.json)."""
    return [
        {**row, "index": index_start + i, "author": (first_row + i) // ROWS_PER_AUTHOR} for i, row in enumerate(records)
    ]


def load_tofu_splits(config: DataConfig) -> QASplits:
    """All QA splits of a TOFU run; see the module docstring for the holdout and the checks made."""
    source = config.source or TOFU_HUB_ID
    forget_split = config.forget_split
    retain_split = RETAIN_SPLIT_OF[forget_split]
    files: dict[str, dict] = {}

    def read(split: str) -> list[dict]:
        records, files[split] = _read_split(source, split)
        return records

    full = read("full")
    if len(full) % ROWS_PER_AUTHOR:
        raise DataError(f"full: has {len(full)} rows; expected a multiple of {ROWS_PER_AUTHOR} (20 per author)")
    forget_raw, retain_raw = read(forget_split), read(retain_split)
    _check_complement(full, forget_raw, retain_raw, forget_split)
    forget_eval_raw = read(f"{forget_split}_perturbed")
    check_aligned(forget_raw, forget_eval_raw, f"{forget_split}_perturbed")
    retain_eval_raw = read("retain_perturbed")
    # retain_perturbed is the first rows of full.json; positional alignment gives each row its author.
    check_aligned(full[: len(retain_eval_raw)], retain_eval_raw, "retain_perturbed (against the first rows of full)")
    real_authors = with_index(read("real_authors_perturbed")[: config.utility_rows])
    world_facts = with_index(read("world_facts_perturbed")[: config.utility_rows])

    forget_start = len(retain_raw)
    forget = _with_rows(forget_raw, forget_start)
    forget_eval = _with_rows(forget_eval_raw, forget_start)
    retain = _with_rows(retain_raw, 0)
    retain_eval = _with_rows(retain_eval_raw, 0)
    target_train = _with_rows(full, 0)

    if config.holdout_split is None:
        stop = HOLDOUT_BLOCK_STOP
        start = stop - len(forget)
        if stop > forget_start or start < len(retain_eval):
            raise DataError(
                f"full: cannot place a {len(forget)}-row holdout block ending at row {stop} without overlapping "
                f"{forget_split} (from row {forget_start}) or retain_perturbed (rows 0-{len(retain_eval) - 1})"
            )
        holdout = target_train[start:stop]
        holdout_authors = sorted({row["author"] for row in holdout})
        target_train = [row for row in target_train if not start <= row["index"] < stop]
        retain = [row for row in retain if not start <= row["index"] < stop]
        holdout_meta = {
            "mode": "auto_block",
            "source_split": "full",
            "row_start": start,
            "row_stop": stop,
            "authors": holdout_authors,
        }
    else:
        holdout = with_index(read(config.holdout_split))
        warn_overlap(holdout, full)
        holdout_meta = {"mode": "split", "split": config.holdout_split}

    retain_eval_filtered = False
    retain_authors_kept = None
    if config.retain_authors is not None:
        authors = list(dict.fromkeys(row["author"] for row in retain))
        keep = set(authors[: config.retain_authors])
        retain_authors_kept = len(keep)
        forget_authors = {row["author"] for row in forget}
        retain = [row for row in retain if row["author"] in keep]
        target_train = [row for row in target_train if row["author"] in keep or row["author"] in forget_authors]
        kept_eval = [row for row in retain_eval if row["author"] in keep]
        if kept_eval:  # else none of retain_perturbed's authors were kept: keep it whole rather than empty
            retain_eval, retain_eval_filtered = kept_eval, True

    warn_overlap(forget, retain)
    splits = QASplits(
        target_train=target_train,
        retain_train=list(retain),
        forget=forget,
        retain=retain,
        forget_eval=forget_eval,
        retain_eval=retain_eval,
        real_authors=real_authors,
        world_facts=world_facts,
        holdout=holdout,
    )
    splits.meta = {
        "dataset": "tofu",
        "source": source,
        "forget_split": forget_split,
        "retain_split": retain_split,
        "splits": {
            "target_train": "full minus holdout" if config.holdout_split is None else "full",
            "retain_train": retain_split,
            "forget": forget_split,
            "retain": retain_split,
            "forget_eval": f"{forget_split}_perturbed",
            "retain_eval": "retain_perturbed",
            "real_authors": "real_authors_perturbed",
            "world_facts": "world_facts_perturbed",
            "holdout": config.holdout_split or "full (auto block)",
        },
        "holdout": holdout_meta,
        # Rows of full.json held out (None when a Hub holdout split is used: nothing is removed).
        "holdout_rows": list(range(holdout_meta["row_start"], holdout_meta["row_stop"]))
        if config.holdout_split is None
        else None,
        "retain_authors": config.retain_authors,
        "retain_authors_kept": retain_authors_kept,
        "retain_eval_filtered": retain_eval_filtered,
        "utility_rows": config.utility_rows,
        "files": files,
        "sizes": splits.sizes(),
        "fingerprints": splits.fingerprints(),
    }
    return splits
