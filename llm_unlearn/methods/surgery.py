"""Gradient surgery between the forget and the retain loss: `eupmu`, `ungrad` and `pcgrad`.

These are adaptations to causal LMs of methods published for image classifiers: unilateral gradient surgery
(EUPMU, implicit and explicit forms) and PCGrad, a multi-task method used here as a comparison. What changes
for LLMs: the losses are answer-token NLLs of question/answer pairs, the forget loss is a *bounded* one (NPO,
or gradient ascent on a clipped NLL) because plain ascent on an LM's NLL has no floor, and the per-loss
gradients are taken over the trainable parameters only, so the explicit form is cheap under LoRA.

* `eupmu`: one backward of ℓ_f + λ·ℓ_r per step. λ ≥ 0 follows dual ascent on the observed retain-loss
  change: δ = (ℓ_r(before) − ℓ_r(after))/lr + ε, λ ← max(0, λ − β_λ·δ), ε the tolerated increase rate.
* `ungrad`: two backwards; d = g_f + λ*·g_r with λ* = max(0, (−⟨g_r, g_f⟩ − ε)/‖g_r‖²), the direction closest
  to g_f whose first-order retain-loss increase rate is at most ε.
* `pcgrad`: two backwards; when ⟨g_f, g_r⟩ < 0 each gradient is projected onto the other's normal plane,
  then they are summed.

Sign convention: every gradient is that of a loss to *minimize* (the optimizer steps along −d), so g_f is
the gradient of the bounded forget loss and a step along −g_r lowers the retain loss.

`ungrad`/`pcgrad` keep two flat fp32 buffers of the trainable parameters' size (g_f, g_r). With gradient
accumulation they accumulate over the window and the surgery is applied once, on the window's mean
gradients; under DDP they are averaged over processes before the surgery, so N processes with batch b take
the step one process takes with batch N·b. The Trainer's `max_grad_norm` clip then applies to d.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from .base import RetainLossField, UnlearnConfig, UnlearningTrainer, check_choice
from .dual import DualSettingsCheck, DualVariableCallback
from .gradients import all_reduce_mean, move_grads_into, refuse_sharded_gradients, trainable_parameters, write_grads
from .losses import npo_loss

BoundedForgetLoss = Literal["npo", "ga_clipped"]
BOUNDED_FORGET_LOSSES: tuple[str, ...] = get_args(BoundedForgetLoss)


# --- pure functions ---------------------------------------------------------------------------------


def unilateral_direction(g_f: torch.Tensor, g_r: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    """Solve min ½‖d − g_f‖² s.t. ⟨g_r, d⟩ ≥ −ε on flat gradients; returns (d, λ*).

    The constraint bounds the first-order retain-loss increase of a step along −d by lr·ε. The solution is
    d = g_f + λ*·g_r with λ* = max(0, (−⟨g_r, g_f⟩ − ε)/‖g_r‖²); λ* = 0 when g_r = 0.
    """
    dot = float(torch.dot(g_r, g_f))
    norm_sq = float(torch.dot(g_r, g_r))
    lam = max(0.0, (-dot - eps) / norm_sq) if norm_sq > 0 else 0.0
    return (g_f + lam * g_r if lam > 0 else g_f.clone()), lam


def pcgrad_direction(g_f: torch.Tensor, g_r: torch.Tensor) -> torch.Tensor:
    """PCGrad for two losses: on conflict (⟨g_f, g_r⟩ < 0) project each onto the other's normal plane, then sum."""
    dot = torch.dot(g_f, g_r)
    if float(dot) >= 0:
        return g_f + g_r
    f_sq, r_sq = torch.dot(g_f, g_f), torch.dot(g_r, g_r)
    projected_f = g_f - (dot / r_sq) * g_r
    projected_r = g_r - (dot / f_sq) * g_f
    return projected_f + projected_r


def dual_update(
    lam: float, before: float, after: float, lr: float, eps: float, step_size: float
) -> tuple[float, float]:
    """One EUPMU dual-ascent step; returns (new λ, δ).

    δ = (before − after)/lr + ε is the retain-loss decrease per unit learning rate plus the tolerance ε:
    negative when the retain loss rose faster than ε, which raises λ; λ never goes below 0.
    """
    delta = (before - after) / lr + eps
    return max(0.0, lam - step_size * delta), delta


