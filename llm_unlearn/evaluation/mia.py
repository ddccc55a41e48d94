"""Membership-inference attacks on scored sequences, their AUC, and privleak.

Every attack returns a *loss-like* score: higher means "looks unseen" (non-member), lower means "looks
memorized". Inputs are the log-probabilities of the scored tokens, as produced by `scoring.score_sequences`:
for QA, LOSS and zlib take the whole labelled span (answer + end-of-turn) and Min-K% / Min-K%++ the answer
tokens only; for raw text, every token but the first.

A NaN or infinite input (a diverged model) gives a NaN score, and a NaN score gives a NaN AUC and privleak:
they are never sorted, clamped or ranked into a confident-looking number.

Sign convention of the AUC: `mia_auc(forget, holdout)` is the probability that a random forget sample gets
a lower attack score (looks more memorized) than a random holdout sample, i.e. the ROC AUC of detecting
forget samples as members. 1.0 = forget perfectly detected, 0.5 = indistinguishable from unseen data.
This is `roc_auc_score` with holdout labelled 1 and the loss-like score, the convention of open-unlearning,
under which `privleak` below is negative for an under-unlearned model and 0 for the retain model.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

DEFAULT_MIN_K = 0.4


def _all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_nonempty(values: Sequence[float], what: str) -> None:
    if len(values) == 0:
        raise ValueError(f"{what}: got no scored tokens; every sample needs at least one labelled token")


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack: mean token NLL."""
    _check_nonempty(token_logprobs, "loss_score")
    if not _all_finite(token_logprobs):
        return math.nan
    return -sum(token_logprobs) / len(token_logprobs)


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """zlib attack (Carlini et al. 2021): mean token NLL divided by the zlib-compressed length of the text in bytes.

    Dividing by the text's own compressibility discounts sequences that are simply predictable (repetitive).
    """
    entropy = len(zlib.compress(text.encode("utf-8")))
    return loss_score(token_logprobs) / entropy


def _lowest_k(values: Sequence[float], k: float) -> list[float]:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], not {k}")
    count = max(1, int(len(values) * k))  # at least one token even when k * n < 1
    return sorted(values)[:count]


def min_k_score(token_logprobs: Sequence[float], k: float = DEFAULT_MIN_K) -> float:
    """Min-K% (Shi et al. 2024): minus the mean of the lowest k-fraction of token log-probs (at least one token)."""
    _check_nonempty(token_logprobs, "min_k_score")
    if not _all_finite(token_logprobs):
        return math.nan  # sorting would put a NaN anywhere
    lowest = _lowest_k(token_logprobs, k)
    return -sum(lowest) / len(lowest)


def min_k_plus_plus_score(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float = DEFAULT_MIN_K
) -> float:
    """Min-K%++ (Zhang et al. 2025): minus the mean of the lowest k-fraction of standardized token log-probs.

    Each token's log-prob is standardized by the mean `mu` and standard deviation `sigma` of log p(z) for z drawn
    from the model's own next-token distribution at that position (mu = sum_z p(z) log p(z)).
    A zero sigma (a one-hot distribution) is floored to avoid dividing by zero.
    """
    _check_nonempty(token_logprobs, "min_k_plus_plus_score")
    if not len(token_logprobs) == len(mu) == len(sigma):
        raise ValueError("min_k_plus_plus_score: token_logprobs, mu and sigma must have one value per token")
    if not (_all_finite(token_logprobs) and _all_finite(mu) and _all_finite(sigma)):
        return math.nan  # max(NaN, floor) and sorting NaN give arbitrary numbers
    z = [(lp - m) / max(s, 1e-8) for lp, m, s in zip(token_logprobs, mu, sigma)]
    lowest = _lowest_k(z, k)
    return -sum(lowest) / len(lowest)


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC of telling forget (members) from holdout with a loss-like score; see the module docstring.
    NaN when any score is NaN or infinite."""
    from sklearn.metrics import roc_auc_score

    if len(forget_scores) == 0 or len(holdout_scores) == 0:
        raise ValueError("mia_auc needs at least one forget and one holdout score")
    if not (_all_finite(forget_scores) and _all_finite(holdout_scores)):
        return math.nan
    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(labels, list(forget_scores) + list(holdout_scores)))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE privleak in percent: ((1 - AUC_unl) - (1 - AUC_ret)) / (1 - AUC_ret) * 100.

    0 is ideal (the unlearned model leaks as much as the retain model); negative means under-unlearned (forget
    samples still look like members), positive means over-unlearned. Undefined when the retain model's AUC is 1.
    NaN when either AUC is NaN.
    """
    if not _all_finite([auc_unlearned, auc_retain]):
        return math.nan
    denominator = 1.0 - auc_retain
    if math.isclose(denominator, 0.0, abs_tol=1e-12):
        raise ValueError("privleak is undefined: the retain model's AUC is 1 (it separates forget from holdout)")
    return ((1.0 - auc_unlearned) - denominator) / denominator * 100.0
