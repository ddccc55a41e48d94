"""Every YAML recipe loads and validates; the synthetic ones run a few steps end to end on a tiny model."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from llm_unlearn.config import ConfigError
from llm_unlearn.stages import (
    RunOptions,
    load_spec,
    run_evaluate,
    run_extrapolate,
    run_finetune,
    run_unlearn,
    training_args,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE = sorted((REPO / "recipes" / "accelerate_configs").glob("*.yaml"))


def stage_of(path: Path) -> str:
    raw = yaml.safe_load(path.read_text())
    if "finetune" in raw:
        return "finetune"
    if "method" in raw:
        return "unlearn"
    return "evaluate"


def test_recipes_exist():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert "synthetic/mox_lora.yaml" in names
    assert any(n.startswith("tofu/smollm2/") for n in names)
    assert any(n.startswith("tofu/llama2_7b/") for n in names) and any(n.startswith("tofu/phi15/") for n in names)
    assert any(n.startswith("muse/") for n in names)
    assert {p.stem for p in ACCELERATE} >= {"cpu_2proc", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}


LARGER_MODEL_RECIPES = sorted(
    [*(REPO / "recipes" / "tofu").glob("llama2_7b/*.yaml"), *(REPO / "recipes" / "tofu").glob("phi15/*.yaml")]
    + list((REPO / "recipes" / "muse").glob("news_*.yaml"))
)


@pytest.mark.parametrize("path", LARGER_MODEL_RECIPES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_larger_model_recipes_say_what_is_published_and_what_is_a_guess(path):
    """Recipes for models this project cannot run here say, in one header line, which settings come from a paper
    and that the rest (and the whole recipe on that model) is untested."""
    provenance = [line for line in path.read_text().splitlines() if line.startswith("# Provenance:")]
    assert len(provenance) == 1, f"{path}: add one '# Provenance:' header line"
    assert "untested" in provenance[0] and ("paper" in provenance[0] or "guess" in provenance[0])


def launch_line(path: Path) -> list[str]:
    """The `accelerate launch ...` command shown in the recipe's header comment, split into words."""
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = [line for line in header if "accelerate launch" in line]
    assert launch, f"{path} should show its accelerate launch line"
    return launch[0].lstrip("# ").split()


def recipe_variants():
    """(recipe, overrides): TOFU recipes once per forget split, every other recipe once."""
    for path in RECIPES:
        if "tofu" in path.parts and "{forget_split}" in path.read_text():
            for split in TOFU_SPLITS:
                yield pytest.param(path, [f"data.forget_split={split}"], id=f"{recipe_id(path)}:{split}")
        else:
            yield pytest.param(path, [], id=recipe_id(path))


def recipe_id(path: Path) -> str:
    return path.relative_to(REPO / "recipes").as_posix()


TOFU_SPLITS = ("forget01", "forget05", "forget10")


@pytest.mark.parametrize(("path", "split_override"), list(recipe_variants()))
def test_recipe_validates(path, split_override):
    overrides = list(split_override)
    if "bf16: true" in path.read_text() and not torch.cuda.is_available():
        overrides += ["training.bf16=false", "training.use_cpu=true"]  # GPU recipes: validate every other field here
    spec = load_spec(str(path), overrides)
    stage = stage_of(path)
    if stage == "evaluate":
        assert spec.evaluation.model_path, "evaluation recipes name the model they evaluate"
    else:
        args = training_args(spec, stage)
        assert args.output_dir.startswith("runs/")
    assert "{forget_split}" not in json.dumps(spec.raw)
    # The command line in the recipe's header names a script and config that exist, this recipe, and overrides
    # that load.
    words = launch_line(path)
    scripts = [word for word in words if word.startswith("recipes/") and word.endswith(".py")]
    assert scripts and (REPO / scripts[0]).is_file()
    configs = [word for word in words if word.startswith("recipes/accelerate_configs/")]
    assert all((REPO / c).is_file() for c in configs)
    assert recipe_id(path) in {word.removeprefix("recipes/") for word in words}
    launch_overrides = words[words.index(f"recipes/{recipe_id(path)}") + 1 :]
    load_spec(str(path), [*launch_overrides, *overrides[len(split_override) :]])


TOFU_MODELS = sorted(p for p in (REPO / "recipes" / "tofu").iterdir() if p.is_dir())


