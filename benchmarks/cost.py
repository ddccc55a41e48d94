"""Cost of each method: time per optimizer step and peak memory relative to a plain fine-tuning step, with
LoRA and with full weights; and the TOFU evaluation throughput at batch size 1 against the default.

    python benchmarks/cost.py [--methods ...] [--weights lora full] [--out benchmarks/results/cost]

Each measurement runs in its own subprocess so that its peak memory is its own: on CPU the subprocess's max
resident set size (os.wait4), on a GPU the allocator's peak (torch.cuda.max_memory_allocated). Every method
sees the same batches: TOFU forget10 rows paired with retain90 rows by the toolkit's PairedDataset (same seed).
The baseline, `finetune`, is a plain fine-tuning step on those batches: one descent step on the answer NLL of
the forget batch plus the retain batch (two forwards, one backward). Step times are the median over the timed
steps after a warm-up step, with their spread (interquartile range); MOX is also compared with GradDiff, the
method it costs most like (one more no-grad forward of the retain batch). Results: <out>/cost.json
(make_tables.py turns them into README tables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cost"
DEFAULT_TOFU = "../shared/data/tofu"  # relative to the repository root (the workers' working directory)
BASELINE = "finetune"
MOMENTUM = "mox_momentum"

# Sizes: (batch rows per side, timed steps, eval rows per set, eval new tokens). CPU is subsampled to stay in
# minutes on a shared 2-core machine; the GPU sizes are the paper-like ones.
# The CPU evaluation is forget01's 40 forget rows (280 scored sequences: answer, paraphrase, 5 perturbations each)
# at 200 new tokens and batch 16; the GPU one adds the utility sets and batch 1.
CPU_SIZES = {
    "batch": 2,
    "timed_steps": 10,
    "eval_forget_split": "forget01",
    "eval_sets": ["forget"],
    "eval_rows": None,
    "eval_new_tokens": 200,
    "eval_batch_sizes": [16],
}
GPU_SIZES = {
    "batch": 32,
    "timed_steps": 10,
    "eval_forget_split": "forget10",
    "eval_sets": ["forget", "real_authors", "world_facts"],
    "eval_rows": None,
    "eval_new_tokens": 200,
    "eval_batch_sizes": [1, 16],  # batch 1 against TofuEvalOptions' default batch size
}
WARMUP_STEPS = 1
PROFILE_TOP = 12  # operators listed per profiled method

# Method settings that keep one-off setup small (SFR-on's Fisher pass) or pin a method default (task vectors: MUSE's α = 5).
WORKER_SETTINGS = {"sfron": {"fisher_samples": 8, "fisher_batch_size": 2}, "task_vector": {"alpha": 5.0}}


def sizes() -> dict:
    import torch

    return GPU_SIZES if torch.cuda.is_available() else CPU_SIZES


# --- worker side ---------------------------------------------------------------------------------------------


def finetune_trainer_class():
    """The baseline: plain NLL descent on the forget batch and the retain batch (benchmark-only, unregistered)."""
    from llm_unlearn.methods.base import UnlearningTrainer

    class FinetuneStepTrainer(UnlearningTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self.nll(model, inputs["forget"]) + self.nll(model, inputs["retain"])
            self.record(loss=loss)
            return loss

    return FinetuneStepTrainer


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, optimizer and every callback's on_step_end)."""

        def __init__(self):
            self.begins: list[float] = []
            self.times: list[float] = []

        @staticmethod
        def _now() -> float:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(self._now())

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(self._now() - self.begins[-1])

    return StepTimer()