def clipped_ga_loss(per_sample_nll: torch.Tensor, ceiling: float) -> torch.Tensor:
    """mean relu(ceiling − NLL_i): gradient ascent on each sample's NLL that stops once it reaches `ceiling`.

    Shifted so that it is ≥ 0 and reaches 0 when every sample is forgotten (bounded, unlike −NLL).
    """
    return torch.relu(ceiling - per_sample_nll).mean()


def bounded_forget_loss(trainer: UnlearningTrainer, model, batch: dict) -> tuple[torch.Tensor, dict]:
    """The bounded forget loss named by `trainer.args.forget_loss`, and the terms to log with it."""
    args = trainer.args
    nll, logp = trainer.stats(model, batch)
    if args.forget_loss == "npo":
        _, ref_logp = trainer.ref_stats(model, batch)
        loss = npo_loss(logp, ref_logp, args.npo_beta)
        return loss, {"forget_npo": loss.detach(), "forget_nll": nll.mean().detach()}
    loss = clipped_ga_loss(nll, args.ga_nll_ceiling)
    return loss, {"forget_ga_clipped": loss.detach(), "forget_nll": nll.mean().detach()}


@dataclass
class BoundedForgetFields:
    """The bounded forget loss ℓ_f of the three surgery methods (listed before RetainLossField in their bases)."""

    forget_loss: BoundedForgetLoss = field(
        default="npo",
        metadata={"help": "Bounded forget loss: 'npo' (needs θ_ref) or 'ga_clipped' (ascent on a clipped NLL)."},
    )
    npo_beta: float = field(default=0.1, metadata={"help": "β of the NPO forget loss."})
    ga_nll_ceiling: float = field(
        default=10.0,
        metadata={
            "help": "ga_clipped: a sample stops being pushed once its answer NLL reaches this (nats/token; "
            "choice: 10, about a uniform guess over 22k tokens)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_choice("forget_loss", self.forget_loss, BOUNDED_FORGET_LOSSES)
        if self.npo_beta <= 0:
            raise ValueError(f"npo_beta must be > 0, not {self.npo_beta}")

    def loss_needs_reference(self) -> bool:
        return self.forget_loss == "npo" or super().loss_needs_reference()


# --- eupmu: implicit unilateral surgery ----------------------------------------------------------------


@dataclass
class EUPMUConfig(DualSettingsCheck, RetainLossField, BoundedForgetFields, UnlearnConfig):
    """Implicit unilateral surgery: minimize ℓ_f + λ·ℓ_r, λ ≥ 0 by dual ascent on the retain-loss change."""

    lambda_init: float = field(default=1.0, metadata={"help": "λ0, the initial retain weight (≥ 0)."})
    dual_step: float = field(
        default=1e-4,
        metadata={
            "help": "β_λ, the dual step. δ is a loss change per unit learning rate: about −500 per step for "
            "SmolLM2-135M + LoRA r=8 with NPO at lr 1e-5 (ℓ_r rising ≈0.005 a step), so the default 1e-4 moves λ "
            "by ≈0.05 a step there (choice)."
        },
    )
    retain_tolerance: float = field(
        default=0.0,
        metadata={"help": "ε: the tolerated retain-loss increase per unit learning rate (0 = no increase)."},
    )
    fast: bool = field(
        default=False,
        metadata={
            "help": "Skip the post-step retain forward: use the next step's retain loss (on a different batch, "
            "so δ is noisier) as the 'after' value."
        },
    )


class EUPMUTrainer(UnlearningTrainer):
    """One backward of ℓ_f + λ·ℓ_r per step; `self.dual` owns λ (updated after each optimizer step)."""

    family = "ascent"
    summary = (
        "EUPMU (implicit gradient surgery): forget loss plus a dual-ascent-weighted retain loss that limits "
        "retain-loss increase."
    )
    tags = ("eupmu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dual = DualAscentCallback(self, self.args.lambda_init)
        self.add_callback(self.dual)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget, terms = bounded_forget_loss(self, model, inputs["forget"])
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = forget + self.dual.lam * retain
        # With gradient accumulation the last micro-batch's retain batch is the one measured after the step.
        self.dual.observe(inputs["retain"], retain)
        self.record(**terms, **{f"retain_{self.args.retain_loss}": retain}, loss=loss)
        return loss


class DualAscentCallback(DualVariableCallback):
    """Holds EUPMU's λ, updates it after every optimizer step, and saves it with each checkpoint.

    Full mode: after the step, ℓ_r is recomputed without grad on the step's (last) retain batch. Fast mode:
    the 'after' value of step t−1 is the retain loss seen by step t (no extra forward; one step of lag).
    Under DDP both values are averaged over processes first, so every process holds the same λ.
    """

    FILE = "eupmu_dual.json"
    method = "eupmu"

    def __init__(self, trainer: EUPMUTrainer, lam: float):
        super().__init__(trainer, lam)
        self._batch: dict | None = None
        self._before: float | None = None
        self._previous: tuple[float, float] | None = None  # fast mode: (retain loss, lr) of the last step

    def observe(self, retain_batch: dict, retain_loss: torch.Tensor) -> None:
        self._batch = retain_batch
        self._before = float(retain_loss.detach())

    @torch.no_grad()
    def _retain_after_step(self) -> float:
        trainer = self.trainer
        with trainer.compute_loss_context_manager():
            value = trainer.retain_term(trainer.model_wrapped, self._batch, trainer.args.retain_loss)
        return float(value)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._before is None:
            return
        lr = float(self.trainer.optimizer.param_groups[0]["lr"])
        if args.fast:
            before_now = self.mean_over_processes(self._before)[0]
            measured = None
            if self._previous is not None:
                measured = (self._previous[0], before_now, self._previous[1])
            self._previous = (before_now, lr)
        else:
            before, after = self.mean_over_processes(self._before, self._retain_after_step())
            measured = (before, after, lr)
        self._batch, self._before = None, None
        terms = {}
        if measured is not None and measured[2] > 0:  # no step was taken at lr 0 (e.g. warm-up start)
            before, after, step_lr = measured
            self.lam, delta = dual_update(self.lam, before, after, step_lr, args.retain_tolerance, args.dual_step)
            self.updates += 1
            terms = {"retain_change": after - before, "dual_delta": delta}
        self.trainer.record(eupmu_lambda=self.lam, eupmu_eps=args.retain_tolerance, **terms)

    def checkpoint_payload(self) -> dict:
        return {**super().checkpoint_payload(), "previous": self._previous}

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        self._previous = tuple(saved["previous"]) if saved["previous"] is not None else None


# --- ungrad and pcgrad: explicit surgery with two backwards -----------------------------------------------


def per_loss_gradients(
    trainer: UnlearningTrainer, model, inputs: dict, buffers: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward ℓ_f and ℓ_r separately and accumulate their flat gradients in `buffers`.

    Mirrors Trainer.training_step: each loss is divided by the accumulation steps. Both backwards run under
    no_sync, so DDP never averages them; at the last micro-batch of the window the accumulated gradients are
    averaged over processes here (before any inner product) and returned, else (…, None, None).
    Returns (forget loss, retain loss, g_f, g_r) with the losses detached and unscaled.
    """
    model.train()
    if hasattr(trainer.optimizer, "train") and callable(trainer.optimizer.train):
        trainer.optimizer.train()
    inputs = trainer._prepare_inputs(inputs)
    params = trainable_parameters(trainer.accelerator.unwrap_model(model))
    scale = 1.0 / trainer.current_gradient_accumulation_steps
    if not buffers:
        total = sum(p.numel() for p in params)
        buffers["forget"] = torch.zeros(total, dtype=torch.float32, device=params[0].device)
        buffers["retain"] = torch.zeros_like(buffers["forget"])
    with trainer.accelerator.no_sync(model):
        with trainer.compute_loss_context_manager():
            forget, terms = bounded_forget_loss(trainer, model, inputs["forget"])
        trainer.accelerator.backward(forget * scale)
        move_grads_into(buffers["forget"], params)
        with trainer.compute_loss_context_manager():
            retain = trainer.retain_term(model, inputs["retain"], trainer.args.retain_loss)
        trainer.accelerator.backward(retain * scale)
        move_grads_into(buffers["retain"], params)
    trainer.record(**terms, **{f"retain_{trainer.args.retain_loss}": retain})
    if not trainer.accelerator.sync_gradients:
        return forget.detach(), retain.detach(), None, None
    g_f, g_r = buffers.pop("forget"), buffers.pop("retain")
    num_processes = trainer.accelerator.num_processes
    return forget.detach(), retain.detach(), all_reduce_mean(g_f, num_processes), all_reduce_mean(g_r, num_processes)


def record_gradient_geometry(trainer: UnlearningTrainer, g_f: torch.Tensor, g_r: torch.Tensor) -> float:
    dot = float(torch.dot(g_f, g_r))
    trainer.record(grad_dot=dot, forget_grad_norm=float(g_f.norm()), retain_grad_norm=float(g_r.norm()))
    return dot


class ExplicitSurgeryTrainer(UnlearningTrainer):
    """Two backwards per micro-batch (forget, retain); at the end of each accumulation window the direction that
    `surgery_direction` makes of the mean gradients is written into `.grad`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded_gradients(self, self.tags[0])  # the tag is the method's registry name
        self._grad_buffers: dict[str, torch.Tensor] = {}

    def surgery_direction(self, g_f: torch.Tensor, g_r: torch.Tensor, dot: float) -> torch.Tensor:
        """The update direction from the flat gradients and ⟨g_f, g_r⟩; records the method's own terms."""
        raise NotImplementedError

    def reported_loss(self, forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
        """The training loss the Trainer logs for this micro-batch (before dividing by the accumulation steps)."""
        raise NotImplementedError

    def training_step(self, model, inputs, num_items_in_batch=None):
        forget, retain, g_f, g_r = per_loss_gradients(self, model, inputs, self._grad_buffers)
        if g_f is not None:
            dot = record_gradient_geometry(self, g_f, g_r)
            direction = self.surgery_direction(g_f, g_r, dot)
            write_grads(direction, trainable_parameters(self.accelerator.unwrap_model(model)))
        return self.reported_loss(forget, retain) / self.current_gradient_accumulation_steps


@dataclass
class UnGradConfig(RetainLossField, BoundedForgetFields, UnlearnConfig):
    """Explicit unilateral surgery: d = g_f + λ*·g_r, the closest direction to g_f that keeps ℓ_r's rise ≤ ε."""

    retain_tolerance: float = field(
        default=0.0,
        metadata={"help": "ε: the tolerated first-order retain-loss increase per unit learning rate (0: none)."},
    )


class UnGradTrainer(ExplicitSurgeryTrainer):
    family = "ascent"
    summary = (
        "Unilateral gradient surgery: the closest update to the forget gradient whose first-order retain-loss "
        "increase is bounded."
    )
    tags = ("ungrad",)

    def surgery_direction(self, g_f, g_r, dot):
        direction, lam = unilateral_direction(g_f, g_r, self.args.retain_tolerance)
        self.record(ungrad_lambda=lam)
        return direction

    def reported_loss(self, forget, retain):
        # The forget objective: the retain loss is a constraint, logged on its own.
        return forget


@dataclass
class PCGradConfig(RetainLossField, BoundedForgetFields, UnlearnConfig):
    """PCGrad on (ℓ_f, ℓ_r): on conflict, each gradient loses its component along the other; then they are summed."""


class PCGradTrainer(ExplicitSurgeryTrainer):
    family = "ascent"
    summary = "PCGrad: projects conflicting forget and retain gradients onto each other's normal plane and sums them."
    tags = ("pcgrad",)

    def surgery_direction(self, g_f, g_r, dot):
        self.record(pcgrad_conflict=float(dot < 0))
        return pcgrad_direction(g_f, g_r)

    def reported_loss(self, forget, retain):
        return forget + retain
