"""TOFU's truth ratio as an `evaluate` metric, computed by llm_unlearn.evaluation.metrics."""

import datasets
import evaluate

from llm_unlearn.evaluate_modules._common import TOFU, CheckedInputs, metric_info
from llm_unlearn.evaluation import metrics

_DESCRIPTION = """Truth ratio tr = p_perturbed / p_correct per question, from mean token NLLs:
tr = exp(correct_nll - mean(perturbed_nlls)), p_perturbed being the geometric mean over the perturbed answers.
The aggregate depends on the set: on the forget set mean(min(tr, 1/tr)) (1 = the model cannot tell the true
answer from the perturbed ones), on retain / utility sets mean(max(0, 1 - tr)) (1 = the true answer is far more
likely). A NaN or inf NLL gives a NaN truth ratio and a NaN aggregate."""

_INPUTS = """
Args:
    correct_nll (list of float): per question, the mean token NLL of the correct (paraphrased) answer.
    perturbed_nlls (list of list of float): per question, the mean token NLL of each perturbed answer.
    aggregation (str): "forget" for mean(min(tr, 1/tr)), "retain" for mean(max(0, 1 - tr)).
Returns:
    truth_ratio (float): the aggregate.
    per_sample (list of float): tr of each question.
Example:
    >>> truth_ratio = llm_unlearn.evaluate_modules.load("truth_ratio")
    >>> truth_ratio.compute(correct_nll=[1.0], perturbed_nlls=[[2.0, 3.0]], aggregation="retain")
"""

AGGREGATIONS = {"forget": metrics.forget_truth_ratio_aggregate, "retain": metrics.retain_truth_ratio_aggregate}


class TruthRatio(CheckedInputs, evaluate.Metric):
    choices = {"aggregation": AGGREGATIONS}

    def _info(self):
        features = {
            "correct_nll": datasets.Value("float64"),
            "perturbed_nlls": datasets.Sequence(datasets.Value("float64")),
        }
        return metric_info(_DESCRIPTION, TOFU, _INPUTS, features)

    def _compute(self, correct_nll, perturbed_nlls, aggregation=None):
        ratios = [metrics.truth_ratio(correct, wrong) for correct, wrong in zip(correct_nll, perturbed_nlls)]
        return {"truth_ratio": AGGREGATIONS[aggregation](ratios), "per_sample": ratios}
