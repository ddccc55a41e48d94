"""Gradient ascent (`ga`) and GradDiff (`grad_diff`) baselines (docs/design.md, Methods: Baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import RETAIN_LOSSES, UnlearnConfig, UnlearningTrainer, check_choice


@dataclass
class GAConfig(UnlearnConfig):
    """Gradient ascent: minimize −ℓ(θ; D_f). No retain term (it usually collapses the model)."""


class GATrainer(UnlearningTrainer):
    needs_retain = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_nll = self.nll(model, inputs["forget"])
        loss = -forget_nll
        self.record(forget_nll=forget_nll, loss=loss)
        return loss


@dataclass
class GradDiffConfig(UnlearnConfig):
    """GradDiff: −ℓ(θ; D_f) + c·R, R the retain NLL or KL(p_ref‖p_θ) on D_r."""

    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' or 'kl' (KL to the reference)."})
    retain_weight: float = field(default=1.0, metadata={"help": "c, the weight of the retain term."})

    def __post_init__(self):
        super().__post_init__()
        check_choice("retain_loss", self.retain_loss, RETAIN_LOSSES)


class GradDiffTrainer(UnlearningTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_nll = self.nll(model, inputs["forget"])
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = -forget_nll + self.args.retain_weight * retain
        self.record(forget_nll=forget_nll, **{f"retain_{self.args.retain_loss}": retain}, loss=loss)
        return loss
