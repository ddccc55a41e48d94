"""How far a model has moved from the one unlearning started from, on rows it should still answer as before:
per row, the mean over the labelled tokens of KL(p_start || p_now) over the whole vocabulary.

The starting model is the adapter turned off when the model is a PEFT model (no second copy in memory), or a
separately loaded model for full weights. 0 means the row's next-token distributions did not change at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator
from llm_unlearn.evaluation.scoring import evaluation_mode, model_device
from llm_unlearn.logits import forward_logits, needed_window
from llm_unlearn.models import is_peft_model


def _labelled_logprobs(model, batch: dict) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities (labelled tokens of the batch, vocab) at the positions that predict a labelled token,
    and how many belong to each row."""
    device = model_device(model)
    selected = batch["labels"][:, 1:].to(device) != IGNORE_INDEX
    window = needed_window(selected)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    logits = forward_logits(model, inputs, window)
    selected = window.mask(selected)
    return torch.log_softmax(logits[:, :-1][selected].double(), dim=-1), selected.sum(dim=1).tolist()


def kl_to_start(
    model,
    items: Sequence[dict],
    collator: PaddingCollator,
    batch_size: int,
    start_model=None,
) -> list[float]:
    """Per item ({input_ids, labels}), the mean labelled-token KL(p_start || p_model); NaN for an item with no
    labelled token. `start_model` None: `model` must be a PEFT model, whose adapter turned off is the start."""
    if start_model is None and not is_peft_model(model):
        raise ValueError("kl_to_start: give start_model for a model without a PEFT adapter (full weights)")
    values: list[float] = []
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        batch = collator([{"input_ids": it["input_ids"], "labels": it["labels"]} for it in chunk])
        with evaluation_mode(model):
            now, counts = _labelled_logprobs(model, batch)
            if start_model is None:
                with model.disable_adapter():
                    start, _ = _labelled_logprobs(model, batch)
            else:
                with evaluation_mode(start_model) if start_model is not model else nullcontext():
                    start, _ = _labelled_logprobs(start_model, batch)
        per_token = (start.exp() * (start - now)).sum(dim=-1)
        for row in per_token.cpu().split(counts):
            values.append(float(row.mean()) if row.numel() else float("nan"))
    return values
