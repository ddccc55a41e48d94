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

Fisher memory: F_f and F_r are never held at once. One fp32 buffer per target accumulates F_f − γ·F_r
(squared gradients of the forget samples added with weight 1/n_f, those of the retain samples subtracted
with weight γ/n_r); the boolean mask is `buffer ≥ 0`, taken per target after the retain pass, freeing each
buffer as its mask is made. A weight with F_f = F_r = 0 counts as salient; its forget gradient is zero anyway.
The squared gradients are per batch of `fisher_batch_size` rows (1 = the exact per-sample empirical Fisher).

LoRA (B = 0 at init, so the adapter's own Fishers say nothing about the base weights): saliency is computed
for the *base* weight W of each adapted Linear, per output row: row i is salient when
Σ_j F_f[i, j] ≥ γ·Σ_j F_r[i, j] (trace of the row's diagonal Fisher block). ∂ℓ/∂W = Σ_t δ_t x_tᵀ is formed
from the layer's input x and output gradient δ in hooks, one module at a time, so only one row-sum vector
per module is kept. In a forget step the rows of lora_B for non-salient rows get zero gradient and lora_A
gets zero gradient, so the first-order change of s·BA (s·dB·A) is confined to salient output rows.
Other trainable parameters (modules_to_save, say) get the elementwise mask.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..data.collate import PaddingCollator
from ..models import is_peft_model
from .base import RetainLossField, UnlearnConfig, UnlearningTrainer
from .surgery import refuse_sharded_gradients


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


class FisherDifference:
    """Fp32 buffers accumulating F_f − γ·F_r per target (a parameter, or a LoRA module's base-weight rows).

    `coef` is the weight of the next squared gradients (+1/n_f in the forget pass, −γ/n_r in the retain pass).
    `peak_bytes` tracks the most memory held at once by buffers plus the masks made from them.
    """

    def __init__(self, shapes: dict[str, torch.Size], device: torch.device):
        self.buffers = {key: torch.zeros(shape, dtype=torch.float32, device=device) for key, shape in shapes.items()}
        self.coef = 1.0
        self.mask_bytes = 0
        self.peak_bytes = self.buffer_bytes()

    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def add(self, key: str, squared_grad: torch.Tensor) -> None:
        self.buffers[key].add_(squared_grad.float(), alpha=self.coef)

    def to_masks(self, reduce=None) -> dict[str, torch.Tensor]:
        """Turn each buffer into its boolean mask (buffer ≥ 0), freeing buffers one at a time.

        `reduce(buffer)` sums a buffer over processes in place first (the same key order on every process).
        """
        masks = {}
        for key in list(self.buffers):
            buffer = self.buffers[key]
            if reduce is not None:
                reduce(buffer)
            masks[key] = buffer >= 0
            self.mask_bytes += masks[key].numel()
            self.peak_bytes = max(self.peak_bytes, self.buffer_bytes() + self.mask_bytes)
            del self.buffers[key], buffer
        return masks


@dataclass
class SaliencyMask:
    """Boolean masks: `elementwise` per parameter name, `lora_rows` per LoRA module (base-weight output rows)."""

    elementwise: dict[str, torch.Tensor]
    lora_rows: dict[str, torch.Tensor]

    def fraction(self) -> float:
        masks = [*self.elementwise.values(), *self.lora_rows.values()]
        total = sum(m.numel() for m in masks)
        return sum(int(m.sum()) for m in masks) / total if total else 0.0


def lora_modules(model) -> dict[str, nn.Module]:
    """The active adapter's LoRA layers by module name (empty for a plain model)."""
    if not is_peft_model(model):
        return {}
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            if not isinstance(module.get_base_layer(), nn.Linear):
                raise ValueError(
                    f"sfron: LoRA on {name} wraps a {type(module.get_base_layer()).__name__}; only Linear layers are "
                    "supported (use target_modules='all-linear')"
                )
            if module.use_dora.get(adapter, False):
                raise ValueError(
                    "sfron does not support DoRA adapters (the base-weight saliency rule assumes W + s·BA)"
                )
            found[name] = module
    return found


def lora_pair(module: nn.Module, adapter: str) -> tuple[nn.Parameter, nn.Parameter]:
    return module.lora_A[adapter].weight, module.lora_B[adapter].weight


def apply_saliency_mask(model, mask: SaliencyMask) -> None:
    """Multiply the gradients by the mask: elementwise, and for LoRA the rows of lora_B (lora_A gets zero)."""
    named = dict(model.named_parameters())
    for name, keep in mask.elementwise.items():
        grad = named[name].grad
        if grad is not None:
            grad.mul_(keep.to(grad.dtype))
    if mask.lora_rows:
        modules = lora_modules(model)
        for module_name, rows in mask.lora_rows.items():
            lora_a, lora_b = lora_pair(modules[module_name], model.active_adapter)
            if lora_b.grad is not None:
                lora_b.grad.mul_(rows.to(lora_b.grad.dtype).unsqueeze(1))
            if lora_a.grad is not None:
                lora_a.grad.zero_()


def _row_fisher_hook(fisher: FisherDifference, key: str):
    """Forward hook on a LoRA layer: on backward, add the row sums of (∂ℓ/∂W)² of its base weight W."""

    def forward_hook(module, args, output):
        if not output.requires_grad:
            return
        x = args[0].detach()

        def grad_hook(grad):
            # y = W x + s·B A x, so ∂ℓ/∂W = Σ_t (∂ℓ/∂y_t) x_tᵀ; formed here one module at a time.
            weight_grad = grad.reshape(-1, grad.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
            fisher.add(key, weight_grad.pow(2).sum(1))

        output.register_hook(grad_hook)

    return forward_hook


def compute_saliency(trainer: UnlearningTrainer, model, seed: int) -> tuple[SaliencyMask, FisherDifference]:
    """The Fisher pass: F_f on the whole forget set, F_r on `fisher_samples` retain rows, sharded over processes."""
    args = trainer.args
    dataset = trainer.train_dataset
    if getattr(dataset, "forget", None) is None or getattr(dataset, "retain", None) is None:
        raise ValueError("sfron needs a PairedDataset with forget and retain sets to estimate the Fishers")
    net = trainer.accelerator.unwrap_model(model)
    modules = lora_modules(net)
    covered = {id(p) for module in modules.values() for p in lora_pair(module, net.active_adapter)}
    elementwise = {n: p for n, p in net.named_parameters() if p.requires_grad and id(p) not in covered}
    shapes = {n: p.shape for n, p in elementwise.items()}
    shapes.update({f"lora_rows:{name}": torch.Size([m.get_base_layer().out_features]) for name, m in modules.items()})
    device = next(net.parameters()).device
    fisher = FisherDifference(shapes, device)
    pad_id = getattr(trainer.data_collator, "pad_token_id", None)
    if pad_id is None:
        pad_id = trainer.processing_class.pad_token_id
    collate = PaddingCollator(pad_id, "right")
    retain_rows = list(range(len(dataset.retain)))
    random.Random(seed).shuffle(retain_rows)
    passes = [
        (dataset.forget, list(range(len(dataset.forget))), 1.0),
        (dataset.retain, retain_rows[: args.fisher_samples], -args.saliency_gamma),
    ]
    rank, world, size = trainer.accelerator.process_index, trainer.accelerator.num_processes, args.fisher_batch_size
    trainable = [p for p in net.parameters() if p.requires_grad]
    hooks = [m.register_forward_hook(_row_fisher_hook(fisher, f"lora_rows:{n}")) for n, m in modules.items()]
    was_training = net.training
    net.eval()  # no dropout: a deterministic Fisher
    try:
        for source, rows, sign in passes:
            total_batches = sum(math.ceil(len(rows[r::world]) / size) for r in range(world))
            fisher.coef = sign / max(total_batches, 1)
            mine = rows[rank::world]
            for start in range(0, len(mine), size):
                batch = collate([source[i] for i in mine[start : start + size]])
                batch = {k: v.to(device) for k, v in batch.items()}
                with trainer.compute_loss_context_manager():
                    loss = trainer.nll(net, batch)
                loss.backward()  # on the unwrapped module: DDP takes no part
                for name, param in elementwise.items():
                    if param.grad is not None:
                        fisher.add(name, param.grad.float().pow(2))
                for param in trainable:
                    param.grad = None
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    reduce = (lambda t: torch.distributed.all_reduce(t)) if world > 1 else None
    masks = fisher.to_masks(reduce)
    saliency = SaliencyMask(
        elementwise={n: masks[n] for n in elementwise},
        lora_rows={n: masks[f"lora_rows:{n}"] for n in modules},
    )
    return saliency, fisher


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
        params = [p for p in net.parameters() if p.requires_grad]
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
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.accelerator.num_processes)
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
