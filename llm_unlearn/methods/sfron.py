"""SFR-on: saliency-masked forgetting steps interleaved with retain steps.

An adaptation to causal LMs of a method published for image classifiers ("saliency forgetting in the
remain-preserving manifold, online"). Before training, diagonal Fishers of the answer NLL are estimated on
the forget set (F_f) and a retain subset (F_r); a weight is *salient* when F_f/F_r ≥ γ. Then every step takes
a retain step (NLL, or KL to θ_ref), and every `forget_freq` steps a forget step comes first:

* adaptive-weighted gradient ascent, loss −mean_i w_i·ℓ_i with w_i ∝ ℓ_i^(−λ) normalized to mean 1 (samples
  that are still well remembered, small ℓ_i, weigh more), scaled by the forget strength
  a_t = a_0·(1 + cos(πt/T))/2 (t = global step, T = total steps);
* its gradient is multiplied by the saliency mask and norm-clipped to `forget_clip`;
* it is applied by the same optimizer as the retain steps, at the current learning rate.

The strength scales the loss, before masking and clipping, as the SFR-on authors' code does. Scaling the
forget step's learning rate instead is almost inert when forget and retain steps share AdamW's moments: the
forget gradient enters the moments in full and is applied by the later retain steps at the full learning
rate. When a_t = 0 the forget step is skipped outright, so strength 0 is exactly training without forget
steps (a zero gradient would still step AdamW: decay its moments, advance its step count, decay weights).

The Fisher pass and the saliency mask (their memory bound, and the per-row rule over LoRA) are in
`methods/saliency.py`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from .base import RetainLossField, UnlearnConfig, UnlearningTrainer
from .gradients import all_reduce_mean, refuse_sharded_gradients, trainable_parameters
from .saliency import SaliencyMask, apply_saliency_mask, compute_saliency


@dataclass
class SFROnConfig(RetainLossField, UnlearnConfig):
    """Saliency-masked adaptive gradient ascent every `forget_freq` steps, a retain step every step."""

    forget_freq: int = field(default=2, metadata={"help": "Take a forget step every N steps (choice: 2)."})
    forget_strength: float = field(
        default=1.0,
        metadata={
            "help": "a_0: the forget loss is scaled by a_0·(1+cos(πt/T))/2 before masking and clipping "
            "(0: no forget steps)."
        },
    )
    sample_weight_power: float = field(
        default=0.5, metadata={"help": "λ in the per-sample forget weights w_i ∝ ℓ_i^(−λ) (normalized to mean 1)."}
    )
    forget_clip: float = field(default=1.0, metadata={"help": "Max L2 norm of the masked forget gradient."})
    saliency_gamma: float = field(default=1.0, metadata={"help": "γ: a weight is salient when F_f/F_r ≥ γ."})
    fisher_samples: int = field(
        default=128, metadata={"help": "Retain rows for F_r (a seeded subset; F_f uses the whole forget set)."}
    )
    fisher_batch_size: int = field(
        default=1,
        metadata={
            "help": "Rows per squared gradient in the Fisher pass (1: exact per-sample; more: faster, approximate)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("forget_freq", "fisher_samples", "fisher_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("forget_strength", "sample_weight_power", "saliency_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.forget_clip <= 0:
            raise ValueError(f"forget_clip must be > 0, not {self.forget_clip}")


# --- pure functions ----------------------------------------------------------------------------------------


def adaptive_weights(per_sample_loss: torch.Tensor, power: float, mean_inverse: torch.Tensor | None = None):
    """w_i = ℓ_i^(−power) / mean_j ℓ_j^(−power); `mean_inverse` overrides the mean (all processes' rows)."""
    inverse = per_sample_loss.detach().float().clamp_min(1e-6).pow(-power)
    return inverse / (inverse.mean() if mean_inverse is None else mean_inverse)


def forget_schedule(step: int, total_steps: int, a0: float) -> float:
    """a_t = a_0·(1 + cos(π·t/T))/2: a_0 at t = 0, 0 at t = T."""
    total = max(int(total_steps), 1)
    return a0 * (1.0 + math.cos(math.pi * min(step, total) / total)) / 2.0


def clip_grads_(params: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients in place so that their joint L2 norm is at most max_norm; return the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / norm)
    return norm


# --- trainer --------------------------------------------------------------------------------------------------


class SFROnTrainer(UnlearningTrainer):
    """Overrides training_step: an optional masked forget step (own optimizer step), then the retain step."""

    family = "ascent"
    summary = (
        "SFR-on: saliency-masked, adaptively weighted gradient ascent on the forget set interleaved with retain steps."
    )
    tags = ("sfron",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded_gradients(self, "sfron")
        self.saliency: SaliencyMask | None = None
        self.fisher_peak_bytes = 0
        self.forget_steps = 0
        self._last_forget_step = -1
        self.add_callback(SaliencyCheckpointCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        self.record(**{f"retain_{self.args.retain_loss}": retain}, loss=retain)
        return retain

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.saliency is None:
            started = time.perf_counter()
            self.saliency, fisher = compute_saliency(self, model, self.args.seed)
            self.fisher_peak_bytes = fisher.peak_bytes
            self.record(saliency_fraction=self.saliency.fraction(), fisher_seconds=time.perf_counter() - started)
        inputs = self._prepare_inputs(inputs)
        step = self.state.global_step
        # Once per optimizer step (the first micro-batch of an accumulation window).
        if step % self.args.forget_freq == 0 and self._last_forget_step != step:
            self._last_forget_step = step
            self.forget_step(model, inputs["forget"])
        return super().training_step(model, inputs, num_items_in_batch)

    def forget_step(self, model, batch: dict) -> None:
        """One optimizer step of masked, clipped, adaptive-weighted gradient ascent on a forget batch, its loss
        scaled by the forget strength a_t; no step at all when a_t = 0 (the same on every process)."""
        args = self.args
        scale = forget_schedule(self.state.global_step, self.state.max_steps, args.forget_strength)
        if scale == 0:
            return
        net = self.accelerator.unwrap_model(model)
        params = trainable_parameters(net)
        if any(p.grad is not None for p in params):
            raise RuntimeError("sfron's forget step must start with empty gradients (first micro-batch of a step)")
        net.train()
        with self.compute_loss_context_manager():
            nll, _ = self.stats(net, batch)
        mean_inverse = None
        if self.accelerator.num_processes > 1:  # normalize the weights over every process's rows
            inverse = nll.detach().float().clamp_min(1e-6).pow(-args.sample_weight_power)
            totals = torch.stack([inverse.sum(), torch.tensor(float(inverse.numel()), device=inverse.device)])
            torch.distributed.all_reduce(totals)
            mean_inverse = totals[0] / totals[1]
        weights = adaptive_weights(nll, args.sample_weight_power, mean_inverse)
        loss = -(weights * nll).mean()
        with self.accelerator.no_sync(model):
            self.accelerator.backward(scale * loss)
        if self.accelerator.num_processes > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                all_reduce_mean(p.grad, self.accelerator.num_processes)
        apply_saliency_mask(net, self.saliency)
        norm = clip_grads_(params, args.forget_clip)
        if not math.isfinite(norm):
            self.fail_non_finite("sfron forget gradient")
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # the torch optimizer itself
        try:
            optimizer.step()
        finally:
            for p in params:
                p.grad = None
        self.forget_steps += 1
        self.record(
            forget_nll=nll.mean().detach(),
            forget_weighted_ga=loss.detach(),
            forget_grad_norm=norm,
            forget_scale=scale,
            forget_steps=self.forget_steps,
        )


class SaliencyCheckpointCallback(TrainerCallback):
    """Saves the saliency mask with each checkpoint and restores it on resume (the Fisher is taken at θ_ref)."""

    FILE = "sfron_saliency.pt"

    def __init__(self, trainer: SFROnTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.accelerator.is_main_process and trainer.saliency is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            payload = {
                "elementwise": trainer.saliency.elementwise,
                "lora_rows": trainer.saliency.lora_rows,
                "forget_steps": trainer.forget_steps,
            }
            tmp = folder / f".{self.FILE}.tmp"
            torch.save(payload, tmp)
            tmp.replace(folder / self.FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE
            if not path.is_file():
                raise FileNotFoundError(f"resuming sfron needs the saliency mask {path}; it was not saved")
            payload = torch.load(path, map_location=args.device, weights_only=True)
            self.trainer.saliency = SaliencyMask(payload["elementwise"], payload["lora_rows"])
            self.trainer.forget_steps = int(payload["forget_steps"])
