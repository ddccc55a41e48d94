"""From per-row sequence scores to per-sample values and summaries, by walking the metric registry.

A suite scores each set once into `RowScores` (what `requested_scores` says the enabled metrics of that set
need), then `per_sample_values` writes every registered column that applies, and `summarize` computes every
report of the registry whose sets the suite has: per-set aggregates, two-set aggregates (attack AUCs) and
composites. Nothing here names a metric, so a new registration shows up in every suite that has its sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_unlearn.evaluation.logs import sorted_values
from llm_unlearn.evaluation.nonfinite import nonfinite_reason
from llm_unlearn.evaluation.registry import COLUMNS, METRICS, TABLE_GROUPS, Metric, Report
from llm_unlearn.evaluation.scoring import SequenceScore


@dataclass(frozen=True)
class Settings:
    """What per-sample functions and summaries read from a suite's options.

    fixed_reference_auc: privleak against this retain-model Min-K% AUC (MUSE's published one); None: the
        reference log's.
    """

    min_k: float
    rouge_stemming: bool
    scale_100: bool = False
    fixed_reference_auc: float | None = None


@dataclass
class RowScores:
    """Everything scoring produced for one row: the inputs of every per-sample function.

    scored_text: the text the zlib attack compresses (the answer; the scored part of a raw text).
    reference_text: what ROUGE compares the generation with.
    cut_tokens: tokens a raw text lost to the token limit.
    kl: mean labelled-token KL(p_start || p_model) of the row.
    """

    index: int
    scored_text: str = ""
    reference_text: str = ""
    answer: SequenceScore | None = None
    paraphrased: SequenceScore | None = None
    perturbed: list[SequenceScore] | None = None
    generation: str | None = None
    cut_tokens: int = 0
    kl: float | None = None  # KL to the starting model (evaluation/drift.py), where a suite computes it

    @property
    def correct(self) -> SequenceScore | None:
        """The correct answer's score: the paraphrased answer's where it was scored, else the answer's."""
        return self.paraphrased if self.paraphrased is not None else self.answer


def _resolved(needs: Sequence[str], correct: str) -> set[str]:
    return {correct if need == "correct" else need for need in needs}


def requested_scores(set_name: str, groups: Sequence[str], correct: str = "answer") -> set[str]:
    """The scores to compute on `set_name`: what the metrics of the enabled `groups` need there. `correct`: the
    score that stands for the correct answer on this set ("paraphrased" or "answer")."""
    scores: set[str] = set()
    for entry in COLUMNS:
        if entry.group in groups and set_name in entry.sets:
            scores |= _resolved(entry.needs, correct)
    return scores


def per_sample_values(
    set_name: str, rows: Sequence[RowScores], groups: Sequence[str], settings: Settings, correct: str = "answer"
) -> dict[str, dict[str, object]]:
    """column -> str(index) -> value for every registered column of `set_name` whose metric is enabled (or that
    is written whenever its scores exist) and whose scores were computed; in registry order."""
    if not rows:
        return {}
    scored = requested_scores(set_name, groups, correct)
    out: dict[str, dict[str, object]] = {}
    for entry in COLUMNS:
        enabled = entry.whenever_scored or entry.group in groups
        if set_name in entry.sets and enabled and _resolved(entry.needs, correct) <= scored:
            out[entry.name] = {str(row.index): entry.sample(row, settings) for row in rows}
    return out


@dataclass
class Summary:
    """What a composite's compose function reads: the per-sample values, the aggregates computed so far (and
    their null reasons), the reference log and the settings."""

    per_sample: dict
    reference: object
    settings: Settings
    metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def put(self, key: str, value: float | None, reason: str | None) -> None:
        self.metrics[key] = value
        if reason:
            self.reasons[key] = reason


def _aggregate(summary: Summary, metric: Metric, report: Report) -> None:
    values = [sorted_values(summary.per_sample, s, metric.column) for s in report.sets]
    if len(report.sets) == 1 and not values[0]:
        return  # a set-level aggregate is reported only where the set has values
    if not all(values):
        summary.put(report.key, None, report.missing)
    elif reason := nonfinite_reason(summary.per_sample, [(s, metric.column) for s in report.sets]):
        summary.put(report.key, None, reason)
    else:
        scale = 100.0 if metric.scales_100 and summary.settings.scale_100 else 1.0
        summary.put(report.key, scale * metric.aggregate(*values), None)


def _reports(suite_sets: Sequence[str], groups: Sequence[str]) -> list[tuple[Metric, Report]]:
    """The registry's reports this suite computes, in summary order: the table (per-set aggregates of
    TABLE_GROUPS) set by set, then the rest in registry order."""
    mine = [
        (metric, report)
        for metric in METRICS.values()
        for report in metric.reports
        if set(report.sets) <= set(suite_sets)
        and (metric.group is None or metric.group in groups or (metric.compose is None and len(report.sets) == 1))
    ]

    def in_table(item) -> bool:
        metric, report = item
        return metric.group in TABLE_GROUPS and metric.compose is None and len(report.sets) == 1

    table = sorted((item for item in mine if in_table(item)), key=lambda item: suite_sets.index(item[1].sets[0]))
    return table + [item for item in mine if not in_table(item)]


def summarize(
    per_sample: dict, suite_sets: Sequence[str], groups: Sequence[str], settings: Settings, reference=None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Summary metrics and the reason for every null: each applicable report of the registry, aggregated from
    the per-sample values (null, naming the rows, over a NaN or inf value) or composed (composites)."""
    summary = Summary(per_sample, reference, settings)
    for metric, report in _reports(suite_sets, groups):
        if metric.compose is not None:
            summary.put(report.key, *metric.compose(summary, metric, report))
        else:
            _aggregate(summary, metric, report)
    return summary.metrics, summary.reasons
