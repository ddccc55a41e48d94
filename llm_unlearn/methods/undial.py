"""UNDIAL (`undial`): self-distillation towards the reference's distribution with the answer token's logit
lowered, plus a retain term.

At every answer position t of a forget row, the target is q_t = softmax(z_ref,t − γ·onehot(y_t)), from θ_ref's
logits without grad; the forget loss is the cross-entropy H(q_t, p_θ(·|x_<t)) averaged over the row's answer
tokens, then over rows (the NLL's weighting, so a DDP step over b + b rows equals one process's over 2b).
The cross-entropy differs from KL(q_t ‖ p_θ) by the target's entropy, a constant: same gradients. The target
is fixed, so the loss is bounded below, unlike gradient ascent: the model is pulled towards the reference
everywhere except on the answer token, whose odds against every other token the target scales by e^−γ.

Open-unlearning's implementation averages the cross-entropy over every position of the batch, prompt and
padding included (where the "adjusted" target is the reference's own distribution, which dilutes the
forget signal by the prompt length); here it is over answer tokens only. The paper trains without a retain
term; here c·R is the toolkit's shared retain term (c = 1 by default, `retain_weight: 0` reproduces the paper;
the retain loss is still computed and logged then).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer
from .losses import per_sample_means, sequence_stats, shifted_answer_labels, soft_target_cross_entropy


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over rows of the mean over answer tokens of H(softmax(z_ref − γ·onehot(y)), p_θ); logits and
    labels unshifted (position t predicts labels[:, t + 1])."""
    targets, mask = shifted_answer_labels(labels)
    adjusted = (
        ref_logits[:, :-1]
        .float()
        .scatter_add(-1, targets.unsqueeze(-1), torch.full_like(targets, -gamma, dtype=torch.float32).unsqueeze(-1))
    )
    return per_sample_means(soft_target_cross_entropy(logits[:, :-1], adjusted), mask).mean()


@dataclass
class UndialConfig(RetainWeightField, RetainLossField, UnlearnConfig):
    """Cross-entropy to softmax(z_ref − γ·onehot(y)) on the forget answers, plus c·R."""

    gamma: float = field(
        default=10.0,
        metadata={
            "help": "γ (> 0), subtracted from the reference logit of each forget-answer token to build the "
            "target (open-unlearning's default; its notes suggest 3, 10 or 30)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0 (the logit penalty on the forget-answer token), not {self.gamma}")


class UndialTrainer(UnlearningTrainer):
    family = "descent"  # it minimizes a cross-entropy to a fixed target, bounded below like fine-tuning
    summary = (
        "UNDIAL: self-distillation towards the reference model's distribution with the forget-answer token's "
        "logit lowered, plus a retain-set loss."
    )
    tags = ("undial",)
    paper = {
        "title": "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
        "url": "https://arxiv.org/abs/2402.10052",
    }
    needs_reference = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, labels = self.answer_logits(model, inputs["forget"])
        ref_logits, _ = self.answer_logits(model, inputs["forget"], reference=True)
        forget_term = undial_loss(logits, ref_logits, labels, self.args.gamma)
        forget_nll, _, _ = sequence_stats(logits, labels)
        return self.with_retain_term(
            model, inputs, forget_term, forget_undial=forget_term, forget_nll=forget_nll.mean()
        )
