"""Metric definitions: pure functions of numbers, token flags and strings, plus one registry.

Per-sample functions take what scoring produces (mean token NLLs, argmax-correct flags, generated text);
aggregations turn a list of per-sample values into one number. Composite metrics (forget quality, model
utility, privleak) combine already aggregated or reference values and have no per-sample function.

Non-finite numbers (NaN or inf, from a diverged model) are never clamped into confident values: any
non-finite input gives NaN, per sample and in every aggregation. Suites turn a NaN aggregate into null
with the offending rows named (`nonfinite_reason`).

`higher_is_better` says which direction is good for the model being unlearned *on the set the metric is
reported for*: memorization metrics reported on the forget set are False (lower = more forgotten), utility
metrics True, and None means "closer to a reference is better" (privleak near 0, MIA AUC near the retain
model's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from llm_unlearn.evaluation import mia

# exp() of a log-ratio beyond this overflows float64; truth ratios that extreme are clamped (they aggregate
# to 0 either way: min(tr, 1/tr) and max(0, 1 - tr) are both 0 at the limit).
_MAX_LOG_RATIO = 700.0


# ---- probability and truth ratio -------------------------------------------------------------------------


def _all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def probability(mean_nll: float) -> float:
    """p = exp(-mean token NLL) of one answer (answer + end-of-turn tokens)."""
    if not math.isfinite(mean_nll):
        return math.nan
    return math.exp(-mean_nll)


def geometric_mean_probability(mean_nlls: Sequence[float]) -> float:
    """exp(-mean of the mean NLLs): the geometric mean of the answers' p."""
    if len(mean_nlls) == 0:
        raise ValueError("need at least one perturbed answer")
    if not _all_finite(mean_nlls):
        return math.nan
    return math.exp(-sum(mean_nlls) / len(mean_nlls))


def truth_ratio(correct_mean_nll: float, wrong_mean_nlls: Sequence[float]) -> float:
    """tr = p_wrong / p_correct, p_wrong the geometric mean of the perturbed answers' p.

    Computed in log space: tr = exp(correct_nll - mean(wrong_nlls)).
    """
    if len(wrong_mean_nlls) == 0:
        raise ValueError("truth_ratio needs at least one perturbed answer")
    if not _all_finite([correct_mean_nll, *wrong_mean_nlls]):
        return math.nan  # min/max below would turn NaN into a clamp value
    log_ratio = correct_mean_nll - sum(wrong_mean_nlls) / len(wrong_mean_nlls)
    return math.exp(max(-_MAX_LOG_RATIO, min(_MAX_LOG_RATIO, log_ratio)))


def normalized_probability(correct_mean_nll: float, wrong_mean_nlls: Sequence[float]) -> float:
    """p_correct / (p_correct + sum of p_wrong): TOFU's Prob on real_authors / world_facts."""
    if not _all_finite([correct_mean_nll, *wrong_mean_nlls]):
        return math.nan
    # Divide through by p_correct so that tiny probabilities do not underflow to 0/0.
    ratios = sum(math.exp(min(_MAX_LOG_RATIO, correct_mean_nll - w)) for w in wrong_mean_nlls)
    return 1.0 / (1.0 + ratios)


def forget_truth_ratio_aggregate(ratios: Sequence[float]) -> float:
    """Forget set: mean(min(tr, 1/tr)); 1 means paraphrase and perturbations are equally likely."""
    if not _all_finite(ratios):
        return math.nan
    return _mean([min(r, 1.0 / r) if r > 0 else 0.0 for r in ratios])


def retain_truth_ratio_aggregate(ratios: Sequence[float]) -> float:
    """Retain and utility sets: mean(max(0, 1 - tr)); 1 means the true answer is far more likely."""
    if not _all_finite(ratios):
        return math.nan
    return _mean([max(0.0, 1.0 - r) for r in ratios])


# ---- composites -------------------------------------------------------------------------------------------


