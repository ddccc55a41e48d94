"""Benchmark MOX against the GA family, task vectors and gradient surgery on TOFU (docs/design.md, Methods).

    python benchmarks/run_benchmark.py --scale cpu --seed 0 [--methods mox ga ...] [--tofu PATH] [--out DIR]

Every run is a recipe of recipes/tofu/smollm2/ plus overrides from the scale (benchmarks/scales.py), run through
the toolkit's finetune / unlearn / extrapolate / evaluate stages exactly as `llm-unlearn` runs them; each result
JSON records its recipe and overrides. For one scale and seed this script
1. fine-tunes (or reuses from the cache) the target and retain models; the cache lives outside the repository,
   under `$LLM_UNLEARN_CACHE/bench/` (default ~/.cache/llm_unlearn/bench), keyed by a hash of the config;
2. evaluates the retain model once (the reference log for forget quality and privleak) and the target model
   (the utility baseline of the model-selection rule, benchmarks/selection.py);
3. runs every registered method under the same budget over its family's learning-rate grid, asking the rule
   what to evaluate next, so only what the rule needs is evaluated, and
4. writes one JSON per run to `<out>/<scale>/seed<N>/<run>.json` plus `selection.json` (the rule and its choices).

Resumable: a run whose JSON exists is not run again. A failed run is recorded as JSON and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import selection
from harness import (
    DEFAULT_TOFU,
    Context,
    NotRecorded,
    default_cache,
    failure,
    log,
    lr_tag,
    prepare_references,
    record_run,
    resolve_base_model,
    runtime_info,
    train_run,
)
from mox_runs import VARIANTS, mox_grid_point, run_name, sweep_names, variant_names
from recipe_runs import REPO, missing_recipes, read_json
from scales import MOX_FAMILY, SCALES, MoxVariant, Scale, Setting, method_families, scale_manifest, with_tofu

DEFAULT_OUT = REPO / "benchmarks" / "results"
VARIANT_LABELS = {"": "", "_momentum": "-momentum"}  # suffix of a MOX variant's name in the tables
WEIGHTS = ("lora", "full")
VALIDATION_VARIANT = "forget_validation"  # the choice of plain MOX's α on a forget validation split


def table_rows() -> dict[str, str]:
    """Every method and variant in table order (registry order, MOX-family methods followed by their momentum
    variant) -> its label in the tables (the trainer's display name, or the registry name)."""
    from llm_unlearn.methods import METHODS

    rows = {}
    for name, method in METHODS.items():
        for suffix in VARIANTS if method.trainer.family == MOX_FAMILY else ("",):
            rows[f"{name}{suffix}"] = (method.trainer.display_name or name) + VARIANT_LABELS[suffix]
    return rows


def choose_along_grid(ctx: Context, choice: str, grid, run_at, **details) -> None:
    """Evaluate `run_at(lr)` down `grid` for as long as the selection rule asks; record its choice."""
    results: list[dict] = []
    while (lr := selection.next_learning_rate(grid, results, ctx.target_utility)) is not None:
        results.append(run_at(lr))
    entry = selection.grid_choice(results, ctx.target_utility)
    ctx.choices[f"{ctx.setting.name}/{choice}"] = {**entry, **details}
    ctx.checkpoint()


def run_baseline(ctx: Context, method: str, weights: str) -> None:
    """One method outside the MOX family over its learning-rate grid."""
    family = method_families()[method]

    def run_at(lr: float) -> dict:
        name = f"{ctx.setting.name}-{weights}-{method}-lr{lr_tag(lr)}"
        if ctx.result_path(name).is_file():
            return read_json(ctx.result_path(name))
        ctx.check_recorded(name)
        work = ctx.work_dir / name
        labels = {"method": method, "variant": method, "family": family, "weights": weights, "learning_rate": lr}
        try:
            log(f"training {name}")
            trained = train_run(ctx.method_run(method, weights, lr, work))
            return record_run(ctx, name, {**labels, "alpha": None}, trained, work / "unlearned")
        except Exception as error:  # one broken method must not stop the benchmark
            return failure(ctx, name, labels, error)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    key = f"{ctx.setting.name}/{weights}/{method}"
    choose_along_grid(ctx, f"{weights}/{method}", ctx.grid(key, family, weights), run_at, **ctx.fixed_details(key))


def alpha_sweep(ctx: Context, method: str, weights: str, lr: float, alphas: list[float], change=None) -> dict:
    """Plain MOX (or a variant of it) at `lr` over the α sweep: {α: result}. Every α, or (scale.sweep_every_alpha
    False) largest first until one passes the rule, which is then the largest that passes."""
    plain = variant_names(method, change)[0]
    if ctx.scale.sweep_every_alpha:
        results = mox_grid_point(ctx, method, weights, lr, alphas, None, change)
        return {alpha: results[(plain, alpha)] for alpha in alphas}
    sweep = {}
    for alpha in alphas:
        sweep[alpha] = mox_grid_point(ctx, method, weights, lr, [alpha], None, change)[(plain, alpha)]
        if selection.passes(sweep[alpha], ctx.target_utility):
            break
    return sweep


def run_mox(ctx: Context, method: str) -> None:
    """A MOX-family method: the plain α sweep on its first weights selects lr* and α*; the momentum variant, and
    on the other weights both variants (over their own grid), then run at α*."""
    alphas, (plain, momentum) = list(ctx.scale.alphas), variant_names(method)
    first = ctx.scale.mox_weights[0]
    key = f"{ctx.setting.name}/{first}/{plain}"
    if key in ctx.fixed:
        alphas = [ctx.fixed[key]["alpha"]]
    grid, sweeps = ctx.grid(key, MOX_FAMILY, first), []
    while (lr := selection.next_sweep_learning_rate(grid, sweeps, ctx.target_utility)) is not None:
        sweeps.append(alpha_sweep(ctx, method, first, lr, alphas))
    lr_star, alpha_star, met = selection.sweep_choice(grid, sweeps, ctx.target_utility)
    ctx.choices[f"{ctx.setting.name}/{first}/{plain}"] = {
        "run": sweep_names(ctx, method, first, lr_star, [alpha_star])[0],
        "met_rule": met,
        "evaluated": [name for lr, sweep in zip(grid, sweeps) for name in sweep_names(ctx, method, first, lr, sweep)],
        "alpha_star": alpha_star,
        "alpha_sweep": True,
        **ctx.fixed_details(key),
    }
    ctx.checkpoint()
    for weights in ctx.scale.mox_weights:  # the momentum run at α* reuses the memorization run of lr*
        variants = (momentum,) if weights == first else (plain, momentum)
        for variant in variants:
            key = f"{ctx.setting.name}/{weights}/{variant}"
            grid = (lr_star,) if weights == first else ctx.grid(key, MOX_FAMILY, weights)
            plain_alphas = [alpha_star] if variant == plain else []
            momentum_alpha = alpha_star if variant == momentum else None

            def run_at(lr, weights=weights, variant=variant, plain_alphas=plain_alphas, momentum_alpha=momentum_alpha):
                return mox_grid_point(ctx, method, weights, lr, plain_alphas, momentum_alpha)[(variant, alpha_star)]

            choose_along_grid(
                ctx, f"{weights}/{variant}", grid, run_at, alpha_star=alpha_star, **ctx.fixed_details(key)
            )
    if ctx.scale.forget_validation:  # before the variants: it trains nothing new
        run_forget_validation(ctx, method, lr_star, alpha_star)
    for change in ctx.scale.mox_variants:
        run_mox_variant(ctx, method, change, lr_star, alpha_star)


def run_mox_variant(ctx: Context, method: str, change: MoxVariant, lr_star: float, alpha_star: float) -> None:
    """One MOX variant on the first weights at plain MOX's lr*: a momentum variant at α*, any other over its own
    α sweep with the same rule (its α is then chosen like α*)."""
    weights = ctx.scale.mox_weights[0]
    plain, momentum = variant_names(method, change)
    name = momentum if change.momentum else plain
    key = f"{ctx.setting.name}/{weights}/{name}"
    lr = ctx.fixed[key]["learning_rate"] if key in ctx.fixed else lr_star
    if change.momentum:
        sweep = {alpha_star: mox_grid_point(ctx, method, weights, lr, [], alpha_star, change)[(momentum, alpha_star)]}
    else:
        alphas = [ctx.fixed[key]["alpha"]] if key in ctx.fixed else list(change.alphas or ctx.scale.alphas)
        sweep = alpha_sweep(ctx, method, weights, lr, alphas, change)
    best = selection.alpha_star(sweep, ctx.target_utility)
    chosen = best if best is not None else min(sweep)
    ctx.choices[key] = {
        "run": run_name(ctx, weights, name, lr, chosen),
        "met_rule": best is not None,
        "evaluated": [run_name(ctx, weights, name, lr, alpha) for alpha in sweep],
        "alpha_star": chosen,
        "mox_variant": change.name,
        **ctx.fixed_details(key),
    }
    ctx.checkpoint()


def with_per_sample(ctx: Context, method: str, weights: str, lr: float, alpha: float, result: dict) -> dict:
    """`result`, evaluated again if it passes the utility rule but was recorded before results kept their per-row
    values (the θ_for is
    rebuilt from the memorization run in the work folder, so the numbers should not move; the log says if they
    do)."""
    if "per_sample" in result or not selection.passes(result, ctx.target_utility):
        return result  # a failing α is no candidate: its per-row values are not needed
    plain = variant_names(method)[0]
    path = ctx.result_path(run_name(ctx, weights, plain, lr, alpha))
    ctx.check_recorded(path.stem)
    log(f"{path.name} has no per-row values: evaluating it again")
    earlier = ctx.work_dir / f"{path.stem}.before-per-sample.json"
    earlier.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, earlier)  # kept outside the results until the new one is written
    again = mox_grid_point(ctx, method, weights, lr, [alpha], None)[(plain, alpha)]
    for metric in ("forget_quality", ctx.scale.utility_metric):
        old, new = result["metrics"].get(metric), again.get("metrics", {}).get(metric)
        log(f"  {metric}: {old} before, {new} now")
    return again


