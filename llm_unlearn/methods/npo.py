"""NPO and SimNPO (docs/design.md, Methods: Baselines). logp is the summed answer log-probability of a sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer
from .losses import npo_loss


def simnpo_loss(mean_nll: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−(β/|y|)·logp_θ − γ) = −(2/β)·mean log σ(β·meanNLL − γ); reference-free."""
    return -(2.0 / beta) * F.logsigmoid(beta * mean_nll - gamma).mean()


class PositiveBetaCheck:
    """Refuses β ≤ 0 (both losses divide by it); listed first in the bases of a config that declares `beta`."""

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, not {self.beta}")


@dataclass
class NPOConfig(PositiveBetaCheck, RetainWeightField, RetainLossField, UnlearnConfig):
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature β."})


class NPOTrainer(UnlearningTrainer):
    family = "ascent"
    summary = (
        "NPO: pushes the forget-set likelihood below the reference model's with a bounded logistic loss, "
        "plus a retain-set loss."
    )
    tags = ("npo",)
    needs_reference = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        nll, logp = self.stats(model, inputs["forget"])
        _, ref_logp = self.ref_stats(model, inputs["forget"])
        forget_term = npo_loss(logp, ref_logp, self.args.beta)
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = forget_term + self.args.retain_weight * retain
        self.record(
            forget_npo=forget_term, forget_nll=nll.mean(), **{f"retain_{self.args.retain_loss}": retain}, loss=loss
        )
        return loss


@dataclass
class SimNPOConfig(PositiveBetaCheck, RetainWeightField, RetainLossField, UnlearnConfig):
    beta: float = field(default=2.5, metadata={"help": "SimNPO β (length-normalized; choice: 2.5)."})
    gamma: float = field(default=0.0, metadata={"help": "SimNPO reward margin γ."})


class SimNPOTrainer(UnlearningTrainer):
    family = "ascent"
    summary = "SimNPO: reference-free NPO on the length-normalized forget-set log-likelihood, plus a retain-set loss."
    tags = ("simnpo",)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        nll, _ = self.stats(model, inputs["forget"])
        forget_term = simnpo_loss(nll, self.args.beta, self.args.gamma)
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = forget_term + self.args.retain_weight * retain
        self.record(
            forget_simnpo=forget_term, forget_nll=nll.mean(), **{f"retain_{self.args.retain_loss}": retain}, loss=loss
        )
        return loss
