"""Membership-inference AUC (forget vs holdout) as an `evaluate` metric, computed by llm_unlearn.evaluation.mia."""

import datasets
import evaluate

from llm_unlearn.evaluate_modules._common import MIN_K, CheckedInputs, choose, metric_info, split_by_membership
from llm_unlearn.evaluation import mia

_DESCRIPTION = """ROC AUC of telling forget samples (members) from holdout samples with a loss-like attack score
(higher = looks unseen): the probability that a random forget sample scores lower than a random holdout
sample. 1 = forget samples perfectly detected, 0.5 = indistinguishable from unseen data. The configuration
names the attack: "scores" (the default) takes precomputed scores; "loss" (mean token NLL), "zlib" (NLL over
the zlib-compressed length of the text), "min_k" (Min-K%) and "min_k_pp" (Min-K%++) compute them from the
scored tokens' log-probabilities. A NaN or inf input gives NaN."""

_INPUTS = """
Args, one row per forget or holdout sample:
    is_forget (list of bool): True for a forget sample, False for a holdout one.
    score (list of float): config "scores" only, the attack score.
    token_logprobs (list of list of float): every other config, the log-probability of each scored token.
    text (list of str): config "zlib", the sample's text.
    mu, sigma (list of list of float): config "min_k_pp", per token the mean and standard deviation of log p(z)
        under the model's next-token distribution.
    k (float): configs "min_k" and "min_k_pp", the fraction of lowest tokens kept (default 0.4).
Returns:
    mia_auc (float), and scores (list of float): the attack score of each row.
Example:
    >>> mia_auc = llm_unlearn.evaluate_modules.load("mia_auc", config_name="min_k")
    >>> mia_auc.compute(token_logprobs=[[-0.1, -0.2], [-2.0, -3.0]], is_forget=[True, False], k=0.5)
"""

LOGPROBS = datasets.Sequence(datasets.Value("float64"))
MEMBER = {"is_forget": datasets.Value("bool")}
CONFIGS = {
    "default": {"score": datasets.Value("float64"), **MEMBER},
    "scores": {"score": datasets.Value("float64"), **MEMBER},
    "loss": {"token_logprobs": LOGPROBS, **MEMBER},
    "zlib": {"token_logprobs": LOGPROBS, "text": datasets.Value("string"), **MEMBER},
    "min_k": {"token_logprobs": LOGPROBS, **MEMBER},
    "min_k_pp": {"token_logprobs": LOGPROBS, "mu": LOGPROBS, "sigma": LOGPROBS, **MEMBER},
}
TAKES_K = ("min_k", "min_k_pp")


def attack_scores(config: str, columns: dict, k: float) -> list[float]:
    logprobs = columns.get("token_logprobs")
    if config in ("default", "scores"):
        return list(columns["score"])
    if config == "loss":
        return [mia.loss_score(row) for row in logprobs]
    if config == "zlib":
        return [mia.zlib_score(row, text) for row, text in zip(logprobs, columns["text"])]
    if config == "min_k":
        return [mia.min_k_score(row, k) for row in logprobs]
    return [mia.min_k_plus_plus_score(row, m, s, k) for row, m, s in zip(logprobs, columns["mu"], columns["sigma"])]


class MiaAuc(CheckedInputs, evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, MIN_K, _INPUTS, choose("mia_auc", "config_name", self.config_name, CONFIGS))

    def check_options(self, k=None):
        if k is not None and self.config_name not in TAKES_K:
            raise ValueError(f"mia_auc: k applies to the configs {list(TAKES_K)}, not {self.config_name!r}")
        if k is not None and not (isinstance(k, (int, float)) and not isinstance(k, bool) and 0.0 < k <= 1.0):
            raise ValueError(f"mia_auc: k must be in (0, 1], got {k}")

    def _compute(self, is_forget, k=None, **columns):  # columns: the config's inputs besides is_forget
        scores = attack_scores(self.config_name, columns, mia.DEFAULT_MIN_K if k is None else k)
        return {"mia_auc": mia.mia_auc(*split_by_membership(scores, is_forget)), "scores": scores}