def step_worker(method: str, weights: str, model_name: str, tofu: str, out: Path, profile: bool = False) -> None:
    import torch

    from llm_unlearn.data import DataConfig, load_qa_splits
    from llm_unlearn.data.collate import PairedDataset, PromptFormat, QADataset, refusal_records
    from llm_unlearn.methods import get_method
    from llm_unlearn.methods.base import UnlearnConfig
    from llm_unlearn.models import LoraSettings, load_model, load_tokenizer, wrap_lora

    size = sizes()
    steps = WARMUP_STEPS + size["timed_steps"]
    rows = size["batch"] * steps
    splits = load_qa_splits(DataConfig(dataset="tofu", source=tofu, forget_split="forget10"))
    tokenizer = load_tokenizer(model_name)
    fmt = PromptFormat()
    forget = splits.forget[:rows]
    dataset = PairedDataset(
        QADataset(forget, tokenizer, fmt),
        QADataset(splits.retain[:rows], tokenizer, fmt),
        QADataset(refusal_records(forget, 0), tokenizer, fmt),
        seed=0,
    )
    model = load_model(model_name)
    if weights == "lora":
        model = wrap_lora(model, LoraSettings())
    if method == BASELINE:
        config_cls, trainer_cls, extra = UnlearnConfig, finetune_trainer_class(), {}
    else:
        name = "mox" if method == MOMENTUM else method
        spec = get_method(name)
        config_cls, trainer_cls = spec.config, spec.trainer
        extra = {**WORKER_SETTINGS.get(name, {}), **({"momentum": True} if method == MOMENTUM else {})}
    with tempfile.TemporaryDirectory() as tmp:
        args = config_cls(
            output_dir=tmp,
            learning_rate=1e-5,
            max_steps=steps,
            per_device_train_batch_size=size["batch"],
            warmup_steps=0,
            use_cpu=not torch.cuda.is_available(),
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
            **extra,
        )
        ref_model = None
        if weights == "full" and trainer_cls.wants_reference(args):
            ref_model = load_model(model_name)  # the frozen θ_ref copy a full-weight run loads
        trainer = trainer_cls(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, ref_model=ref_model
        )
        timer = step_timer()
        trainer.add_callback(timer)
        start = time.perf_counter()
        with operator_profile(profile) as profiler:
            trainer.train()
        total = time.perf_counter() - start
    timed = timer.times[WARMUP_STEPS:]
    result = {
        "method": method,
        "weights": weights,
        "step_times_s": [round(t, 3) for t in timer.times],
        "step_time_s": round(statistics.median(timed), 3),
        "step_time_iqr_s": round(interquartile_range(timed), 3),
        "setup_s": round(timer.begins[0] - start, 2) if timer.begins else None,
        "train_total_s": round(total, 2),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loads_reference_copy": ref_model is not None,
    }
    if profiler is not None:
        result["profile_top_ops"] = top_operators(profiler, steps)
    if torch.cuda.is_available():
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_memory_kind"] = "cuda_max_allocated"
    out.write_text(json.dumps(result))


def eval_worker(batch_size: int, model_name: str, tofu: str, out: Path) -> None:
    import torch

    from llm_unlearn.data import DataConfig, load_qa_splits
    from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu, evenly_spaced
    from llm_unlearn.models import load_model, load_tokenizer

    size = sizes()
    splits = load_qa_splits(DataConfig(dataset="tofu", source=tofu, forget_split=size["eval_forget_split"]))
    available = {"forget": splits.forget_eval, "real_authors": splits.real_authors, "world_facts": splits.world_facts}
    sets = {name: evenly_spaced(available[name], size["eval_rows"]) for name in size["eval_sets"]}
    model = load_model(model_name)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    tokenizer = load_tokenizer(model_name)
    options = TofuEvalOptions(
        batch_size=batch_size,
        max_new_tokens=size["eval_new_tokens"],
        sets=tuple(size["eval_sets"]),
        metrics=("prob", "truth_ratio", "rouge", "memorization"),
    )
    start = time.perf_counter()
    evaluate_tofu(model, tokenizer, sets, options)
    wall = time.perf_counter() - start
    samples = sum(len(rows) for rows in sets.values())
    result = {
        "batch_size": batch_size,
        "samples": samples,
        "row_counts": {name: len(rows) for name, rows in sets.items()},
        "wall_time_s": round(wall, 2),
        "samples_per_s": round(samples / wall, 3),
        "max_new_tokens": size["eval_new_tokens"],
    }
    if torch.cuda.is_available():
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_memory_kind"] = "cuda_max_allocated"
    out.write_text(json.dumps(result))


# --- orchestration -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def operator_profile(enabled: bool):
    """torch.profiler over the whole training loop when `enabled` (it slows every step: the step times of a
    profiled run are not comparable with an unprofiled one), else nothing."""
    if not enabled:
        yield None
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        yield profiler


def top_operators(profiler, steps: int, count: int = PROFILE_TOP) -> list[dict]:
    """The operators with the most self time (CPU, or the device when there is one), per step."""
    events = profiler.key_averages()
    device = any(getattr(e, "self_device_time_total", 0) for e in events)
    key = "self_device_time_total" if device else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:count]
    return [
        {
            "op": e.key,
            "self_ms_per_step": round(getattr(e, key) / 1000 / steps, 2),
            "share": round(getattr(e, key) / total, 3),
            "calls_per_step": round(e.count / steps, 1),
        }
        for e in ranked
    ]


