"""Benchmark MOX against the GA family, task vectors and gradient surgery on TOFU (docs/design.md, Methods).

    python benchmarks/run_benchmark.py --scale cpu --seed 0 [--methods mox ga ...] [--out benchmarks/results]

For one scale and seed this script
1. fine-tunes (or reuses from the cache) the target model (forget + retain) and the retain model (retain only)
   with the finetune stage; the cache lives outside the repository, under
   `$LLM_UNLEARN_CACHE/bench/` (default ~/.cache/llm_unlearn/bench), keyed by a hash of the config;
2. evaluates the retain model once (the reference log for forget quality and privleak) and the target model
   (the utility baseline of the model-selection rule);
3. runs every registered method under the same budget (same optimizer steps and batch sizes) over a small
   learning-rate grid per method family, evaluates each with the TOFU suite, and
4. writes one JSON per run to `<out>/<scale>/seed<N>/<run>.json` (config, environment, wall time, peak memory,
   summary metrics) plus `selection.json` (the model-selection rule and what it chose).

Resumable: a run whose JSON exists is not run again, so an interrupted benchmark continues where it stopped.

Model selection (never looks at the retain model): every run is the last checkpoint of the one fixed budget.
The learning rate of a method is the largest in its family's grid whose model utility stays at or above
UTILITY_FRACTION (90 %) of the target model's; the grid is evaluated from the largest learning rate down and
stops at the first that passes (so only what the rule needs is evaluated). When none passes, the smallest is
kept and flagged. MOX: the scale's α sweep (largest first) is evaluated in full for MOX-LoRA plain
and α* is the largest α that passes the same rule; MOX-LoRA momentum and MOX full weights (plain, momentum)
use α*. Plain and momentum MOX share one memorization run: momentum never changes the training trajectory,
so the plain θ_for is extrapolated from that run's saved θ_mem (the extrapolate stage, no training).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.runs import PeakMemory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
TOFU_SOURCE = "../shared/data/tofu"  # relative to the repository root (the working directory of a run)

UTILITY_FRACTION = 0.9
SELECTION_RULE = (
    "Every run is the last checkpoint of one fixed budget (same optimizer steps and batch sizes for every method). "
    "Learning rate: the largest in the method family's grid whose model utility is at least "
    f"{UTILITY_FRACTION:g} x the target model's (grid evaluated largest first, stopping at the first pass; "
    "when none passes the smallest is kept and flagged). MOX: α* = the largest α in the sweep that passes the "
    "same rule for MOX-LoRA plain; the other MOX variants use α*. Model utility needs no retain model, so the "
    "rule never peeks at the oracle."
)

# The benchmark protocol of a family: "mox" (memorize, then extrapolate) sweeps α and adds a momentum variant
# from the same memorization run; every other family is a plain learning-rate grid. Variant suffixes per family.
MOX_FAMILY = "mox"
FAMILY_VARIANTS = {MOX_FAMILY: ("", "_momentum")}
VARIANT_LABELS = {"": "", "_momentum": "-momentum"}  # suffix of the variant's name in the tables


def method_families() -> dict[str, str]:
    """Method -> family, read from each registered trainer; each family has its own learning-rate grid per scale
    and weight mode."""
    from llm_unlearn.methods import METHODS

    return {name: method.trainer.family for name, method in METHODS.items()}


def method_variants(method: str, family: str) -> tuple[str, ...]:
    """The result names a method's runs are filed under: the method itself, plus its family's variants."""
    return tuple(f"{method}{suffix}" for suffix in FAMILY_VARIANTS.get(family, ("",)))


def table_rows() -> dict[str, str]:
    """Every method and variant in table order (registry order, each method followed by its variants) -> its
    label in the tables (the trainer's display name, or the registry name)."""
    from llm_unlearn.methods import METHODS

    rows = {}
    for name, method in METHODS.items():
        for suffix in FAMILY_VARIANTS.get(method.trainer.family, ("",)):
            rows[f"{name}{suffix}"] = (method.trainer.display_name or name) + VARIANT_LABELS[suffix]
    return rows


FAMILIES = method_families()  # at import, as the tests read it; the harness itself calls method_families()


@dataclass(frozen=True)
class Setting:
    """One data configuration of a scale (a forget split)."""

    name: str
    data: dict


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a benchmark. `unlearn` holds the training fields every method shares."""

    name: str
    description: str
    base_model: str  # a toolkit model name or folder; "tiny" = a random 2-layer Llama (plumbing only)
    settings: tuple[Setting, ...]
    baseline_weights: tuple[str, ...]  # "lora" and/or "full" for the non-MOX methods
    mox_weights: tuple[str, ...]
    seeds: tuple[int, ...]  # the seeds the scale is meant to be run with (one --seed per invocation)
    finetune: dict
    unlearn: dict
    lr_grid: dict  # (family, weights) -> learning rates, largest first
    alphas: tuple[float, ...]  # MOX α sweep, largest first
    eval_options: dict
    eval_rows: dict  # set -> number of evenly spaced rows kept (absent: all rows)
    lora: dict = field(default_factory=lambda: {"r": 8, "lora_alpha": 16})
    method_settings: dict = field(default_factory=dict)  # method -> extra config fields (stated in the results)
    fmt: dict = field(default_factory=dict)
    use_cpu: bool = True


# Per-method settings that are not learning rates, shared by all scales (documented in the README).
METHOD_SETTINGS = {
    "grad_diff": {"retain_loss": "nll"},
    "npo": {"retain_loss": "nll"},
    "simnpo": {"retain_loss": "nll"},
    "task_vector": {"alpha": 5.0},
    # Pinned so that the momentum rows mean the same thing whatever the library default: at the CPU budget
    # (half an epoch) a per-epoch refresh would equal plain MOX; benchmarks/momentum_refresh.py compares them.
    "mox": {"momentum_refresh": "steps"},
}

TOY = Scale(
    name="toy",
    description="random 2-layer Llama on tiny synthetic authors: exercises every code path of the harness "
    "(settings, LoRA and full weights, grids, α sweep, momentum, selection) in seconds; its numbers mean nothing",
    base_model="tiny",
    settings=(
        Setting(
            "f1",
            {"dataset": "synthetic", "n_authors": 5, "qa_per_author": 2, "forget_authors": 1, "holdout_authors": 1},
        ),
        Setting(
            "f2",
            {"dataset": "synthetic", "n_authors": 6, "qa_per_author": 2, "forget_authors": 2, "holdout_authors": 1},
        ),
    ),
    baseline_weights=("lora", "full"),
    mox_weights=("lora", "full"),
    seeds=(0,),
    finetune={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 4},
    unlearn={"max_steps": 2, "per_device_train_batch_size": 2, "warmup_steps": 0},
    lr_grid={
        ("ascent", "lora"): (1e-3, 1e-4),
        ("descent", "lora"): (1e-3, 1e-4),
        (MOX_FAMILY, "lora"): (1e-3,),
        ("ascent", "full"): (1e-4, 1e-5),
        ("descent", "full"): (1e-4, 1e-5),
        (MOX_FAMILY, "full"): (1e-4, 1e-5),
    },
    alphas=(2.0, 0.5),  # a short sweep: the toy checks plumbing, the real scales sweep 0.5 to 8 or 16
    eval_options={"batch_size": 4, "max_new_tokens": 4},
    eval_rows={"real_authors": 3, "world_facts": 3},
    lora={"r": 4, "lora_alpha": 8},
    method_settings={"sfron": {"fisher_samples": 4, "fisher_batch_size": 2}},
)

CPU = Scale(
    name="cpu",
    description="real TOFU forget01 (2 authors) + the first 8 retain authors, SmolLM2-135M-Instruct with LoRA "
    "(MOX also with full weights); 3 fine-tuning epochs, 5 unlearning steps of 4 + 4 rows, evaluation on "
    "evenly spaced subsets (forget 20 of 40 rows, holdout 20 of 40, 8 rows each of retain / real authors / "
    "world facts), 40 new tokens, empty system prompt; sized for about an hour on a shared 2-core CPU",
    base_model="smollm2-135m-instruct",
    settings=(
        Setting(
            "forget01",
            {"dataset": "tofu", "source": TOFU_SOURCE, "forget_split": "forget01", "retain_authors": 8},
        ),
    ),
    baseline_weights=("lora",),
    mox_weights=("lora", "full"),
    seeds=(0, 1),
    # One epoch left the forget set barely learned (target vs retain forget quality 0.87 on a first try).
    finetune={"learning_rate": 2e-3, "num_train_epochs": 3, "per_device_train_batch_size": 8},
    unlearn={"max_steps": 5, "per_device_train_batch_size": 4, "warmup_steps": 0},
    lr_grid={
        # Every baseline grid starts above MOX-LoRA's learning rate: at 1e-3 all of them still kept 0.9x the
        # target's utility after 5 steps, so the utility rule only binds from 3e-3.
        ("ascent", "lora"): (3e-3, 1e-3, 3e-4, 1e-4),
        ("descent", "lora"): (3e-3, 1e-3, 3e-4),
        (MOX_FAMILY, "lora"): (1e-3,),
        (MOX_FAMILY, "full"): (3e-5, 1e-5),
    },
    alphas=(16.0, 8.0, 4.0, 2.0, 1.0, 0.5),
    eval_options={"batch_size": 10, "max_new_tokens": 40},
    eval_rows={"forget": 20, "holdout": 20, "retain": 8, "real_authors": 8, "world_facts": 8},
    method_settings={"sfron": {"fisher_samples": 16, "fisher_batch_size": 4}},
    # SmolLM2's template otherwise inserts a 16-token default system prompt into every sequence (~18 % of the
    # tokens); an empty one is recorded in every result.
    fmt={"system_prompt": ""},
)

GPU = Scale(
    name="gpu",
    description="full TOFU forget01/05/10, SmolLM2-135M-Instruct, full weights and LoRA, MOX paper budget "
    "(10 epochs, batch 32); run with --seed 0, 1 and 2",
    base_model="smollm2-135m-instruct",
    settings=tuple(
        Setting(split, {"dataset": "tofu", "source": TOFU_SOURCE, "forget_split": split})
        for split in ("forget01", "forget05", "forget10")
    ),
    baseline_weights=("lora", "full"),
    mox_weights=("lora", "full"),
    seeds=(0, 1, 2),
    finetune={"learning_rate": 1e-4, "num_train_epochs": 5, "per_device_train_batch_size": 32},
    unlearn={"num_train_epochs": 10, "per_device_train_batch_size": 32, "warmup_steps": 0.1},
    lr_grid={
        ("ascent", "lora"): (1e-4, 3e-5),
        ("descent", "lora"): (3e-4, 1e-4),
        (MOX_FAMILY, "lora"): (3e-4, 1e-4),
        ("ascent", "full"): (1e-5, 3e-6),
        ("descent", "full"): (3e-5, 1e-5),
        (MOX_FAMILY, "full"): (3e-5, 1e-5),
    },
    alphas=(8.0, 4.0, 2.0, 1.0, 0.5),
    eval_options={"batch_size": 32, "max_new_tokens": 200},
    eval_rows={},
    method_settings={},
    use_cpu=False,
)

SCALES = {scale.name: scale for scale in (TOY, CPU, GPU)}


# --- small helpers ------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def config_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_cache() -> Path:
    """$LLM_UNLEARN_CACHE/bench (default ~/.cache/llm_unlearn/bench): models and work folders, never the repo."""
    from llm_unlearn.models import cache_root

    return cache_root() / "bench"


def evenly_spaced(records: list[dict], count: int | None) -> list[dict]:
    """`count` rows spread over the whole list (every author represented), in their original order."""
    if count is None or count >= len(records):
        return list(records)
    return [records[(i * len(records)) // count] for i in range(count)]


def lr_tag(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def alpha_tag(value: float) -> str:
    return f"{value:g}"


# --- the context of one (scale, seed, setting) ---------------------------------------------------------------


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

    def result_path(self, run: str) -> Path:
        return self.out_dir / f"{run}.json"


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


def training_common(scale: Scale, seed: int) -> dict:
    return {"use_cpu": scale.use_cpu, "seed": seed, "disable_tqdm": True, "logging_steps": 1, "save_strategy": "no"}


def finetune_config(ctx: Context, which: str) -> dict:
    scale = ctx.scale
    return {
        "model": {"name_or_path": ctx.base_model, "lora": scale.lora},
        "data": ctx.setting.data,
        "format": scale.fmt,
        "finetune": {"which": which},
        "training": {**training_common(scale, ctx.seed), **scale.finetune},
    }


def prepare_finetuned(ctx: Context, which: str) -> tuple[str, dict]:
    """Fit (or reuse) the target or retain model; the cache key hashes the whole config."""
    from llm_unlearn.stages import RunOptions, parse_config, run_finetune

    config = finetune_config(ctx, which)
    key = config_hash({"config": config, "base_model_tag": ctx.scale.base_model})
    run_dir = ctx.cache / "finetuned" / f"{which}-{key}"
    info_file = run_dir / "run_info.json"
    if not (run_dir / "model" / "config.json").is_file() or not info_file.is_file():
        log(f"fine-tuning the {which} model -> {run_dir}")
        config["training"]["output_dir"] = str(run_dir)
        run_finetune(parse_config(copy.deepcopy(config)), RunOptions(overwrite=True))
    else:
        log(f"reusing the cached {which} model {run_dir}")
    info = json.loads(info_file.read_text())
    summary = {
        "path": str(run_dir / "model"),
        "config_hash": key,
        "config": config | {"training": {k: v for k, v in config["training"].items() if k != "output_dir"}},
        "wall_time_s": info.get("wall_time_s"),
        "peak_memory_mb": info.get("peak_memory_mb"),
        "data": info.get("data"),
    }
    return str(run_dir / "model"), summary


def eval_sets_for(ctx: Context) -> dict[str, list[dict]]:
    from llm_unlearn.data import DataConfig, load_qa_splits
    from llm_unlearn.stages.training_data import eval_sets

    sets = eval_sets(load_qa_splits(DataConfig.from_dict(ctx.setting.data)))
    return {name: evenly_spaced(rows, ctx.scale.eval_rows.get(name)) for name, rows in sets.items()}


def evaluate(ctx: Context, model_path: str, out_dir: Path, reference_log: str | None) -> tuple[dict, float, float]:
    """The TOFU suite on a model or adapter folder (adapters apply onto the target). Returns (summary, s, MB)."""
    from llm_unlearn.config import ModelConfig
    from llm_unlearn.data.collate import PromptFormat
    from llm_unlearn.evaluation.runner import run_evaluation
    from llm_unlearn.evaluation.tofu import TofuEvalOptions
    from llm_unlearn.models import load_tokenizer
    from llm_unlearn.stages import load_for_eval

    memory = PeakMemory()
    start = time.perf_counter()
    base = ctx.target_model or model_path
    model = load_for_eval(ModelConfig(name_or_path=base, lora=None), model_path)
    summary = run_evaluation(
        model,
        load_tokenizer(base),
        "tofu",
        eval_sets_for(ctx),
        out_dir,
        TofuEvalOptions(**ctx.scale.eval_options),
        PromptFormat(**ctx.scale.fmt),
        reference_log,
    )
    del model
    return summary, round(time.perf_counter() - start, 2), memory.read_mb()


def runtime_info() -> dict:
    """environment_info() plus the CPU thread count (it changes wall times several-fold on a shared machine)."""
    import torch

    from llm_unlearn.utils import environment_info

    return {**environment_info(), "torch_threads": torch.get_num_threads()}


def write_result(path: Path, payload: dict) -> None:
    from llm_unlearn.utils import atomic_write_json

    atomic_write_json(path, {**payload, "environment": runtime_info()})


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
    eval_key = config_hash({"eval": ctx.scale.eval_options, "rows": ctx.scale.eval_rows, "fmt": ctx.scale.fmt})
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
        else:
            log(f"evaluating the {which} model")
            metrics, seconds, peak = evaluate(
                ctx, model_path, eval_dir, None if which == "retain" else ctx.reference_log
            )
            summary = {
                "run": name,
                "kind": which,
                "scale": ctx.scale.name,
                "seed": ctx.seed,
                "setting": ctx.setting.name,
                "method": which,
                "weights": "lora-merged" if ctx.scale.lora else "full",
                "finetune": info,
                "wall_time_s": {"finetune": info.get("wall_time_s"), "evaluate": seconds},
                "peak_memory_mb": {"finetune": info.get("peak_memory_mb"), "evaluate": peak},
                "peak_memory_kind": PeakMemory().kind,
                **eval_record(metrics),
            }
            write_result(result, summary)
        if which == "target":
            ctx.target_utility = summary["metrics"].get("model_utility")


# --- unlearning runs -----------------------------------------------------------------------------------------


def unlearn_config(ctx: Context, method: str, weights: str, lr: float, work: Path, extra: dict) -> dict:
    scale = ctx.scale
    return {
        "model": {"name_or_path": ctx.target_model, "lora": scale.lora if weights == "lora" else None},
        "data": ctx.setting.data,
        "format": scale.fmt,
        "method": method,
        "training": {
            **training_common(scale, ctx.seed),
            **scale.unlearn,
            **METHOD_SETTINGS.get(method, {}),
            **scale.method_settings.get(method, {}),
            **extra,
            "learning_rate": lr,
            "output_dir": str(work),
        },
    }


def as_json(config: dict) -> dict:
    """The config as it reads back from JSON, so a stored config compares equal to a fresh one."""
    return json.loads(json.dumps(config, default=str))


def reusable(work: Path, config: dict, exports: list[Path]) -> dict | None:
    """The run_info of a finished run in `work` made from this same config whose `exports` all still exist."""
    info_file = work / "run_info.json"
    if not info_file.is_file():
        return None
    info = json.loads(info_file.read_text())
    same = info.get("bench_config") == as_json(config)
    return info if same and all(path.is_dir() for path in exports) else None


def stamp_run_info(work: Path, config: dict, **fields) -> None:
    """Add the config the benchmark ran (what `reusable` compares) and `fields` to the stage's run_info.json."""
    from llm_unlearn.utils import atomic_write_json

    info_file = work / "run_info.json"
    info = json.loads(info_file.read_text())
    atomic_write_json(info_file, {**info, **fields, "bench_config": as_json(config)})


def train(config: dict, exports: list[Path] = ()) -> tuple[Path, float, float]:
    """run_unlearn in a fresh folder unless the same config already finished there with `exports` still on disk
    (evaluated exports are deleted, and an α sweep may change between invocations). Returns (dir, s, MB)."""
    from llm_unlearn.stages import RunOptions, parse_config, run_unlearn

    work = Path(config["training"]["output_dir"])
    info = reusable(work, config, list(exports))
    if info is not None:
        log(f"reusing the finished run {work}")
        return work, info.get("wall_time_s"), info.get("bench_peak_memory_mb")
    memory = PeakMemory()
    start = time.perf_counter()
    run_unlearn(parse_config(copy.deepcopy(config)), RunOptions(overwrite=True))
    seconds, peak = round(time.perf_counter() - start, 2), memory.read_mb()
    stamp_run_info(work, config, bench_peak_memory_mb=peak)
    return work, seconds, peak


def extrapolate_plain(ctx: Context, config: dict, alphas: list[float]) -> Path:
    """Plain MOX θ_for for every α from the saved memorization model (no training)."""
    from llm_unlearn.stages import RunOptions, parse_config, run_extrapolate

    work = Path(config["training"]["output_dir"])
    out = work.parent / f"{work.name}-plain"
    plain = copy.deepcopy(config)
    plain["training"].update({"output_dir": str(out), "momentum": False, "alpha": alphas[0], "alphas": alphas[1:]})
    plain["extrapolate"] = {"memorization": str(work / "memorization")}
    if reusable(out, plain, [export_dir(out, alpha, alphas[0]) for alpha in alphas]) is None:
        run_extrapolate(parse_config(copy.deepcopy(plain)), RunOptions(overwrite=True))
        stamp_run_info(out, plain)
    return out


def export_dir(run_dir: Path, alpha: float, first_alpha: float) -> Path:
    return run_dir / ("unlearned" if alpha == first_alpha else f"alpha_{alpha:g}")


def training_log_tail(work: Path) -> dict:
    path = work / "train_log.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    losses = [row for row in rows if "loss" in row]
    return {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}


def record_run(
    ctx: Context,
    name: str,
    method: str,
    variant: str,
    weights: str,
    lr: float,
    alpha: float | None,
    config: dict,
    model_dir: Path,
    train_seconds: float | None,
    train_peak: float | None,
    work: Path,
    note: str | None = None,
) -> dict:
    log(f"evaluating {name}")
    summary, seconds, peak = evaluate(ctx, str(model_dir), model_dir / "eval", ctx.reference_log)
    run_info_file = work / "run_info.json"
    run_info = json.loads(run_info_file.read_text()) if run_info_file.is_file() else {}
    payload = {
        "run": name,
        "kind": "unlearn",
        "scale": ctx.scale.name,
        "seed": ctx.seed,
        "setting": ctx.setting.name,
        "method": method,
        "variant": variant,
        "family": method_families()[method],
        "weights": weights,
        "learning_rate": lr,
        "alpha": alpha,
        "config": {**config, "training": {k: v for k, v in config["training"].items() if k != "output_dir"}},
        "target_model": ctx.finetune_info["target"]["config_hash"],
        "runaway_steps": run_info.get("runaway_steps"),
        "training_loss": training_log_tail(work),
        "wall_time_s": {"train": train_seconds, "evaluate": seconds},
        "peak_memory_mb": {"train": train_peak, "evaluate": peak},
        "peak_memory_kind": PeakMemory().kind,
        "note": note,
        **eval_record(summary),
    }
    write_result(ctx.result_path(name), payload)
    return payload


def failure(ctx: Context, name: str, method: str, weights: str, lr: float, error: BaseException) -> dict:
    payload = {
        "run": name,
        "kind": "unlearn",
        "status": "failed",
        "scale": ctx.scale.name,
        "seed": ctx.seed,
        "setting": ctx.setting.name,
        "method": method,
        "weights": weights,
        "learning_rate": lr,
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(limit=8),
        "metrics": {},
    }
    write_result(ctx.result_path(name), payload)
    log(f"{name} FAILED: {payload['error']}")
    return payload


def passes(ctx: Context, result: dict) -> bool:
    utility = result.get("metrics", {}).get("model_utility")
    if utility is None or ctx.target_utility is None:
        return False
    return utility >= UTILITY_FRACTION * ctx.target_utility


def choose_along_grid(ctx: Context, choice: str, grid, run_at, **details) -> None:
    """The selection rule: evaluate `run_at(lr)` over `grid` largest first and keep the first run that passes;
    when none does, keep the last (smallest) one, flagged. Records the choice under `<setting>/<choice>`."""
    evaluated, met = [], False
    for lr in grid:
        result = run_at(lr)
        evaluated.append(result["run"])
        if passes(ctx, result):
            met = True
            break
    ctx.choices[f"{ctx.setting.name}/{choice}"] = {
        "run": evaluated[-1],
        "met_rule": met,
        "evaluated": evaluated,
        **details,
    }


def run_baseline(ctx: Context, method: str, weights: str) -> None:
    """One non-MOX method over its learning-rate grid, largest first, until the utility rule passes."""

    def run_at(lr: float) -> dict:
        name = f"{ctx.setting.name}-{weights}-{method}-lr{lr_tag(lr)}"
        path = ctx.result_path(name)
        if path.is_file():
            return json.loads(path.read_text())
        work = ctx.work_dir / name
        config = unlearn_config(ctx, method, weights, lr, work, {})
        try:
            log(f"training {name}")
            work, seconds, peak = train(config)
            return record_run(
                ctx, name, method, method, weights, lr, None, config, work / "unlearned", seconds, peak, work
            )
        except Exception as error:  # one broken method must not stop the benchmark
            return failure(ctx, name, method, weights, lr, error)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    choose_along_grid(ctx, f"{weights}/{method}", ctx.scale.lr_grid[(method_families()[method], weights)], run_at)


def mox_names(ctx: Context, method: str, weights: str, lr: float) -> dict[str, str]:
    stem = f"{ctx.setting.name}-{weights}-{{variant}}-lr{lr_tag(lr)}"
    return {variant: stem.format(variant=variant) for variant in method_variants(method, MOX_FAMILY)}


def run_mox_grid_point(
    ctx: Context, method: str, weights: str, lr: float, plain_alphas: list[float], momentum_alpha: float | None
):
    """One memorization run (momentum on) → plain θ_for for `plain_alphas`, momentum θ_for for `momentum_alpha`.

    Returns {(variant, α): result}. Results already on disk are read, and nothing is trained when all exist.
    """
    names = mox_names(ctx, method, weights, lr)
    plain_variant, momentum_variant = method_variants(method, MOX_FAMILY)
    wanted = [(plain_variant, a) for a in plain_alphas]
    wanted += [(momentum_variant, momentum_alpha)] if momentum_alpha else []
    results: dict = {}
    missing = []
    for variant, alpha in wanted:
        path = ctx.result_path(f"{names[variant]}-a{alpha_tag(alpha)}")
        if path.is_file():
            results[(variant, alpha)] = json.loads(path.read_text())
        else:
            missing.append((variant, alpha))
    if not missing:
        return results
    work = ctx.work_dir / f"{ctx.setting.name}-{weights}-{method}-lr{lr_tag(lr)}"
    # The run exports the momentum model for the whole α sweep, so a later call for α* reuses it as it is.
    momentum_alphas = list(ctx.scale.alphas)
    config = unlearn_config(
        ctx,
        method,
        weights,
        lr,
        work,
        {"momentum": True, "alpha": momentum_alphas[0], "alphas": momentum_alphas[1:]},
    )
    try:
        log(f"training MOX memorization {work.name}")
        momentum_exports = [export_dir(work, a, momentum_alphas[0]) for v, a in missing if v == momentum_variant]
        work, seconds, peak = train(config, momentum_exports)
        plain_needed = any(v == plain_variant for v, _ in missing)
        plain_dir = extrapolate_plain(ctx, config, plain_alphas) if plain_needed else None
        for variant, alpha in missing:
            name = f"{names[variant]}-a{alpha_tag(alpha)}"
            if variant == plain_variant:
                model_dir = export_dir(plain_dir, alpha, plain_alphas[0])
            else:
                model_dir = export_dir(work, alpha, momentum_alphas[0])
            variant_config = copy.deepcopy(config)
            momentum = variant == momentum_variant
            variant_config["training"].update({"momentum": momentum, "alpha": alpha, "alphas": []})
            note = (
                "plain θ_for extrapolated (extrapolate stage) from the θ_mem saved by the momentum-enabled "
                "memorization run; momentum does not change the training trajectory"
                if variant == plain_variant
                else "momentum θ̄_for exported by the memorization run"
            )
            try:
                results[(variant, alpha)] = record_run(
                    ctx, name, method, variant, weights, lr, alpha, variant_config, model_dir, seconds, peak, work, note
                )
            except Exception as error:
                results[(variant, alpha)] = failure(ctx, name, method, weights, lr, error)
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)  # full-weight exports are large
    except Exception as error:
        for variant, alpha in missing:
            if (variant, alpha) not in results:
                results[(variant, alpha)] = failure(
                    ctx, f"{names[variant]}-a{alpha_tag(alpha)}", method, weights, lr, error
                )
    return results


