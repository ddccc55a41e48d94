"""Hand-computed cases for every evaluation metric (definitions: docs/metrics.md)."""

import itertools
import math
import zlib

import pytest

from llm_unlearn.evaluation import metrics as M
from llm_unlearn.evaluation import mia

LN2, LN4, LN16 = math.log(2), math.log(4), math.log(16)


def test_probability_is_exp_of_minus_mean_nll():
    assert M.probability(LN2) == pytest.approx(0.5)
    assert M.probability(0.0) == 1.0


def test_truth_ratio_uses_geometric_mean_of_perturbed_probabilities():
    # p_correct = 0.5; perturbed p = 0.25 and 0.0625 -> geometric mean 0.125 -> tr = 0.125 / 0.5.
    assert M.geometric_mean_probability([LN4, LN16]) == pytest.approx(0.125)
    assert M.truth_ratio(LN2, [LN4, LN16]) == pytest.approx(0.25)
    # Perturbed answers more likely than the correct one -> tr > 1.
    assert M.truth_ratio(LN16, [LN2]) == pytest.approx(8.0)


def test_truth_ratio_aggregations():
    ratios = [0.25, 4.0, 1.0]
    # forget: mean(min(tr, 1/tr)) = mean(0.25, 0.25, 1)
    assert M.forget_truth_ratio_aggregate(ratios) == pytest.approx(0.5)
    # retain/utility: mean(max(0, 1 - tr)) = mean(0.75, 0, 0)
    assert M.retain_truth_ratio_aggregate(ratios) == pytest.approx(0.25)
    assert M.METRICS["forget_truth_ratio"].aggregate(ratios) == pytest.approx(0.5)
    assert M.METRICS["truth_ratio"].aggregate(ratios) == pytest.approx(0.25)


def test_truth_ratio_extremes_stay_finite():
    assert math.isfinite(M.truth_ratio(5000.0, [0.0]))
    assert M.forget_truth_ratio_aggregate([M.truth_ratio(5000.0, [0.0])]) == pytest.approx(0.0)


def test_normalized_probability():
    # 0.5 / (0.5 + 0.25 + 0.0625)
    assert M.normalized_probability(LN2, [LN4, LN16]) == pytest.approx(0.5 / 0.8125)
    # Tiny probabilities do not underflow into 0/0.
    assert M.normalized_probability(2000.0, [2000.0, 2000.0]) == pytest.approx(1 / 3)


def _exact_ks_pvalue(x, y):
    """Exact two-sided KS p-value by enumerating every split of the pooled sample (no ties)."""

    def statistic(a, b):
        points = sorted(a + b)
        return max(abs(sum(v <= t for v in a) / len(a) - sum(v <= t for v in b) / len(b)) for t in points)

    observed = statistic(x, y)
    pooled = x + y
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    extreme = 0
    for chosen in splits:
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        extreme += statistic(a, b) >= observed - 1e-12
    return extreme / len(splits)


