"""Task-vector negation (`task_vector`, MUSE's `tv`): fine-tune on D_f, then θ_ref − α(θ_ft − θ_ref).

The same arithmetic as MOX's extrapolation without the retain KL, so it reuses `extrapolate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import extrapolate as xp
from ..models import is_peft_model
from .base import UnlearnConfig, UnlearningTrainer, WeightsExportFields
from .saved import extrapolate_saved, live_extrapolation


@dataclass
class TaskVectorConfig(WeightsExportFields, UnlearnConfig):
    alpha: float = field(default=5.0, metadata={"help": "Negation scale α (MUSE tv uses 5)."})

    def __post_init__(self):
        super().__post_init__()
        xp.check_alpha(self.alpha)

    def provenance(self) -> dict:
        return {"alpha": self.alpha}


class TaskVectorTrainer(UnlearningTrainer):
    family = "descent"
    summary = "Task vector: fine-tunes a copy on the forget set and subtracts α times that update from the reference."
    tags = ("task_vector",)
    needs_retain = False

    @classmethod
    def wants_reference(cls, args) -> bool:
        # θ_ref is needed at export; under LoRA it is the base weights already (no copy is loaded).
        return True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_nll = self.nll(model, inputs["forget"])
        self.record(forget_nll=forget_nll, loss=forget_nll)
        return forget_nll

    def export(self, run_dir, model_source=None) -> dict[str, dict]:
        if self.shards_parameters():
            return self.export_through_saved(run_dir, model_source)
        return super().export(run_dir)

    @classmethod
    def export_saved(cls, args, trained, run_dir, model_source, tokenizer) -> dict[str, dict]:
        return extrapolate_saved(model_source, trained, [args.alpha], run_dir, tokenizer, fmt=args.weights_format())

    def export_unlearned(self, output_dir: str, alpha: float | None = None) -> dict:
        alpha, model = live_extrapolation(
            self, alpha, "task_vector cannot negate", "fine-tuned model with save_model(folder)"
        )
        if not self.accelerator.is_main_process:
            return {"alpha": alpha}
        if is_peft_model(model):
            xp.save_extrapolated_adapter(model, alpha, output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            return {"alpha": alpha, "kind": "adapter"}
        fmt = self.args.weights_format()
        xp.save_extrapolated_model(self.ref_model, model, alpha, output_dir, self.processing_class, fmt)
        return {"alpha": alpha, "kind": "model"}
