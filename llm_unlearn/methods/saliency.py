"""SFR-on's weight saliency: which weights a forget step may move, from diagonal Fishers at θ_ref.

The Fishers of the answer NLL are estimated on the forget set (F_f) and a retain subset (F_r); a weight is
*salient* when F_f ≥ γ·F_r.

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
from dataclasses import dataclass

import torch
from torch import nn

from ..data.collate import PaddingCollator
from ..models import is_peft_model
from .base import UnlearningTrainer


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