def run_forget_validation(ctx: Context, method: str, lr_star: float, alpha_star: float) -> None:
    """Plain MOX at lr* over the whole α sweep (every α, on the first weights), its α chosen by
    selection.VALIDATION_RULE instead of the largest that passes."""
    weights = ctx.scale.mox_weights[0]
    plain = variant_names(method)[0]
    key = f"{ctx.setting.name}/{weights}/{plain}+{VALIDATION_VARIANT}"
    fixed = ctx.fixed.get(key)
    lr = fixed["learning_rate"] if fixed else lr_star
    alphas = [fixed["alpha"]] if fixed else list(ctx.scale.alphas)
    sweep = {}
    for alpha in alphas:
        result = mox_grid_point(ctx, method, weights, lr, [alpha], None)[(plain, alpha)]
        sweep[alpha] = with_per_sample(ctx, method, weights, lr, alpha, result)
    best, table = selection.validated_alpha(sweep, ctx.target_utility)
    chosen = alphas[0] if fixed else best if best is not None else alpha_star
    ctx.choices[key] = {
        "run": run_name(ctx, weights, plain, lr, chosen),
        "met_rule": table[chosen]["passes"] and table[chosen]["validation_mia_auc"] is not None,
        "evaluated": [run_name(ctx, weights, plain, lr, alpha) for alpha in sweep],
        "alpha_star": chosen,
        "alpha_star_by_utility": alpha_star,
        "mox_variant": VALIDATION_VARIANT,
        "validation": {"rule": selection.VALIDATION_RULE, "per_alpha": {f"{a:g}": row for a, row in table.items()}},
        **ctx.fixed_details(key),
    }
    ctx.checkpoint()


