"""PDU, primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual Framework
for Large Language Models").

The constrained problem  min_θ ℓ_f(θ)  s.t.  ℓ_r(θ) ≤ ε  is solved on its Lagrangian ℓ_f + λ·(ℓ_r − ε):
each step descends it in θ at the current λ, then projected dual ascent moves λ after the optimizer step,

    λ ← max(0, λ + η·(ℓ̄_r − ε)),

ℓ̄_r the retain loss of that step (the mean over its accumulation window and over processes, so every process
holds the same λ). λ stays at λ0 for the first `dual_warmup` steps (the paper's warm start). The forget loss is
the paper's logit-margin flattening, softmax-free and zero when the next-token logits are flat:

    ℓ_f = mean_i mean_{t∈A_i} (max_v z_tv − mean_v z_tv)²

over the positions A_i that predict row i's labelled tokens (as the NLL scores them; open-unlearning's PDU
masks the unshifted positions and averages over every token of the batch instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data.collate import IGNORE_INDEX
from .base import RetainLossField, UnlearnConfig, UnlearningTrainer
from .dual import DualSettingsCheck, DualVariableCallback
from .losses import forward_logits, needed_window, sequence_stats


def logit_margin_flattening(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i mean_{t: label_{t+1} ≠ −100} (max_v z_tv − mean_v z_tv)², logits and labels aligned like the NLL's."""
    logits = logits[:, :-1].float()
    scored = (labels[:, 1:] != IGNORE_INDEX).to(logits.dtype)
    margin_sq = (logits.max(-1).values - logits.mean(-1)).pow(2)
    return ((margin_sq * scored).sum(-1) / scored.sum(-1).clamp_min(1)).mean()


def projected_dual_step(lam: float, retain_loss: float, bound: float, step_size: float) -> float:
    """max(0, λ + η·(ℓ_r − ε)): λ grows while the constraint is violated and shrinks, never below 0, while it holds."""
    return max(0.0, lam + step_size * (retain_loss - bound))


@dataclass
class PDUConfig(DualSettingsCheck, RetainLossField, UnlearnConfig):
    """min ℓ_f s.t. ℓ_r ≤ ε on the Lagrangian ℓ_f + λ(ℓ_r − ε), λ by projected dual ascent (defaults: the
    authors' TOFU setting)."""

    retain_bound: float = field(
        default=0.3,
        metadata={
            "help": "ε, the ceiling on the retain loss (nats/token for retain_loss nll). Set it from the start "
            "model: the paper suggests (1 + a)·ℓ_r(θ_ref) for a tolerance a; below the start model's retain loss "
            "λ grows every step."
        },
    )
    lambda_init: float = field(default=100.0, metadata={"help": "λ0, the initial dual variable (≥ 0)."})
    dual_step: float = field(default=5.0, metadata={"help": "η, the dual ascent step size (≥ 0)."})
    dual_warmup: float = field(
        default=0.5,
        metadata={
            "help": "Optimizer steps at the start during which λ stays at λ0: a count (≥ 1) or, below 1, a fraction "
            "of the run (0.5: the authors' TOFU runs hold λ for 5 of 10 epochs)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dual_warmup < 0 or (self.dual_warmup >= 1 and self.dual_warmup != int(self.dual_warmup)):
            raise ValueError(
                f"dual_warmup must be a fraction of the run in [0, 1) or a whole number of steps, not {self.dual_warmup}"
            )

    def warmup_steps_for(self, total_steps: int) -> int:
        return math.ceil(self.dual_warmup * total_steps) if self.dual_warmup < 1 else int(self.dual_warmup)


class PrimalDualCallback(DualVariableCallback):
    """Collects the retain losses of each optimizer step and takes the projected dual step after it."""

    FILE = "pdu_dual.json"
    method = "pdu"

    def __init__(self, trainer, lam: float):
        super().__init__(trainer, lam)
        self._retain_losses: list[float] = []

    def observe(self, retain_loss: torch.Tensor) -> None:
        self._retain_losses.append(float(retain_loss.detach()))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self._retain_losses:
            return
        local = sum(self._retain_losses) / len(self._retain_losses)
        self._retain_losses.clear()
        step = state.global_step + 1  # the update just applied (global_step counts those completed before it)
        if step > args.warmup_steps_for(state.max_steps):
            retain = self.mean_over_processes(local)[0]
            self.lam = projected_dual_step(self.lam, retain, args.retain_bound, args.dual_step)
            self.updates += 1
        # Logged per process and averaged by the log: the step's constraint slack, and λ for the next step.
        self.trainer.record(pdu_lambda=self.lam, pdu_constraint=local - args.retain_bound)


class PDUTrainer(UnlearningTrainer):
    """One backward of ℓ_f + λ·(ℓ_r − ε) per step; `self.dual` owns λ."""

    family = "ascent"
    summary = (
        "PDU: flattens the forget set's next-token logits subject to a ceiling on the retain loss, enforced by a "
        "dual variable that rises while the ceiling is exceeded."
    )
    tags = ("pdu",)
    paper = {
        "title": "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models, 2025",
        "url": "https://arxiv.org/abs/2506.05314",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dual = PrimalDualCallback(self, self.args.lambda_init)
        self.add_callback(self.dual)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = inputs["forget"]
        window = needed_window(forget["labels"][:, 1:] != IGNORE_INDEX)
        logits = forward_logits(model, forget, window)
        labels = window.labels(forget["labels"])
        forget_term = logit_margin_flattening(logits, labels)
        forget_nll = sequence_stats(logits.detach(), labels)[0].mean()
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = forget_term + self.dual.lam * (retain - self.args.retain_bound)
        self.dual.observe(retain)
        self.record(
            forget_margin=forget_term,
            forget_nll=forget_nll,
            **{f"retain_{self.args.retain_loss}": retain},
            loss=loss,
        )
        return loss
