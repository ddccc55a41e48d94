"""The dual variable λ of the constrained methods (`eupmu`, `pdu`): a callback that holds it, averages what
updates it over processes (so every process holds the same λ), saves it with each checkpoint and restores it
on resume. Each method's subclass says when and how λ moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from transformers import TrainerCallback

from ..utils import atomic_write_json


class DualSettingsCheck:
    """Refuses λ0 < 0 and a negative dual step; listed first in the bases of a config that declares
    `lambda_init` and `dual_step` (each method gives them its own defaults and help)."""

    def __post_init__(self):
        super().__post_init__()
        if self.lambda_init < 0:
            raise ValueError(f"lambda_init must be >= 0, not {self.lambda_init}")
        if self.dual_step < 0:
            raise ValueError(f"dual_step must be >= 0, not {self.dual_step}")


class DualVariableCallback(TrainerCallback):
    """λ ≥ 0 and its update count, written to `checkpoint-<step>/FILE` on every save and read back when a run
    resumes from that checkpoint (runs.checkpoint_files then requires FILE for a checkpoint to be resumable)."""

    FILE: ClassVar[str]
    method: ClassVar[str]  # the registry name, for the resume message

    def __init__(self, trainer, lam: float):
        self.trainer = trainer
        self.lam = float(lam)
        self.updates = 0

    def mean_over_processes(self, *values: float) -> list[float]:
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return list(values)
        local = torch.tensor(values, dtype=torch.float64, device=self.trainer.args.device)
        return accelerator.reduce(local, reduction="mean").tolist()

    def checkpoint_payload(self) -> dict:
        return {"lambda": self.lam, "updates": self.updates}

    def restore(self, saved: dict) -> None:
        self.lam, self.updates = float(saved["lambda"]), int(saved["updates"])

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.accelerator.is_main_process:
            atomic_write_json(
                Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE, self.checkpoint_payload()
            )

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # resuming: the Trainer restored state from checkpoint-<step>
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"resuming {self.method} needs λ from {path}; it was not saved with the checkpoint"
                )
            self.restore(json.loads(path.read_text()))