def interquartile_range(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[2] - quartiles[0]


def ratio_to(rows: list[dict], method: str, other: str) -> dict:
    """{weights: {step_time, peak_memory}} of `method` over `other`, for the weight kinds both ran."""
    ok = {(row["method"], row["weights"]): row for row in rows if row.get("status") == "ok"}
    out = {}
    for (name, weights), row in ok.items():
        base = ok.get((other, weights))
        if name == method and base is not None:
            out[weights] = {
                "step_time": round(row["step_time_s"] / base["step_time_s"], 3),
                "peak_memory": round(row["peak_memory_mb"] / base["peak_memory_mb"], 3),
            }
    return out


def run_worker(arguments: list[str]) -> dict:
    """Run this file as a worker subprocess; return its JSON plus its max RSS (CPU peak memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", *arguments, "--worker-out", str(out)]
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or not out.is_file():
            return {"status": f"failed (exit {process.returncode}); see the output above"}
        result = json.loads(out.read_text())
    result.setdefault("peak_memory_mb", round(usage.ru_maxrss / 1024, 1))  # ru_maxrss is in KiB on Linux
    result.setdefault("peak_memory_kind", "subprocess_max_rss")
    result.setdefault("status", "ok")
    return result


def with_ratios(rows: list[dict]) -> list[dict]:
    baseline = {row["weights"]: row for row in rows if row["method"] == BASELINE and row.get("status") == "ok"}
    for row in rows:
        base = baseline.get(row["weights"])
        if base is None or row.get("status") != "ok":
            continue
        row["step_time_ratio"] = round(row["step_time_s"] / base["step_time_s"], 3)
        row["peak_memory_ratio"] = round(row["peak_memory_mb"] / base["peak_memory_mb"], 3)
    return rows


def run_cost(
    methods: list[str] | None, weights: list[str], model_name: str, tofu: str, out_dir: Path, profile: bool = False
) -> Path:
    import torch

    from llm_unlearn.methods import METHODS
    from llm_unlearn.utils import atomic_write_json, environment_info

    chosen = methods or [*METHODS, MOMENTUM]
    chosen = [BASELINE] + [m for m in chosen if m != BASELINE]
    size = sizes()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    rows = []
    for weight_mode in weights:
        for method in chosen:
            print(f"[cost] {method} ({weight_mode})", flush=True)
            row = run_worker(
                ["step", "--method", method, "--weights", weight_mode, "--model", model_name, "--tofu", tofu]
                + (["--profile"] if profile else [])
            )
            rows.append({"method": method, "weights": weight_mode, **row, "device": device})
    evaluation = []
    for batch_size in () if profile else size["eval_batch_sizes"]:
        print(f"[cost] evaluation throughput, batch size {batch_size}", flush=True)
        evaluation.append(
            {
                "batch_size": batch_size,
                **run_worker(["eval", "--batch-size", str(batch_size), "--model", model_name, "--tofu", tofu]),
            }
        )
    rows_desc = "all rows" if size["eval_rows"] is None else f"{size['eval_rows']} evenly spaced rows per set"
    payload = {
        "description": f"{model_name}, {device}, batches of {size['batch']} forget + {size['batch']} retain rows "
        f"(TOFU forget10 / retain90), median (IQR) of {size['timed_steps']} steps after {WARMUP_STEPS} warm-up; "
        f"peak memory = {'allocator peak' if device == 'cuda' else 'max RSS of the process'}",
        "model": model_name,
        "sizes": size,
        "baseline": "finetune: plain NLL descent on the same forget + retain batches (2 forwards, 1 backward)",
        "worker_settings": WORKER_SETTINGS,
        "methods": with_ratios(rows),
        "mox_vs_grad_diff": ratio_to(rows, "mox", "grad_diff"),
        "evaluation": {
            "description": f"TOFU suite on {size['eval_forget_split']} {' + '.join(size['eval_sets'])} ({rows_desc}), "
            f"{size['eval_new_tokens']} new tokens, no MIA/holdout",
            "runs": evaluation,
        },
        "wall_time_s": round(time.perf_counter() - start, 1),
        "environment": {**environment_info(), "torch_threads": torch.get_num_threads()},
    }
    if profile:
        payload["description"] += "; PROFILED (torch.profiler on: times are inflated, compare the operator shares)"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("profile.json" if profile else "cost.json")
    atomic_write_json(path, payload)
    print(f"[cost] wrote {path} in {payload['wall_time_s'] / 60:.1f} min", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", help=f"default: every registered method plus {MOMENTUM}")
    parser.add_argument("--weights", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tofu", default=DEFAULT_TOFU, help=f"TOFU folder or Hub id (default: {DEFAULT_TOFU})")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run torch.profiler in every step worker and list each method's top operators (writes profile.json, "
        "not cost.json: profiled step times are inflated); skips the evaluation throughput",
    )
    parser.add_argument("--worker", choices=["step", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker == "step":
        step_worker(args.method, args.weights[0], args.model, args.tofu, Path(args.worker_out), args.profile)
    elif args.worker == "eval":
        eval_worker(args.batch_size, args.model, args.tofu, Path(args.worker_out))
    else:
        run_cost(args.methods, args.weights, args.model, args.tofu, Path(args.out), args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