def test_forget_quality_is_the_ks_pvalue():
    # Fully separated samples of 3 and 3: only 2 of the C(6,3) = 20 orderings are as extreme.
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    # Interleaved samples: D = 1/3, the smallest possible; p = 1.
    assert M.forget_quality([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    x, y = [0.1, 0.5, 0.9, 1.3], [0.2, 0.3, 2.0]
    assert M.forget_quality(x, y) == pytest.approx(_exact_ks_pvalue(x, y))
    assert M.forget_quality(x, x) == pytest.approx(1.0)


def test_harmonic_mean():
    assert M.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert M.harmonic_mean([0.6] * 9) == pytest.approx(0.6)
    assert M.harmonic_mean([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        M.harmonic_mean([0.5, -0.1])


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([True, True, True, True], 1.0),  # the whole answer is extracted
        ([False, True, True, True], 0.75),  # k = 1
        ([True, False, True], 1 - 2 / 3),  # partial: only the last token's suffix matches
        ([True, True, False], 0.0),  # no match: last token wrong, k = |y|
        ([False, False, False], 0.0),
    ],
)
def test_extraction_strength(flags, expected):
    assert M.extraction_strength(flags) == pytest.approx(expected)


def test_exact_memorization():
    assert M.exact_memorization([True, False, True, True]) == pytest.approx(0.75)
    assert M.exact_memorization([False]) == 0.0


def test_rouge_l_uses_rouge_score_with_stemming_switch():
    reference, prediction = "the cats sat on the mat", "the cat sat"
    # Stemmed: LCS = the cat sat (3 of 6 reference tokens); unstemmed: "the sat" (2 of 6).
    stemmed = M.rouge_l(prediction, reference, stemming=True)
    assert stemmed["recall"] == pytest.approx(0.5)
    assert stemmed["precision"] == pytest.approx(1.0)
    assert stemmed["f1"] == pytest.approx(2 / 3)
    assert M.rouge_l_recall(prediction, reference, stemming=False) == pytest.approx(1 / 3)
    assert M.rouge_l_f1(prediction, reference, stemming=False) == pytest.approx(4 / 9)
    assert M.rouge_l_recall("", reference) == 0.0


def test_loss_and_zlib_scores():
    assert mia.loss_score([-1.0, -3.0]) == pytest.approx(2.0)
    compressed = len(zlib.compress(b"aaaa"))
    assert compressed == 12
    assert mia.zlib_score([-1.0, -3.0], "aaaa") == pytest.approx(2.0 / 12)
    # Less compressible text divides the same loss by more bytes.
    assert mia.zlib_score([-1.0, -3.0], "q8#kZ!x0vB") < mia.zlib_score([-1.0, -3.0], "aaaa")


def test_min_k_score():
    logprobs = [-1.0, -2.0, -3.0, -4.0, -5.0]
    # k = 0.4 of 5 tokens = 2 lowest: -5, -4.
    assert mia.min_k_score(logprobs, 0.4) == pytest.approx(4.5)
    # k * n = 0.8 < 1: still one token, the lowest.
    assert mia.min_k_score([-1.0, -2.0], 0.4) == pytest.approx(2.0)
    assert mia.min_k_score(logprobs, 1.0) == pytest.approx(3.0)


def test_min_k_plus_plus_score():
    # z = (lp - mu) / sigma = [(-1 + 1.5) / 0.5, (-2 + 1) / 2] = [1, -0.5]
    logprobs, mu, sigma = [-1.0, -2.0], [-1.5, -1.0], [0.5, 2.0]
    assert mia.min_k_plus_plus_score(logprobs, mu, sigma, 0.4) == pytest.approx(0.5)  # one token: -0.5
    assert mia.min_k_plus_plus_score(logprobs, mu, sigma, 1.0) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="one value per token"):
        mia.min_k_plus_plus_score(logprobs, mu[:1], sigma, 0.4)


def test_mia_auc_counts_forget_samples_scored_lower_than_holdout():
    # Pairs (forget < holdout): 0.1<0.3, 0.1<0.15, 0.2<0.3 yes; 0.2<0.15 no -> 3/4.
    assert mia.mia_auc([0.1, 0.2], [0.3, 0.15]) == pytest.approx(0.75)
    assert mia.mia_auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)


def test_privleak_formula_and_sign():
    # An under-unlearned model: every forget sample has a lower loss than every holdout sample.
    auc_unlearned = mia.mia_auc([0.5, 0.6, 0.7], [2.0, 2.5, 3.0])
    assert auc_unlearned == 1.0
    assert mia.privleak(auc_unlearned, 0.5) == pytest.approx(-100.0)
    assert mia.privleak(0.5, 0.5) == pytest.approx(0.0)
    # ((1 - 0.25) - (1 - 0.5)) / (1 - 0.5) * 100
    assert mia.privleak(0.25, 0.5) == pytest.approx(50.0)
    assert mia.privleak(0.7, 0.6) == pytest.approx(((0.3 - 0.4) / 0.4) * 100)
    with pytest.raises(ValueError, match="undefined"):
        mia.privleak(0.9, 1.0)


def test_registry_is_complete_and_consistent():
    import llm_unlearn.evaluation.custom  # noqa: F401 (registers the custom suite's own two metrics)

    expected = {
        "kl_to_start",
        "general_knowledge",
        "prob",
        "normalized_prob",
        "forget_truth_ratio",
        "truth_ratio",
        "rougeL_recall",
        "rougeL_f1",
        "extraction_strength",
        "exact_memorization",
        "forget_quality",
        "model_utility",
        "mia_loss",
        "mia_zlib",
        "mia_min_k",
        "mia_min_k_pp",
        "privleak",
    }
    assert set(M.METRICS) == expected
    for name, metric in M.METRICS.items():
        assert metric.name == name
        assert metric.description and callable(metric.aggregate)
        assert metric.higher_is_better in (True, False, None)
    assert M.METRICS["privleak"].higher_is_better is None
    assert M.METRICS["model_utility"].per_sample is None
    assert M.METRICS["mia_min_k"].per_sample([-1.0, -2.0]) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "key, direction",
    [
        ("forget_quality", True),
        ("model_utility", True),
        ("forget_rougeL_recall", False),
        ("forget_prob", False),
        ("forget_truth_ratio", True),
        ("retain_rougeL_recall", True),
        ("world_facts_prob", True),
        ("privleak", None),
        ("mia_loss_auc", None),
        ("verbmem_f", False),
        ("knowmem_r", True),
    ],
)
def test_summary_direction(key, direction):
    assert M.summary_direction(key) is direction
