"""MOX extrapolation through the original model: θ_for = θ_ref + α(θ_ref − θ_mem) = (1+α)θ_ref − αθ_mem.

* Full weights: elementwise in fp32 (a 1e-5 learning rate leaves differences that underflow in bf16).
* LoRA (θ_mem = θ_ref + s·BA): exact with no second model: B ← −α·B (never A and B both: the signs
  cancel, giving +α²). Trained non-LoRA modules (`modules_to_save`) take the full formula.
  `verify_lora_extrapolation` checks the resulting delta numerically instead of trusting a code path.
* DoRA is not linear in B, so exact adapter extrapolation is refused; a quantized base is never merged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .models import is_peft_model
from .utils import atomic_dir


class ExtrapolationError(ValueError):
    pass


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha > 0:
        raise ExtrapolationError(
            f"alpha must be > 0 (got {alpha}): θ_for = θ_ref + α(θ_ref − θ_mem); α = 0 is the unchanged model "
            "and α < 0 moves towards the memorized data. The MOX paper searches {0.5, 1, 2, 4, 8}."
        )
    return alpha


def extrapolate_tensor(ref: torch.Tensor, mem: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1+α)·ref − α·mem in fp32, written as ref + α(ref − mem) so α = 0 returns ref exactly."""
    ref32 = ref.detach().float()
    return ref32 + alpha * (ref32 - mem.detach().float())


def extrapolate_state_dict(ref: dict[str, torch.Tensor], mem: dict[str, torch.Tensor], alpha: float) -> dict:
    """Full-weight extrapolation of two state dicts with the same keys and shapes (fp32 result)."""
    missing = sorted(set(ref) ^ set(mem))
    if missing:
        raise ExtrapolationError(
            f"reference and memorization models have different parameters (e.g. {missing[:3]}): "
            "they must come from the same base architecture"
        )
    out = {}
    for name, ref_value in ref.items():
        if ref_value.shape != mem[name].shape:
            raise ExtrapolationError(f"{name}: shape {tuple(ref_value.shape)} vs {tuple(mem[name].shape)}")
        if ref_value.is_floating_point():
            out[name] = extrapolate_tensor(ref_value, mem[name], alpha)
        else:
            out[name] = ref_value.clone()
    return out


# --- LoRA ------------------------------------------------------------------------------------------------


def _lora_layers(peft_model, adapter: str):
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}):
            yield name, module


def _refuse_unsupported(peft_model, adapter: str) -> None:
    config = peft_model.peft_config[adapter]
    if getattr(config, "peft_type", None) is not None and str(config.peft_type.value) != "LORA":
        raise ExtrapolationError(f"adapter type {config.peft_type} is not LoRA; only LoRA adapters extrapolate exactly")
    if getattr(config, "use_dora", False):
        raise ExtrapolationError(
            "DoRA adapters are not linear in B, so exact adapter extrapolation does not apply. Merge the "
            "memorization adapter (peft merge_and_unload, in fp32) and extrapolate full weights instead "
            "(`extrapolate_state_dict`, or `llm-unlearn extrapolate --mode full`)."
        )


def _base_param_name(peft_module_name: str) -> str:
    """'base_model.model.model.layers.0.q_proj' -> 'model.layers.0.q_proj' (the base model's own naming)."""
    prefix = "base_model.model."
    return peft_module_name[len(prefix) :] if peft_module_name.startswith(prefix) else peft_module_name


def lora_delta(module, adapter: str) -> torch.Tensor:
    """s·BA of one LoRA layer in fp32, shaped like the base weight."""
    if adapter in getattr(module, "lora_B", {}) and hasattr(module.lora_B[adapter], "weight"):
        weight = module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()
        if getattr(module, "fan_in_fan_out", False):
            weight = weight.T
        return weight * module.scaling[adapter]
    return module.get_delta_weight(adapter).float()


