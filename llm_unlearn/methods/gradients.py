"""Gradients that a method writes itself: the trainable parameters' gradients moved into flat buffers and
back, averaged over processes, and the refusal of setups where no process holds a whole gradient.

Shared by the methods that take inner products of per-loss gradients (`ungrad`, `pcgrad`) or take an
optimizer step of their own (`sfron`'s forget step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate.utils import DistributedType

from .base import UnlearningTrainer


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def move_grads_into(flat: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> None:
    """flat += concat(p.grad), then clear each p.grad (a missing gradient counts as zero)."""
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            flat[offset : offset + n].add_(p.grad.reshape(-1).to(flat.dtype))
            p.grad = None
        offset += n


def write_grads(flat: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> None:
    """Set each p.grad to its slice of `flat` (a copy in the parameter's dtype)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype, copy=True)
        offset += n


def all_reduce_mean(tensor: torch.Tensor, num_processes: int) -> torch.Tensor:
    """Average a tensor over processes in place (what DDP does to gradients); a no-op on one process."""
    if num_processes > 1:
        torch.distributed.all_reduce(tensor)
        tensor.div_(num_processes)
    return tensor


def refuse_sharded_gradients(trainer: UnlearningTrainer, method: str) -> None:
    """Methods that take inner products of per-loss gradients need each full gradient on every process."""
    kind = trainer.accelerator.distributed_type
    if trainer.shards_parameters():  # also torch's `fully_shard` applied to the model, which accelerate never sees
        kind = DistributedType.FSDP
    if (
        trainer.is_fsdp_enabled
        or trainer.is_deepspeed_enabled
        or kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    ):
        raise ValueError(
            f"{method} needs the full gradient of each loss separately on every process to take their inner "
            f"products, but under {kind} the gradients are sharded (FSDP, DeepSpeed ZeRO-2/3) or reduced inside the "
            "engine's own backward (DeepSpeed). Run it on one device or with DDP (with LoRA the per-loss gradients "
            "are small), or use `eupmu`, which needs one ordinary backward per step."
        )
    if trainer.args.fp16:
        raise ValueError(
            f"{method} writes its own gradients and cannot use fp16 loss scaling: use bf16=True or fp32 instead"
        )