def run_mox(ctx: Context, method: str) -> None:
    """A method of the mox family: the LoRA plain α sweep (selects lr* and α*), then momentum LoRA and full
    weights (plain, momentum) at α*."""
    alphas = list(ctx.scale.alphas)
    plain_variant, momentum_variant = method_variants(method, MOX_FAMILY)
    first_weights = ctx.scale.mox_weights[0]
    sweep_evaluated, chosen = [], None
    grid = ctx.scale.lr_grid[(MOX_FAMILY, first_weights)]
    for lr in grid:
        results = run_mox_grid_point(ctx, method, first_weights, lr, alphas, None)
        names = mox_names(ctx, method, first_weights, lr)
        sweep_evaluated += [f"{names[plain_variant]}-a{alpha_tag(a)}" for a in alphas]
        passing = [a for a in alphas if passes(ctx, results[(plain_variant, a)])]
        if passing:
            chosen = (lr, max(passing), True)
            break
    if chosen is None:
        chosen = (grid[-1], min(alphas), False)
    lr_star, alpha_star, met = chosen
    ctx.choices[f"{ctx.setting.name}/{first_weights}/{plain_variant}"] = {
        "run": f"{mox_names(ctx, method, first_weights, lr_star)[plain_variant]}-a{alpha_tag(alpha_star)}",
        "met_rule": met,
        "evaluated": sweep_evaluated,
        "alpha_star": alpha_star,
        "alpha_sweep": True,
    }
    # Momentum at α* on the same weights: same memorization run (already trained when lr* was swept).
    for weights in ctx.scale.mox_weights:
        variants = (momentum_variant,) if weights == first_weights else (plain_variant, momentum_variant)
        grid = (lr_star,) if weights == first_weights else ctx.scale.lr_grid[(MOX_FAMILY, weights)]
        for variant in variants:
            plain = [alpha_star] if variant == plain_variant else []
            momentum = alpha_star if variant == momentum_variant else None

            def run_at(lr: float, weights=weights, variant=variant, plain=plain, momentum=momentum) -> dict:
                return run_mox_grid_point(ctx, method, weights, lr, plain, momentum)[(variant, alpha_star)]

            choose_along_grid(ctx, f"{weights}/{variant}", grid, run_at, alpha_star=alpha_star)


