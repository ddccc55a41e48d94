"""Logits only where they are needed: training losses and teacher-forced metrics read log-probabilities at the
labelled positions, so the output head (49k x 576 per position for SmolLM2) skips the prompt positions that no
row of a batch scores. Shared by the methods and the evaluation, which never import each other."""

from __future__ import annotations

import torch


def first_needed(mask: torch.Tensor) -> int:
    """The first position (shifted: position t predicts token t + 1) that any row of `mask` (rows, T - 1) needs;
    0 when none does."""
    columns = mask.any(dim=0).nonzero()
    return int(columns[0]) if columns.numel() else 0


def forward_logits(model, batch: dict, first: int = 0) -> torch.Tensor:
    """Logits at positions first .. T-1 only (`logits_to_keep`): the output head, the largest matrix product
    of a small model, is not applied to the prompt positions no row scores. Pair them with labels[:, first:]."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if first <= 0:
        return model(**inputs).logits
    try:
        return model(**inputs, logits_to_keep=batch["input_ids"].shape[1] - first).logits
    except TypeError as err:  # a model whose forward has no logits_to_keep: the full logits, sliced
        if "logits_to_keep" not in str(err):
            raise
        return model(**inputs).logits[:, first:]
