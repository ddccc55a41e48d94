"""The benchmark's runs for one (scale, seed, setting): the cached target and retain models, their evaluations,
one unlearning run (or one MOX memorization run and its α exports), and the result JSON of each.

Every run is a recipe plus overrides (recipe_runs.RecipeRun) run through the toolkit's stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recipe_runs import REPO, RecipeRun, evaluate, method_recipe, overrides, read_json, train, yaml_value
from scales import METHOD_SETTINGS, Scale, Setting

from llm_unlearn.runs import PeakMemory

DEFAULT_TOFU = "../shared/data/tofu"  # relative to the repository root (the working directory of a run)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def config_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_cache() -> Path:
    """$LLM_UNLEARN_CACHE/bench (default ~/.cache/llm_unlearn/bench): models and work folders, never the repo."""
    from llm_unlearn.models import cache_root

    return cache_root() / "bench"


def lr_tag(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def alpha_tag(value: float) -> str:
    return f"{value:g}"


def export_dir(run_dir: Path, alpha: float, first_alpha: float) -> Path:
    return run_dir / ("unlearned" if alpha == first_alpha else f"alpha_{alpha:g}")


class NotRecorded(Exception):
    """A --recorded-only invocation needed a run whose result is not on disk: its choice is left out."""


@dataclass
class Context:
    scale: Scale
    seed: int
    setting: Setting
    out_dir: Path  # results/<scale>/seed<N>
    cache: Path  # fine-tuned models (keyed by config hash) and the work folders of unlearning runs
    work_dir: Path  # <cache>/work/<scale>/seed<N>/<setting>
    base_model: str
    target_model: str = ""
    retain_model: str = ""
    reference_log: str = ""
    target_utility: float | None = None
    finetune_info: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    # choice key -> {"learning_rate", "alpha"} chosen on the scale's select_on_seed (empty: select here)
    fixed: dict = field(default_factory=dict)
    recorded_only: bool = False  # never train or evaluate an unlearning run: read results on disk, else NotRecorded
    checkpoint: Callable[[], None] = lambda: None  # called after every choice (rewrites selection.json)

    def check_recorded(self, name: str) -> None:
        if self.recorded_only:
            raise NotRecorded(f"{self.result_path(name).name} is not on disk")

    def grid(self, key: str, family: str, weights: str) -> tuple[float, ...]:
        """The learning rates to try for choice `key`: the selecting seed's choice, or the family's grid."""
        return (self.fixed[key]["learning_rate"],) if key in self.fixed else self.scale.lr_grid[(family, weights)]

    def fixed_details(self, key: str) -> dict:
        return {"selected_on_seed": self.scale.select_on_seed} if key in self.fixed else {}

    @property
    def recipes(self) -> Path:
        return REPO / self.scale.recipes

    def result_path(self, run: str) -> Path:
        return self.out_dir / f"{run}.json"

    def shared_overrides(self) -> list[str]:
        """The data and prompt format (whole sections: the scale owns them) and the training fields that every
        run of the scale shares, fine-tuning included."""
        training = {"use_cpu": self.scale.use_cpu, "seed": self.seed, "disable_tqdm": True, "logging_steps": 1}
        return [
            f"data={yaml_value(self.setting.data)}",
            f"format={yaml_value(self.scale.fmt)}",
            *overrides("training", {**training, "save_strategy": "no"}),
        ]

    def eval_overrides(self) -> list[str]:
        rows = {"rows": self.scale.eval_rows} if self.scale.eval_rows else {}  # a TOFU option only
        return overrides("evaluation.options", {**self.scale.eval_options, **rows})

    def method_run(self, method: str, weights: str, lr: float, work: Path, **training) -> RecipeRun:
        """The method's recipe from the target model under the scale's budget, at learning rate `lr`."""
        scale = self.scale
        settings = {**METHOD_SETTINGS.get(method, {}), **scale.method_settings.get(method, {}), **training}
        model = {"name_or_path": self.target_model, "lora": scale.lora if weights == "lora" else None}
        budget = {**scale.unlearn, **settings, "learning_rate": lr, "output_dir": str(work)}
        return RecipeRun(
            method_recipe(method, weights, self.recipes),
            [
                *overrides("model", model),
                *self.shared_overrides(),
                *self.eval_overrides(),
                *overrides("training", budget),
                f"evaluation.reference_log={yaml_value(self.reference_log)}",
            ],
        )


def tiny_base_model(cache: Path) -> str:
    """A random 2-layer Llama with the real SmolLM2 tokenizer, saved once into the cache (toy scale)."""
    from llm_unlearn.models import load_tokenizer, tiny_llama

    folder = cache / "models" / "tiny-llama-v1"
    if (folder / "config.json").is_file():
        return str(folder)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tiny_llama(len(tokenizer), seed=0).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return str(folder)


def resolve_base_model(scale: Scale, cache: Path) -> str:
    return tiny_base_model(cache) if scale.base_model == "tiny" else scale.base_model


def prepare_finetuned(ctx: Context, which: str) -> tuple[str, dict]:
    """Fit (or reuse) the target or retain model with its finetune recipe; the cache key hashes the config."""
    from llm_unlearn.stages import RunOptions, run_finetune

    scale = ctx.scale
    model = {"name_or_path": ctx.base_model, "lora": scale.lora}
    run = RecipeRun(
        ctx.recipes / f"finetune_{which}.yaml",
        [*overrides("model", model), *ctx.shared_overrides(), *overrides("training", scale.finetune)],
    )
    config = run.config()
    key = config_hash({"config": config, "base_model_tag": scale.base_model})
    run_dir = ctx.cache / "finetuned" / f"{which}-{key}"
    info_file = run_dir / "run_info.json"
    if not (run_dir / "model" / "config.json").is_file() or not info_file.is_file():
        log(f"fine-tuning the {which} model -> {run_dir}")
        run_finetune(run.plus(f"training.output_dir={yaml_value(str(run_dir))}").spec(), RunOptions(overwrite=True))
    else:
        log(f"reusing the cached {which} model {run_dir}")
    info = read_json(info_file)
    summary = {
        "path": str(run_dir / "model"),
        "config_hash": key,
        "config": config,
        **run.describe(),
        **{name: info.get(name) for name in ("wall_time_s", "peak_memory_mb", "data")},
    }
    return str(run_dir / "model"), summary


def runtime_info() -> dict:
    """environment_info() plus the CPU thread count (it changes wall times several-fold on a shared machine)."""
    import torch

    from llm_unlearn.utils import environment_info

    return {**environment_info(), "torch_threads": torch.get_num_threads()}


def write_result(path: Path, payload: dict) -> None:
    from llm_unlearn.utils import atomic_write_json

    atomic_write_json(path, {**payload, "environment": runtime_info()})


# The per-row values a result keeps (set -> metrics): what forget quality and the membership AUC are computed
# from, so a table can recompute them on a subset of the rows (the forget validation split, selection.py).
PER_SAMPLE_KEPT = {"forget": ("truth_ratio", "mia_loss"), "holdout": ("mia_loss",)}


def per_sample_record(eval_dir: Path) -> dict:
    """{set: {metric: {row: value}}} of PER_SAMPLE_KEPT from an evaluation's per_sample.json ({} if none)."""
    path = eval_dir / "per_sample.json"
    rows = read_json(path) if path.is_file() else {}
    kept = {
        name: {metric: rows[name][metric] for metric in metrics if metric in rows.get(name, {})}
        for name, metrics in PER_SAMPLE_KEPT.items()
    }
    return {name: values for name, values in kept.items() if values}


