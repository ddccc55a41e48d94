"""SatImp (`satimp`): token-reweighted gradient ascent whose weight combines saturation (p^β1: tokens already
unlikely count less) and importance ((1 − p)^β2: tokens the model is sure of count less), plus a retain term.

    L = mean_i mean_{t∈y_i} w_t·log p_θ(y_t | x, y_<t) + c·R,   w_t = p^β1·(1 − p)^β2,  p = p_θ(y_t | x, y_<t)

The weights are constants (no gradient flows through them). β1 = 5, β2 = 1 are the defaults its authors gave
open-unlearning; β2 = 0 is WGA with β = β1. Means are per row over its answer tokens, then over rows
(open-unlearning averages over all answer tokens of the batch at once); the per-row mean is the NLL's
weighting, so a DDP step over b + b rows equals one process's over 2b. No reference model is used:
open-unlearning's SatImp loads one and never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer
from .losses import weighted_answer_logprob


@dataclass
class SatImpConfig(RetainWeightField, RetainLossField, UnlearnConfig):
    """mean_i mean_t p^β1·(1 − p)^β2·log p on the forget answers (weights constant), plus c·R."""

    beta1: float = field(default=5.0, metadata={"help": "β1 (≥ 0), the saturation exponent of p in the token weight."})
    beta2: float = field(
        default=1.0, metadata={"help": "β2 (≥ 0), the importance exponent of (1 − p) in the token weight."}
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("beta1", "beta2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")


class SatImpTrainer(UnlearningTrainer):
    family = "ascent"
    summary = (
        "SatImp: gradient ascent on the forget answers with token weights p^β1·(1−p)^β2 from the current "
        "likelihood, plus a retain-set loss."
    )
    tags = ("satimp",)
    paper = {
        "title": "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
        "url": "https://arxiv.org/abs/2505.11953",
    }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        beta1, beta2 = self.args.beta1, self.args.beta2
        forget_term, forget_nll = weighted_answer_logprob(
            *self.answer_logits(model, inputs["forget"]), lambda p: p**beta1 * (1 - p) ** beta2
        )
        return self.with_retain_term(
            model, inputs, forget_term, forget_satimp=forget_term, forget_nll=forget_nll.mean()
        )
