"""The one base every unlearning trainer shares.

It owns: paired forget/retain batches, the reference model policy, answer-token NLL and log-prob helpers,
the retain term, logging of every loss term, and the finite-loss guard. Each method is a small subclass
that overrides `compute_loss` (or `training_step` when it owns the backward) and nothing else of this.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data.collate import IGNORE_INDEX, PairedCollator
from ..extrapolate import DEFAULT_MAX_SHARD_SIZE, ExportDtype, WeightsFormat
from ..models import is_peft_model
from ..runs import checkpoint_files, last_checkpoint
from ..utils import atomic_write_json
from .losses import Window, forward_logits, needed_window, sequence_stats, token_kl
from .sharding import gathered_state_dict, has_sharded_parameters

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)

RetainLoss = Literal["nll", "kl"]
RETAIN_LOSSES: tuple[str, ...] = get_args(RetainLoss)


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient became NaN/inf; the message names the step, the term and the last checkpoint."""


@dataclass
class UnlearnConfig(TrainingArguments):
    """Fields every method shares; each method's config extends this with its own hyper-parameters.

    TrainingArguments defaults changed here: lr 1e-5 and weight decay 0.01 (MOX paper), no column
    removal (batches are nested forget/retain dicts), no integrations, and linear decay.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Forget (and retain) rows per device per step."}
    )
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule after warm-up."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: batches are nested dicts."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Trainer integrations to log to."})
    save_strategy: str = field(default="no", metadata={"help": "'steps'/'epoch' to write resumable checkpoints."})
    logging_steps: float = field(default=1, metadata={"help": "Log every loss term every N steps."})
    forget_nll_bound: float | None = field(
        default=30.0,
        metadata={"help": "Report a run-away forget loss when the forget NLL exceeds this (GA-family collapse)."},
    )
    kl_positions: str = field(
        default="answer",
        metadata={
            "help": "Retain-KL positions: 'answer' (answer + end-of-turn tokens) or 'all' (every non-pad token)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False for unlearning trainers (batches are nested dicts)")
        if self.kl_positions not in ("answer", "all"):
            raise ValueError(f"kl_positions must be 'answer' or 'all', not {self.kl_positions!r}")

    def loss_needs_reference(self) -> bool:
        """Whether these loss settings use θ_ref (a retain KL, an NPO term); field groups below add theirs."""
        return False

    def provenance(self) -> dict:
        """Method-specific values run_info.json records beside the hyper-parameters (α, the α list, η, ...);
        the model card shows α and η. Keys a method leaves out are recorded as null."""
        return {}


# Fields several methods share, declared once. A method's config lists the groups it uses before UnlearnConfig
# (`class XConfig(RetainWeightField, RetainLossField, UnlearnConfig)`: dataclass fields follow the reversed
# MRO), so a method that has no retain term has no retain field to set by mistake.


@dataclass
class RetainLossField:
    retain_loss: RetainLoss = field(
        default="nll", metadata={"help": "Retain term R: 'nll' (retain NLL) or 'kl' (KL(p_ref‖p_θ), needs θ_ref)."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_choice("retain_loss", self.retain_loss, RETAIN_LOSSES)

    def loss_needs_reference(self) -> bool:
        return self.retain_loss == "kl" or super().loss_needs_reference()


@dataclass
class RetainWeightField:
    retain_weight: float = field(default=1.0, metadata={"help": "c, the weight of the retain term."})


@dataclass
class WeightsExportFields:
    """How the methods that extrapolate θ_ref write full weights (MOX, task vectors)."""

    export_dtype: ExportDtype = field(
        default="auto",
        metadata={
            "help": "dtype of full-weight exports (computed in fp32): 'auto' = what θ_ref's checkpoint declares "
            "(its config.json), or float32, bfloat16, float16."
        },
    )
    max_shard_size: str = field(
        default=DEFAULT_MAX_SHARD_SIZE,
        metadata={"help": "Largest safetensors file of a full-weight export (e.g. '5GB', '500MB')."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.weights_format()  # refuses a bad dtype or shard size now, not at export

    def weights_format(self) -> WeightsFormat:
        return WeightsFormat(self.export_dtype, self.max_shard_size)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")


class _EpochAndGuardCallback(TrainerCallback):
    """Moves the paired dataset's retain cycle each epoch, and refuses non-finite gradients."""

    def __init__(self, trainer: UnlearningTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for name, param in self.trainer.model.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                self.trainer.fail_non_finite(f"gradient of {name}")


class UnlearningTrainer(Trainer):
    """Trainer over PairedDataset batches {"forget", "retain", "refusal"}.

    Subclasses set `needs_reference` when their loss uses θ_ref. The reference is the adapter turned off
    for a PEFT model (exact when the adapter trains no biases), else `ref_model`, a frozen second copy
    that the caller loads with from_pretrained only for such methods.
    """

    needs_reference: ClassVar[bool] = False
    needs_retain: ClassVar[bool] = True
    needs_refusal: ClassVar[bool] = False
    # What the stages, the model card and the benchmark read from each method (tests/test_method_metadata.py
    # checks that every registered method sets them): its benchmark family ("ascent", "descent", "mox"; each has
    # its own learning-rate grid), the one-line card summary, the card's extra tags, the paper it follows
    # ({"title", "url"}, cited on the card) and its name in tables (default: the registry name).
    family: ClassVar[str]
    summary: ClassVar[str]
    tags: ClassVar[tuple[str, ...]]
    paper: ClassVar[dict[str, str] | None] = None
    display_name: ClassVar[str | None] = None

    def __init__(
        self,
        model,
        args: UnlearnConfig,
        train_dataset=None,
        data_collator=None,
        processing_class=None,
        callbacks: list | None = None,
        ref_model=None,
    ):
        if data_collator is None:
            pad_id = getattr(processing_class, "pad_token_id", None)
            if pad_id is None:
                raise ValueError("pass processing_class (the tokenizer) or a data_collator to pad batches")
            data_collator = PairedCollator(pad_id)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=data_collator,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        # Our losses are already means; the Trainer must still divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.ref_model = None
        if self.uses_reference():
            self._setup_reference(ref_model)
        self._terms: dict[str, list[float]] = defaultdict(list)
        self.runaway_steps: list[int] = []
        self.add_callback(_EpochAndGuardCallback(self))

    # --- reference model ---------------------------------------------------------------------------

    @classmethod
    def wants_reference(cls, args) -> bool:
        """Whether a run with these settings needs θ_ref (recipes load a frozen copy for full weights)."""
        return cls.needs_reference or args.loss_needs_reference()

    @classmethod
    def wants_refusal(cls, args) -> bool:
        """Whether a run with these settings needs refusal answers (question/answer data only)."""
        return cls.needs_refusal

    def uses_reference(self) -> bool:
        return self.wants_reference(self.args)

    def _setup_reference(self, ref_model) -> None:
        if is_peft_model(self.model):
            config = self.model.peft_config[self.model.active_adapter]
            if getattr(config, "bias", "none") != "none":
                raise ValueError(
                    "the reference is the adapter turned off, which is not exact when the adapter trains biases: "
                    "use LoRA with bias='none'"
                )
            if ref_model is not None:
                logger.warning("ref_model ignored: with a PEFT model the reference is the adapter turned off")
            return
        if ref_model is None:
            raise ValueError(
                f"{type(self).__name__} with these settings needs the reference model θ_ref: wrap the model with "
                "LoRA (the reference is then the adapter turned off), or pass ref_model= (a second frozen copy "
                "loaded with from_pretrained; recipes do this from model.ref_model_path)."
            )
        ref_model.eval()
        for param in ref_model.parameters():
            param.requires_grad_(False)
        self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    @torch.no_grad()
    def reference_logits(self, model, batch: dict, window: Window | None = None) -> torch.Tensor:
        if self.ref_model is not None:
            return forward_logits(self.ref_model, batch, window)
        unwrapped = self.accelerator.unwrap_model(model)
        if not is_peft_model(unwrapped):
            raise RuntimeError("no reference model was set up for this trainer")
        with unwrapped.disable_adapter():
            return forward_logits(unwrapped, batch, window)

    # --- loss helpers ------------------------------------------------------------------------------

    def answer_logits(self, model, batch: dict, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of θ (of θ_ref without grad, with `reference`) at each row's answer positions only, and the
        labels they pair with: what per-token losses over the vocabulary start from."""
        window = needed_window(batch["labels"][:, 1:] != IGNORE_INDEX)
        logits = self.reference_logits(model, batch, window) if reference else forward_logits(model, batch, window)
        return logits, window.labels(batch["labels"])

    def stats(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (mean answer-token NLL, summed answer log-prob) from one forward."""
        per_sample, summed, _ = sequence_stats(*self.answer_logits(model, batch))
        return per_sample, summed

    def ref_stats(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        per_sample, summed, _ = sequence_stats(*self.answer_logits(model, batch, reference=True))
        return per_sample, summed

    def nll(self, model, batch: dict) -> torch.Tensor:
        """Mean over samples of the per-sample answer-token NLL."""
        return self.stats(model, batch)[0].mean()

    def kl_mask(self, batch: dict) -> torch.Tensor:
        if self.args.kl_positions == "all":
            return batch["attention_mask"][:, 1:].bool()
        return batch["labels"][:, 1:] != IGNORE_INDEX

    def retain_kl(self, model, batch: dict) -> torch.Tensor:
        mask = self.kl_mask(batch)
        window = needed_window(mask)
        ref = self.reference_logits(model, batch, window)
        return token_kl(ref, forward_logits(model, batch, window), window.mask(mask))

    def retain_term(self, model, batch: dict, kind: str) -> torch.Tensor:
        if kind == "nll":
            return self.nll(model, batch)
        if kind == "kl":
            return self.retain_kl(model, batch)
        raise ValueError(f"retain_loss must be one of {RETAIN_LOSSES}, not {kind!r}")

    def with_retain_term(self, model, inputs: dict, forget_term: torch.Tensor, **forget_logs) -> torch.Tensor:
        """forget_term + c·R, for a config with RetainWeightField and RetainLossField; records the forget-side
        values given, R (as retain_nll or retain_kl) and the total."""
        retain = self.retain_term(model, inputs["retain"], self.args.retain_loss)
        loss = forget_term + self.args.retain_weight * retain
        self.record(**forget_logs, **{f"retain_{self.args.retain_loss}": retain}, loss=loss)
        return loss

    # --- logging and guards -------------------------------------------------------------------------

    def record(self, **terms: torch.Tensor | float) -> None:
        """Remember loss terms for the next log line; fail fast on a non-finite one."""
        for name, value in terms.items():
            value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(value):
                self.fail_non_finite(f"loss term '{name}' = {value}")
            self._terms[name].append(value)
        bound = self.args.forget_nll_bound
        forget_nll = terms.get("forget_nll")
        if isinstance(forget_nll, torch.Tensor):
            forget_nll = forget_nll.detach()
        if bound is not None and forget_nll is not None and float(forget_nll) > bound:
            # The update being computed, numbered like the "step" of train_log.json rows (global_step counts
            # completed updates); gradient accumulation calls record() several times per update.
            step = self.state.global_step + 1
            if not self.runaway_steps:
                logger.warning(
                    "step %d: forget NLL %.2f exceeds forget_nll_bound=%.1f; the forget loss is running away "
                    "(the model is likely collapsing: lower the learning rate or the number of steps)",
                    step,
                    float(forget_nll),
                    bound,
                )
            if not self.runaway_steps or self.runaway_steps[-1] != step:
                self.runaway_steps.append(step)

    def last_checkpoint(self) -> str | None:
        """The newest complete (resumable) checkpoint; one cut short while saving is not a good one."""
        return last_checkpoint(self.args.output_dir, checkpoint_files(self))

    def fail_non_finite(self, what: str) -> None:
        step = self.state.global_step
        raise NonFiniteLossError(
            f"step {step}: {what} is not finite (while computing update {step + 1}; "
            f"{step} updates completed). Last good checkpoint: "
            f"{self.last_checkpoint() or 'none (set save_strategy to keep checkpoints)'}. "
            "Lower the learning rate, check the data, or resume from that checkpoint."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._terms:
            names = sorted(self._terms)
            local = torch.tensor([sum(self._terms[n]) / len(self._terms[n]) for n in names], device=self.args.device)
            averaged = self.accelerator.reduce(local, reduction="mean") if self.accelerator.num_processes > 1 else local
            logs.update({name: round(float(v), 6) for name, v in zip(names, averaged)})
            self._terms.clear()
        super().log(logs, start_time)

    def shards_parameters(self) -> bool:
        """FSDP (accelerate's, or torch's `fully_shard` applied to the model) or DeepSpeed ZeRO-3: no rank holds
        whole weights (per-loss gradients, buffers and exports of whole tensors need a gather)."""
        if self.is_fsdp_enabled or has_sharded_parameters(self.model):
            return True
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return bool(self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)

    # --- outputs ------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Exports (`save_model(folder)` by users and methods) are written to a hidden `.<name>.partial` folder
        that the main process renames into place once complete, so a crash mid-save leaves no folder that
        looks finished. Checkpoints (`_internal_call`) keep the Trainer's in-place layout; resume skips an
        incomplete one (llm_unlearn.runs.last_checkpoint). DeepSpeed may write from every rank: saved in place.
        Sharded parameters (FSDP): every process joins the gather of whole tensors, the writer saves them."""
        if _internal_call or output_dir is None or self.is_deepspeed_enabled:
            super().save_model(output_dir, _internal_call)
            return
        out = Path(output_dir)
        staging = out.with_name(f".{out.name}.partial")
        writer = self.args.should_save  # other ranks write nothing (they only join FSDP gathers)
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            if self.shards_parameters():
                # The Trainer's own FSDP save writes nothing under a sharded state-dict type and knows nothing of
                # a model that torch's `fully_shard` sharded outside accelerate: gather whole tensors for both.
                if self.is_fsdp_enabled:
                    state = self.accelerator.get_state_dict(self.model)
                else:
                    state = gathered_state_dict(self.model)
                self._save(str(staging), state_dict=state)
            else:
                super().save_model(str(staging), _internal_call)
        except BaseException:
            if writer:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if writer:
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)

    def export_unlearned(self, output_dir: str) -> dict:
        """Write the unlearned model (or adapter) to `output_dir`; methods that post-process override this."""
        self.save_model(output_dir)
        return {"kind": "adapter" if is_peft_model(self.accelerator.unwrap_model(self.model)) else "model"}

    def export(self, run_dir: str | os.PathLike, model_source: ModelConfig | None = None) -> dict[str, dict]:
        """Every export of a trained run, {folder name under run_dir: info}; every process calls it. Here:
        `unlearned/`. `model_source` is where methods that extrapolate sharded weights reload θ_ref from."""
        return {"unlearned": self.export_unlearned(str(Path(run_dir) / "unlearned"))}

    @classmethod
    def export_saved(
        cls, args: UnlearnConfig, trained: str, run_dir: Path, model_source: ModelConfig, tokenizer
    ) -> dict[str, dict]:
        """The exports computed from a saved trained model (`trained`, a folder) instead of the live one."""
        raise ValueError(f"{cls.__name__} has no export from a saved model: only methods that extrapolate θ_ref do")

    def export_through_saved(self, run_dir: str | os.PathLike, model_source: ModelConfig | None) -> dict[str, dict]:
        """Sharded weights (FSDP / ZeRO-3): every process joins saving the gathered trained model to
        memorization/, then the main process computes the exports from whole copies loaded from disk."""
        if model_source is None:
            raise ValueError(
                f"{type(self).__name__} cannot extrapolate sharded weights (FSDP / ZeRO-3) in place: pass "
                "export(run_dir, model_source=<the run's ModelConfig>) so that whole copies can be loaded, "
                "as `llm-unlearn unlearn` does"
            )
        run_dir = Path(run_dir)
        memorization = str(run_dir / "memorization")
        self.save_model(memorization)
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return {}
        return self.export_saved(self.args, memorization, run_dir, model_source, self.processing_class)

    def write_json(self, path: str | os.PathLike, payload: dict) -> None:
        if self.accelerator.is_main_process:
            atomic_write_json(path, payload)
