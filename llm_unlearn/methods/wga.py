"""WGA (`wga`): weighted gradient ascent, each forget-answer token weighted by its own likelihood, plus a
retain term.

    L = mean_i mean_{t∈y_i} w_t·log p_θ(y_t | x, y_<t) + c·R,   w_t = p_θ(y_t | x, y_<t)^β  (a constant)

Minimizing the first term is gradient ascent on the answer NLL in which a token the model no longer predicts
(small p) stops counting, so the ascent fades out instead of running away as plain GA does. Means are per row
over its answer tokens, then over rows (open-unlearning averages over all answer tokens of the batch at once);
the per-row mean is the NLL's weighting, so a DDP step over b + b rows equals one process's over 2b. No
reference model is used: open-unlearning's WGA loads one and never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer
from .losses import weighted_answer_logprob
from .npo import PositiveBetaCheck


@dataclass
class WGAConfig(PositiveBetaCheck, RetainWeightField, RetainLossField, UnlearnConfig):
    """mean_i mean_t p_θ(y_t)^β·log p_θ(y_t) on the forget answers (weights constant), plus c·R."""

    beta: float = field(
        default=1.0,
        metadata={"help": "β (> 0) in the token weight p_θ(y_t)^β: larger, the less unlikely tokens count."},
    )


class WGATrainer(UnlearningTrainer):
    family = "ascent"
    summary = (
        "WGA: gradient ascent on the forget answers with each token weighted by its current likelihood, plus a "
        "retain-set loss."
    )
    tags = ("wga",)
    paper = {
        "title": "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
        "url": "https://arxiv.org/abs/2502.19301",
    }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        beta = self.args.beta
        forget_term, forget_nll = weighted_answer_logprob(
            *self.answer_logits(model, inputs["forget"]), lambda p: p**beta
        )
        return self.with_retain_term(model, inputs, forget_term, forget_wga=forget_term, forget_nll=forget_nll.mean())
