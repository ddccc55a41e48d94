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
Unknown sections or fields stop with an error that lists the valid names. Every value is converted to its
field's declared type, as HfArgumentParser does (YAML 1.1 reads `1e-5` as a string; a float field takes it as
a number), and a value that does not fit the type, or its range, stops with a one-line ConfigError.

`{forget_split}` in any string value becomes the config's own `data.forget_split` (after overrides), so one
TOFU recipe serves forget01/05/10: `data.forget_split=forget05` moves every path that names the split with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .coerce import TypeMismatch, coerce, describe_type, field_types
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
        if not self.name_or_path:
            raise ConfigError("model.name_or_path is empty: give a toolkit model name, a model folder or a Hub id")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ConfigError(f"model.quantization must be null, 4bit or 8bit, not {self.quantization!r}")
        if self.lora is not None:
            check_lora_ranges(self.lora)
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


def check_lora_ranges(lora: LoraSettings, where: str = "model.lora") -> None:
    """peft accepts r = 0 or a dropout of 1 and fails (or trains nothing) only once the model is loaded."""
    if lora.r < 1:
        raise ConfigError(f"{where}.r must be at least 1 (got {lora.r})")
    if not lora.lora_alpha > 0:
        raise ConfigError(f"{where}.lora_alpha must be > 0 (got {lora.lora_alpha})")
    if not 0 <= lora.lora_dropout < 1:
        raise ConfigError(f"{where}.lora_dropout must be in [0, 1) (got {lora.lora_dropout})")


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def convert_value(value, tp, where: str):
    """`value` (from YAML or an override) as type `tp`, or a ConfigError naming `where` and the expected type."""
    try:
        return coerce(value, tp)
    except TypeMismatch:
        hint = " (quote it: YAML reads an unquoted yes/no/on/off as true/false)" if isinstance(value, bool) else ""
        raise ConfigError(f"{where} must be {describe_type(tp)}, not {_show(value)}{hint}") from None


def _resolve_type(tp):
    """Strip Optional[...] / X | None to the concrete dataclass type, if any."""
    args = typing.get_args(tp)
    if args:
        concrete = [a for a in args if a is not type(None)]
        return concrete[0] if len(concrete) == 1 else tp
    return tp


def build_dataclass(cls, values: dict | None, where: str, check=None):
    """cls(**values), each value converted to its field's declared type, with a readable error for unknown
    fields and for values that do not fit. `check(fields)`, given the converted values over the field defaults
    as attributes, runs before the class's own __post_init__ (so it names a bad range first)."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, not {_show(values)}")
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
    hints = field_types(cls)
    for key, value in list(values.items()):
        target = _resolve_type(hints.get(key))
        if dataclasses.is_dataclass(target) and isinstance(value, dict):
            values[key] = build_dataclass(target, value, f"{where}.{key}")
        elif key in hints:
            values[key] = convert_value(value, hints[key], f"{where}.{key}")
    if check is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        check(types.SimpleNamespace(**{**defaults, **values}))
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        message = str(err)
        raise ConfigError(message if message.startswith(f"{where}.") else f"{where}: {message}") from err


# TrainingArguments fields whose bad values torch or the Trainer reject only once the model is loaded, or never.
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
_POSITIVE = ("learning_rate", "logging_steps", "save_steps", "eval_steps")
_NON_NEGATIVE = ("weight_decay", "adam_epsilon", "max_grad_norm", "seed", "data_seed", "dataloader_num_workers")
_BELOW_ONE = ("adam_beta1", "adam_beta2", "label_smoothing_factor")


def check_training_ranges(args, where: str = "training") -> None:
    """Ranges of a TrainingArguments (or method config): learning rate > 0, batch sizes >= 1, max_steps -1 or
    >= 1, warm-up a ratio in [0, 1) or a whole number of steps, betas in [0, 1), ..."""

    def fail(name: str, requirement: str):
        raise ConfigError(f"{where}.{name} must be {requirement} (got {getattr(args, name)})")

    def present(name: str):
        return getattr(args, name, None) is not None

    for name in _AT_LEAST_ONE:
        if present(name) and getattr(args, name) < 1:
            fail(name, "at least 1")
    for name in _POSITIVE:
        if present(name) and not getattr(args, name) > 0:
            fail(name, "> 0")
    for name in _NON_NEGATIVE:
        if present(name) and getattr(args, name) < 0:
            fail(name, ">= 0")
    for name in _BELOW_ONE:
        if present(name) and not 0 <= getattr(args, name) < 1:
            fail(name, "in [0, 1)")
    if args.max_steps != -1 and args.max_steps < 1:
        fail("max_steps", "-1 (train for num_train_epochs) or a number of optimizer steps >= 1")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        fail("num_train_epochs", "> 0 (or set max_steps)")
    if args.num_train_epochs < 0:
        fail("num_train_epochs", ">= 0")
    warmup = args.warmup_steps
    if warmup < 0 or (warmup >= 1 and not float(warmup).is_integer()):
        fail("warmup_steps", "a ratio of all steps in [0, 1) or a whole number of steps")


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value (e.g. training.learning_rate=2e-5)")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: {key.strip()!r} is not a section.field name")
    try:
        return keys, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(err)})") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else " ".join(problem.split())


def check_sections(raw, where: str) -> None:
    """A config is a mapping of known sections; a misspelt one would otherwise be ignored silently."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    unknown = sorted(str(name) for name in set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    for name, value in raw.items():
        if name == "method":
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: method must be a method name (`llm-unlearn methods`), not {_show(value)}")
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping of field: value, not {_show(value)}")


SPLIT_PLACEHOLDER = "{forget_split}"


def fill_split_placeholder(raw: dict) -> dict:
    """Replace SPLIT_PLACEHOLDER in every string value with data.forget_split (DataConfig's default when unset).
    A plain replace, not str.format: chat templates and prompts keep their own braces. A split that is not a
    string is left for DataConfig to refuse."""
    from .data import DataConfig

    data = raw.get("data")
    split = data.get("forget_split", DataConfig.forget_split) if isinstance(data, dict) else DataConfig.forget_split
    if not isinstance(split, str):
        return raw

    def fill(node):
        if isinstance(node, str):
            return node.replace(SPLIT_PLACEHOLDER, split)
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(value) for value in node]
        return node

    return fill(raw)


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
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
    return fill_split_placeholder(raw)
