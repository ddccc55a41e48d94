"""One parse path for every stage: a YAML file (or a dict, from Python) plus overrides -> a RunSpec of dataclasses.

Everything a config gets wrong fails here or in `check_sources`, with a one-line message, before any data or
model loads and before any folder is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from llm_unlearn.config import (
    ConfigError,
    ExtrapolateSettings,
    FinetuneSettings,
    ModelConfig,
    build_dataclass,
    check_sections,
    check_training_ranges,
    load_yaml,
)
from llm_unlearn.data import TEXT_DATASETS, DataConfig
from llm_unlearn.data.collate import PromptFormat
from llm_unlearn.methods import get_method
from llm_unlearn.models import check_model_source, is_lazy_alpha_dir

FINETUNE_DEFAULTS = {
    "learning_rate": 2e-4,
    "num_train_epochs": 5,
    "per_device_train_batch_size": 8,
    "weight_decay": 0.01,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "linear",
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 5,
}


@dataclass
class RunOptions:
    """overwrite: delete an existing run folder first. resume: continue from its last checkpoint."""

    overwrite: bool = False
    resume: bool = False


@dataclass
class EvalSettings:
    """suite: 'tofu', 'muse', 'custom' or 'lm_eval'; unset, the data decides (MUSE-layout text: muse, your own
    sets: custom), and naming another data suite is an error; lm_eval (harness tasks, which bring their own data)
    fits any data. model_path: folder of the model or adapter to evaluate (default: the run's unlearned/).
    output_dir: where results go (default: `eval` beside the model folder). reference_log: the retain model's
    per_sample.json (or its folder) for forget quality and privleak. options: the suite's option fields. general:
    lm-evaluation-harness tasks run after the suite (LmEvalOptions fields: {tasks: [mmlu], ...}), their
    accuracies added to its summary as general-capability metrics. every_n_steps: during unlearning, also run the
    suite every N optimizer steps (0 = never); results go to the trainer's log and
    <output_dir>/eval_steps/eval_steps.jsonl. during_training_sets: the sets evaluated then (a subset keeps it
    cheap, e.g. [forget, retain])."""

    suite: str | None = None
    model_path: str | None = None
    output_dir: str | None = None
    reference_log: str | None = None
    options: dict = field(default_factory=dict)
    general: dict | None = None
    every_n_steps: int = 0
    during_training_sets: list[str] | None = None

    def __post_init__(self):
        if self.every_n_steps < 0:
            raise ConfigError(f"evaluation.every_n_steps must be 0 (never) or a step count (got {self.every_n_steps})")


@dataclass
class RunSpec:
    """A parsed config: every section as its dataclass."""

    raw: dict
    model: ModelConfig
    data: DataConfig
    fmt: PromptFormat
    method: str | None
    evaluation: EvalSettings
    finetune: FinetuneSettings
    extrapolate: ExtrapolateSettings

    @property
    def suite_name(self) -> str:
        """The suite the data calls for: MUSE-layout text corpora -> muse, your own sets -> custom, the TOFU-style
        question/answer sets (TOFU, synthetic authors) -> tofu."""
        if self.data.dataset == "custom":
            return "custom"
        return "muse" if self.data.dataset in TEXT_DATASETS else "tofu"

    def eval_options(self):
        """`evaluation.options` as the suite's options dataclass."""
        from llm_unlearn.evaluation.runner import SUITES

        settings = self.evaluation
        if settings.suite not in SUITES:
            raise ConfigError(f"evaluation.suite must be one of {', '.join(SUITES)}, not {settings.suite!r}")
        chosen = SUITES[settings.suite]
        if chosen.reads_run_data and settings.suite != self.suite_name:
            raise ConfigError(
                f"evaluation.suite {settings.suite!r} does not fit data.dataset {self.data.dataset!r}: "
                f"use {self.suite_name!r} (or lm_eval, for harness tasks)"
            )
        if not chosen.reads_run_data:
            for name, hint in (
                ("reference_log", "it compares with no reference log; set it to null"),
                ("during_training_sets", "its tasks are listed in evaluation.options.tasks"),
                ("general", "put these tasks in evaluation.options.tasks"),
            ):
                if getattr(settings, name):
                    raise ConfigError(f"evaluation.{name} does not apply to the {settings.suite} suite: {hint}")
        return build_dataclass(chosen.options, settings.options, "evaluation.options")

    def general_options(self):
        """`evaluation.general` as LmEvalOptions (None when the run has no general-capability tasks)."""
        if self.evaluation.general is None:
            return None
        from llm_unlearn.evaluation.harness import LmEvalOptions

        return build_dataclass(LmEvalOptions, self.evaluation.general, "evaluation.general")


def parse_config(raw: dict) -> RunSpec:
    check_sections(raw, "config")
    method = raw.get("method")
    if method is not None:
        try:
            get_method(method)  # unknown names fail here, before any model is loaded
        except KeyError as err:
            raise ConfigError(f"method: {err.args[0]}") from None
    spec = RunSpec(
        raw=raw,
        model=build_dataclass(ModelConfig, raw.get("model"), "model"),
        data=build_dataclass(DataConfig, raw.get("data"), "data"),
        fmt=build_dataclass(PromptFormat, raw.get("format"), "format"),
        method=method,
        evaluation=build_dataclass(EvalSettings, raw.get("evaluation"), "evaluation"),
        finetune=build_dataclass(FinetuneSettings, raw.get("finetune"), "finetune"),
        extrapolate=build_dataclass(ExtrapolateSettings, raw.get("extrapolate"), "extrapolate"),
    )
    # Unknown metric groups / eval set names fail at load time, not after training when evaluation starts.
    spec.evaluation.suite = spec.evaluation.suite or spec.suite_name
    spec.eval_options()
    spec.general_options()
    return spec


def load_spec(path: str, overrides: list[str] | None = None) -> RunSpec:
    return parse_config(load_yaml(path, overrides))


def training_args(spec: RunSpec, stage: str):
    """The `training:` section as the method's config (unlearn) or plain TrainingArguments (finetune)."""
    values = dict(spec.raw.get("training") or {})
    if "output_dir" not in values:
        raise ConfigError("training.output_dir is required: where this run writes its outputs")
    if stage == "finetune":
        return build_dataclass(TrainingArguments, {**FINETUNE_DEFAULTS, **values}, "training", check_training_ranges)
    if spec.method is None:
        raise ConfigError("the unlearn stage needs `method:` (one of llm_unlearn.methods.METHODS)")
    return build_dataclass(get_method(spec.method).config, values, "training", check_training_ranges)


def hyperparameters(args) -> dict:
    """The TrainingArguments fields every run states, plus every field the method's config adds."""
    keep = TrainingArguments.__dataclass_fields__.keys()
    common = {
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "weight_decay",
        "warmup_steps",
        "lr_scheduler_type",
        "seed",
        "optim",
    }
    values = args.to_dict()
    own = {k: v for k, v in values.items() if k not in keep}
    return {**{k: values[k] for k in sorted(common) if k in values}, **own}


def _check_folder(path: str, field_name: str, hint: str) -> None:
    if not Path(path).expanduser().is_dir():
        raise ConfigError(f"{field_name}: folder {path} does not exist ({hint})")


def check_reference_log(path: str | None) -> None:
    if path is None:
        return
    file = Path(path) / "per_sample.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError(
            f"evaluation.reference_log {path} does not exist: give the retain model's per_sample.json (or its "
            "folder; evaluate the retain model first), or set it to null"
        )


def check_sources(spec: RunSpec, stage: str) -> None:
    """Every model and folder a stage reads exists (a Hub id: offline, is cached), checked before data or models
    load and before the run folder is created. stage: finetune, unlearn, extrapolate or evaluate."""
    model = spec.model
    check_model_source(model.name_or_path, "model.name_or_path")
    if model.adapter and stage != "evaluate":
        _check_folder(model.adapter, "model.adapter", "the PEFT adapter folder to start from")
    if model.ref_model_path and stage == "unlearn":
        check_model_source(model.ref_model_path, "model.ref_model_path")
    if stage == "extrapolate" and spec.extrapolate.memorization:
        _check_folder(spec.extrapolate.memorization, "extrapolate.memorization", "a saved memorization adapter/model")
    if stage == "evaluate" or (stage == "unlearn" and spec.evaluation.every_n_steps > 0):
        check_reference_log(spec.evaluation.reference_log)
    if stage == "evaluate" and spec.evaluation.model_path and is_lazy_alpha_dir(spec.evaluation.model_path):
        from llm_unlearn.methods.saved import check_lazy_alpha

        check_lazy_alpha(spec.evaluation.model_path)  # its reference and memorization models, before data loads
