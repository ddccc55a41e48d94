"""IdK-DPO (`idk_dpo`): DPO on the forget questions with a refusal as the preferred answer and the forget
answer as the rejected one, plus a retain term.

    L = −(2/β)·mean_i log σ(β·[(logπ_θ(y_w,i) − logπ_ref(y_w,i)) − (logπ_θ(y_l,i) − logπ_ref(y_l,i))]) + c·R

y_w is the refusal (from the toolkit's list, chosen per row as `idk` does), y_l the forget answer, logπ the
*summed* answer-token log-probability of a row, as in DPO, whose log-ratio is that of the whole sequence; a
per-token mean would make the margin of a long answer count as much as a short one's and change β's scale
from the paper's. The mean runs over rows (one pair each), so a DDP step over b + b rows equals one process's
step over 2b. The 2/β factor is NPO's convention (it makes the loss's gradient at θ = θ_ref independent of β);
DPO itself writes the loss without it, which only rescales the loss. θ_ref is the adapter turned off for LoRA,
else the frozen copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer
from .npo import PositiveBetaCheck


def dpo_loss(win_log_ratio: torch.Tensor, lose_log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·(win_log_ratio − lose_log_ratio)); log ratios are logπ_θ − logπ_ref per row."""
    return -(2.0 / beta) * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()


@dataclass
class IdkDPOConfig(PositiveBetaCheck, RetainWeightField, RetainLossField, UnlearnConfig):
    """DPO with refusals preferred over the forget answers, plus c·R."""

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature β (> 0)."})


class IdkDPOTrainer(UnlearningTrainer):
    family = "ascent"  # its rejected-answer side is NPO's loss, the part that a large learning rate overdoes
    summary = (
        "IdK-DPO: direct preference optimization that prefers a refusal over the forget answer, relative to the "
        "reference model, plus a retain-set loss."
    )
    tags = ("idk_dpo",)
    paper = {
        "title": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        "url": "https://arxiv.org/abs/2305.18290",
    }
    needs_reference = True
    needs_refusal = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "refusal" not in inputs:
            raise ValueError("idk_dpo needs refusal answers: build PairedDataset(refusal=...) (recipes do this)")
        refusal_nll, win_logp = self.stats(model, inputs["refusal"])
        _, ref_win_logp = self.ref_stats(model, inputs["refusal"])
        forget_nll, lose_logp = self.stats(model, inputs["forget"])
        _, ref_lose_logp = self.ref_stats(model, inputs["forget"])
        win_log_ratio, lose_log_ratio = win_logp - ref_win_logp, lose_logp - ref_lose_logp
        forget_term = dpo_loss(win_log_ratio, lose_log_ratio, self.args.beta)
        return self.with_retain_term(
            model,
            inputs,
            forget_term,
            forget_dpo=forget_term,
            dpo_margin=(win_log_ratio - lose_log_ratio).mean(),
            forget_nll=forget_nll.mean(),
            refusal_nll=refusal_nll.mean(),
        )
