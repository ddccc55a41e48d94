"""MOX extrapolation through the original model: θ_for = θ_ref + α(θ_ref − θ_mem) = (1+α)θ_ref − αθ_mem.

* Full weights: elementwise in fp32 (a 1e-5 learning rate leaves differences that underflow in bf16), cast once
  per tensor to the export dtype (`WeightsFormat`: by default what θ_ref's checkpoint declares) and written as a
  standard sharded checkpoint by transformers' save_pretrained.
* LoRA (θ_mem = θ_ref + s·BA): exact with no second model: B ← −α·B (never A and B both: the signs
  cancel, giving +α²). This covers embedding LoRA (delta s·(BA)^T) and `lora_bias` (bias s·b, scaled with B).
  Trained non-LoRA modules (`modules_to_save`) take the full formula.
  `verify_lora_extrapolation` checks the resulting delta numerically instead of trusting a code path (on random
  probe vectors, so a 7B-sized adapter is checked in well under a second).
* θ_ref is the model with its adapter disabled, so initialisations that rewrite the base weight (PiSSA, OLoRA,
  ...) are refused, as are DoRA and other variants (not linear in B) and factors shared by `ensure_weight_tying`.
* LoRA on a tied embedding leaves lm_head at θ_ref (peft ties no adapter to it): merged exports are saved untied.
* A quantized base is never merged.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from .models import EXTRAPOLATION_INFO, is_peft_model
from .utils import atomic_dir


class ExtrapolationError(ValueError):
    pass


ExportDtype = Literal["auto", "float32", "bfloat16", "float16"]
EXPORT_DTYPES: tuple[str, ...] = get_args(ExportDtype)
# transformers 4's default; transformers 5 writes up to 50GB per file, one file for a 7B model.
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SHARD_SIZE = re.compile(r"\d+(\.\d+)?\s*[KMGT]B", re.IGNORECASE)


@dataclass(frozen=True)
class WeightsFormat:
    """How full-weight exports are written: `dtype` 'auto' (what θ_ref's checkpoint declares, else its
    parameters' dtype), float32, bfloat16 or float16; `max_shard_size` the largest safetensors file
    (save_pretrained's max_shard_size: '5GB', '500MB')."""

    dtype: str = "auto"
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE

    def __post_init__(self):
        if self.dtype not in EXPORT_DTYPES:
            raise ExtrapolationError(f"export_dtype must be one of {', '.join(EXPORT_DTYPES)}, not {self.dtype!r}")
        if not (isinstance(self.max_shard_size, str) and _SHARD_SIZE.fullmatch(self.max_shard_size.strip())):
            raise ExtrapolationError(
                f"max_shard_size must be a number and a unit KB, MB, GB or TB (e.g. '5GB'), not {self.max_shard_size!r}"
            )

    def torch_dtype(self, reference: nn.Module) -> torch.dtype:
        """The dtype to save in; 'auto' reads it from `reference` (θ_ref) with checkpoint_dtype."""
        return checkpoint_dtype(reference) if self.dtype == "auto" else getattr(torch, self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(model: nn.Module) -> torch.dtype:
    """The dtype declared by the config.json `model` was loaded from (a folder, or a Hub id's cached files), else
    the dtype of its floating parameters. The in-memory config cannot tell: loading rewrites it to the load dtype."""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    declared = _declared_dtype(source) if source else None
    if declared is not None:
        return declared
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _declared_dtype(source: str) -> torch.dtype | None:
    config_file = Path(source).expanduser() / "config.json"
    if not config_file.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "config.json")
        except ValueError:  # not a Hub id either
            return None
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


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


def extrapolate_state_dict(
    ref: dict[str, torch.Tensor], mem: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype | None = None
) -> dict:
    """Full-weight extrapolation of two state dicts with the same keys and shapes: fp32, cast to `dtype` tensor by
    tensor when given (so a whole fp32 copy of the model never exists at once)."""
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
            value = extrapolate_tensor(ref_value, mem[name], alpha)
            out[name] = value if dtype is None else value.to(dtype)
        else:
            out[name] = ref_value.clone()
    return out


# --- LoRA ------------------------------------------------------------------------------------------------


def _lora_layers(peft_model, adapter: str):
    """(name, layer) of every LoRA layer holding `adapter`, linear (lora_A) and embedding (lora_embedding_A)."""
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and (
            adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {})
        ):
            yield name, module


def _is_embedding(module, adapter: str) -> bool:
    return adapter in getattr(module, "lora_embedding_A", {})


def _refuse_unsupported(peft_model, adapter: str) -> None:
    from .models import LoraSettingsError, check_lora_init

    config = peft_model.peft_config[adapter]
    if getattr(config, "peft_type", None) is not None and str(config.peft_type.value) != "LORA":
        raise ExtrapolationError(f"adapter type {config.peft_type} is not LoRA; only LoRA adapters extrapolate exactly")
    if getattr(config, "use_dora", False):
        raise ExtrapolationError(
            "DoRA adapters are not linear in B (a learned magnitude rescales W0 + s·BA), so MOX cannot extrapolate "
            "them: use plain LoRA (lora.use_dora: false) or full weights (no lora section)"
        )
    try:
        check_lora_init(getattr(config, "init_lora_weights", True))
    except LoraSettingsError as err:
        raise ExtrapolationError(str(err)) from None
    if getattr(config, "target_modules_to_tie", None):
        raise ExtrapolationError(
            f"ensure_weight_tying shares LoRA factors between the embedding and {sorted(config.target_modules_to_tie)} "
            "(A of one is B of the other), which B <- -αB cannot scale consistently: leave ensure_weight_tying off "
            "(exports then keep lm_head at θ_ref and untie it) or do not target tied embeddings"
        )
    for name, module in _lora_layers(peft_model, adapter):
        if adapter in getattr(module, "lora_variant", {}):
            variant = type(module.lora_variant[adapter]).__name__
            raise ExtrapolationError(
                f"{name}: LoRA variant {variant} is not plain s·BA; MOX extrapolates plain LoRA only"
            )


def check_extrapolatable(peft_model, merged: bool, adapter: str = "default") -> None:
    """Refuse, before training, a LoRA model that MOX could not export (merged: as plain base weights)."""
    _refuse_unsupported(peft_model, adapter)
    if not merged:
        return
    base = peft_model.get_base_model()
    if getattr(base, "is_quantized", False) or getattr(base, "quantization_config", None) is not None:
        raise ExtrapolationError("the base model is quantized: keep the extrapolated adapter unmerged (mode='adapter')")
    for name, module in _lora_layers(peft_model, adapter):
        if module.lora_bias.get(adapter, False) and getattr(module.get_base_layer(), "bias", None) is None:
            raise ExtrapolationError(
                f"{_base_param_name(name)} has lora_bias but no bias in the base layer, so merged weights cannot hold "
                "the trained bias: export the adapter (export_mode 'auto', momentum_export 'svd') or set lora_bias off"
            )


def _base_param_name(peft_module_name: str) -> str:
    """'base_model.model.model.layers.0.q_proj' -> 'model.layers.0.q_proj' (the base model's own naming)."""
    prefix = "base_model.model."
    return peft_module_name[len(prefix) :] if peft_module_name.startswith(prefix) else peft_module_name


def _factors(module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    if _is_embedding(module, adapter):
        return module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
    return module.lora_A[adapter].weight, module.lora_B[adapter].weight


def _product_is_transposed(module, adapter: str) -> bool:
    """peft's Embedding stores its delta as (B·A)^T, like fan_in_fan_out (Conv1D) linear layers."""
    return _is_embedding(module, adapter) or bool(getattr(module, "fan_in_fan_out", False))


def _delta_from_factors(module, adapter: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    weight = b.detach().float() @ a.detach().float()
    return (weight.T if _product_is_transposed(module, adapter) else weight) * module.scaling[adapter]


def lora_delta(module, adapter: str) -> torch.Tensor:
    """s·BA of one LoRA layer in fp32, shaped like the base weight."""
    if _is_embedding(module, adapter) or (
        adapter in getattr(module, "lora_B", {}) and hasattr(module.lora_B[adapter], "weight")
    ):
        return _delta_from_factors(module, adapter, *_factors(module, adapter))
    return module.get_delta_weight(adapter).float()


def lora_bias_delta(module, adapter: str) -> torch.Tensor | None:
    """s·b of a `lora_bias` layer (peft adds lora_B's bias inside the scaled branch), else None."""
    if not module.lora_bias.get(adapter, False):
        return None
    return module.lora_B[adapter].bias.detach().float() * module.scaling[adapter]


def lora_deltas(peft_model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{base parameter name: s·BA (weights) or s·b (lora_bias)} for every adapted module (fp32, full rank)."""
    out = {}
    for name, module in _lora_layers(peft_model, adapter):
        base = _base_param_name(name)
        out[f"{base}.weight"] = lora_delta(module, adapter)
        bias = lora_bias_delta(module, adapter)
        if bias is not None:
            out[f"{base}.bias"] = bias
    return out


def _modules_to_save(peft_model, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{peft state key: (reference tensor, trained tensor)} for full modules trained beside LoRA.

    The key is the one `get_peft_model_state_dict` writes: the wrapper's name plus the parameter name."""
    from peft.utils import ModulesToSaveWrapper

    pairs = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
            trained = dict(module.modules_to_save[adapter].named_parameters())
            for pname, ref in module.original_module.named_parameters():
                pairs[f"{name}.{pname}"] = (ref, trained[pname])
    return pairs


def memorization_deltas(peft_model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{base parameter name: θ_mem − θ_ref} over everything trained: LoRA weights and biases, modules_to_save."""
    out = lora_deltas(peft_model, adapter)
    for key, (ref, trained) in _modules_to_save(peft_model, adapter).items():
        out[_base_param_name(key)] = trained.detach().float() - ref.detach().float()
    return out


def reference_state(peft_model) -> dict[str, torch.Tensor]:
    """θ_ref as base-model weights (fp32): the base layers with adapters off. Tied names are listed
    separately (lm_head beside embed_tokens) since an adapted embedding unties them."""
    base = peft_model.get_base_model()
    out = {}
    for name, param in base.named_parameters(remove_duplicate=False):
        if "lora_" in name or ".modules_to_save." in name:
            continue
        out[name.replace(".base_layer", "").replace(".original_module", "")] = param.detach().float().clone()
    return out


def _extrapolated_adapter_entry(key: str, value: torch.Tensor, alpha: float, saved_full: dict) -> torch.Tensor:
    if "lora_B" in key or "lora_embedding_B" in key:  # weight and lora_bias bias alike
        return -alpha * value.detach().float()
    if "lora_A" in key or "lora_embedding_A" in key:
        return value.detach().float().clone()
    if key in saved_full:
        return extrapolate_tensor(*saved_full[key], alpha)
    if ".base_layer." in key:  # frozen base weights peft saves beside embedding LoRA: θ_ref unchanged
        return value.detach().float().clone()
    raise ExtrapolationError(
        f"don't know how to extrapolate adapter entry {key!r}: only LoRA A/B and modules_to_save are supported"
    )


def scale_adapter_state(
    state: dict[str, torch.Tensor], alpha: float, trained_full: dict | None = None
) -> dict[str, torch.Tensor]:
    """The extrapolated adapter from a memorization adapter's state dict (peft save format), tensor by tensor, fp32:
    B (and lora_bias) scaled by −α, A unchanged, trained full modules ({key: (reference, trained)} in
    `trained_full`) by the full formula. No model is needed."""
    trained_full = trained_full or {}
    return {key: _extrapolated_adapter_entry(key, value, alpha, trained_full) for key, value in state.items()}


def extrapolate_adapter_state(peft_model, alpha: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The extrapolated adapter's state dict of a live PEFT model (scale_adapter_state on its saved state)."""
    from peft import get_peft_model_state_dict

    _refuse_unsupported(peft_model, adapter)
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    return scale_adapter_state(state, alpha, _modules_to_save(peft_model, adapter))


def _factor_keys(name: str, module, adapter: str) -> tuple[str, str]:
    if _is_embedding(module, adapter):
        return f"{name}.lora_embedding_A", f"{name}.lora_embedding_B"
    return f"{name}.lora_A.weight", f"{name}.lora_B.weight"


# Gaussian vectors x (one draw per input size) on which the verification compares B'A'x with −α·BAx: two different
# products agree on such a vector with probability 0, and no full-size delta (11008×4096 in a 7B MLP) is formed.
VERIFY_PROBES = 2
_FACTOR_SUFFIXES = (("lora_A.weight", "lora_B.weight"), ("lora_embedding_A", "lora_embedding_B"))


def verify_scaled_factors(
    old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], alpha: float, atol: float = 1e-5
) -> float:
    """Check that every LoRA factor pair in `old` has, in `new`, a product −α × its own (and each lora_bias bias
    −α × its own), keyed like peft's saved state. Returns the max abs difference; scaling both A and B shows up as
    +α² and is reported as such. The LoRA scale s multiplies both sides alike, so it is left out."""
    generator = torch.Generator().manual_seed(0)
    probes: dict[int, torch.Tensor] = {}  # {input size: (VERIFY_PROBES, size)}, independent of every factor
    worst = 0.0
    for a_key in old:
        suffixes = next(((a, b) for a, b in _FACTOR_SUFFIXES if a_key.endswith(a)), None)
        if suffixes is None:
            continue
        module = a_key[: -len(suffixes[0]) - 1]
        b_key = f"{module}.{suffixes[1]}"
        if a_key not in new or b_key not in new:
            raise ExtrapolationError(f"the extrapolated adapter lacks LoRA weights for {module}")
        a_old, b_old, a_new, b_new = (
            t.detach().float().flatten(1) for t in (old[a_key], old[b_key], new[a_key], new[b_key])
        )
        if a_old.shape[1] not in probes:
            probes[a_old.shape[1]] = torch.randn(VERIFY_PROBES, a_old.shape[1], generator=generator)
        x = probes[a_old.shape[1]]  # a probe per row: (x·Aᵀ)·Bᵀ holds (B·A·x)ᵀ, faster than probes as columns
        pairs = [((x @ a_new.T) @ b_new.T, (x @ a_old.T) @ b_old.T)]
        bias_key = f"{module}.lora_B.bias"
        if bias_key in old:
            pairs.append((new[bias_key].detach().float(), old[bias_key].detach().float()))
        for got, before in pairs:
            worst = max(worst, _check_scaled(module, got, before, alpha, atol))
    return worst


def _check_scaled(module: str, got: torch.Tensor, before: torch.Tensor, alpha: float, atol: float) -> float:
    expected = -alpha * before
    diff = float((got - expected).abs().max())
    if diff > atol * max(1.0, float(expected.abs().max())):
        ratio = float((got * before).sum() / (before * before).sum().clamp_min(1e-30))
        hint = (
            " (= +α²: both A and B were scaled; scale B only)"
            if abs(ratio - alpha**2) < 1e-3 * max(1, alpha**2)
            else ""
        )
        raise ExtrapolationError(
            f"{module}: extrapolated delta is {ratio:.4g}× the memorization delta, expected {-alpha:.4g}×{hint}"
        )
    return diff


def verify_lora_extrapolation(
    peft_model, new_state: dict[str, torch.Tensor], alpha: float, adapter: str = "default", atol: float = 1e-5
) -> float:
    """verify_scaled_factors against the live model's own factors (not the state the new one was built from)."""
    old = {}
    for name, module in _lora_layers(peft_model, adapter):
        a_key, b_key = _factor_keys(name, module, adapter)
        old[a_key], old[b_key] = _factors(module, adapter)
        if module.lora_bias.get(adapter, False):
            old[f"{name}.lora_B.bias"] = module.lora_B[adapter].bias
    return verify_scaled_factors(old, new_state, alpha, atol)


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
    info = {
        "alpha": alpha,
        "mode": "lora_scale_b",
        "formula": "B <- -alpha*B",
        "verified_max_abs_error": max_err,
        "verification": f"B'A'x against -alpha*BAx on {VERIFY_PROBES} Gaussian vectors x",
    }
    return save_adapter_state(peft_model, state, out_dir, adapter, info=info)


def merged_extrapolated_state(peft_model, alpha: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Base-model state dict of θ_ref − α·(θ_mem − θ_ref) (fp32) for users who want plain weights: LoRA
    weights and biases take −α·s·BA / −α·s·b, modules_to_save the full formula, the rest is θ_ref."""
    check_extrapolatable(peft_model, merged=True, adapter=adapter)
    out = reference_state(peft_model)
    for name, delta in memorization_deltas(peft_model, adapter).items():
        out[name] = out[name] - alpha * delta
    return out


def save_merged_extrapolation(
    peft_model, alpha: float, out_dir, tokenizer=None, fmt: WeightsFormat = WeightsFormat(), extra_files=None
) -> Path:
    """merged_extrapolated_state written as plain weights (MOX export_mode 'merged')."""
    state = merged_extrapolated_state(peft_model, alpha)
    info = {"alpha": alpha, "mode": "lora_merged"}
    return save_model_state(peft_model, state, out_dir, tokenizer, info, fmt, extra_files=extra_files)


def save_model_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    out_dir,
    tokenizer=None,
    info: dict | None = None,
    fmt: WeightsFormat = WeightsFormat(),
    reference: nn.Module | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Save `state` with `model`'s config as a standard transformers checkpoint, atomically: floating tensors cast
    to fmt's dtype (for 'auto', what `reference`'s checkpoint declares; default `model`'s base), sharded by
    save_pretrained at fmt.max_shard_size (model.safetensors, or shards plus model.safetensors.index.json).
    `info` goes to extrapolation.json with the dtype and shard count; `extra_files` ({name: bytes}) beside."""
    base = model.get_base_model() if is_peft_model(model) else model
    dtype = fmt.torch_dtype(reference if reference is not None else base)

    def write(folder: Path):
        tied, untied = _tied_duplicates(base, state)
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items() if k not in tied}
        base.save_pretrained(folder, state_dict=weights, max_shard_size=fmt.max_shard_size)
        # save_pretrained records the in-memory dtype and tying; the checkpoint's own replace them.
        config = copy.deepcopy(base.config)
        config.dtype = dtype
        if untied:  # e.g. LoRA on a tied embed_tokens: lm_head stays at θ_ref, so the export needs its own copy
            config.tie_word_embeddings = False
        config.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if info is not None:
            shards = len(list(folder.glob("model*.safetensors")))
            written = {**info, "dtype": dtype_name(dtype), "max_shard_size": fmt.max_shard_size, "shards": shards}
            (folder / EXTRAPOLATION_INFO).write_text(json.dumps(written, indent=2, sort_keys=True))
        for name, data in (extra_files or {}).items():
            (folder / name).write_bytes(data)

    return atomic_dir(out_dir, write)


def _tied_duplicates(model: nn.Module, state: dict) -> tuple[set[str], bool]:
    """(keys that are tied copies of another, left out like save_pretrained does; whether `state` unties them).

    Tied copies that now differ from their source (an adapted embedding with lm_head left at θ_ref, or a
    trained lm_head in modules_to_save) are all kept, and the export is saved untied."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set(), False
    tied = getattr(model, "_tied_weights_keys", None)
    pairs = tied.items() if isinstance(tied, dict) else [("lm_head.weight", "model.embed_tokens.weight")]
    duplicates = set()
    for copy_name, source in pairs:
        if copy_name not in state:
            continue
        if source in state and not torch.equal(state[copy_name], state[source]):
            return set(), True
        duplicates.add(copy_name)
    return duplicates, False


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, unwrapped from accelerate/DDP."""
    model = getattr(model, "module", model)
    return {k: v for k, v in model.state_dict().items()}


def save_extrapolated_model(
    ref_model: nn.Module,
    mem_model: nn.Module,
    alpha: float,
    out_dir,
    tokenizer=None,
    fmt: WeightsFormat = WeightsFormat(),
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """(1+α)θ_ref − αθ_mem in fp32, cast to fmt's dtype (for 'auto', θ_ref's checkpoint dtype) and saved."""
    alpha = check_alpha(alpha)
    ref_model, mem_model = getattr(ref_model, "module", ref_model), getattr(mem_model, "module", mem_model)
    dtype = fmt.torch_dtype(ref_model)
    state = extrapolate_state_dict(model_state(ref_model), model_state(mem_model), alpha, dtype)
    info = {"alpha": alpha, "mode": "full", "formula": "(1+alpha)*theta_ref - alpha*theta_mem (fp32, then cast)"}
    return save_model_state(mem_model, state, out_dir, tokenizer, info, fmt, ref_model, extra_files)


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