def eval_record(summary: dict) -> dict:
    return {
        "metrics": summary.get("metrics", {}),
        "null_reasons": summary.get("null_reasons", {}),
        "eval_options": summary.get("options"),
        "row_counts": summary.get("row_counts"),
        "label_mode": summary.get("label_mode"),
    }


def prepare_references(ctx: Context) -> None:
    """Target and retain models, the retain model's reference log, and the target's utility (selection baseline)."""
    ctx.target_model, target_info = prepare_finetuned(ctx, "target")
    ctx.retain_model, retain_info = prepare_finetuned(ctx, "retain")
    ctx.finetune_info = {"target": target_info, "retain": retain_info}
    scale = ctx.scale
    eval_key = config_hash({"eval": scale.eval_options, "rows": scale.eval_rows, "fmt": scale.fmt})
    reference_dir = Path(ctx.retain_model).parent / f"eval-{eval_key}"
    ctx.reference_log = str(reference_dir / "per_sample.json")
    for which, model_path, info in (
        ("retain", ctx.retain_model, retain_info),
        ("target", ctx.target_model, target_info),
    ):
        name = f"{ctx.setting.name}-{which}"
        result = ctx.result_path(name)
        eval_dir = reference_dir if which == "retain" else Path(model_path).parent / f"eval-{eval_key}"
        if result.is_file() and (which != "retain" or Path(ctx.reference_log).is_file()):
            summary = json.loads(result.read_text())
            if "per_sample" not in summary and (eval_dir / "per_sample.json").is_file():
                # Results written before per-row values were kept: add them from the same evaluation's log.
                from llm_unlearn.utils import atomic_write_json

                summary["per_sample"] = per_sample_record(eval_dir)
                atomic_write_json(result, summary)
        else:
            log(f"evaluating the {which} model")
            run = RecipeRun(ctx.recipes / "evaluate_retain.yaml", [f"model.name_or_path={yaml_value(model_path)}"])
            run = run.plus(*ctx.shared_overrides(), *ctx.eval_overrides())
            reference = None if which == "retain" else ctx.reference_log
            metrics, seconds, peak = evaluate(run, model_path, eval_dir, reference)
            summary = {
                "run": name,
                "kind": which,
                "scale": scale.name,
                "seed": ctx.seed,
                "setting": ctx.setting.name,
                "method": which,
                "weights": "lora-merged" if scale.lora else "full",
                "finetune": info,
                "wall_time_s": {"finetune": info.get("wall_time_s"), "evaluate": seconds},
                "peak_memory_mb": {"finetune": info.get("peak_memory_mb"), "evaluate": peak},
                "peak_memory_kind": PeakMemory().kind,
                **eval_record(metrics),
                "per_sample": per_sample_record(eval_dir),
            }
            write_result(result, summary)
        if which == "target":
            ctx.target_utility = summary["metrics"].get(scale.utility_metric)


