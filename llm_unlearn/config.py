"""YAML run configs that mirror the dataclasses, with command-line overrides.

A config file has one section per dataclass:

    model:     ModelConfig     (what to load, LoRA or full weights, dtype, quantization)
    data:      DataConfig      (synthetic authors or TOFU, sizes)
    format:    PromptFormat    (chat template, system prompt, label span)
    method:    a name from llm_unlearn.methods.METHODS
    training:  the method's config (a TrainingArguments subclass: output_dir, learning_rate, ...)
    evaluation: EvalSettings   (suite options; optional)
    finetune:  FinetuneSettings (finetune stage only)

Overrides are `section.field=value` strings parsed as YAML values (`training.learning_rate=2e-5`).
Unknown sections or fields stop with an error that lists the valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .models import LoraSettings

SECTIONS = ("model", "data", "format", "method", "training", "evaluation", "finetune", "extrapolate")


class ConfigError(ValueError):
    pass


# accelerate launch configs shipped with the recipes (a source checkout; pip installs do not carry recipes/).
ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "accelerate_configs"
ACCELERATE_CONFIGS = ("cpu_2proc", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")


def accelerate_config_path(name_or_path: str | Path) -> Path:
    """The accelerate config file for a name in recipes/accelerate_configs (cpu_2proc, ddp, fsdp,
    deepspeed_zero2, deepspeed_zero3) or a path to a config file; anything else raises listing the names."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    text = str(name_or_path)
    name = text.removesuffix(".yaml")
    if name in ACCELERATE_CONFIGS:
        path = ACCELERATE_CONFIG_DIR / f"{name}.yaml"
        if path.is_file():
            return path
        raise ConfigError(
            f"accelerate config {name!r} is a known name but {path} is missing: run from a source checkout of "
            "llm_unlearn (recipes/ is not installed by pip) or pass the path of your own accelerate config file"
        )
    looks_like_path = "/" in text or text.endswith((".yaml", ".yml", ".json"))
    what = f"file {text} not found" if looks_like_path else f"unknown accelerate config {text!r}"
    raise ConfigError(
        f"{what}. Use one of the named configs in recipes/accelerate_configs ({', '.join(ACCELERATE_CONFIGS)}) "
        "or the path of an accelerate config file (`accelerate config --config_file my.yaml` writes one)."
    )


@dataclass
class ModelConfig:
    """name_or_path: the model unlearning starts from (θ_ref): toolkit name, folder or Hub id.
    adapter: optional PEFT adapter folder applied on top before training (must match the base).
    lora: LoRA settings (train an adapter; the reference is then the adapter turned off) or null for full weights.
    ref_model_path: full weights only: where to load the frozen reference copy (default: name_or_path).
    dtype: float32 | bfloat16 | float16.  quantization: null | 4bit | 8bit (QLoRA; needs the qlora extra).
    """

    name_or_path: str = "smollm2-135m-instruct"
    adapter: str | None = None
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    ref_model_path: str | None = None
    dtype: str = "float32"
    quantization: str | None = None

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = build_dataclass(LoraSettings, self.lora, "model.lora")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.quantization is not None and self.lora is None:
            raise ConfigError("model.quantization needs model.lora: a quantized base can only train an adapter (QLoRA)")


@dataclass
class FinetuneSettings:
    """Which model the finetune stage fits: 'target' (forget + retain) or 'retain' (the oracle, retain only).
    With LoRA the adapter is merged into full weights at the end, so later stages start from a plain folder."""

    which: str = "target"
    merge_lora: bool = True

    def __post_init__(self):
        if self.which not in ("target", "retain"):
            raise ConfigError(f"finetune.which must be 'target' or 'retain', not {self.which!r}")


@dataclass
class ExtrapolateSettings:
    """extrapolate stage without training: `memorization` is a saved memorization adapter/model folder."""

    memorization: str | None = None


def _resolve_type(tp):
    """Strip Optional[...] / X | None to the concrete dataclass type, if any."""
    args = typing.get_args(tp)
    if args:
        concrete = [a for a in args if a is not type(None)]
        return concrete[0] if len(concrete) == 1 else tp
    return tp


def build_dataclass(cls, values: dict | None, where: str):
    """cls(**values) with a readable error for unknown fields."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        hints = {name: difflib.get_close_matches(name, names, n=3) for name in unknown}
        suggestions = "; ".join(
            f"{name!r}: did you mean {', '.join(map(repr, close))}?" for name, close in hints.items() if close
        )
        listing = (
            ", ".join(sorted(names))
            if len(names) <= 25
            else "see `llm-unlearn methods` (method fields) and transformers.TrainingArguments"
        )
        raise ConfigError(
            f"{where}: unknown field(s) {unknown}. {suggestions + ' ' if suggestions else ''}"
            f"Valid fields of {cls.__name__}: {listing}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in list(values.items()):
        target = _resolve_type(hints.get(key))
        if dataclasses.is_dataclass(target) and isinstance(value, dict):
            values[key] = build_dataclass(target, value, f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value (e.g. training.learning_rate=2e-5)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def check_sections(raw, where: str) -> None:
    """A config is a mapping of known sections; a misspelt one would otherwise be ignored silently."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    check_sections(raw, str(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        if keys[0] not in SECTIONS:
            raise ConfigError(f"override {text!r}: unknown section {keys[0]!r}; valid: {', '.join(SECTIONS)}")
        node = raw
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return raw
