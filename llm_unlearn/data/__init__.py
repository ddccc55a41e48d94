"""Data: TOFU and MUSE loaders, embedded synthetic generators, formatting and collation.

`load_qa_splits(DataConfig(...))` returns every question/answer split a run needs (`QASplits`): what to
fine-tune the target and retain models on, the forget/retain sets, their evaluation versions with
perturbed answers, the utility sets, and a holdout (non-member) set for membership inference.
Records are plain dicts: `question`, `answer`, `index` (row position in its source split) and, where the
source has them, `paraphrased_answer`, `paraphrased_question`, `perturbed_answer` (list) and `author`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from llm_unlearn.data.custom import DataFiles
from llm_unlearn.data.io import DataError

DATASETS = ("synthetic", "tofu", "muse", "synthetic_news", "custom")
TEXT_DATASETS = ("muse", "synthetic_news")
TOFU_FORGET_SPLITS = ("forget01", "forget05", "forget10")
TOFU_HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")


@dataclass
class DataConfig:
    """Which QA data a run uses. YAML recipes mirror these field names; keep them stable.

    dataset: "synthetic" (embedded generator, no files), "tofu", "muse" (MUSE-News layout from `source`: a
        folder or the Hub id muse-bench/MUSE-News), "synthetic_news" (embedded MUSE-style news) or "custom"
        (your own `forget`, `retain` and optional `holdout` sets; see llm_unlearn.data.custom).
    forget, retain, holdout: custom only: each a file or dataset ({path} or {id, name, split}, plus columns).
    news_articles: synthetic_news size (forget and holdout articles; retain gets twice as many).
    source: tofu only: a local folder holding `<split>.json` files, or a Hub id (None = "locuslab/TOFU").
    forget_split: tofu only: forget01 / forget05 / forget10 (1/5/10 % of the 200 authors).
    holdout_split: tofu only: Hub split holdout01/05/10 as the non-member set; None = hold out the block of
        as many authors as the forget set that ends just before row 3600 of full.json (not trained on).
    retain_authors: keep only the first N retain authors for training and D_r (CPU benchmark scale).
    utility_rows: keep only the first N rows of real_authors / world_facts.
    n_authors, qa_per_author, forget_authors, holdout_authors: synthetic sizes (forget = last authors,
        holdout = the block just before them, retain = the rest).
    seed: synthetic generator seed.
    """

    dataset: str = "synthetic"
    source: str | None = None
    news_articles: int = 6
    forget_split: str = "forget01"
    holdout_split: str | None = None
    retain_authors: int | None = None
    utility_rows: int | None = None
    n_authors: int = 20
    qa_per_author: int = 10
    forget_authors: int = 2
    holdout_authors: int = 2
    seed: int = 0
    forget: DataFiles | None = None
    retain: DataFiles | None = None
    holdout: DataFiles | None = None

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise DataError(f"data.dataset must be one of {', '.join(DATASETS)}, not {self.dataset!r}")
        own_sets = {name: getattr(self, name) for name in ("forget", "retain", "holdout")}
        if self.dataset != "custom" and (given := [name for name, files in own_sets.items() if files is not None]):
            raise DataError(f"data.{given[0]} is for your own data: set data.dataset: custom to use it")
        if self.dataset == "custom":
            for name, files in own_sets.items():
                if files is None and name != "holdout":
                    raise DataError(f"data.{name}: required for dataset custom ({{path: your file}} or {{id: ...}})")
                if files is not None:
                    files.check(f"data.{name}")
        if self.dataset == "tofu" and self.forget_split not in TOFU_FORGET_SPLITS:
            raise DataError(
                f"data.forget_split must be one of {', '.join(TOFU_FORGET_SPLITS)}, not {self.forget_split!r}"
            )
        if self.holdout_split is not None and self.holdout_split not in TOFU_HOLDOUT_SPLITS:
            raise DataError(
                f"data.holdout_split must be null (automatic holdout block) or one of "
                f"{', '.join(TOFU_HOLDOUT_SPLITS)}, not {self.holdout_split!r}"
            )
        for name in ("retain_authors", "utility_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"data.{name} must be null (keep all) or a positive count, not {value}")
        for name in ("qa_per_author", "forget_authors"):
            if getattr(self, name) < 1:
                raise DataError(f"data.{name} must be at least 1, not {getattr(self, name)}")
        if self.holdout_authors < 0:
            raise DataError(f"data.holdout_authors must be 0 or more, not {self.holdout_authors}")
        if self.dataset == "synthetic" and self.n_authors < self.forget_authors + self.holdout_authors + 1:
            raise DataError(
                f"data.n_authors ({self.n_authors}) must exceed forget_authors + holdout_authors "
                f"({self.forget_authors} + {self.holdout_authors}) so at least one retain author is left"
            )


@dataclass
class QASplits:
    """Every QA split of a run. Indices are row positions in each record's source split."""

    target_train: list[dict]  # fine-tune the target model on this (forget + retain; holdout authors excluded)
    retain_train: list[dict]  # fine-tune the retain (oracle) model on this (retain only)
    forget: list[dict]  # D_f
    retain: list[dict]  # D_r
    forget_eval: list[dict]  # forget rows with paraphrased_answer + perturbed_answer, same order as forget
    retain_eval: list[dict]  # retain rows with paraphrased_answer + perturbed_answer
    real_authors: list[dict]  # utility: question, answer, perturbed_answer (3)
    world_facts: list[dict]
    holdout: list[dict]  # non-member authors' QA rows (MIA / privleak)
    meta: dict = field(default_factory=dict)  # dataset, source, splits, holdout rows, file sha256, sizes

    SPLIT_NAMES = (
        "target_train",
        "retain_train",
        "forget",
        "retain",
        "forget_eval",
        "retain_eval",
        "real_authors",
        "world_facts",
        "holdout",
    )

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.SPLIT_NAMES}

    def fingerprints(self) -> dict[str, str]:
        return {name: splits_fingerprint(getattr(self, name)) for name in self.SPLIT_NAMES}


