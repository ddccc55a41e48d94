"""CE-U (`ce_u`): cross-entropy to the model's own distribution with the answer token removed.

At every answer position t of a forget row, the target q_t is softmax of the model's current logits with the
answer token's logit set to −∞ (taken as a constant): what the model would say if it could not say y_t. The
loss is H(q_t, p_θ) averaged over the row's answer tokens, then over rows (the NLL's weighting, so a DDP step
over b + b rows equals one process's over 2b). Its gradient in the logits is p_θ − q_t: y_t's logit falls in
proportion to p_θ(y_t), which vanishes as the token is forgotten (where gradient ascent's grows without
bound), and the target keeps the other tokens' relative odds. Reference-free, and, as in the paper, without a
retain term. Open-unlearning, after a footnote of the paper's TOFU training settings, leaves each row's first
answer token out of the loss; here every answer token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import UnlearnConfig, UnlearningTrainer
from .losses import per_sample_means, sequence_stats, shifted_answer_labels, soft_target_cross_entropy


def ce_u_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the mean over answer tokens of H(softmax(z with z_y = −∞), p_θ); logits and labels
    unshifted (position t predicts labels[:, t + 1])."""
    targets, mask = shifted_answer_labels(labels)
    logits = logits[:, :-1]
    without_answer = logits.detach().float().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    return per_sample_means(soft_target_cross_entropy(logits, without_answer), mask).mean()


@dataclass
class CEUConfig(UnlearnConfig):
    """H(softmax(z with the answer token's logit at −∞), p_θ) on the forget answers; no retain term."""


class CEUTrainer(UnlearningTrainer):
    family = "descent"  # each step lowers a cross-entropy to a target distribution, like fine-tuning; no ascent
    summary = (
        "CE-U: cross-entropy from the model's own distribution with the forget-answer token removed, "
        "reference-free and without a retain term."
    )
    tags = ("ce_u",)
    paper = {"title": "CE-U: Cross Entropy Unlearning", "url": "https://arxiv.org/abs/2503.01224"}
    needs_retain = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, labels = self.answer_logits(model, inputs["forget"])
        loss = ce_u_loss(logits, labels)
        forget_nll, _, _ = sequence_stats(logits, labels)
        self.record(forget_ce_u=loss, forget_nll=forget_nll.mean(), loss=loss)
        return loss
