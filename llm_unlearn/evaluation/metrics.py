"""Metric definitions: pure functions of numbers, token flags and strings. The registry that drives the suites
(each metric's scores, sets, per-sample function, aggregation, direction and summary keys) is registry.py; its
names (METRICS, Metric, summary_direction, ...) are importable from here too.

Per-sample functions take what scoring produces (mean token NLLs, argmax-correct flags, generated text);
aggregations turn a list of per-sample values into one number. Composite metrics (forget quality, model
utility, privleak) combine already aggregated or reference values and have no per-sample function.

Non-finite numbers (NaN or inf, from a diverged model) are never clamped into confident values: any
non-finite input gives NaN, per sample and in every aggregation. Suites turn a NaN aggregate into null
with the offending rows named (`nonfinite.nonfinite_reason`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

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
    return mean([min(r, 1.0 / r) if r > 0 else 0.0 for r in ratios])


def retain_truth_ratio_aggregate(ratios: Sequence[float]) -> float:
    """Retain and utility sets: mean(max(0, 1 - tr)); 1 means the true answer is far more likely."""
    if not _all_finite(ratios):
        return math.nan
    return mean([max(0.0, 1.0 - r) for r in ratios])


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


def mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of no samples")
    if not _all_finite(values):
        return math.nan
    return sum(values) / len(values)


# The registry imports this module's functions, so its names load on first use (no import cycle).
_REGISTRY_NAMES = ("METRICS", "COLUMNS", "Metric", "Recorded", "Report", "register", "unregister", "summary_direction")


def __getattr__(name: str):
    if name in _REGISTRY_NAMES:
        from llm_unlearn.evaluation import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
