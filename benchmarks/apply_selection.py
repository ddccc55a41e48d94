"""Write what a benchmark selected into the shipped SmolLM2 recipes, so a recipe runs the settings its table row
came from.

    python benchmarks/apply_selection.py --scale protocol --setting forget01 [--seed 0] [--check]

For every choice of `<results>/<scale>/seed<N>/selection.json` on `setting` that has a recipe in the scale's recipe
folder (`<method>_lora.yaml` for a LoRA choice, `mox_full.yaml` and `mox_momentum_lora.yaml` for those MOX
rows), the recipe gets the chosen learning rate, α* (MOX), the scale's budget (epochs, batch, warm-up) and the
benchmark's per-method pins, and one header line naming the result JSON. `--check` writes nothing and exits 1 when
a recipe disagrees (tests/test_benchmarks.py runs it on the committed results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from recipe_runs import REPO, read_json
from scales import METHOD_SETTINGS, MOX_FAMILY, SCALES, Scale

HEADER = "# Selected by the benchmark:"
BUDGET_FIELDS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "warmup_steps")
# (weights, variant) -> recipe stem, for the MOX rows whose recipe is not <variant>_<weights>
MOX_RECIPES = {("lora", "mox"): "mox_lora", ("lora", "mox_momentum"): "mox_momentum_lora", ("full", "mox"): "mox_full"}


def recipe_for(scale: Scale, weights: str, variant: str, family: str) -> Path | None:
    """The shipped recipe of a choice, or None (full-weight baselines run the LoRA recipe with lora=null)."""
    if family == MOX_FAMILY:
        stem = MOX_RECIPES.get((weights, variant))
    else:
        stem = f"{variant}_lora" if weights == "lora" else None
    path = REPO / scale.recipes / f"{stem}.yaml" if stem else None
    return path if path is not None and path.is_file() else None


def selected_training(scale: Scale, run: dict) -> dict:
    """The training fields a recipe takes from the selected run: its budget, rate, α and the benchmark's pins."""
    training = run["config"]["training"]
    fields = {key: training[key] for key in BUDGET_FIELDS if key in training}
    fields["learning_rate"] = run["learning_rate"]
    method = run["method"]
    pins = {**METHOD_SETTINGS.get(method, {}), **scale.method_settings.get(method, {})}
    if run.get("alpha") is not None:  # a MOX row
        fields["alpha"] = run["alpha"]
        fields["momentum"] = run["variant"] != method
        if not fields["momentum"]:
            pins.pop("momentum_refresh", None)  # inert without momentum
            if run["weights"] == "lora":  # the sweep recipe exports the rest of the sweep too
                fields["alphas"] = [a for a in sorted(scale.alphas) if a != run["alpha"]]
    return fields | {key: training[key] for key in pins if key in training}


def header_line(scale: Scale, result: Path, run: dict) -> str:
    data = {k: v for k, v in run["config"]["data"].items() if k in ("retain_authors",)}
    measured = ", ".join([f"data.{k}={v}" for k, v in data.items()] + [f"seed {run['seed']}"])
    shown = result.relative_to(REPO) if result.is_relative_to(REPO) else result
    return f"{HEADER} {shown.as_posix()} ({scale.name} scale, {measured})"


def updated_text(path: Path, header: str, training: dict) -> str:
    """The recipe with `training` merged into its training section and `header` as its second header line."""
    text = path.read_text()
    comments = [line for line in text.splitlines() if line.startswith("#") and not line.startswith(HEADER)]
    raw = yaml.safe_load(text)
    raw["training"] = {**raw.get("training", {}), **training}
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    return "\n".join([comments[0], header, *comments[1:]]) + "\n" + body


def planned(scale: Scale, seed: int, setting: str, results: Path) -> dict[Path, str]:
    """recipe -> its text with the selection applied, for every choice of `setting` that has a recipe."""
    seed_dir = results / scale.name / f"seed{seed}"
    selection = read_json(seed_dir / "selection.json")
    if not selection:
        raise SystemExit(f"{seed_dir / 'selection.json'} not found: run the benchmark for that scale and seed first")
    choices = selection.get("settings", {}).get(setting, {}).get("choices", {})
    if not choices:
        known = ", ".join(selection.get("settings", {})) or "none"
        raise SystemExit(f"--setting {setting}: no choices in {seed_dir / 'selection.json'} (settings: {known})")
    plans = {}
    for key, choice in choices.items():
        _, weights, variant = key.split("/")
        result = seed_dir / f"{choice['run']}.json"
        run = read_json(result)
        if not run or run.get("status") == "failed":
            continue
        path = recipe_for(scale, weights, variant, run["family"])
        if path is not None:
            plans[path] = updated_text(path, header_line(scale, result, run), selected_training(scale, run))
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--setting", required=True, help="the data setting whose choices the recipes take")
    parser.add_argument("--seed", type=int, default=0, help="the selecting seed (default 0)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 when a recipe disagrees with the selection")
    args = parser.parse_args(argv)
    plans = planned(SCALES[args.scale], args.seed, args.setting, Path(args.results))
    stale = [path for path, text in plans.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(REPO)} differs from the selection: run benchmarks/apply_selection.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    from llm_unlearn.utils import atomic_write_text

    for path in stale:
        atomic_write_text(path, plans[path])
        print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