def forget_quality(unlearned_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """Two-sided Kolmogorov-Smirnov p-value between per-sample forget truth ratios of the two models."""
    from scipy.stats import ks_2samp

    if len(unlearned_ratios) == 0 or len(retain_model_ratios) == 0:
        raise ValueError("forget_quality needs per-sample truth ratios from both models")
    if not (_all_finite(unlearned_ratios) and _all_finite(retain_model_ratios)):
        return math.nan
    return float(ks_2samp(list(unlearned_ratios), list(retain_model_ratios)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (its limit), NaN when any is NaN or inf, error on negative values."""
    if len(values) == 0:
        raise ValueError("harmonic_mean of nothing")
    if not _all_finite(values):
        return math.nan  # checked first: a 0 next to a NaN must not make it 0
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic_mean needs non-negative values, got {list(values)}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


# ---- memorization -----------------------------------------------------------------------------------------


def extraction_strength(argmax_correct: Sequence[bool]) -> float:
    """1 - k/|y|, k the first answer position from which every teacher-forced argmax is right.

    No correct suffix gives k = |y| and 0 (open-unlearning's loop stops at k = |y| - 1 and reports 1/|y|).
    """
    n = len(argmax_correct)
    if n == 0:
        raise ValueError("extraction_strength needs at least one answer token")
    k = n
    while k > 0 and argmax_correct[k - 1]:
        k -= 1
    return 1.0 - k / n


def exact_memorization(argmax_correct: Sequence[bool]) -> float:
    """Fraction of answer positions whose teacher-forced argmax is the answer token."""
    if len(argmax_correct) == 0:
        raise ValueError("exact_memorization needs at least one answer token")
    return sum(bool(c) for c in argmax_correct) / len(argmax_correct)


# ---- ROUGE ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _rouge_scorer(stemming: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemming)


def rouge_l(prediction: str, reference: str, stemming: bool = True) -> dict[str, float]:
    """ROUGE-L of a generation against the reference answer (rouge_score); keys recall, precision, f1."""
    score = _rouge_scorer(stemming).score(reference, prediction)["rougeL"]
    return {"recall": score.recall, "precision": score.precision, "f1": score.fmeasure}


def rouge_l_recall(prediction: str, reference: str, stemming: bool = True) -> float:
    return rouge_l(prediction, reference, stemming)["recall"]


def rouge_l_f1(prediction: str, reference: str, stemming: bool = True) -> float:
    return rouge_l(prediction, reference, stemming)["f1"]


def _mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of no samples")
    if not _all_finite(values):
        return math.nan
    return sum(values) / len(values)


# ---- non-finite per-sample values -------------------------------------------------------------------------


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


# ---- registry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One metric: its per-sample function (None for composites), how values combine, and its direction."""

    name: str
    per_sample: Callable | None
    aggregate: Callable
    higher_is_better: bool | None
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("prob", probability, _mean, True, "mean of p = exp(-mean answer NLL); on forget, lower = forgotten"),
        Metric(
            "normalized_prob",
            normalized_probability,
            _mean,
            True,
            "mean of p_correct / (p_correct + sum p_perturbed) (TOFU Prob on real_authors, world_facts)",
        ),
        Metric(
            "forget_truth_ratio",
            truth_ratio,
            forget_truth_ratio_aggregate,
            True,
            "mean(min(tr, 1/tr)), tr = p_perturbed / p_paraphrased on the forget set",
        ),
        Metric(
            "truth_ratio",
            truth_ratio,
            retain_truth_ratio_aggregate,
            True,
            "mean(max(0, 1 - tr)) on retain / utility sets",
        ),
        Metric("rougeL_recall", rouge_l_recall, _mean, True, "ROUGE-L recall of the greedy answer; on forget, lower"),
        Metric("rougeL_f1", rouge_l_f1, _mean, True, "ROUGE-L F1 of the greedy continuation; on forget, lower"),
        Metric(
            "extraction_strength",
            extraction_strength,
            _mean,
            False,
            "1 - k/|y|, k the start of the longest teacher-forced argmax-correct suffix",
        ),
        Metric("exact_memorization", exact_memorization, _mean, False, "fraction of argmax-correct answer tokens"),
        Metric(
            "forget_quality",
            None,
            forget_quality,
            True,
            "KS-test p-value of forget truth ratios vs the retain model's",
        ),
        Metric(
            "model_utility",
            None,
            harmonic_mean,
            True,
            "harmonic mean of Prob, ROUGE-L recall, truth ratio on retain, real_authors, world_facts",
        ),
        Metric("mia_loss", mia.loss_score, mia.mia_auc, None, "LOSS attack AUC, forget vs holdout"),
        Metric("mia_zlib", mia.zlib_score, mia.mia_auc, None, "zlib attack AUC, forget vs holdout"),
        Metric("mia_min_k", mia.min_k_score, mia.mia_auc, None, "Min-K% (k=0.4) attack AUC, forget vs holdout"),
        Metric(
            "mia_min_k_pp",
            mia.min_k_plus_plus_score,
            mia.mia_auc,
            None,
            "Min-K%++ (k=0.4) attack AUC, forget vs holdout",
        ),
        Metric("privleak", None, mia.privleak, None, "Min-K% AUC gap to the retain model in %; 0 ideal, <0 leaks"),
    ]
}


# Summary keys reported on the forget set where lower means "more forgotten".
_FORGET_LOWER_IS_BETTER = ("prob", "rougeL_recall", "rougeL_f1", "extraction_strength", "exact_memorization")


def summary_direction(key: str) -> bool | None:
    """Direction of a summary key such as `forget_rougeL_recall`, `retain_prob`, `verbmem_f` or `mia_loss_auc`."""
    if key in METRICS:
        return METRICS[key].higher_is_better
    if key.startswith("mia_") or key == "privleak":
        return None
    if key in ("verbmem_f", "knowmem_f"):
        return False
    if key == "knowmem_r":
        return True
    if key.startswith("forget_"):
        base = key[len("forget_") :]
        if base == "truth_ratio":
            return True
        return False if base in _FORGET_LOWER_IS_BETTER else None
    for base in ("truth_ratio", "prob", "rougeL_recall", "rougeL_f1"):
        if key.endswith("_" + base):
            return True
    return None
