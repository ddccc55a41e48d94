"""IdK (`idk`): learn refusal answers on the forget questions while keeping the retain NLL."""

from __future__ import annotations

from dataclasses import dataclass

from .base import RetainWeightField, UnlearnConfig, UnlearningTrainer


@dataclass
class IdkConfig(RetainWeightField, UnlearnConfig):
    """ℓ(θ; x_f, y_refusal) + c·ℓ(θ; D_r): the retain term is always the NLL."""


class IdkTrainer(UnlearningTrainer):
    family = "descent"
    summary = "IDK: fine-tunes the model to answer forget-set questions with refusals while keeping the retain set."
    tags = ("idk",)
    needs_refusal = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "refusal" not in inputs:
            raise ValueError("idk needs refusal answers: build PairedDataset(refusal=...) (recipes do this)")
        refusal_nll = self.nll(model, inputs["refusal"])
        retain_nll = self.nll(model, inputs["retain"])
        loss = refusal_nll + self.args.retain_weight * retain_nll
        self.record(refusal_nll=refusal_nll, retain_nll=retain_nll, loss=loss)
        return loss
