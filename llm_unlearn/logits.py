"""Logits only where they are needed: training losses and teacher-forced metrics read log-probabilities at the
labelled positions, so the output head (49k x 576 per position for SmolLM2) runs on those positions only, row
by row, not on the prompt and padding positions around them. Shared by the methods and the evaluation, which
never import each other.

The hidden states are gathered between the backbone and the head by a forward pre-hook on the model's output
embeddings, so the model's own forward still runs (DDP's gradient hooks, PEFT adapters, FSDP / DeepSpeed
parameter gathering, any post-head scaling or soft-capping all stay in place)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.data.collate import IGNORE_INDEX


@dataclass(frozen=True)
class Window:
    """Per row i, the positions start[i] .. start[i] + width - 1, in which position t predicts token t + 1.

    `width` is one more than the longest run of needed positions, so that after the usual shift (logits[:, :-1]
    against labels[:, 1:]) every needed position of every row is still there. Rows shorter than the window
    read past their last needed position; those columns carry the label -100 or a False mask."""

    start: torch.Tensor  # (rows,) long
    width: int

    def positions(self, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, width) indices into a tensor with `columns` columns, clamped, and which of them are real."""
        index = self.start[:, None] + torch.arange(self.width, device=self.start.device)[None]
        return index.clamp_max(columns - 1), index < columns

    def take(self, values: torch.Tensor, fill) -> torch.Tensor:
        """values (rows, columns, ...) at the window's positions, `fill` where the window runs past the end."""
        index, inside = self.positions(values.shape[1])
        index, inside = index.to(values.device), inside.to(values.device)
        taken = values.gather(
            1, index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
        )
        return taken.masked_fill(~inside.view(*inside.shape, *([1] * (values.dim() - 2))), fill)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels that pair with the window's logits (logits[:, t] predicts labels[:, t + 1])."""
        return self.take(labels, IGNORE_INDEX)

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A shifted mask (rows, T - 1) in the window's columns, aligned with logits[:, :-1]."""
        return self.take(mask.bool(), False)[:, : self.width - 1]


def needed_window(mask: torch.Tensor) -> Window:
    """The window that holds, for every row, the positions `mask` (rows, T - 1; shifted like the labels, so
    column t means "position t predicts a needed token") marks. A row with none starts at 0."""
    rows, columns = mask.shape
    if rows == 0 or columns == 0:
        return Window(start=torch.zeros(rows, dtype=torch.long, device=mask.device), width=1)
    needed = mask.int()
    # argmax returns the first maximal index: the first needed column (0 for a row with none), and from the
    # flipped mask the last one.
    first = needed.argmax(dim=1)
    last = columns - 1 - needed.flip(1).argmax(dim=1)
    span = int(torch.where(needed.any(dim=1), last - first + 1, 0).max())
    return Window(start=first, width=span + 1)


def output_head(model) -> torch.nn.Module | None:
    """The module that maps hidden states to logits, through DDP / FSDP / DeepSpeed wrappers and PEFT."""
    inner = model
    while not hasattr(inner, "get_output_embeddings") and hasattr(inner, "module"):
        inner = inner.module
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def forward_logits(model, batch: dict, window: Window | None = None, extra: dict | None = None) -> torch.Tensor:
    """Logits (rows, window.width, vocab) at each row's window (all positions without one). `extra`: further
    forward arguments (a key/value cache and its position ids). Pair them with window.labels(labels)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **(extra or {})}
    if window is None:
        return model(**inputs).logits
    head = output_head(model)
    fired: list[bool] = []

    def gather_hidden(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] != inputs["input_ids"].shape[1]:
            return None  # not the (rows, T, hidden) call this expects: leave it, and slice the logits below
        fired.append(True)
        return (window.take(hidden, 0.0), *args[1:])

    handle = head.register_forward_pre_hook(gather_hidden) if head is not None else None
    try:
        logits = model(**inputs).logits
    finally:
        if handle is not None:
            handle.remove()
    if fired:
        return logits
    return window.take(logits, 0.0)  # a model whose head this cannot reach: full logits, then the window
