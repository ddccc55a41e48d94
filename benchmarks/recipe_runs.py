"""A benchmark run is a recipe plus `section.field=value` overrides, run through the same stages as the CLI.

`RecipeRun(recipe, overrides)` is exactly what `llm-unlearn <stage> recipe.yaml override...` would run. This
module turns the benchmark's values into overrides, runs the finetune / unlearn / extrapolate / evaluate stages,
and reads back what they record (wall time and peak memory per stage, in their run_info.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "tofu" / "smollm2"


def yaml_value(value) -> str:
    """`value` as YAML text that reads back as the same value (1e-05 as a float, "" as an empty string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def overrides(section: str, values: dict) -> list[str]:
    """One `section.field=value` override per entry of `values` (a mapping value replaces that field whole)."""
    return [f"{section}.{key}={yaml_value(value)}" for key, value in values.items()]


def method_recipe(method: str, weights: str, folder: Path = RECIPES) -> Path:
    """<folder>/<method>_<weights>.yaml, else the method's LoRA recipe (weights set by override)."""
    own = folder / f"{method}_{weights}.yaml"
    return own if own.is_file() else folder / f"{method}_lora.yaml"


def missing_recipes(methods: list[str], folder: Path = RECIPES) -> list[str]:
    return [m for m in methods if not method_recipe(m, "lora", folder).is_file()]


@dataclass
class RecipeRun:
    """A recipe and its overrides; `config()` is the raw config the stages see, without the run folder."""

    recipe: Path
    overrides: list[str] = field(default_factory=list)

    def plus(self, *more: str) -> RecipeRun:
        return RecipeRun(self.recipe, [*self.overrides, *more])

    def raw(self) -> dict:
        from llm_unlearn.config import load_yaml

        return load_yaml(self.recipe, self.overrides)

    def spec(self):
        from llm_unlearn.stages import load_spec

        return load_spec(str(self.recipe), self.overrides)

    def config(self) -> dict:
        """What a result records (and what a finished folder is compared with): the config minus output_dir."""
        raw = self.raw()
        raw["training"] = {k: v for k, v in (raw.get("training") or {}).items() if k != "output_dir"}
        return raw

    def describe(self) -> dict:
        return {"recipe": self.recipe.relative_to(REPO).as_posix(), "overrides": self.overrides}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def reusable(work: Path, config: dict, exports: list[Path]) -> dict | None:
    """The run_info of a finished run in `work` made from this same config whose `exports` all still exist."""
    info = read_json(work / "run_info.json")
    same = bool(info) and info.get("bench_config") == json.loads(json.dumps(config, default=str))
    return info if same and all(path.is_dir() for path in exports) else None


def stamp_run_info(work: Path, config: dict) -> None:
    """Add the config the benchmark ran (what `reusable` compares) to the stage's run_info.json."""
    from llm_unlearn.utils import atomic_write_json

    atomic_write_json(work / "run_info.json", {**read_json(work / "run_info.json"), "bench_config": config})


def train(run: RecipeRun, exports: list[Path] = ()) -> tuple[Path, float | None, float | None]:
    """The unlearn stage in a fresh folder unless the same config already finished there with `exports` still on
    disk (evaluated exports are deleted, and an α sweep may change between invocations). Returns (dir, s, MB)."""
    from llm_unlearn.stages import RunOptions, run_unlearn

    spec = run.spec()
    work, config = Path(spec.raw["training"]["output_dir"]), run.config()
    if reusable(work, config, list(exports)) is None:
        run_unlearn(spec, RunOptions(overwrite=True))
        stamp_run_info(work, config)
    info = read_json(work / "run_info.json")
    return work, info.get("wall_time_s"), info.get("peak_memory_mb")


def extrapolate(run: RecipeRun, exports: list[Path]) -> None:
    """The extrapolate stage (no training) unless the same config already exported `exports` in its folder."""
    from llm_unlearn.stages import RunOptions, run_extrapolate

    spec = run.spec()
    work, config = Path(spec.raw["training"]["output_dir"]), run.config()
    if reusable(work, config, exports) is None:
        run_extrapolate(spec, RunOptions(overwrite=True))
        stamp_run_info(work, config)


def evaluate(run: RecipeRun, model_path: str, out_dir: Path, reference_log: str | None):
    """The evaluate stage on a model or adapter folder (an adapter applies onto model.name_or_path), re-run from
    scratch in `out_dir`. Returns (summary, wall seconds, peak MB) as the stage recorded them."""
    from llm_unlearn.stages import RunOptions, run_evaluate

    evaluation = {"model_path": model_path, "output_dir": str(out_dir), "reference_log": reference_log}
    run_evaluate(run.plus(*overrides("evaluation", evaluation)).spec(), RunOptions(overwrite=True))
    info = read_json(out_dir / "run_info.json")
    return read_json(out_dir / "summary.json"), info.get("wall_time_s"), info.get("peak_memory_mb")
