"""IdK (`idk`): learn refusal answers on the forget questions while keeping the retain NLL."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import UnlearnConfig, UnlearningTrainer


@dataclass
class IdkConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain NLL."})


class IdkTrainer(UnlearningTrainer):
    needs_refusal = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "refusal" not in inputs:
            raise ValueError("idk needs refusal answers: build PairedDataset(refusal=...) (recipes do this)")
        refusal_nll = self.nll(model, inputs["refusal"])
        retain_nll = self.nll(model, inputs["retain"])
        loss = refusal_nll + self.args.retain_weight * retain_nll
        self.record(refusal_nll=refusal_nll, retain_nll=retain_nll, loss=loss)
        return loss