def splits_fingerprint(records: list[dict]) -> str:
    """sha256 of the records' canonical JSON (sorted keys, no whitespace): identical data, identical hash."""
    canonical = json.dumps(records, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_text_corpora(config: DataConfig, evaluation_only: bool = False) -> dict[str, dict[str, list[dict]]]:
    """MUSE-layout data ({subset: {split: records}}) for the text datasets (muse, synthetic_news).
    evaluation_only: only the subsets the MUSE suite reads (not the raw training text), so a folder holding
    only the evaluation subsets can be evaluated."""
    from llm_unlearn.data.muse import EVALUATION_SUBSETS, MUSE_NEWS_HUB_ID, load_muse

    subsets = EVALUATION_SUBSETS if evaluation_only else None
    if config.dataset == "muse":
        return load_muse(config.source or MUSE_NEWS_HUB_ID, subsets)
    if config.dataset == "synthetic_news":
        from llm_unlearn.data.synthetic_news import make_news

        n = config.news_articles
        corpora = make_news(n_forget=n, n_retain=2 * n, n_holdout=n, seed=config.seed)
        return {name: splits for name, splits in corpora.items() if subsets is None or name in subsets}
    raise DataError(f"data.dataset {config.dataset!r} is a QA dataset; text corpora come from {TEXT_DATASETS}")


def load_qa_splits(config: DataConfig) -> QASplits:
    """Load the QA splits the config names (TOFU from a folder or the Hub, or the embedded synthetic authors)."""
    if config.dataset in TEXT_DATASETS:
        raise DataError(f"data.dataset {config.dataset!r} is a text corpus: use load_text_corpora")
    if config.dataset == "tofu":
        from llm_unlearn.data.tofu import load_tofu_splits

        return load_tofu_splits(config)
    from llm_unlearn.data.synthetic import synthetic_splits

    return synthetic_splits(config)


__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "load_text_corpora",
    "DataConfig",
    "DataError",
    "DataFiles",
    "QASplits",
    "TOFU_FORGET_SPLITS",
    "TOFU_HOLDOUT_SPLITS",
    "load_qa_splits",
    "splits_fingerprint",
]
