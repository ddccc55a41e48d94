"""MUSE's privleak as an `evaluate` metric, computed by llm_unlearn.evaluation.mia."""

import datasets
import evaluate

from llm_unlearn.evaluate_modules._common import MUSE, CheckedInputs, choose, metric_info, split_by_membership
from llm_unlearn.evaluation import mia

_DESCRIPTION = """privleak in percent: ((1 - AUC_unlearned) - (1 - AUC_retain)) / (1 - AUC_retain) * 100, the AUCs
being the membership-inference AUC of telling forget samples from holdout samples, for the unlearned model and
for the retain model. 0 is ideal, negative = forget samples still look like members (under-unlearned), positive
= over-unlearned. Two configurations: "scores" (the default) takes both models' attack scores of the same
forget and holdout samples, "aucs" the two AUCs."""

_INPUTS = """
Args, config "scores" (default), one row per forget or holdout sample:
    score (list of float): the unlearned model's loss-like attack score (higher = looks unseen), e.g. Min-K%.
    retain_model_score (list of float): the retain model's score of the same sample.
    is_forget (list of bool): True for a forget sample, False for a holdout one.
Args, config "aucs", one row:
    auc_unlearned (list of one float), auc_retain (list of one float).
Returns:
    privleak (float), and with "scores" auc_unlearned and auc_retain (floats).
Example:
    >>> privleak = llm_unlearn.evaluate_modules.load("privleak", config_name="aucs")
    >>> privleak.compute(auc_unlearned=[0.8], auc_retain=[0.6])
"""

SCORES = {
    "score": datasets.Value("float64"),
    "retain_model_score": datasets.Value("float64"),
    "is_forget": datasets.Value("bool"),
}
AUCS = {"auc_unlearned": datasets.Value("float64"), "auc_retain": datasets.Value("float64")}
CONFIGS = {"default": SCORES, "scores": SCORES, "aucs": AUCS}


class Privleak(CheckedInputs, evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, MUSE, _INPUTS, choose("privleak", "config_name", self.config_name, CONFIGS))

    def _compute(self, **columns):  # the input columns of the configuration (see _INPUTS)
        if self.config_name == "aucs":
            if len(columns["auc_unlearned"]) != 1:
                raise ValueError(f"privleak: config 'aucs' takes one row, got {len(columns['auc_unlearned'])}")
            return {"privleak": mia.privleak(columns["auc_unlearned"][0], columns["auc_retain"][0])}
        auc_unlearned = mia.mia_auc(*split_by_membership(columns["score"], columns["is_forget"]))
        auc_retain = mia.mia_auc(*split_by_membership(columns["retain_model_score"], columns["is_forget"]))
        return {
            "privleak": mia.privleak(auc_unlearned, auc_retain),
            "auc_unlearned": auc_unlearned,
            "auc_retain": auc_retain,
        }