def registered_methods(requested: list[str] | None, scale: Scale) -> list[str]:
    """The requested methods (default: every registered one); each family needs a learning-rate grid here."""
    families = method_families()
    if requested and (unknown := [m for m in requested if m not in families]):
        raise SystemExit(f"--methods: unknown {unknown}; registered methods: {', '.join(families)}")
    methods = list(requested or scale.methods or families)
    for method in methods:
        family = families[method]
        weights = scale.weights_of(method, family)
        if missing := [w for w in weights if (family, w) not in scale.lr_grid]:
            raise SystemExit(
                f"method {method!r}: family {family!r} has no learning-rate grid for {missing} in scale "
                f"{scale.name!r} (benchmarks/scales.py)"
            )
    return methods


def choice_keys(scale: Scale, setting: Setting, methods: list[str]) -> list[str]:
    """The selection's keys '<setting>/<weights>/<method or variant>' that these methods produce."""
    families = method_families()
    keys = []
    for method in methods:
        names = variant_names(method) if families[method] == MOX_FAMILY else (method,)
        keys += [f"{setting.name}/{w}/{name}" for w in scale.weights_of(method, families[method]) for name in names]
        if families[method] == MOX_FAMILY:
            for change in scale.mox_variants:
                name = variant_names(method, change)[1 if change.momentum else 0]
                keys.append(f"{setting.name}/{scale.mox_weights[0]}/{name}")
            if scale.forget_validation:
                keys.append(f"{setting.name}/{scale.mox_weights[0]}/{names[0]}+{VALIDATION_VARIANT}")
    return keys