# --- driver --------------------------------------------------------------------------------------------------


def registered_methods(requested: list[str] | None, scale: Scale) -> list[str]:
    """The requested methods (default: every registered one); each family needs a learning-rate grid here."""
    families = method_families()
    if requested:
        unknown = [m for m in requested if m not in families]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; registered methods: {', '.join(families)}")
    methods = list(requested or families)
    for method in methods:
        family = families[method]
        weights = scale.mox_weights if family == MOX_FAMILY else scale.baseline_weights
        missing = [w for w in weights if (family, w) not in scale.lr_grid]
        if missing:
            raise SystemExit(
                f"method {method!r}: family {family!r} has no learning-rate grid for {missing} in scale "
                f"{scale.name!r} (benchmarks/run_benchmark.py)"
            )
    return methods


def run_setting(scale: Scale, seed: int, setting: Setting, methods: list[str], out: Path, cache: Path) -> dict:
    ctx = Context(
        scale=scale,
        seed=seed,
        setting=setting,
        out_dir=out / scale.name / f"seed{seed}",
        cache=cache,
        work_dir=cache / "work" / scale.name / f"seed{seed}" / setting.name,
        base_model=resolve_base_model(scale, cache),
    )
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    prepare_references(ctx)
    log(f"{setting.name}: target model utility {ctx.target_utility}")
    families = method_families()
    for method in methods:
        if families[method] == MOX_FAMILY:
            run_mox(ctx, method)
    for weights in scale.baseline_weights:
        for method in methods:
            if families[method] != MOX_FAMILY:
                run_baseline(ctx, method, weights)
    return {
        "target_model_utility": ctx.target_utility,
        "utility_threshold": None if ctx.target_utility is None else UTILITY_FRACTION * ctx.target_utility,
        "choices": ctx.choices,
        "finetune": ctx.finetune_info,
    }