@pytest.mark.parametrize("split", TOFU_SPLITS)
@pytest.mark.parametrize("model_dir", TOFU_MODELS, ids=lambda p: p.name)
def test_one_split_override_pairs_every_tofu_recipe_with_its_retain_run(model_dir, split):
    """With only data.forget_split set, each unlearning run reads the reference log that evaluate_retain writes
    for the retain model that finetune_retain trains for that split, and no two splits share a run folder."""
    retain_of = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}  # TOFU's own pairing
    override = [f"data.forget_split={split}"]
    retain_run = load_spec(str(model_dir / "finetune_retain.yaml"), override).raw["training"]["output_dir"]
    evaluate = load_spec(str(model_dir / "evaluate_retain.yaml"), override)
    assert split in retain_run
    assert evaluate.evaluation.model_path == evaluate.model.name_or_path == f"{retain_run}/model"
    reference_log = f"{evaluate.evaluation.output_dir}/per_sample.json"
    from llm_unlearn.data.tofu import RETAIN_SPLIT_OF

    assert RETAIN_SPLIT_OF[split] == retain_of[split]
    methods = [p for p in model_dir.glob("*.yaml") if stage_of(p) == "unlearn"]
    assert methods
    for path in methods:
        spec = load_spec(str(path), override)
        assert spec.data.forget_split == split
        assert spec.evaluation.reference_log == reference_log, path.name
        assert spec.raw["training"]["output_dir"].endswith(f"_{split}"), path.name