def lora_deltas(peft_model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{base weight name: s·BA} for every adapted module (fp32, full rank)."""
    return {
        f"{_base_param_name(name)}.weight": lora_delta(module, adapter)
        for name, module in _lora_layers(peft_model, adapter)
    }


def _modules_to_save(peft_model, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{adapter state key suffix: (reference tensor, trained tensor)} for full modules trained beside LoRA."""
    from peft.utils import ModulesToSaveWrapper

    pairs = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
            trained = dict(module.modules_to_save[adapter].named_parameters())
            for pname, ref in module.original_module.named_parameters():
                pairs[f"{name}.{pname}"] = (ref, trained[pname])
    return pairs


def extrapolate_adapter_state(peft_model, alpha: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The extrapolated adapter's state dict (peft save format, fp32): B scaled by −α, A unchanged,
    trained full modules by the full formula."""
    from peft import get_peft_model_state_dict

    _refuse_unsupported(peft_model, adapter)
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    saved_full = _modules_to_save(peft_model, adapter)
    out = {}
    for key, value in state.items():
        if "lora_B" in key or "lora_embedding_B" in key:
            out[key] = -alpha * value.detach().float()
        elif "lora_A" in key or "lora_embedding_A" in key:
            out[key] = value.detach().float().clone()
        else:
            match = [
                k
                for k in saved_full
                if key.endswith(k.split("modules_to_save.")[-1]) or k.replace(f".modules_to_save.{adapter}", "") in key
            ]
            if not match:
                raise ExtrapolationError(
                    f"don't know how to extrapolate adapter entry {key!r}: only LoRA A/B and modules_to_save are supported"
                )
            ref, trained = saved_full[match[0]]
            out[key] = extrapolate_tensor(ref, trained, alpha)
    return out


def verify_lora_extrapolation(
    peft_model, new_state: dict[str, torch.Tensor], alpha: float, adapter: str = "default", atol: float = 1e-5
) -> float:
    """Check numerically that every module's new delta equals −α × the memorization delta.

    Returns the max abs difference. Scaling both A and B shows up as +α²·delta and is reported as such.
    """
    worst = 0.0
    for name, module in _lora_layers(peft_model, adapter):
        prefix = name + "."
        a_key = next((k for k in new_state if k.startswith(prefix) and "lora_A" in k), None)
        b_key = next((k for k in new_state if k.startswith(prefix) and "lora_B" in k), None)
        if a_key is None or b_key is None:
            raise ExtrapolationError(f"the extrapolated adapter lacks LoRA weights for {name}")
        new = (new_state[b_key].float() @ new_state[a_key].float()) * module.scaling[adapter]
        if getattr(module, "fan_in_fan_out", False):
            new = new.T
        old = lora_delta(module, adapter)
        expected = -alpha * old
        diff = float((new - expected).abs().max())
        if diff > atol * max(1.0, float(expected.abs().max())):
            ratio = float((new * old).sum() / (old * old).sum().clamp_min(1e-30))
            hint = (
                " (= +α²: both A and B were scaled; scale B only)"
                if abs(ratio - alpha**2) < 1e-3 * max(1, alpha**2)
                else ""
            )
            raise ExtrapolationError(
                f"{name}: extrapolated delta is {ratio:.4g}× the memorization delta, expected {-alpha:.4g}×{hint}"
            )
        worst = max(worst, diff)
    return worst


def save_adapter_state(
    peft_model,
    state: dict[str, torch.Tensor],
    out_dir,
    adapter: str = "default",
    config_updates: dict | None = None,
    info: dict | None = None,
) -> Path:
    from safetensors.torch import save_file

    config = peft_model.peft_config[adapter]

    def write(folder: Path):
        config.save_pretrained(folder)
        if config_updates:
            path = folder / "adapter_config.json"
            data = json.loads(path.read_text())
            data.update(config_updates)
            path.write_text(json.dumps(data, indent=2, sort_keys=True))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
        if info is not None:
            (folder / "extrapolation.json").write_text(json.dumps(info, indent=2, sort_keys=True))

    return atomic_dir(out_dir, write)


def save_extrapolated_adapter(peft_model, alpha: float, out_dir, adapter: str = "default", verify: bool = True) -> Path:
    """Write the α-extrapolated adapter next to nothing else: no training, no second model."""
    alpha = check_alpha(alpha)
    state = extrapolate_adapter_state(peft_model, alpha, adapter)
    max_err = verify_lora_extrapolation(peft_model, state, alpha, adapter) if verify else None
    info = {"alpha": alpha, "mode": "lora_scale_b", "formula": "B <- -alpha*B", "verified_max_abs_error": max_err}
    return save_adapter_state(peft_model, state, out_dir, adapter, info=info)


def merged_extrapolated_state(peft_model, alpha: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Base-model state dict of W_ref − α·s·BA (fp32), for users who want plain weights."""
    _refuse_unsupported(peft_model, adapter)
    base = peft_model.get_base_model()
    if getattr(base, "is_quantized", False) or getattr(base, "quantization_config", None) is not None:
        raise ExtrapolationError("the base model is quantized: keep the extrapolated adapter unmerged (mode='adapter')")
    deltas = lora_deltas(peft_model, adapter)
    full = {
        _base_param_name(k.replace(f".modules_to_save.{adapter}", "")): (ref, trained)
        for k, (ref, trained) in _modules_to_save(peft_model, adapter).items()
    }
    out = {}
    for name, param in base.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        clean = name.replace(".base_layer", "").replace(".original_module", "")
        if clean in deltas:
            out[clean] = param.detach().float() - alpha * deltas[clean]
        elif clean in full:
            out[clean] = extrapolate_tensor(*full[clean], alpha)
        else:
            out[clean] = param.detach().float().clone()
    return out


def save_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], out_dir, tokenizer=None, info: dict | None = None
) -> Path:
    """Save `state` with `model`'s config as a plain transformers folder (atomically)."""
    base = model.get_base_model() if is_peft_model(model) else model

    def write(folder: Path):
        base.config.save_pretrained(folder)
        from safetensors.torch import save_file

        tied = _tied_duplicates(base, state)
        save_file(
            {k: v.contiguous() for k, v in state.items() if k not in tied},
            str(folder / "model.safetensors"),
            metadata={"format": "pt"},
        )
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if info is not None:
            (folder / "extrapolation.json").write_text(json.dumps(info, indent=2, sort_keys=True))

    return atomic_dir(out_dir, write)


def _tied_duplicates(model: nn.Module, state: dict) -> set[str]:
    """Keys that are tied copies of another (lm_head with tied embeddings), left out like save_pretrained does."""
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        return {"lm_head.weight"}
    return set()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, unwrapped from accelerate/DDP."""
    model = getattr(model, "module", model)
    return {k: v for k, v in model.state_dict().items()}


def save_extrapolated_model(ref_model: nn.Module, mem_model: nn.Module, alpha: float, out_dir, tokenizer=None) -> Path:
    alpha = check_alpha(alpha)
    state = extrapolate_state_dict(model_state(ref_model), model_state(mem_model), alpha)
    info = {"alpha": alpha, "mode": "full", "formula": "(1+alpha)*theta_ref - alpha*theta_mem (fp32)"}
    return save_model_state(getattr(mem_model, "module", mem_model), state, out_dir, tokenizer, info)


# --- SVD compression of a full-rank delta (momentum over LoRA) -------------------------------------------


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """B (out×r), A (r×in) with B@A the best rank-r approximation of delta, and the relative Frobenius error."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel())
    b = u[:, :r] * s[:r]
    a = vh[:r]
    total = float(s.pow(2).sum())
    rel = (float(s[r:].pow(2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return b, a, rel