def training_log_tail(work: Path) -> dict:
    path = work / "train_log.json"
    if not path.is_file():
        return {}
    losses = [row for row in json.loads(path.read_text()) if "loss" in row]
    return {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}


@dataclass
class Trained:
    """A finished training (or memorization) run: its recipe run, folder, and the stage's time and memory."""

    run: RecipeRun
    work: Path
    seconds: float | None
    peak: float | None


def record_run(ctx: Context, name: str, labels: dict, trained: Trained, model_dir: Path, note=None) -> dict:
    """Evaluate `model_dir` and write the run's result JSON. labels: method, variant, family, weights,
    learning_rate, alpha."""
    log(f"evaluating {name}")
    summary, seconds, peak = evaluate(trained.run, str(model_dir), model_dir / "eval", ctx.reference_log)
    payload = {
        "run": name,
        "kind": "unlearn",
        "scale": ctx.scale.name,
        "seed": ctx.seed,
        "setting": ctx.setting.name,
        **labels,
        "utility_metric": ctx.scale.utility_metric,
        "config": trained.run.config(),
        **trained.run.describe(),
        "target_model": ctx.finetune_info["target"]["config_hash"],
        "runaway_steps": read_json(trained.work / "run_info.json").get("runaway_steps"),
        "training_loss": training_log_tail(trained.work),
        "wall_time_s": {"train": trained.seconds, "evaluate": seconds},
        "peak_memory_mb": {"train": trained.peak, "evaluate": peak},
        "peak_memory_kind": PeakMemory().kind,
        "note": note,
        **eval_record(summary),
        "per_sample": per_sample_record(model_dir / "eval"),
    }
    write_result(ctx.result_path(name), payload)
    return payload


def failure(ctx: Context, name: str, labels: dict, error: BaseException) -> dict:
    payload = {
        "run": name,
        "kind": "unlearn",
        "status": "failed",
        "scale": ctx.scale.name,
        "seed": ctx.seed,
        "setting": ctx.setting.name,
        **{key: labels[key] for key in ("method", "weights", "learning_rate")},
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(limit=8),
        "metrics": {},
    }
    write_result(ctx.result_path(name), payload)
    log(f"{name} FAILED: {payload['error']}")
    return payload


def train_run(run: RecipeRun, exports: list[Path] = ()) -> Trained:
    """The unlearn stage for `run` (reused when the same config finished with `exports` on disk)."""
    return Trained(run, *train(run, exports))
