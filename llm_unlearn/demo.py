"""The offline CPU demo (`make demo` / `llm-unlearn demo`).

On the embedded synthetic authors and SmolLM2-135M-Instruct: fine-tune the target and the retain model
(LoRA, merged), evaluate the retain model (the reference log), unlearn with MOX, GA and GradDiff (LoRA),
evaluate each, and print a table plus the path of the plot. Sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .stages import RunOptions, parse_config, run_evaluate, run_finetune, run_unlearn

DATA = {
    "dataset": "synthetic",
    "n_authors": 10,
    "qa_per_author": 6,
    "forget_authors": 2,
    "holdout_authors": 2,
    "seed": 0,
}
QUICK_DATA = {**DATA, "n_authors": 6, "qa_per_author": 3, "forget_authors": 1, "holdout_authors": 1}
LORA = {"r": 8, "lora_alpha": 16}
EVAL_OPTIONS = {"batch_size": 16, "max_new_tokens": 32, "truncate_rows": 16}
# SmolLM2's chat template otherwise puts its 16-token default system prompt into every sequence, a sixth of all
# the tokens every stage processes; the recipes under recipes/synthetic/ set the same.
FORMAT = {"system_prompt": ""}

# Method settings of the demo (same number of steps for every method).
METHOD_RUNS = {
    "mox": {"learning_rate": 1e-3, "alpha": 2.0},
    "ga": {"learning_rate": 1e-4},
    "grad_diff": {"learning_rate": 1e-4, "retain_loss": "nll"},
}


def _stage(title: str) -> None:
    print(f"\n[demo] === {title} ===", flush=True)


def _evaluation_run(trained: Path, data: dict, options: dict, reference_log: Path | None = None) -> dict:
    """Evaluate the model a fine-tune saved under trained/model into trained/eval (scored against
    `reference_log`, the retain model's per-sample log, when given)."""
    evaluation = {"model_path": str(trained / "model"), "output_dir": str(trained / "eval")}
    if reference_log is not None:
        evaluation["reference_log"] = str(reference_log)
    return {
        "model": {"name_or_path": str(trained / "model")},
        "data": data,
        "format": FORMAT,
        "evaluation": {**evaluation, "options": options},
    }


def demo_configs(root: Path, quick: bool = False) -> dict[str, dict]:
    data = QUICK_DATA if quick else DATA
    epochs = 1 if quick else 6
    unlearn_epochs = 1 if quick else 4
    eval_options = {**EVAL_OPTIONS, "max_new_tokens": 8} if quick else EVAL_OPTIONS
    common_training = {"use_cpu": True, "seed": 0, "disable_tqdm": False}
    configs = {}
    for which in ("target", "retain"):
        configs[f"finetune_{which}"] = {
            "model": {"name_or_path": "smollm2-135m-instruct", "lora": LORA},
            "data": data,
            "format": FORMAT,
            "finetune": {"which": which},
            "training": {
                **common_training,
                "output_dir": str(root / which),
                "learning_rate": 1e-3,
                "num_train_epochs": epochs,
                "per_device_train_batch_size": 8,
                "logging_steps": 2,
            },
        }
    reference_log = root / "retain" / "eval" / "per_sample.json"
    configs["evaluate_retain"] = _evaluation_run(root / "retain", data, eval_options)
    for method, settings in METHOD_RUNS.items():
        configs[method] = {
            "model": {"name_or_path": str(root / "target" / "model"), "lora": LORA},
            "data": data,
            "format": FORMAT,
            "method": method,
            "training": {
                **common_training,
                "output_dir": str(root / method),
                "num_train_epochs": unlearn_epochs,
                "per_device_train_batch_size": 4,
                "warmup_steps": 0,
                **settings,
            },
            "evaluation": {
                "reference_log": str(reference_log),
                "options": eval_options,
            },
        }
    configs["evaluate_target"] = _evaluation_run(root / "target", data, eval_options, reference_log)
    return configs


def run_demo(out: str | None = None, quick: bool = False) -> Path:
    root = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose another --out (the demo never overwrites)")
    start = time.perf_counter()
    configs = demo_configs(root, quick)
    fresh = RunOptions()

    def run(name: str, stage, title: str):
        _stage(title)
        t0 = time.perf_counter()
        result = stage(parse_config(copy.deepcopy(configs[name])), fresh)
        print(f"[demo] {title}: {time.perf_counter() - t0:.0f} s", flush=True)
        return result

    run("finetune_target", run_finetune, "1/5 fine-tune the target model on all authors (LoRA, merged)")
    run("finetune_retain", run_finetune, "2/5 fine-tune the retain model on the retain authors only")
    run("evaluate_retain", run_evaluate, "3/5 evaluate the retain model (reference log)")
    eval_dirs = {"target (before unlearning)": None}
    for method in METHOD_RUNS:
        run(method, run_unlearn, f"4/5 unlearn with {method}")
    _stage("5/5 evaluate the target and each unlearned model")
    eval_dirs["target (before unlearning)"] = run("evaluate_target", run_evaluate, "evaluate target")
    for method in METHOD_RUNS:
        eval_dirs[method] = run(method, run_evaluate, f"evaluate {method}")
    eval_dirs["retain (oracle)"] = root / "retain" / "eval"

    from .evaluation.report import make_report

    table = Path(make_report(list(eval_dirs.values()), root / "report"))
    text = table.read_text()
    # The comparison table is the report's first section; the per-run details follow in report.md.
    print("\n" + text.split("\n## ")[0].strip() + "\n", flush=True)
    pngs = sorted(Path(table).parent.glob("*.png"))
    print(f"[demo] finished in {(time.perf_counter() - start) / 60:.1f} min. Report: {table}")
    for png in pngs:
        print(f"[demo] plot: {png}")
    return root
