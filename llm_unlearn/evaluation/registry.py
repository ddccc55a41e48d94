"""The metric registry: what drives the TOFU and MUSE suites (and any suite built on compute.py).

Each registration states its name, the row scores it needs and the metric group that enables it, the sets it
applies to, its per-sample function with the inputs taken from a row, its aggregation, its direction and its
summary keys (`reports`); composites (forget quality, model utility, privleak) name their inputs and a
`compose` function. Adding a metric is one `register(Metric(...))` (here, or in a test or plugin) plus its test:
the suites loop over `COLUMNS` for per-sample values and over `METRICS` for the summary (compute.py).

`higher_is_better` says which direction is good for the model being unlearned *on the set the metric is
reported for*: memorization metrics reported on the forget set are False (lower = more forgotten), utility
metrics True, and None means "closer to a reference is better" (privleak near 0, MIA AUC near the retain
model's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llm_unlearn.evaluation import mia, reference
from llm_unlearn.evaluation.metrics import (
    exact_memorization,
    extraction_strength,
    forget_quality,
    forget_truth_ratio_aggregate,
    harmonic_mean,
    mean,
    normalized_probability,
    probability,
    retain_truth_ratio_aggregate,
    rouge_l_f1,
    rouge_l_recall,
    truth_ratio,
)
from llm_unlearn.evaluation.nonfinite import is_nonfinite

# ---- row scores and sets -----------------------------------------------------------------------------------------
#
# Scores a row can carry (what `needs` names): "answer" (the answer's teacher-forced SequenceScore; for raw
# text, the text's), "answer_tokens" (the answer must have tokens of its own besides the end-of-turn one),
# "distribution" (the answer score with mu/sigma of the next-token distribution), "paraphrased", "perturbed"
# (a list of scores), "generation" (greedy text), and "correct" (the paraphrased answer where the suite has
# one, else the answer). A suite scores, per set, what the enabled metrics of that set need (compute.py).

FORGET, RETAIN, REAL_AUTHORS, WORLD_FACTS, HOLDOUT = "forget", "retain", "real_authors", "world_facts", "holdout"
TOFU_SETS = (FORGET, RETAIN, REAL_AUTHORS, WORLD_FACTS, HOLDOUT)
QA_SETS = (FORGET, RETAIN, REAL_AUTHORS, WORLD_FACTS)  # the sets with perturbed answers and generations
UTILITY_SETS = (RETAIN, REAL_AUTHORS, WORLD_FACTS)
VERBMEM, KNOWMEM_F, KNOWMEM_R = "verbmem_forget", "knowmem_forget", "knowmem_retain"
PRIV_F, PRIV_H = "privleak_forget", "privleak_holdout"
MIA_SETS = (FORGET, HOLDOUT, PRIV_F, PRIV_H)
# Metric groups whose per-set aggregates form the summary's first block, set by set (TOFU's table: each set's
# Prob, truth ratio and ROUGE-L); every other summary key follows in registry order.
TABLE_GROUPS = ("prob", "truth_ratio", "rouge")
_METRIC_DIRECTION = "the metric's"


@dataclass(frozen=True)
class Report:
    """One summary key of a metric: the sets it aggregates over (one set, or forget and holdout for an attack
    AUC), its direction when it differs from the metric's, and the null reason when a set of a pair is missing.
    A suite computes the reports whose sets are all among its own set names."""

    key: str
    sets: tuple[str, ...]
    higher_is_better: bool | None | str = _METRIC_DIRECTION
    missing: str = ""


@dataclass(frozen=True)
class Metric:
    """One metric, as the suites read it.

    per_sample: the pure per-sample function (None for composites); inputs(row, settings) gives its arguments
        from a row's scores (compute.RowScores), or None when the scores cannot define it (the value is NaN).
    aggregate: list of per-sample values -> number (for an attack AUC, two lists; for a composite, its parts).
    group: the metric group (prob, truth_ratio, rouge, memorization, mia) that turns it on: the suite then
        scores what it `needs` on its `sets`. None: a composite computed whenever the suite has its sets.
    whenever_scored: also written wherever its scores exist for another metric (prob, a view of the answer NLL).
    column: the per-sample column it aggregates (default: its own name).
    reports: its summary keys. compose(summary, metric, report) -> (value, null reason) computes a composite
        from the aggregates named in `inputs_from` or from the reference log (reference.py).
    scales_100: multiplied by 100 in the summary when the settings ask for percentages (MUSE's scale_100).
    """

    name: str
    per_sample: Callable | None
    aggregate: Callable
    higher_is_better: bool | None
    description: str
    group: str | None = None
    needs: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    inputs: Callable | None = None
    whenever_scored: bool = False
    column: str | None = None
    reports: tuple[Report, ...] = ()
    compose: Callable | None = None
    inputs_from: tuple[str, ...] = ()
    scales_100: bool = False

    def __post_init__(self):
        if self.column is None:
            object.__setattr__(self, "column", self.name)

    def sample(self, row, settings):
        args = self.inputs(row, settings)
        return math.nan if args is None else self.per_sample(*args)

    def direction(self, report: Report) -> bool | None:
        return self.higher_is_better if report.higher_is_better == _METRIC_DIRECTION else report.higher_is_better


@dataclass(frozen=True)
class Recorded:
    """A per-sample column logged as scoring produced it, with no aggregate (the answer NLL, the generation):
    written wherever its scores exist on its sets."""

    name: str
    needs: tuple[str, ...]
    sets: tuple[str, ...]
    value: Callable
    group = None
    whenever_scored = True
    per_sample = None

    def sample(self, row, settings):
        return self.value(row)


# Every registration, in per_sample.json's column order (composites have no column and sit where their summary
# keys go); METRICS holds the metrics among them by name.
COLUMNS: list[Metric | Recorded] = []
METRICS: dict[str, Metric] = {}


def register(entry: Metric | Recorded) -> Metric | Recorded:
    """Add a metric (or a recorded column) after the others; the suites pick it up from here."""
    if any(existing.name == entry.name for existing in COLUMNS):
        raise ValueError(f"a metric named {entry.name!r} is already registered")
    COLUMNS.append(entry)
    if isinstance(entry, Metric):
        METRICS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    COLUMNS[:] = [entry for entry in COLUMNS if entry.name != name]
    METRICS.pop(name, None)


def _per_set(suffix: str, sets: Sequence[str], lower_on: Sequence[str] = ()) -> tuple[Report, ...]:
    """Reports `{set}_{suffix}`; on the sets in `lower_on` lower is better (forget: more forgotten)."""
    return tuple(Report(f"{s}_{suffix}", (s,), False if s in lower_on else _METRIC_DIRECTION) for s in sets)


def _attack_auc(suffix: str) -> tuple[Report, ...]:
    return (
        Report(f"{suffix}_auc", (FORGET, HOLDOUT), missing="needs the forget and holdout sets"),
        Report(f"{suffix}_auc", (PRIV_F, PRIV_H), missing="needs the privleak forget and holdout splits"),
    )


def _nlls(scores) -> list[float]:
    return [score.mean_nll for score in scores]


def _finite_answer_flags(row, settings):
    """The answer tokens' argmax-correct flags; None (NaN) when the log-probs are not finite: the argmax of NaN
    logits says nothing."""
    return None if is_nonfinite(row.answer.answer_logprobs) else (row.answer.answer_argmax_correct,)


def from_aggregates(summary, metric: Metric, report: Report) -> tuple[float | None, str | None]:
    """metric.aggregate of the summary values named in metric.inputs_from; null when one is missing or null."""
    parts = metric.inputs_from
    if missing := [key for key in parts if key not in summary.metrics]:
        return None, f"missing components {missing}"
    if nulls := [key for key in parts if summary.metrics[key] is None]:
        return None, "null components: " + "; ".join(f"{key} ({summary.reasons.get(key)})" for key in nulls)
    return metric.aggregate([summary.metrics[key] for key in parts]), None


def _memorization(name: str, function: Callable, description: str) -> Metric:
    """A forget-set metric of the answer tokens' argmax-correct flags (lower = more forgotten)."""
    return Metric(
        name,
        function,
        mean,
        False,
        description,
        group="memorization",
        needs=("answer", "answer_tokens"),
        sets=(FORGET,),
        inputs=_finite_answer_flags,
        reports=_per_set(name, (FORGET,)),
    )


def _attack(name: str, score: Callable, attack: str, needs: tuple[str, ...], inputs: Callable) -> Metric:
    """A membership-inference attack: a loss-like score per sample, its ROC AUC forget vs holdout."""
    description = f"{attack} attack AUC, forget vs holdout"
    return Metric(
        name,
        score,
        mia.mia_auc,
        None,
        description,
        group="mia",
        needs=needs,
        sets=MIA_SETS,
        inputs=inputs,
        reports=_attack_auc(name),
    )


_UTILITY_PARTS = tuple(f"{s}_{m}" for s in UTILITY_SETS for m in ("prob", "rougeL_recall", "truth_ratio"))

for _entry in [
    Recorded("num_tokens", ("answer",), (PRIV_F, PRIV_H), lambda row: row.answer.num_tokens),
    Recorded("cut_tokens", ("answer",), (PRIV_F, PRIV_H), lambda row: row.cut_tokens),
    Recorded("nll", ("answer",), TOFU_SETS + (PRIV_F, PRIV_H), lambda row: row.answer.mean_nll),
    Metric(
        "prob",
        probability,
        mean,
        True,
        "mean of p = exp(-mean answer NLL); on forget, lower = forgotten",
        group="prob",
        needs=("answer",),
        sets=TOFU_SETS,
        inputs=lambda row, s: (row.answer.mean_nll,),
        whenever_scored=True,
        reports=_per_set("prob", (FORGET, RETAIN), lower_on=(FORGET,)),
    ),
    _memorization(
        "extraction_strength",
        extraction_strength,
        "1 - k/|y|, k the start of the longest teacher-forced argmax-correct suffix",
    ),
    _memorization("exact_memorization", exact_memorization, "fraction of argmax-correct answer tokens"),
    Metric(
        "forget_quality",
        None,
        forget_quality,
        True,
        "KS-test p-value of forget truth ratios vs the retain model's",
        column="truth_ratio",
        reports=(Report("forget_quality", (FORGET,)),),
        compose=reference.forget_quality_against_reference,
    ),
    Metric(
        "model_utility",
        None,
        harmonic_mean,
        True,
        "harmonic mean of Prob, ROUGE-L recall, truth ratio on retain, real_authors, world_facts",
        reports=(Report("model_utility", UTILITY_SETS),),
        compose=from_aggregates,
        inputs_from=_UTILITY_PARTS,
    ),
    # LOSS and zlib over the whole scored span; Min-K% and Min-K%++ over the answer tokens only.
    _attack("mia_loss", mia.loss_score, "LOSS", ("answer",), lambda row, s: (row.answer.token_logprobs,)),
    _attack(
        "mia_zlib", mia.zlib_score, "zlib", ("answer",), lambda row, s: (row.answer.token_logprobs, row.scored_text)
    ),
    _attack(
        "mia_min_k",
        mia.min_k_score,
        "Min-K% (k=0.4)",
        ("answer", "answer_tokens"),
        lambda row, s: (row.answer.answer_logprobs, s.min_k),
    ),
    _attack(
        "mia_min_k_pp",
        mia.min_k_plus_plus_score,
        "Min-K%++ (k=0.4)",
        ("answer", "answer_tokens", "distribution"),
        lambda row, s: (row.answer.answer_logprobs, row.answer.answer_mu, row.answer.answer_sigma, s.min_k),
    ),
    Metric(
        "privleak",
        None,
        mia.privleak,
        None,
        "Min-K% AUC gap to the retain model in %; 0 ideal, <0 leaks",
        group="mia",
        reports=(Report("privleak", (FORGET, HOLDOUT)), Report("privleak", (PRIV_F, PRIV_H))),
        compose=reference.privleak_against_reference,
        inputs_from=("mia_min_k_auc",),
    ),
    Recorded("paraphrased_nll", ("paraphrased",), (FORGET, RETAIN), lambda row: row.paraphrased.mean_nll),
    Metric(
        "normalized_prob",
        normalized_probability,
        mean,
        True,
        "mean of p_correct / (p_correct + sum p_perturbed) (TOFU Prob on real_authors, world_facts)",
        group="prob",
        needs=("answer", "perturbed"),
        sets=(REAL_AUTHORS, WORLD_FACTS),
        inputs=lambda row, s: (row.answer.mean_nll, _nlls(row.perturbed)),
        reports=(Report("real_authors_prob", (REAL_AUTHORS,)), Report("world_facts_prob", (WORLD_FACTS,))),
    ),
    Recorded("perturbed_nll", ("perturbed",), QA_SETS, lambda row: _nlls(row.perturbed)),
    Metric(
        "truth_ratio",
        truth_ratio,
        retain_truth_ratio_aggregate,
        True,
        "mean(max(0, 1 - tr)) on retain / utility sets",
        group="truth_ratio",
        needs=("correct", "perturbed"),
        sets=QA_SETS,
        inputs=lambda row, s: (row.correct.mean_nll, _nlls(row.perturbed)),
        reports=_per_set("truth_ratio", UTILITY_SETS),
    ),
    Metric(
        "forget_truth_ratio",
        truth_ratio,
        forget_truth_ratio_aggregate,
        True,
        "mean(min(tr, 1/tr)), tr = p_perturbed / p_paraphrased on the forget set",
        group="truth_ratio",
        column="truth_ratio",
        reports=(Report("forget_truth_ratio", (FORGET,)),),
    ),
    Recorded("generation", ("generation",), QA_SETS + (VERBMEM, KNOWMEM_F, KNOWMEM_R), lambda row: row.generation),
    Metric(
        "rougeL_recall",
        rouge_l_recall,
        mean,
        True,
        "ROUGE-L recall of the greedy answer; on forget, lower",
        group="rouge",
        needs=("generation",),
        sets=QA_SETS,
        scales_100=True,
        inputs=lambda row, s: (row.generation, row.reference_text, s.rouge_stemming),
        reports=_per_set("rougeL_recall", QA_SETS, lower_on=(FORGET,)),
    ),
    Metric(
        "rougeL_f1",
        rouge_l_f1,
        mean,
        True,
        "ROUGE-L F1 of the greedy continuation; on forget, lower",
        group="rouge",
        needs=("generation",),
        sets=(VERBMEM, KNOWMEM_F, KNOWMEM_R),
        scales_100=True,
        inputs=lambda row, s: (row.generation, row.reference_text, s.rouge_stemming),
        reports=(
            Report("verbmem_f", (VERBMEM,), False),
            Report("knowmem_f", (KNOWMEM_F,), False),
            Report("knowmem_r", (KNOWMEM_R,), True),
        ),
    ),
]:
    register(_entry)


def summary_direction(key: str) -> bool | None:
    """Direction of a summary key such as `forget_rougeL_recall`, `retain_prob`, `verbmem_f` or `mia_loss_auc`
    (the registry's; a metric name gives the metric's; None for keys no metric reports)."""
    for metric in METRICS.values():
        for report in metric.reports:
            if report.key == key:
                return metric.direction(report)
    return METRICS[key].higher_is_better if key in METRICS else None
