"""MOX momentum refreshed every optimizer step vs once per epoch, against plain MOX, on the CPU scale's data.

The CPU scale trains for 5 steps (half an epoch of forget01), where a per-epoch refresh is a single refresh at
the end and so equals plain MOX exactly. This script therefore runs the CPU scale's setting (TOFU forget01 + 8
retain authors, SmolLM2 + LoRA, the cached target and retain models, the same evaluation subsets) with a budget
of several epochs, and compares three exports of the same memorization trajectory over an α sweep: plain θ_for,
momentum refreshed every step, momentum refreshed at every epoch end. Momentum never changes the training
trajectory, so the per-step and per-epoch runs see identical memorization models; only the EMA differs.

Selection follows the benchmark's rule (largest α whose model utility is at least 0.9 × the target's), per
variant. Writes benchmarks/results/momentum_refresh/seed<N>/*.json and a summary.json.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/momentum_refresh.py --seed 0 [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as rb  # noqa: E402
from recipe_runs import REPO, extrapolate, overrides, yaml_value  # noqa: E402
from scales import CPU, with_tofu  # noqa: E402
from selection import UTILITY_FRACTION, alpha_star  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "momentum_refresh"
VARIANTS = ("plain", "momentum_steps", "momentum_epoch")


def run_seed(seed: int, epochs: int, alphas: list[float], lr: float, cache: Path, tofu: str) -> dict:
    scale = with_tofu(CPU, tofu)
    setting = scale.settings[0]
    ctx = rb.Context(
        scale=scale,
        seed=seed,
        setting=setting,
        out_dir=OUT / f"seed{seed}",
        cache=cache,
        work_dir=cache / "work" / "momentum_refresh" / f"seed{seed}",
        base_model=rb.resolve_base_model(scale, cache),
    )
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    rb.prepare_references(ctx)
    budget = {"num_train_epochs": epochs, "max_steps": -1}
    results: dict[str, dict[float, dict]] = {variant: {} for variant in VARIANTS}
    for refresh in ("steps", "epoch"):
        variant = f"momentum_{refresh}"
        names = {a: f"{setting.name}-lora-mox-{variant}-e{epochs}-a{rb.alpha_tag(a)}" for a in alphas}
        plain_names = {a: f"{setting.name}-lora-mox-plain-e{epochs}-a{rb.alpha_tag(a)}" for a in alphas}
        wanted = dict(names) | (plain_names if refresh == "steps" else {})
        if all(ctx.result_path(name).is_file() for name in wanted.values()):
            for a in alphas:
                results[variant][a] = json.loads(ctx.result_path(names[a]).read_text())
                if refresh == "steps":
                    results["plain"][a] = json.loads(ctx.result_path(plain_names[a]).read_text())
            continue
        work = ctx.work_dir / f"mox-{refresh}-e{epochs}"
        extra = {**budget, "momentum": True, "momentum_refresh": refresh, "alpha": alphas[0], "alphas": alphas[1:]}
        rb.log(f"training MOX memorization, momentum refreshed per {refresh}, {epochs} epochs")
        exported = {names[a]: rb.export_dir(work, a, alphas[0]) for a in alphas}
        trained = rb.train_run(ctx.method_run("mox", "lora", lr, work, **extra), list(exported.values()))
        if refresh == "steps":  # plain θ_for from the same memorization model, once
            plain_dir = work.parent / f"{work.name}-plain"
            plain = trained.run.plus(
                *overrides("training", {"output_dir": str(plain_dir), "momentum": False}),
                f"extrapolate.memorization={yaml_value(str(work / 'memorization'))}",
            )
            extrapolate(plain, [rb.export_dir(plain_dir, a, alphas[0]) for a in alphas])
            exported |= {plain_names[a]: rb.export_dir(plain_dir, a, alphas[0]) for a in alphas}
        for name, model_dir in exported.items():
            alpha = next(a for a in alphas if name.endswith(f"-a{rb.alpha_tag(a)}"))
            is_plain = "-plain-" in name
            labels = {"method": "mox", "variant": "plain" if is_plain else variant, "family": "mox"}
            labels |= {"weights": "lora", "learning_rate": lr, "alpha": alpha}
            recorded = trained.run.plus(
                *overrides("training", {"momentum": not is_plain, "alpha": alpha, "alphas": []})
            )
            if not ctx.result_path(name).is_file():
                run = rb.Trained(recorded, trained.work, trained.seconds, trained.peak)
                rb.record_run(ctx, name, labels, run, model_dir)
            results["plain" if is_plain else variant][alpha] = json.loads(ctx.result_path(name).read_text())
            shutil.rmtree(model_dir, ignore_errors=True)
    return summarize(ctx, results, alphas)


def summarize(ctx: rb.Context, results: dict, alphas: list[float]) -> dict:
    threshold = UTILITY_FRACTION * ctx.target_utility
    summary = {"seed": ctx.seed, "target_model_utility": ctx.target_utility, "utility_threshold": threshold}
    for variant, by_alpha in results.items():
        rows = {
            f"{a:g}": {key: by_alpha[a]["metrics"].get(key) for key in ("forget_quality", "model_utility")}
            for a in alphas
        }
        chosen = alpha_star(by_alpha, ctx.target_utility)
        summary[variant] = {
            "by_alpha": rows,
            "alpha_star": chosen,
            "forget_quality_at_alpha_star": rows[f"{chosen:g}"]["forget_quality"] if chosen else None,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="unlearning epochs over forget01 (10 steps each)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
    parser.add_argument("--lr", type=float, default=1e-3, help="the CPU scale's MOX-LoRA learning rate")
    parser.add_argument("--tofu", default=rb.DEFAULT_TOFU, help=f"TOFU folder (default: {rb.DEFAULT_TOFU})")
    parser.add_argument("--cache", help="models and work folders (default: $LLM_UNLEARN_CACHE/bench)")
    args = parser.parse_args(argv)
    cache = Path(args.cache) if args.cache else rb.default_cache()
    alphas = sorted(set(args.alphas), reverse=True)
    summary = run_seed(args.seed, args.epochs, alphas, args.lr, cache, args.tofu)
    summary |= {"epochs": args.epochs, "learning_rate": args.lr, "environment": rb.runtime_info()}
    summary_path = OUT / f"seed{args.seed}" / "summary.json"
    from llm_unlearn.utils import atomic_write_json

    atomic_write_json(summary_path, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
