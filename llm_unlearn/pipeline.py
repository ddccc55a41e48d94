"""The stages a user runs, each driven by one YAML config (see llm_unlearn.config):

finetune  -> fit the target (forget + retain) or the retain/oracle model; LoRA is merged at the end
unlearn   -> any registered method from the target; writes the method's exports (<output_dir>/unlearned, ...)
evaluate  -> the TOFU suite on a model or adapter folder, against the retain model's per-sample log

Recipes (`recipes/*.py`) and the console script (`llm-unlearn`) are thin wrappers over these functions,
and every function works unchanged under `accelerate launch` with several processes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import Trainer, TrainingArguments, set_seed

from .config import (
    ConfigError,
    ExtrapolateSettings,
    FinetuneSettings,
    ModelConfig,
    build_dataclass,
    check_sections,
    check_training_ranges,
    convert_value,
    load_yaml,
)
from .data import TEXT_DATASETS, DataConfig, QASplits, load_qa_splits, load_text_corpora, splits_fingerprint
from .data.collate import PaddingCollator, PairedDataset, PromptFormat, QADataset, TextDataset, refusal_records
from .methods import METHODS, get_method
from .methods.saved import extrapolate_saved  # noqa: F401 (pipeline.extrapolate_saved, as before)
from .models import (
    check_model_source,
    is_adapter_dir,
    is_peft_model,
    load_model,
    load_tokenizer,
    load_with_adapter,
    wrap_lora,
)
from .runs import (
    PeakMemory,
    Stopwatch,
    check_run_dir,
    checkpoint_files,
    last_checkpoint,
    prepare_run_dir,
    write_run_info,
)
from .utils import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

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
    """suite: 'tofu'. model_path: folder of the model or adapter to evaluate (default: the run's unlearned/).
    output_dir: where results go (default: `eval` beside the model folder). reference_log: the retain model's
    per_sample.json (or its folder) for forget quality and privleak. options: the suite's option fields.
    every_n_steps: during unlearning, also run the suite every N optimizer steps (0 = never); results go to
    the trainer's log and <output_dir>/eval_steps/eval_steps.jsonl. during_training_sets: the sets evaluated
    then (a subset keeps it cheap, e.g. [forget, retain])."""

    suite: str = "tofu"
    model_path: str | None = None
    output_dir: str | None = None
    reference_log: str | None = None
    options: dict = field(default_factory=dict)
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


def eval_options_class(suite: str):
    """The options dataclass of an evaluation suite (`evaluation.options` is built from it)."""
    from .evaluation.runner import SUITES

    if suite not in SUITES:
        raise ConfigError(f"evaluation.suite must be one of {', '.join(map(repr, SUITES))}, not {suite!r}")
    return SUITES[suite].options


def parse_config(raw: dict) -> RunSpec:
    check_sections(raw, "config")
    method = raw.get("method")
    if method is not None:
        try:
            get_method(method)  # unknown names fail here, before any model is loaded
        except KeyError as err:
            raise ConfigError(f"method: {err.args[0]}") from None
    data = build_dataclass(DataConfig, raw.get("data"), "data")
    evaluation = build_dataclass(EvalSettings, raw.get("evaluation"), "evaluation")
    # Unknown metric groups / eval set names fail at load time, not after training when evaluation starts.
    suite = evaluation.suite or ("muse" if data.dataset in TEXT_DATASETS else "tofu")
    build_dataclass(eval_options_class(suite), evaluation.options, "evaluation.options")
    return RunSpec(
        raw=raw,
        model=build_dataclass(ModelConfig, raw.get("model"), "model"),
        data=data,
        fmt=build_dataclass(PromptFormat, raw.get("format"), "format"),
        method=method,
        evaluation=evaluation,
        finetune=build_dataclass(FinetuneSettings, raw.get("finetune"), "finetune"),
        extrapolate=build_dataclass(ExtrapolateSettings, raw.get("extrapolate"), "extrapolate"),
    )


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


def _check_folder(path: str, field: str, hint: str) -> None:
    if not Path(path).expanduser().is_dir():
        raise ConfigError(f"{field}: folder {path} does not exist ({hint})")


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


def build_model(model_cfg: ModelConfig):
    """θ_ref (plus an optional adapter merged in), then a fresh LoRA adapter when configured."""
    if model_cfg.adapter:
        if model_cfg.quantization:
            raise ConfigError("model.adapter with a quantized base: merge the adapter into full weights first")
        model = load_with_adapter(model_cfg.name_or_path, model_cfg.adapter, dtype=model_cfg.dtype).merge_and_unload()
    else:
        model = load_model(model_cfg.name_or_path, dtype=model_cfg.dtype, quantization=model_cfg.quantization)
    if model_cfg.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if model_cfg.lora is not None:
        model = wrap_lora(model, model_cfg.lora)
    return model


def data_summary(splits: QASplits) -> dict:
    parts = {
        name: getattr(splits, name)
        for name in ("forget", "retain", "target_train", "retain_train", "forget_eval", "retain_eval", "holdout")
    }
    return {
        **{
            k: v
            for k, v in splits.meta.items()
            if k in ("dataset", "source", "forget_split", "holdout", "holdout_rows", "files", "seed", "retain_authors")
        },
        "splits": {name: {"rows": len(rows), "sha256": splits_fingerprint(rows)} for name, rows in parts.items()},
    }


def _save_model_folder(model, tokenizer, out_dir: Path) -> Path:
    def write(folder: Path):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return atomic_dir(out_dir, write)


def _resume_from(run_dir: Path, options: RunOptions, trainer) -> str | None:
    if not options.resume:
        return None
    required = checkpoint_files(trainer)
    checkpoint = last_checkpoint(run_dir, required)
    if checkpoint is None:
        raise FileNotFoundError(
            f"--resume: {run_dir} has no complete checkpoint-* folder (with {', '.join(required)}) to resume from "
            "(set training.save_strategy to 'steps' or 'epoch' so runs keep checkpoints)"
        )
    return checkpoint


def run_finetune(spec: RunSpec, options: RunOptions) -> Path:
    """Fit the target model (forget + retain) or the retain model; writes <output_dir>/model."""
    args = training_args(spec, "finetune")
    check_sources(spec, "finetune")
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    data = TrainingData.load(spec.data)
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    # Seed before building: LoRA's A matrices are drawn from the global RNG when the adapter is created, and the
    # Trainer only seeds in its own __init__ (too late), so without this two runs with one seed differ.
    set_seed(args.seed)
    model = build_model(spec.model)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)  # only once the inputs loaded
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.finetune_dataset(spec.finetune.which, tokenizer, spec.fmt),
        data_collator=PaddingCollator(tokenizer.pad_token_id, mask_pad_ids=spec.fmt.label_mode == "open_unlearning"),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=_resume_from(run_dir, options, trainer))
    out = run_dir / "model"
    if trainer.accelerator.is_main_process:
        final = trainer.accelerator.unwrap_model(trainer.model)
        if is_peft_model(final) and spec.finetune.merge_lora and not spec.model.quantization:
            final = final.merge_and_unload()
        _save_model_folder(final, tokenizer, out)
        atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
        write_run_info(
            run_dir,
            {
                "stage": "finetune",
                "which": spec.finetune.which,
                "base_model": spec.model.name_or_path,
                "lora": asdict(spec.model.lora) if spec.model.lora else None,
                "data": data.summary(),
                "format": spec.fmt.describe(),
                "seed": args.seed,
                "hyperparameters": _hyperparameters(args),
                "wall_time_s": timer.seconds(),
                "peak_memory_mb": memory.read_mb(),
                "model_path": str(out),
            },
        )
    trainer.accelerator.wait_for_everyone()
    return out


def _hyperparameters(args) -> dict:
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


@dataclass
class TrainingData:
    """What a run trains and evaluates on: QA splits (synthetic authors, TOFU) or MUSE-layout text corpora."""

    config: DataConfig
    splits: QASplits | None = None
    corpora: dict | None = None

    @classmethod
    def load(cls, config: DataConfig) -> TrainingData:
        if config.dataset in TEXT_DATASETS:
            return cls(config, corpora=load_text_corpora(config))
        return cls(config, splits=load_qa_splits(config))

    @property
    def is_text(self) -> bool:
        return self.corpora is not None

    def _raw(self, *names: str) -> list[dict]:
        rows = []
        for name in names:
            rows += [{**r, "index": len(rows) + i} for i, r in enumerate(self.corpora["raw"][name])]
        return rows

    def finetune_dataset(self, which: str, tokenizer, fmt: PromptFormat):
        if self.is_text:
            names = ("forget", "retain1", "retain2") if which == "target" else ("retain1", "retain2")
            return TextDataset(self._raw(*names), tokenizer, fmt.max_length)
        records = self.splits.target_train if which == "target" else self.splits.retain_train
        return QADataset(records, tokenizer, fmt)

    def paired_dataset(self, tokenizer, fmt: PromptFormat, seed: int) -> PairedDataset:
        if self.is_text:
            forget = TextDataset(self._raw("forget"), tokenizer, fmt.max_length)
            retain = TextDataset(self._raw("retain1"), tokenizer, fmt.max_length)
            return PairedDataset(forget, retain, None, seed=seed)
        forget = QADataset(self.splits.forget, tokenizer, fmt)
        retain = QADataset(self.splits.retain, tokenizer, fmt)
        refusal = QADataset(refusal_records(self.splits.forget, seed), tokenizer, fmt)
        return PairedDataset(forget, retain, refusal, seed=seed)

    def eval_data(self) -> tuple[str, dict]:
        """(suite, data) for the evaluation stage."""
        if self.is_text:
            return "muse", self.corpora
        return "tofu", eval_sets(self.splits)

    def summary(self) -> dict:
        if not self.is_text:
            return data_summary(self.splits)
        return {
            "dataset": self.config.dataset,
            "source": self.config.source,
            "splits": {
                f"{subset}/{split}": {"rows": len(rows), "sha256": splits_fingerprint(rows)}
                for subset, parts in self.corpora.items()
                for split, rows in parts.items()
            },
        }


def run_unlearn(spec: RunSpec, options: RunOptions) -> Path:
    """Unlearn with `spec.method` from the target model; writes <output_dir>/unlearned and run_info.json."""
    method = get_method(spec.method or "")
    args = training_args(spec, "unlearn")
    check_sources(spec, "unlearn")
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    data = TrainingData.load(spec.data)
    if data.is_text and method.trainer.wants_refusal(args):
        raise ConfigError(
            f"method {spec.method!r} needs question/answer data (refusals); {spec.data.dataset!r} is raw text"
        )
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    # Seed before building: LoRA's A matrices are drawn from the global RNG when the adapter is created, and the
    # Trainer only seeds in its own __init__ (too late), so without this two runs with one seed differ.
    set_seed(args.seed)
    model = build_model(spec.model)
    ref_model = None
    if spec.model.lora is None and method.trainer.wants_reference(args):
        # Full weights: a frozen second copy, loaded only because this loss needs θ_ref.
        ref_model = load_model(spec.model.ref_model_path or spec.model.name_or_path, dtype=spec.model.dtype)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)  # only once the inputs loaded
    trainer = method.trainer(
        model=model,
        args=args,
        train_dataset=data.paired_dataset(tokenizer, spec.fmt, args.seed),
        processing_class=tokenizer,
        ref_model=ref_model,
    )
    if spec.evaluation.every_n_steps > 0:
        trainer.add_callback(_evaluation_callback(spec, data, tokenizer, run_dir, trainer))
    trainer.train(resume_from_checkpoint=_resume_from(run_dir, options, trainer))
    exports = trainer.export(run_dir, model_source=spec.model)
    if trainer.accelerator.is_main_process:
        atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
        info = {
            "stage": "unlearn",
            "method": spec.method,
            "hyperparameters": _hyperparameters(args),
            **_provenance(args),
            "base_model": spec.model.name_or_path,
            "base_model_revision": None,
            "lora": asdict(spec.model.lora) if spec.model.lora else None,
            "data": data.summary(),
            "format": spec.fmt.describe(),
            "seed": args.seed,
            "exports": exports,
            "runaway_steps": trainer.runaway_steps[:20],
            "world_size": trainer.accelerator.num_processes,
            "wall_time_s": timer.seconds(),
            "peak_memory_mb": memory.read_mb(),
        }
        write_run_info(run_dir, info)
        # Each exported folder carries its own provenance (its α), so it can be pushed on its own.
        for name, export in exports.items():
            write_run_info(run_dir / name, {**info, "alpha": export.get("alpha", info["alpha"]), "export": export})
    trainer.accelerator.wait_for_everyone()
    return run_dir / "unlearned"


# Keys every unlearn run_info.json has (the model card reads α and η); null unless the method's config reports them.
PROVENANCE_KEYS = ("alpha", "alphas", "eta")


def _provenance(args) -> dict:
    return {**dict.fromkeys(PROVENANCE_KEYS), **args.provenance()}


def _evaluation_callback(spec: RunSpec, data: TrainingData, tokenizer, run_dir: Path, trainer):
    from .evaluation.callback import EvaluationCallback

    suite, eval_data = data.eval_data()
    settings = spec.evaluation
    options = build_dataclass(eval_options_class(suite), settings.options, "evaluation.options")
    sets = tuple(settings.during_training_sets) if settings.during_training_sets else None
    return EvaluationCallback(
        tokenizer,
        suite,
        eval_data,
        run_dir / "eval_steps",
        settings.every_n_steps,
        options=options,
        fmt=spec.fmt,
        reference_log=settings.reference_log,
        sets=sets,
        trainer=trainer,
    )


def load_for_eval(model_cfg: ModelConfig, model_path: str):
    """A model folder, or an adapter folder applied onto model.name_or_path (checked to match)."""
    if is_adapter_dir(model_path):
        model = load_with_adapter(
            model_cfg.name_or_path, model_path, dtype=model_cfg.dtype, quantization=model_cfg.quantization
        )
    else:
        model = load_model(model_path, dtype=model_cfg.dtype)
    model.eval()
    return model


def eval_sets(splits: QASplits) -> dict[str, list[dict]]:
    sets = {
        "forget": splits.forget_eval,
        "retain": splits.retain_eval,
        "real_authors": splits.real_authors,
        "world_facts": splits.world_facts,
    }
    if splits.holdout:
        sets["holdout"] = splits.holdout
    return sets


# The extrapolate stage belongs to the memorize-then-extrapolate family (MOX): its methods export from a saved
# memorization model without training (`export_saved`).
EXTRAPOLATE_FAMILY = "mox"


def run_extrapolate(spec: RunSpec, options: RunOptions) -> Path:
    """MOX. Without `extrapolate.memorization`: memorize, then extrapolate (the unlearn stage with method mox).
    With it: only extrapolate that saved memorization adapter/model for every α (cheap; no training)."""
    stage_methods = [name for name, method in METHODS.items() if method.trainer.family == EXTRAPOLATE_FAMILY]
    if spec.method is not None and spec.method not in stage_methods:
        labels = " or ".join(METHODS[name].trainer.display_name or name for name in stage_methods)
        raise ConfigError(
            f"the extrapolate stage runs {labels}; this config names method {spec.method!r} (use `unlearn`)"
        )
    spec.method = spec.method or stage_methods[0]
    if not spec.extrapolate.memorization:
        return run_unlearn(spec, options)
    args = training_args(spec, "unlearn")
    check_sources(spec, "extrapolate")
    memorization = spec.extrapolate.memorization
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    tokenizer = load_tokenizer(spec.model.name_or_path)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)
    exports = get_method(spec.method).trainer.export_saved(args, memorization, run_dir, spec.model, tokenizer)
    provenance = _provenance(args)
    write_run_info(
        run_dir,
        {
            "stage": "extrapolate",
            "method": spec.method,
            "memorization": memorization,
            "alphas": provenance["alphas"],
            "alpha": provenance["alpha"],
            "base_model": spec.model.name_or_path,
            "exports": exports,
            "seed": args.seed,
            "hyperparameters": _hyperparameters(args),
        },
    )
    return run_dir / "unlearned"


def run_evaluate(spec: RunSpec, options: RunOptions) -> Path:
    """Evaluate `evaluation.model_path` (default: <training.output_dir>/unlearned); writes per_sample.json and
    summary.json into `evaluation.output_dir` (default: an `eval` folder beside the model folder, where the model
    card of a pushed model folder finds it)."""
    from .evaluation.runner import run_evaluation

    settings = spec.evaluation
    training = spec.raw.get("training") or {}
    # Generation is greedy; the seed (training.seed when the config has one, else TrainingArguments' 42) only
    # pins anything a suite might sample, and is recorded like every other stage's.
    seed = convert_value(training.get("seed", 42), int, "training.seed")
    if seed < 0:
        raise ConfigError(f"training.seed must be >= 0 (got {seed})")
    check_sources(spec, "evaluate")
    model_path = settings.model_path
    if model_path is None:
        output_dir = convert_value(training.get("output_dir"), str | None, "training.output_dir")
        if output_dir is None:
            raise ConfigError("set evaluation.model_path (the model or adapter folder to evaluate)")
        model_path = str(Path(output_dir) / "unlearned")
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"evaluation.model_path {model_path} is not a folder (train or extrapolate first)")
    data = TrainingData.load(spec.data)
    suite, eval_data = data.eval_data()
    if settings.suite != suite:
        raise ConfigError(
            f"evaluation.suite {settings.suite!r} does not fit data.dataset {spec.data.dataset!r}: use {suite!r}"
        )
    out_dir = check_run_dir(settings.output_dir or Path(model_path).parent / "eval", options.overwrite, options.resume)
    eval_options = build_dataclass(eval_options_class(suite), settings.options, "evaluation.options")
    tokenizer = load_tokenizer(spec.model.name_or_path)
    model = load_for_eval(spec.model, model_path)
    out_dir = prepare_run_dir(out_dir, options.overwrite, options.resume)  # only once the inputs loaded
    set_seed(seed)
    timer, memory = Stopwatch(), PeakMemory()
    summary = run_evaluation(
        model,
        tokenizer,
        suite,
        eval_data,
        out_dir,
        eval_options,
        spec.fmt,
        settings.reference_log,
    )
    from .evaluation.scoring import distributed_state, is_main_process

    if is_main_process(distributed_state()):
        write_run_info(
            out_dir,
            {
                "stage": "evaluate",
                "seed": seed,
                "model_path": model_path,
                "base_model": spec.model.name_or_path,
                "reference_log": settings.reference_log,
                "data": data.summary(),
                "format": spec.fmt.describe(),
                "wall_time_s": timer.seconds(),
                "peak_memory_mb": memory.read_mb(),
                "summary_metrics": summary.get("metrics", summary) if isinstance(summary, dict) else None,
            },
        )
    return out_dir