def scale_manifest(scale: Scale) -> dict:
    return {
        "name": scale.name,
        "description": scale.description,
        "base_model": scale.base_model,
        "settings": {s.name: s.data for s in scale.settings},
        "baseline_weights": list(scale.baseline_weights),
        "mox_weights": list(scale.mox_weights),
        "seeds": list(scale.seeds),
        "finetune": scale.finetune,
        "unlearn_budget": scale.unlearn,
        "lr_grid": {f"{family}/{weights}": list(lrs) for (family, weights), lrs in scale.lr_grid.items()},
        "alphas": list(scale.alphas),
        "eval_options": scale.eval_options,
        "eval_rows": scale.eval_rows,
        "lora": scale.lora,
        "method_settings": {**METHOD_SETTINGS, **scale.method_settings},
        "families": method_families(),
    }


def run_benchmark(
    scale_name: str,
    seed: int,
    methods: list[str] | None = None,
    out: str | Path = DEFAULT_OUT,
    cache: str | Path | None = None,
    settings: list[str] | None = None,
) -> Path:
    scale = SCALES[scale_name]
    known = [s.name for s in scale.settings]
    if settings and (unknown := [s for s in settings if s not in known]):
        raise SystemExit(f"--settings: unknown {unknown}; scale {scale.name} has {', '.join(known)}")
    chosen_settings = [s for s in scale.settings if not settings or s.name in settings]
    out = Path(out)
    cache = Path(cache) if cache else default_cache()
    chosen_methods = registered_methods(methods, scale)
    start = time.perf_counter()
    seed_dir = out / scale.name / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    log(f"scale {scale.name}, seed {seed}, methods {chosen_methods} -> {seed_dir}")
    results = {s.name: run_setting(scale, seed, s, chosen_methods, out, cache) for s in chosen_settings}
    selection_file = seed_dir / "selection.json"
    if selection_file.is_file():  # keep the choices of settings run by an earlier invocation (--settings)
        earlier = json.loads(selection_file.read_text()).get("settings", {})
        results = {**{k: v for k, v in earlier.items() if k not in results}, **results}
    from llm_unlearn.utils import atomic_write_json

    atomic_write_json(
        selection_file,
        {
            "rule": SELECTION_RULE,
            "utility_fraction": UTILITY_FRACTION,
            "scale": scale_manifest(scale),
            "seed": seed,
            "methods": chosen_methods,
            "settings": results,
            "wall_time_s_this_invocation": round(time.perf_counter() - start, 1),
            "environment": runtime_info(),
        },
    )
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min -> {seed_dir}")
    return seed_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", help="subset of the registered methods (default: all of them)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results root (default: benchmarks/results)")
    parser.add_argument("--cache", help="models and work folders (default: $LLM_UNLEARN_CACHE/bench)")
    parser.add_argument("--settings", nargs="+", help="only these settings of the scale (e.g. forget05)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if SCALES[args.scale].use_cpu is False:
        import torch

        if not torch.cuda.is_available():
            log("warning: the gpu scale is sized for a CUDA GPU; on CPU it will take days")
    run_benchmark(args.scale, args.seed, args.methods, args.out, args.cache, args.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