def fixed_choices(scale: Scale, seed: int, setting: Setting, methods: list[str], out: Path) -> dict:
    """{key: {"learning_rate", "alpha"}} as the scale's select_on_seed chose them, for a seed that reuses them
    (empty for the selecting seed); a missing choice stops the run before anything is computed."""
    if scale.select_on_seed is None or seed == scale.select_on_seed:
        return {}
    seed_dir = out / scale.name / f"seed{scale.select_on_seed}"
    choices = read_json(seed_dir / "selection.json").get("settings", {}).get(setting.name, {}).get("choices", {})
    fixed = {}
    for key in choice_keys(scale, setting, methods):
        run = read_json(seed_dir / f"{choices[key]['run']}.json") if key in choices else {}
        if "learning_rate" not in run:
            raise SystemExit(
                f"seed {seed} reuses seed {scale.select_on_seed}'s selection, which has no {key}: run "
                f"--seed {scale.select_on_seed} --settings {setting.name} --methods {key.split('/')[-1]} first"
            )
        fixed[key] = {"learning_rate": run["learning_rate"], "alpha": run.get("alpha")}
    return fixed


def setting_summary(ctx: Context) -> dict:
    """What selection.json records for one setting: the target's utility, the threshold and the choices so far."""
    threshold = None if ctx.target_utility is None else selection.UTILITY_FRACTION * ctx.target_utility
    return {
        "target_model_utility": ctx.target_utility,
        "utility_threshold": threshold,
        "choices": ctx.choices,
        "finetune": ctx.finetune_info,
    }


def run_method(ctx: Context, method: str, weights: str | None) -> None:
    """One MOX method (weights None: all of its rows) or one baseline on `weights`; under --recorded-only a
    choice whose runs are not all on disk is left out."""
    try:
        if weights is None:
            run_mox(ctx, method)
        else:
            run_baseline(ctx, method, weights)
    except NotRecorded as missing:
        log(f"{method}{'' if weights is None else f' ({weights})'}: choices from here on left out, {missing}")


def run_setting(ctx: Context, methods: list[str]) -> dict:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    prepare_references(ctx)
    log(f"{ctx.setting.name}: target model utility {ctx.target_utility}")
    families = method_families()
    for method in methods:
        if families[method] == MOX_FAMILY:
            run_method(ctx, method, None)
    for weights in WEIGHTS:  # every method's LoRA runs before any full-weight run
        for method in methods:
            if families[method] != MOX_FAMILY and weights in ctx.scale.weights_of(method, families[method]):
                run_method(ctx, method, weights)
    return setting_summary(ctx)


def merged_settings(earlier: dict, results: dict) -> dict:
    """selection.json's settings after this invocation: its results, plus what an earlier invocation chose for
    settings (--settings) and methods (--methods) this one did not run, so a benchmark can grow in chunks."""
    merged = {name: value for name, value in earlier.items() if name not in results}
    for name, new in results.items():
        kept = {k: v for k, v in earlier.get(name, {}).get("choices", {}).items() if k not in new["choices"]}
        merged[name] = {**new, "choices": {**kept, **new["choices"]}}
    return merged


def check_tofu(scale: Scale, tofu: str) -> None:
    """A TOFU source is a folder (relative paths from the working directory, the repository root) or a Hub id."""
    uses_tofu = any(s.data.get("dataset") == "tofu" for s in scale.settings)
    if uses_tofu and not Path(tofu).is_dir() and len(Path(tofu).parts) != 2:
        raise SystemExit(f"--tofu: folder {tofu} not found (give the TOFU folder, or a Hub id such as locuslab/TOFU)")


