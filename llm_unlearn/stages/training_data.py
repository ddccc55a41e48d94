"""What a run trains and evaluates on, whatever the data: QA splits (synthetic authors, TOFU), MUSE-layout text
corpora, or your own sets (data.dataset: custom), as the datasets each stage needs and as the summary (row counts,
hashes; never the content) every run records."""

from __future__ import annotations

from dataclasses import dataclass

from llm_unlearn.data import TEXT_DATASETS, DataConfig, QASplits, load_qa_splits, load_text_corpora, splits_fingerprint
from llm_unlearn.data.collate import PairedDataset, PromptFormat, QADataset, TextDataset, refusal_records
from llm_unlearn.data.custom import CustomData, load_custom

# The keys of a QA data source's metadata that a run records beside the split hashes.
RECORDED_META = ("dataset", "source", "forget_split", "holdout", "holdout_rows", "files", "seed", "retain_authors")
QA_SPLITS = ("forget", "retain", "target_train", "retain_train", "forget_eval", "retain_eval", "holdout")


def eval_sets(splits: QASplits) -> dict[str, list[dict]]:
    """The TOFU suite's sets of a QA data source (holdout only when it has one)."""
    sets = {
        "forget": splits.forget_eval,
        "retain": splits.retain_eval,
        "real_authors": splits.real_authors,
        "world_facts": splits.world_facts,
    }
    if splits.holdout:
        sets["holdout"] = splits.holdout
    return sets


@dataclass
class TrainingData:
    config: DataConfig
    splits: QASplits | None = None
    corpora: dict | None = None
    custom: CustomData | None = None

    @classmethod
    def load(cls, config: DataConfig, evaluation_only: bool = False) -> TrainingData:
        """evaluation_only: what an evaluation reads (MUSE: not the raw training text)."""
        if config.dataset == "custom":
            sets = {"forget": config.forget, "retain": config.retain, "holdout": config.holdout}
            return cls(config, custom=load_custom(sets))
        if config.dataset in TEXT_DATASETS:
            return cls(config, corpora=load_text_corpora(config, evaluation_only))
        return cls(config, splits=load_qa_splits(config))

    @property
    def is_text(self) -> bool:
        return self.corpora is not None or (self.custom is not None and self.custom.kind == "text")

    def _custom_dataset(self, rows: list[dict], tokenizer, fmt: PromptFormat):
        rows = [{**row, "index": i} for i, row in enumerate(rows)]
        if self.custom.kind == "text":
            return TextDataset(rows, tokenizer, fmt.max_length)
        return QADataset(rows, tokenizer, fmt)

    def _raw(self, *names: str) -> list[dict]:
        rows = []
        for name in names:
            rows += [{**r, "index": len(rows) + i} for i, r in enumerate(self.corpora["raw"][name])]
        return rows

    def finetune_dataset(self, which: str, tokenizer, fmt: PromptFormat):
        if self.custom is not None:
            rows = self.custom.forget + self.custom.retain if which == "target" else self.custom.retain
            return self._custom_dataset(rows, tokenizer, fmt)
        if self.is_text:
            names = ("forget", "retain1", "retain2") if which == "target" else ("retain1", "retain2")
            return TextDataset(self._raw(*names), tokenizer, fmt.max_length)
        records = self.splits.target_train if which == "target" else self.splits.retain_train
        return QADataset(records, tokenizer, fmt)

    def paired_dataset(self, tokenizer, fmt: PromptFormat, seed: int) -> PairedDataset:
        if self.custom is not None:
            forget = self._custom_dataset(self.custom.forget, tokenizer, fmt)
            retain = self._custom_dataset(self.custom.retain, tokenizer, fmt)
            refusal = None
            if self.custom.kind == "qa":
                refusal = QADataset(refusal_records(self.custom.forget, seed), tokenizer, fmt)
            return PairedDataset(forget, retain, refusal, seed=seed)
        if self.is_text:
            forget = TextDataset(self._raw("forget"), tokenizer, fmt.max_length)
            retain = TextDataset(self._raw("retain1"), tokenizer, fmt.max_length)
            return PairedDataset(forget, retain, None, seed=seed)
        forget = QADataset(self.splits.forget, tokenizer, fmt)
        retain = QADataset(self.splits.retain, tokenizer, fmt)
        refusal = QADataset(refusal_records(self.splits.forget, seed), tokenizer, fmt)
        return PairedDataset(forget, retain, refusal, seed=seed)

    def eval_data(self) -> dict:
        """The evaluation suite's input: MUSE corpora as they are, the TOFU sets of the QA splits, or your sets."""
        if self.custom is not None:
            sets = {"forget": self.custom.forget, "retain": self.custom.retain, "holdout": self.custom.holdout}
            return {"kind": self.custom.kind, "sets": {name: rows for name, rows in sets.items() if rows}}
        return self.corpora if self.corpora is not None else eval_sets(self.splits)

    def summary(self) -> dict:
        if self.custom is not None:
            sets = {"forget": self.custom.forget, "retain": self.custom.retain, "holdout": self.custom.holdout}
            return {
                "dataset": "custom",
                "kind": self.custom.kind,
                "sources": self.custom.sources,
                "splits": {
                    name: {"rows": len(rows), "sha256": splits_fingerprint(rows)} for name, rows in sets.items() if rows
                },
            }
        if self.corpora is not None:
            return {
                "dataset": self.config.dataset,
                "source": self.config.source,
                "splits": {
                    f"{subset}/{split}": {"rows": len(rows), "sha256": splits_fingerprint(rows)}
                    for subset, parts in self.corpora.items()
                    for split, rows in parts.items()
                },
            }
        meta = {k: v for k, v in self.splits.meta.items() if k in RECORDED_META}
        parts = {name: getattr(self.splits, name) for name in QA_SPLITS}
        return {
            **meta,
            "splits": {name: {"rows": len(rows), "sha256": splits_fingerprint(rows)} for name, rows in parts.items()},
        }
