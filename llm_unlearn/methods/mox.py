"""MOX: memorize, then extrapolate (the headline method).

Training fits a *memorization model*: gradient descent on the forget set (NLL, or the NPO form) while
KL(p_ref ‖ p_θ) on the retain batch keeps everything else where θ_ref had it. Export extrapolates through
the original: θ_for = θ_ref + α(θ_ref − θ_mem); over LoRA this is exact by scaling B (no second model).
With `momentum`, a callback keeps an fp32 EMA of the memorization delta θ_ref − θ_mem every
`refresh_steps` steps or at every epoch end; since the EMA is linear (and its weights sum to 1), the momentum
model for every α, θ_ref + α·EMA, is the EMA of the extrapolated models θ_for.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainerCallback

from .. import extrapolate as xp
from ..models import is_peft_model
from .base import UnlearnConfig, UnlearningTrainer, WeightsExportFields, check_choice
from .losses import npo_loss
from .saved import export_name, extrapolate_saved, live_extrapolation, write_lazy_alpha

logger = logging.getLogger(__name__)

MOX_FORGET_LOSSES = ("nll", "npo")
MOX_EXPORTS = ("auto", "merged")
MOMENTUM_EXPORTS = ("merged", "svd")
MOMENTUM_REFRESHES = ("steps", "epoch")


@dataclass
class MOXConfig(WeightsExportFields, UnlearnConfig):
    """Memorization fit + extrapolation. Paper defaults: AdamW 1e-5, wd 0.01, batch 32, 10 epochs, 1 warm-up epoch."""

    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs over the forget set (paper: 10)."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Forget/retain rows per device (paper: 32)."}
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warm-up: a ratio < 1 of all steps (0.1 = 1 of 10 epochs)."}
    )
    forget_loss: str = field(default="nll", metadata={"help": "'nll' (memorize by descent) or 'npo' (NPO form)."})
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget (memorization) term."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of KL(p_ref‖p_θ) on the retain batch."})
    npo_beta: float = field(default=0.1, metadata={"help": "β of the NPO-form forget term."})
    targeted: bool = field(
        default=False, metadata={"help": "Subtract the refusal NLL so θ_for moves towards refusals."}
    )
    refusal_weight: float = field(default=1.0, metadata={"help": "Weight of the targeted refusal term."})
    alpha: float = field(default=4.0, metadata={"help": "Extrapolation strength α > 0 (paper grid 0.5, 1, 2, 4, 8)."})
    alphas: list[float] = field(default_factory=list, metadata={"help": "Extra α values exported from the same run."})
    export_mode: str = field(
        default="auto", metadata={"help": "'auto': an adapter for LoRA, weights otherwise; 'merged': plain weights."}
    )
    momentum: bool = field(default=False, metadata={"help": "Export the EMA of the extrapolated models."})
    momentum_eta: float = field(default=0.675, metadata={"help": "EMA weight η of the newest extrapolated model."})
    # Default 'epoch': refreshed every step with eta 0.675 the last three steps carry 97 % of the EMA, so it is
    # nearly the last iterate; benchmarks/results/momentum_refresh measured both (docs/design.md, MOX momentum).
    momentum_refresh: Literal["steps", "epoch"] = field(
        default="epoch",
        metadata={
            "help": "When the EMA takes in a new extrapolated model: 'epoch' (at every epoch end; a final partial "
            "epoch counts as one) or 'steps' (every refresh_steps optimizer steps)."
        },
    )
    refresh_steps: int = field(
        default=1, metadata={"help": "Refresh the EMA every N optimizer steps (momentum_refresh 'steps')."}
    )
    momentum_export: str = field(
        default="merged", metadata={"help": "LoRA momentum export: 'merged' weights or 'svd' adapter."}
    )
    svd_rank: int | None = field(default=None, metadata={"help": "Rank of the SVD adapter (default: 4× the LoRA r)."})

    def __post_init__(self):
        super().__post_init__()
        check_choice("forget_loss", self.forget_loss, MOX_FORGET_LOSSES)
        check_choice("export_mode", self.export_mode, MOX_EXPORTS)
        check_choice("momentum_export", self.momentum_export, MOMENTUM_EXPORTS)
        check_choice("momentum_refresh", self.momentum_refresh, MOMENTUM_REFRESHES)
        for a in [self.alpha, *self.alphas]:
            xp.check_alpha(a)
        if not 0 < self.momentum_eta <= 1:
            raise ValueError(f"momentum_eta must be in (0, 1], not {self.momentum_eta}")
        if self.refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1, not {self.refresh_steps}")
        if self.momentum_refresh == "epoch" and self.refresh_steps != 1:
            raise ValueError(
                f"refresh_steps={self.refresh_steps} is only used with momentum_refresh 'steps'; "
                "with 'epoch' the EMA refreshes at every epoch end (drop refresh_steps)"
            )

    def all_alphas(self) -> list[float]:
        return list(dict.fromkeys([float(self.alpha), *map(float, self.alphas)]))

    def provenance(self) -> dict:
        return {"alpha": self.alpha, "alphas": self.all_alphas(), "eta": self.momentum_eta if self.momentum else None}


class MOXTrainer(UnlearningTrainer):
    family = "mox"
    summary = (
        "MOX (memorize, then extrapolate) trains a memorization model θ_mem by gradient descent on the forget set, "
        "anchored to the reference by a KL term on the retain set, then extrapolates away from it: "
        "θ = θ_ref + α·(θ_ref − θ_mem) (with momentum, an EMA of the extrapolated weights with rate η)."
    )
    tags = ("mox",)
    display_name = "MOX"
    needs_reference = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum: MomentumCallback | None = None
        if self.args.momentum and self.shards_parameters():
            raise ValueError(
                "MOX momentum keeps an fp32 EMA of whole weights every refresh, which FSDP / DeepSpeed ZeRO-3 "
                "shard across processes: run it with DDP or ZeRO-2 (recipes/accelerate_configs/ddp.yaml, "
                "deepspeed_zero2.yaml), or with LoRA, or turn momentum off (plain MOX extrapolates the gathered "
                "memorization model after training under FSDP/ZeRO-3)."
            )
        if is_peft_model(self.model):
            # Refuse what the export could not write now, not after training.
            args = self.args
            merged = args.export_mode == "merged" or (args.momentum and args.momentum_export == "merged")
            xp.check_extrapolatable(self.model, merged=merged)
        if self.args.momentum:
            self.momentum = MomentumCallback(
                self, self.args.momentum_eta, self.args.refresh_steps, self.args.momentum_refresh
            )
            self.add_callback(self.momentum)

    @classmethod
    def wants_refusal(cls, args) -> bool:
        return args.targeted

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        forget_nll, forget_logp = self.stats(model, inputs["forget"])
        if args.forget_loss == "npo":
            _, ref_logp = self.ref_stats(model, inputs["forget"])
            # Minimized, this raises the forget likelihood above θ_ref (the mirror image of NPO).
            forget_term = -npo_loss(forget_logp, ref_logp, args.npo_beta)
        else:
            forget_term = forget_nll.mean()
        retain_kl = self.retain_kl(model, inputs["retain"])
        loss = args.forget_weight * forget_term + args.kl_weight * retain_kl
        terms = {"forget_nll": forget_nll.mean(), "retain_kl": retain_kl}
        if args.forget_loss == "npo":
            terms["forget_npo"] = forget_term
        if args.targeted:
            if "refusal" not in inputs:
                raise ValueError("targeted MOX needs refusal answers: build PairedDataset(refusal=...)")
            refusal_nll = self.nll(model, inputs["refusal"])
            loss = loss - args.refusal_weight * refusal_nll
            terms["refusal_nll"] = refusal_nll
        self.record(**terms, loss=loss)
        return loss

    # --- export ---------------------------------------------------------------------------------------

    def export(self, run_dir, model_source=None) -> dict[str, dict]:
        """unlearned/ (α = args.alpha), alpha_<a>/ for every other α of args.alphas, and memorization/ (θ_mem,
        what a later α sweep extrapolates: the extrapolate stage with extrapolate.memorization). Full weights
        beyond the first α are lazy folders when `model_source` says where θ_ref loads from (lazy_source)."""
        if self.shards_parameters():
            return self.export_through_saved(run_dir, model_source)
        run_dir = Path(run_dir)
        memorization = run_dir / "memorization"
        exports = {"unlearned": self.export_unlearned(str(run_dir / "unlearned"))}
        if self.accelerator.is_main_process:
            self.save_memorization(str(memorization))
        lazy_source = self.lazy_source(model_source)
        for i, alpha in enumerate(self.args.all_alphas()[1:], start=1):
            name = export_name(i, alpha)
            if lazy_source is None:
                exports[name] = self.export_unlearned(str(run_dir / name), alpha=alpha)
            elif self.accelerator.is_main_process:
                exports[name] = self.write_lazy(run_dir / name, alpha, lazy_source, memorization)
        return exports

    def lazy_source(self, model_source):
        """`model_source` when later α can be recomputed from θ_ref on disk and memorization/, else None (every α
        is written now): momentum (its models need the EMA, which is not saved), LoRA adapters (a few MB each),
        and θ_ref not reloadable as trained (no model_source, an adapter merged in first, a quantized base)."""
        model = self.accelerator.unwrap_model(self.model)
        if self.momentum is not None or model_source is None or model_source.adapter or model_source.quantization:
            return None
        if is_peft_model(model) and self.args.export_mode == "auto":
            return None
        return model_source

    def write_lazy(self, out: Path, alpha: float, model_source, memorization: Path) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        merged = is_peft_model(model)
        reference = model.get_base_model() if merged else self.accelerator.unwrap_model(self.ref_model)
        fmt = self.args.weights_format()
        return write_lazy_alpha(out, alpha, model_source, memorization, merged, fmt.torch_dtype(reference), fmt)

    @classmethod
    def export_saved(cls, args, trained, run_dir, model_source, tokenizer) -> dict[str, dict]:
        merged = args.export_mode == "merged"
        return extrapolate_saved(
            model_source, trained, args.all_alphas(), run_dir, tokenizer, merged=merged, fmt=args.weights_format()
        )

    def export_unlearned(self, output_dir: str, alpha: float | None = None) -> dict:
        """Write θ_for for `alpha` (default: args.alpha); the momentum model when momentum is on."""
        alpha, model = live_extrapolation(
            self, alpha, "MOX cannot extrapolate", "memorization model with save_memorization(folder)"
        )
        info: dict = {"alpha": alpha, "momentum": bool(self.momentum)}
        if not self.accelerator.is_main_process:
            return info
        fmt = self.args.weights_format()
        if self.momentum is not None:
            info.update(self.momentum.export(output_dir, alpha))
        elif is_peft_model(model) and self.args.export_mode == "auto":
            xp.save_extrapolated_adapter(model, alpha, output_dir)
            info["kind"] = "adapter"
        elif is_peft_model(model):
            xp.save_merged_extrapolation(model, alpha, output_dir, self.processing_class, fmt)
            info["kind"] = "model"
        else:
            xp.save_extrapolated_model(self.ref_model, model, alpha, output_dir, self.processing_class, fmt)
            info["kind"] = "model"
        if self.processing_class is not None and info.get("kind") == "adapter":
            self.processing_class.save_pretrained(output_dir)
        return info

    def save_memorization(self, output_dir: str) -> None:
        """The memorization model itself (θ_mem): what an α sweep needs later."""
        self.save_model(output_dir)


class MomentumCallback(TrainerCallback):
    """fp32 EMA of the memorization delta d = θ_ref − θ_mem over trained weights (LoRA: adapted modules'
    s·BA and lora_bias s·b, plus modules_to_save as trained − original).

    Refresh k: d̄ ← η·d_k + (1−η)·d̄ (first: copy), every `refresh_steps` optimizer steps ("steps") or at each
    epoch end ("epoch"). The epoch refresh runs in the epoch's last on_step_end, before the Trainer saves a
    checkpoint at that step, so a checkpoint never misses it. A refresh also happens at the end of training
    when the last step was not one (a partial last epoch, or steps not a multiple of refresh_steps). The buffer
    is saved in every checkpoint (momentum.pt) and restored on resume.
    """

    FILE = "momentum.pt"

    def __init__(self, trainer: UnlearningTrainer, eta: float, refresh_steps: int, refresh_on: str = "steps"):
        self.trainer, self.eta, self.refresh_steps, self.refresh_on = trainer, eta, refresh_steps, refresh_on
        self.buffer: dict[str, torch.Tensor] = {}
        self.refreshes = 0
        self.last_refresh_step = -1

    def current_delta(self) -> dict[str, torch.Tensor]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if is_peft_model(model):
            return {name: -delta for name, delta in xp.memorization_deltas(model).items()}
        ref = dict(self.trainer.accelerator.unwrap_model(self.trainer.ref_model).named_parameters())
        return {
            name: ref[name].detach().float() - param.detach().float()
            for name, param in model.named_parameters()
            if param.requires_grad
        }

    @torch.no_grad()
    def refresh(self, step: int) -> None:
        delta = self.current_delta()
        if not self.buffer:
            self.buffer = {k: v.clone() for k, v in delta.items()}
        else:
            for name, value in delta.items():
                self.buffer[name].mul_(1 - self.eta).add_(value, alpha=self.eta)
        self.refreshes += 1
        self.last_refresh_step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.refresh_on == "epoch":
            # The Trainer sets state.epoch = epoch + (step + 1) / steps_in_epoch, a whole number exactly at the
            # epoch's last optimizer step.
            due = abs(state.epoch - round(state.epoch)) < 1e-9
        else:
            due = state.global_step % self.refresh_steps == 0
        if due:
            self.refresh(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.last_refresh_step != state.global_step:
            self.refresh(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.accelerator.is_main_process:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            payload = {"buffer": self.buffer, "refreshes": self.refreshes, "last_refresh_step": self.last_refresh_step}
            tmp = folder / f".{self.FILE}.tmp"
            torch.save(payload, tmp)
            tmp.replace(folder / self.FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # resuming: the Trainer restored state from checkpoint-<step>
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE
            if not path.is_file():
                raise FileNotFoundError(f"resuming MOX momentum needs {path}; it was not saved with the checkpoint")
            payload = torch.load(path, map_location="cpu", weights_only=True)
            self.buffer, self.refreshes = payload["buffer"], payload["refreshes"]
            self.last_refresh_step = payload["last_refresh_step"]

    # --- export ---------------------------------------------------------------------------------------

    def export(self, output_dir: str, alpha: float) -> dict:
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        info = {
            "eta": self.eta,
            "momentum_refresh": self.refresh_on,
            "refresh_steps": self.refresh_steps if self.refresh_on == "steps" else None,
            "refreshes": self.refreshes,
        }
        fmt = trainer.args.weights_format()
        if not is_peft_model(model):
            ref_model = trainer.accelerator.unwrap_model(trainer.ref_model)
            ref = xp.model_state(ref_model)
            state = {k: (v.float() + alpha * self.buffer[k]) if k in self.buffer else v.float() for k, v in ref.items()}
            mode = {"alpha": alpha, "mode": "momentum_full", **info}
            xp.save_model_state(model, state, output_dir, trainer.processing_class, mode, fmt, ref_model)
            return {**info, "kind": "model"}
        if trainer.args.momentum_export == "merged":
            xp.check_extrapolatable(model, merged=True)
            state = xp.reference_state(model)  # θ_ref as fp32 base weights
            for name, delta in self.buffer.items():
                state[name] = state[name] + alpha * delta
            mode = {"alpha": alpha, "mode": "momentum_merged", **info}
            xp.save_model_state(model, state, output_dir, trainer.processing_class, mode, fmt)
            return {**info, "kind": "model"}
        return {**info, **self.export_svd_adapter(model, output_dir, alpha)}

    def export_svd_adapter(self, model, output_dir: str, alpha: float) -> dict:
        """Compress α·d̄ per LoRA module into a rank-k adapter (scaling 1); record the relative error.
        lora_bias biases and modules_to_save are written exactly (θ_ref + α·d̄)."""
        xp.check_extrapolatable(model, merged=False)  # DoRA & co.: d̄ is not what their factors would express
        rank = self.trainer.args.svd_rank or 4 * model.peft_config["default"].r
        state, errors, total_sq, err_sq = {}, {}, 0.0, 0.0
        for module_name, module in xp._lora_layers(model, "default"):
            base = xp._base_param_name(module_name)
            target = alpha * self.buffer[f"{base}.weight"]
            # B·A is the delta itself, or its transpose for embeddings and fan_in_fan_out layers.
            product = target.T if xp._product_is_transposed(module, "default") else target
            b, a, rel = xp.svd_factors(product, rank)
            a_key, b_key = xp._factor_keys(module_name, module, "default")
            state[a_key], state[b_key] = _pad_rank(a, rank, dim=0), _pad_rank(b, rank, dim=1)
            if f"{base}.bias" in self.buffer:
                state[f"{module_name}.lora_B.bias"] = (alpha * self.buffer[f"{base}.bias"]).contiguous()
            norm_sq = float(target.pow(2).sum())
            total_sq += norm_sq
            err_sq += rel**2 * norm_sq
            errors[f"{base}.weight"] = rel
        for key, (ref, _) in xp._modules_to_save(model, "default").items():
            state[key] = ref.detach().float() + alpha * self.buffer[xp._base_param_name(key)]
        overall = math.sqrt(err_sq / total_sq) if total_sq > 0 else 0.0
        details = {
            "svd_rank": rank,
            "svd_relative_error": overall,
            "svd_max_module_error": max(errors.values(), default=0.0),
        }
        updates = {"r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}
        xp.save_adapter_state(
            model, state, output_dir, config_updates=updates, info={"alpha": alpha, "mode": "momentum_svd", **details}
        )
        if self.trainer.processing_class is not None:
            self.trainer.processing_class.save_pretrained(output_dir)
        logger.info("momentum SVD adapter rank %d: relative error %.4f", rank, overall)
        return {**details, "kind": "adapter"}


def _pad_rank(factor: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """Zero-pad an SVD factor to the adapter rank when the layer has fewer singular values than the rank."""
    missing = rank - factor.shape[dim]
    if missing > 0:
        shape = list(factor.shape)
        shape[dim] = missing
        factor = torch.cat([factor, factor.new_zeros(shape)], dim=dim)
    return factor.contiguous()