def run_benchmark(
    scale_name,
    seed,
    methods=None,
    out=DEFAULT_OUT,
    cache=None,
    settings=None,
    tofu=DEFAULT_TOFU,
    recorded_only=False,
):
    """One scale and seed (optionally some methods / settings); returns the folder of its result JSON.
    recorded_only: train and evaluate no unlearning run; record the choices whose runs are all on disk."""
    scale = with_tofu(SCALES[scale_name], tofu)
    known = [s.name for s in scale.settings]
    if settings and (unknown := [s for s in settings if s not in known]):
        raise SystemExit(f"--settings: unknown {unknown}; scale {scale.name} has {', '.join(known)}")
    chosen_methods = registered_methods(methods, scale)
    check_tofu(scale, tofu)
    if missing := missing_recipes(chosen_methods, REPO / scale.recipes):
        raise SystemExit(f"no recipe for {missing} at scale {scale.name}: add {scale.recipes}/<method>_lora.yaml")
    out, cache = Path(out), Path(cache) if cache else default_cache()
    chosen = [s for s in scale.settings if not settings or s.name in settings]
    fixed = {s.name: fixed_choices(scale, seed, s, chosen_methods, out) for s in chosen}
    start, seed_dir = time.perf_counter(), out / scale.name / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    log(f"scale {scale.name}, seed {seed}, methods {chosen_methods} -> {seed_dir}")
    selection_file = seed_dir / "selection.json"
    earlier = read_json(selection_file)  # read once: each write below replaces this invocation's own entry
    results: dict = {}

    def write_selection(complete: bool) -> None:
        """selection.json as of now: rewritten after every choice, so an interrupted chunk keeps what it chose."""
        from llm_unlearn.utils import atomic_write_json

        every_method = [*[m for m in earlier.get("methods", []) if m not in chosen_methods], *chosen_methods]
        record = {"rule": selection.SELECTION_RULE, "utility_fraction": selection.UTILITY_FRACTION}
        record |= {"scale": scale_manifest(scale), "seed": seed, "methods": every_method}
        record |= {"settings": merged_settings(earlier.get("settings", {}), results)}
        seconds, environment = round(time.perf_counter() - start, 1), runtime_info()
        # Every invocation (chunk) of this seed so far: what it ran, how long it took, whether it finished.
        chunk = {"settings": [s.name for s in chosen], "methods": chosen_methods, "wall_time_s": seconds}
        chunk |= {"complete": complete, "recorded_only": recorded_only}
        chunk |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": environment.get("git_commit")}
        record |= {"invocations": [*earlier.get("invocations", []), chunk]}
        record |= {"wall_time_s_this_invocation": seconds, "environment": environment}
        atomic_write_json(selection_file, record)

    for setting in chosen:
        ctx = Context(
            scale=scale,
            seed=seed,
            setting=setting,
            out_dir=seed_dir,
            cache=cache,
            work_dir=cache / "work" / scale.name / f"seed{seed}" / setting.name,
            base_model=resolve_base_model(scale, cache),
            fixed=fixed[setting.name],
            recorded_only=recorded_only,
        )

        def checkpoint(ctx=ctx) -> None:
            results[ctx.setting.name] = setting_summary(ctx)
            write_selection(complete=False)

        ctx.checkpoint = checkpoint
        results[setting.name] = run_setting(ctx, chosen_methods)
    write_selection(complete=True)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min -> {seed_dir}")
    return seed_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", help="subset of the registered methods (default: all of them)")
    parser.add_argument("--settings", nargs="+", help="only these settings of the scale (e.g. forget05)")
    parser.add_argument("--tofu", default=DEFAULT_TOFU, help=f"TOFU folder or Hub id (default: {DEFAULT_TOFU})")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results root (default: benchmarks/results)")
    parser.add_argument("--cache", help="models and work folders (default: $LLM_UNLEARN_CACHE/bench)")
    parser.add_argument(
        "--recorded-only",
        action="store_true",
        help="run no unlearning: rewrite selection.json from the results on disk (after an interrupted chunk); "
        "a choice that needs a missing run is left out",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if SCALES[args.scale].use_cpu is False:
        import torch

        if not torch.cuda.is_available():
            log("warning: the gpu scale is sized for a CUDA GPU; on CPU it will take days")
    run_benchmark(
        args.scale, args.seed, args.methods, args.out, args.cache, args.settings, args.tofu, args.recorded_only
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
