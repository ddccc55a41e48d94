"""TOFU's forget quality as an `evaluate` metric, computed by llm_unlearn.evaluation.metrics."""

import datasets
import evaluate

from llm_unlearn.evaluate_modules._common import TOFU, CheckedInputs, metric_info
from llm_unlearn.evaluation import metrics

_DESCRIPTION = """Forget quality: the two-sided Kolmogorov-Smirnov p-value between the unlearned model's per-question
forget truth ratios and the retain model's (the model never trained on the forget set) on the same questions.
High (near 1) = indistinguishable from the retain model. Any NaN or inf truth ratio gives NaN."""

_INPUTS = """
Args:
    truth_ratio (list of float): per forget question, the unlearned model's truth ratio (the `per_sample`
        output of the truth_ratio module).
    retain_model_truth_ratio (list of float): per forget question, the retain model's truth ratio.
Returns:
    forget_quality (float): the KS-test p-value.
Example:
    >>> forget_quality = llm_unlearn.evaluate_modules.load("forget_quality")
    >>> forget_quality.compute(truth_ratio=[0.2, 0.5, 0.9], retain_model_truth_ratio=[0.6, 0.7, 0.8])
"""


class ForgetQuality(CheckedInputs, evaluate.Metric):
    def _info(self):
        features = {"truth_ratio": datasets.Value("float64"), "retain_model_truth_ratio": datasets.Value("float64")}
        return metric_info(_DESCRIPTION, TOFU, _INPUTS, features)

    def _compute(self, truth_ratio, retain_model_truth_ratio):
        return {"forget_quality": metrics.forget_quality(truth_ratio, retain_model_truth_ratio)}
