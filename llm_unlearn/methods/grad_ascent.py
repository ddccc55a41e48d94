"""Gradient ascent (`ga`) and GradDiff (`grad_diff`) baselines (docs/design.md, Methods: Baselines)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import RetainLossField, RetainWeightField, UnlearnConfig, UnlearningTrainer


@dataclass
class GAConfig(UnlearnConfig):
    """Gradient ascent: minimize −ℓ(θ; D_f). No retain term (it usually collapses the model)."""


class GATrainer(UnlearningTrainer):
    family = "ascent"
    summary = "Gradient ascent: maximizes the answer NLL on the forget set."
    tags = ("ga",)
    needs_retain = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_nll = self.nll(model, inputs["forget"])
        loss = -forget_nll
        self.record(forget_nll=forget_nll, loss=loss)
        return loss


@dataclass
class GradDiffConfig(RetainWeightField, RetainLossField, UnlearnConfig):
    """GradDiff: −ℓ(θ; D_f) + c·R, R the retain NLL or KL(p_ref‖p_θ) on D_r."""


class GradDiffTrainer(UnlearningTrainer):
    family = "ascent"
    summary = (
        "Gradient difference: gradient ascent on the forget set plus a retain-set loss (NLL or KL to the reference)."
    )
    tags = ("grad_diff",)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_nll = self.nll(model, inputs["forget"])
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = -forget_nll + self.args.retain_weight * retain
        self.record(forget_nll=forget_nll, **{f"retain_{self.args.retain_loss}": retain}, loss=loss)
        return loss
