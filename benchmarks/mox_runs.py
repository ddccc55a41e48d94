"""One MOX grid point: a single memorization run (momentum on) gives the momentum θ̄_for over the α sweep, and
the extrapolate stage turns its saved θ_mem into the plain θ_for (no training): momentum never changes the
training trajectory, so both variants share it."""

from __future__ import annotations

import json
import shutil

from harness import Context, Trained, alpha_tag, export_dir, failure, log, lr_tag, record_run, train_run
from recipe_runs import extrapolate, overrides, yaml_value
from scales import MOX_FAMILY, MoxVariant

VARIANTS = ("", "_momentum")  # suffixes of the result names: plain, momentum
PLAIN_NOTE = (
    "plain θ_for extrapolated (extrapolate stage) from the θ_mem saved by the momentum-enabled memorization run; "
    "momentum does not change the training trajectory"
)
MOMENTUM_NOTE = "momentum θ̄_for exported by the memorization run"


def variant_names(method: str, change: MoxVariant | None = None) -> tuple[str, str]:
    """(plain, momentum) result names of `method`, suffixed +<name> for a variant of its memorization run."""
    tag = f"+{change.name}" if change else ""
    plain, momentum = (f"{method}{suffix}{tag}" for suffix in VARIANTS)
    return plain, momentum


def run_name(ctx: Context, weights: str, variant: str, lr: float, alpha: float) -> str:
    return f"{ctx.setting.name}-{weights}-{variant}-lr{lr_tag(lr)}-a{alpha_tag(alpha)}"


def mox_grid_point(
    ctx: Context,
    method: str,
    weights: str,
    lr: float,
    plain_alphas: list[float],
    momentum_alpha: float | None,
    change: MoxVariant | None = None,
) -> dict:
    """Results {(variant, α): result} for the plain θ_for at `plain_alphas` and the momentum θ̄_for at
    `momentum_alpha`, of the memorization run changed by `change` if given. Results already on disk are read,
    and nothing is trained when all exist."""
    plain, momentum = variant_names(method, change)
    wanted = [(plain, a) for a in plain_alphas] + ([(momentum, momentum_alpha)] if momentum_alpha else [])
    paths = {(variant, a): ctx.result_path(run_name(ctx, weights, variant, lr, a)) for variant, a in wanted}
    results = {key: json.loads(path.read_text()) for key, path in paths.items() if path.is_file()}
    missing = [key for key in wanted if key not in results]
    if not missing:
        return results
    first_variant, first_alpha = missing[0]
    ctx.check_recorded(run_name(ctx, weights, first_variant, lr, first_alpha))
    tag = f"+{change.name}" if change else ""
    work = ctx.work_dir / f"{ctx.setting.name}-{weights}-{method}{tag}-lr{lr_tag(lr)}"
    # The run exports the momentum model for the whole α sweep, so a later call for α* reuses it as it is.
    sweep = list(change.alphas if change and change.alphas else ctx.scale.alphas)
    extra = change.training if change else {}
    memorize = ctx.method_run(method, weights, lr, work, **extra, momentum=True, alpha=sweep[0], alphas=sweep[1:])
    labels = {"method": method, "family": MOX_FAMILY, "weights": weights, "learning_rate": lr}
    if change:
        labels["mox_variant"] = {"name": change.name, "description": change.description, "training": extra}
    try:
        log(f"training MOX memorization {work.name}")
        trained = train_run(memorize, [export_dir(work, a, sweep[0]) for v, a in missing if v == momentum])
        plain_dir = work.parent / f"{work.name}-plain"
        if any(v == plain for v, _ in missing):
            plain_run = memorize.plus(
                *overrides("training", {"output_dir": str(plain_dir), "momentum": False, "alpha": plain_alphas[0]}),
                *overrides("training", {"alphas": plain_alphas[1:]}),
                f"extrapolate.memorization={yaml_value(str(work / 'memorization'))}",
            )
            extrapolate(plain_run, [export_dir(plain_dir, a, plain_alphas[0]) for a in plain_alphas])
        for variant, alpha in missing:
            name = run_name(ctx, weights, variant, lr, alpha)
            is_plain = variant == plain
            model_dir = export_dir(plain_dir, alpha, plain_alphas[0]) if is_plain else export_dir(work, alpha, sweep[0])
            # What this result is: the memorization run's config with this variant's momentum and α.
            recorded = trained.run.plus(
                *overrides("training", {"momentum": not is_plain, "alpha": alpha, "alphas": []})
            )
            variant_labels = {**labels, "variant": variant, "alpha": alpha}
            try:
                variant_run = Trained(recorded, trained.work, trained.seconds, trained.peak)
                note = PLAIN_NOTE if is_plain else MOMENTUM_NOTE
                results[(variant, alpha)] = record_run(ctx, name, variant_labels, variant_run, model_dir, note)
            except Exception as error:  # one broken export must not stop the benchmark
                results[(variant, alpha)] = failure(ctx, name, variant_labels, error)
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)  # full-weight exports are large
    except Exception as error:
        for variant, alpha in missing:
            if (variant, alpha) not in results:
                results[(variant, alpha)] = failure(ctx, run_name(ctx, weights, variant, lr, alpha), labels, error)
    return results


def sweep_names(ctx: Context, method: str, weights: str, lr: float, alphas, change=None) -> list[str]:
    return [run_name(ctx, weights, variant_names(method, change)[0], lr, a) for a in alphas]
