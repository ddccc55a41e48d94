"""Extrapolation from a saved trained model: the MOX α sweep without training, and the gathered route of the
extrapolating methods under sharded weights (FSDP / ZeRO-3), where whole copies are loaded from disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import extrapolate as xp
from ..models import is_adapter_dir, load_model, load_with_adapter

if TYPE_CHECKING:
    from ..config import ModelConfig


def export_name(index: int, alpha: float) -> str:
    """The folder of the index-th α of a run: unlearned/ for the first, alpha_<a>/ for the others."""
    return "unlearned" if index == 0 else f"alpha_{alpha:g}"


def live_extrapolation(trainer, alpha: float | None, cannot: str, gathered: str):
    """(α checked, default args.alpha; the unwrapped trained model) for an export that extrapolates in place.
    Sharded weights (FSDP / ZeRO-3) are refused, pointing at the gathered route: `cannot` names the method and
    what it does, `gathered` the model to save and how."""
    alpha = xp.check_alpha(trainer.args.alpha if alpha is None else alpha)
    if trainer.shards_parameters():
        raise ValueError(
            f"{cannot} sharded weights (FSDP / ZeRO-3) in place: save the gathered {gathered} and extrapolate it "
            "with llm_unlearn.methods.saved.extrapolate_saved, as `llm-unlearn unlearn` does (export(run_dir, "
            "model_source) takes that route)"
        )
    return alpha, trainer.accelerator.unwrap_model(trainer.model)


def extrapolate_saved(
    model_cfg: ModelConfig, memorization: str, alphas: list[float], run_dir: Path, tokenizer, merged: bool = False
) -> dict:
    """Extrapolate a saved memorization adapter (or full model) for every α: <run_dir>/unlearned is the first α,
    <run_dir>/alpha_<a> the others. Loads whole copies on this process (the gathered path under FSDP/ZeRO-3).
    θ_ref is model.ref_model_path (default name_or_path) for full weights, the adapter's base for LoRA;
    `merged` writes an adapter's extrapolation as plain merged weights (MOX export_mode 'merged')."""
    exports = {}
    if is_adapter_dir(memorization):
        mem = load_with_adapter(
            model_cfg.name_or_path, memorization, dtype=model_cfg.dtype, quantization=model_cfg.quantization
        )
        ref = None
    else:
        ref = load_model(model_cfg.ref_model_path or model_cfg.name_or_path, dtype=model_cfg.dtype)
        mem = load_model(memorization, dtype=model_cfg.dtype)
    for i, alpha in enumerate(alphas):
        out = Path(run_dir) / export_name(i, alpha)
        if ref is None and merged:
            state = xp.merged_extrapolated_state(mem, alpha)
            xp.save_model_state(mem, state, out, tokenizer, {"alpha": alpha, "mode": "lora_merged"})
            exports[out.name] = {"alpha": alpha, "kind": "model"}
        elif ref is None:
            xp.save_extrapolated_adapter(mem, alpha, out)
            tokenizer.save_pretrained(out)
            exports[out.name] = {"alpha": alpha, "kind": "adapter"}
        else:
            xp.save_extrapolated_model(ref, mem, alpha, out, tokenizer)
            exports[out.name] = {"alpha": alpha, "kind": "model"}
    return exports