def test_split_placeholder_fills_from_the_config_and_its_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        'data: {dataset: tofu, forget_split: forget05}\nmethod: ga\ntraining: {output_dir: "runs/ga_{forget_split}"}\n'
        'format: {system_prompt: "keep {braces} and {{ jinja }}"}\n'
    )
    assert load_spec(str(recipe)).raw["training"]["output_dir"] == "runs/ga_forget05"
    spec = load_spec(str(recipe), ["data.forget_split=forget10"])
    assert spec.raw["training"]["output_dir"] == "runs/ga_forget10"
    assert spec.fmt.system_prompt == "keep {braces} and {{ jinja }}"
    assert load_spec(str(recipe), ["training.output_dir=elsewhere/{forget_split}"]).raw["training"]["output_dir"] == (
        "elsewhere/forget05"
    )
    recipe.write_text('method: ga\ntraining: {output_dir: "runs/{forget_split}"}\n')  # no data section: the default
    assert load_spec(str(recipe)).raw["training"]["output_dir"] == "runs/forget01"
    with pytest.raises(ConfigError, match="forget_split"):
        load_spec(str(recipe), ["data.forget_split=forget07", "data.dataset=tofu"])


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 2 and config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_unknown_fields_are_refused(tmp_path):
    path = REPO / "recipes" / "synthetic" / "ga_lora.yaml"
    with pytest.raises(ConfigError, match="unknown field"):
        training_args(load_spec(str(path), ["training.learning_rat=1e-4"]), "unlearn")
    with pytest.raises(ConfigError, match="unknown section"):
        load_spec(str(path), ["trainig.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match="unknown method 'gradient_ascent'"):
        load_spec(str(path), ["method=gradient_ascent"])


SMALL_DATA = ["data.n_authors=5", "data.qa_per_author=2", "data.forget_authors=1", "data.holdout_authors=1"]
FAST = [
    "training.max_steps=2",
    "training.per_device_train_batch_size=2",
    "training.disable_tqdm=true",
    "training.logging_steps=1",
]
SMALL_EVAL = ["evaluation.options.batch_size=8", "evaluation.options.max_new_tokens=4"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from llm_unlearn.models import tiny_llama

    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def target_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("target")
    spec = load_spec(
        str(REPO / "recipes/synthetic/finetune_target.yaml"),
        [f"model.name_or_path={tiny_dir}", f"training.output_dir={out}", *SMALL_DATA, *FAST],
    )
    return str(run_finetune(spec, RunOptions(overwrite=True)))


SYNTHETIC_UNLEARN = sorted(p for p in (REPO / "recipes" / "synthetic").glob("*.yaml") if stage_of(p) == "unlearn")


@pytest.mark.parametrize("path", SYNTHETIC_UNLEARN, ids=lambda p: p.stem)
def test_synthetic_recipe_runs(path, target_dir, tmp_path):
    overrides = [f"model.name_or_path={target_dir}", f"training.output_dir={tmp_path / 'run'}", *SMALL_DATA, *FAST]
    spec = load_spec(str(path), overrides)
    if spec.model.lora is None:  # full weights: keep the tiny run tiny
        overrides.append("training.per_device_train_batch_size=1")
    runner = run_extrapolate if spec.method == "mox" else run_unlearn
    out = runner(load_spec(str(path), overrides), RunOptions())
    assert out.is_dir() and any(out.iterdir())
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["method"] == spec.method and info["seed"] == spec.raw["training"].get("seed", 42)
    assert json.loads((out / "run_info.json").read_text())["export"]["kind"] in {"adapter", "model"}


def test_synthetic_finetune_evaluate_and_report(target_dir, tiny_dir, tmp_path):
    # retain model, its evaluation (the reference log), one unlearning run evaluated against it, and the report
    retain = run_finetune(
        load_spec(
            str(REPO / "recipes/synthetic/finetune_retain.yaml"),
            [f"model.name_or_path={tiny_dir}", f"training.output_dir={tmp_path / 'retain'}", *SMALL_DATA, *FAST],
        ),
        RunOptions(),
    )
    ref_eval = run_evaluate(
        load_spec(
            str(REPO / "recipes/synthetic/evaluate_retain.yaml"),
            [
                f"model.name_or_path={retain}",
                f"evaluation.model_path={retain}",
                f"evaluation.output_dir={tmp_path / 'retain_eval'}",
                *SMALL_DATA,
                *SMALL_EVAL,
            ],
        ),
        RunOptions(),
    )
    assert (ref_eval / "per_sample.json").is_file()
    overrides = [
        f"model.name_or_path={target_dir}",
        f"training.output_dir={tmp_path / 'ga'}",
        f"evaluation.reference_log={ref_eval / 'per_sample.json'}",
        *SMALL_DATA,
        *FAST,
        *SMALL_EVAL,
    ]
    run_unlearn(load_spec(str(REPO / "recipes/synthetic/ga_lora.yaml"), overrides), RunOptions())
    eval_dir = run_evaluate(load_spec(str(REPO / "recipes/synthetic/ga_lora.yaml"), overrides), RunOptions())
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["metrics"]["forget_quality"] is not None
    from llm_unlearn.evaluation.report import make_report

    report = make_report([eval_dir, ref_eval], tmp_path / "report")
    assert "forget_quality" in Path(report).read_text()


def test_synthetic_news_unlearn_and_muse_eval(tiny_dir, tmp_path):
    overrides = [
        f"model.name_or_path={tiny_dir}",
        f"training.output_dir={tmp_path / 'run'}",
        "data.news_articles=2",
        *FAST,
        "evaluation.options.batch_size=4",
        "evaluation.options.knowmem_max_new_tokens=4",
        "evaluation.options.verbmem_max_new_tokens=4",
    ]
    path = REPO / "recipes" / "muse" / "synthetic_news" / "mox_lora.yaml"
    run_extrapolate(load_spec(str(path), overrides), RunOptions())
    eval_dir = run_evaluate(load_spec(str(path), overrides + ["evaluation.reference_log=null"]), RunOptions())
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["suite"] == "muse"


def test_readme_commands_name_real_files_and_valid_commands():
    """The README's first lines are the two set-up commands; every recipe, config and CLI call it shows exists."""
    import re
    import shlex

    from llm_unlearn.cli import build_parser

    readme = (REPO / "README.md").read_text()
    assert readme.splitlines()[1].startswith("make demo") and readme.splitlines()[2].startswith("make test")
    assert "make test" in (REPO / ".ci" / "run").read_text()
    for path in set(re.findall(r"recipes/[\w/.-]+\.(?:py|yaml)", readme)):
        assert (REPO / path).is_file(), path
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    cli_calls = [shlex.split(c)[1:] for c in commands if c.startswith("llm-unlearn ")]
    assert len(cli_calls) >= 7
    for argv in cli_calls:
        build_parser().parse_args(argv)  # exits (SystemExit) on an invalid command line


def test_unlearn_with_evaluation_every_step(target_dir, tmp_path):
    overrides = [
        f"model.name_or_path={target_dir}",
        f"training.output_dir={tmp_path / 'run'}",
        "evaluation.reference_log=null",
        "evaluation.every_n_steps=1",
        "evaluation.during_training_sets=[forget, retain]",
        *SMALL_DATA,
        *FAST,
        *SMALL_EVAL,
    ]
    run_unlearn(load_spec(str(REPO / "recipes/synthetic/grad_diff_lora.yaml"), overrides), RunOptions())
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "eval_steps" / "eval_steps.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == [1, 2]
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert any(key.startswith("unlearn_eval/forget") for row in log for key in row)
