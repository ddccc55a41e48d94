"""Config values are converted to their declared types and validated before anything loads or is created.

Every shipped recipe is mutated (wrong types, negative or zero sizes and rates, missing or misspelt sections,
paths that do not exist), and each mutant, run through the CLI's main in-process, must print one error line
naming the field, exit with status 1 and leave no run folder. A few real subprocesses check the same from a
shell, and the README's override example (`training.learning_rate=2e-4`, a string to YAML 1.1) trains.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import pytest
import yaml

from llm_unlearn import cli, stages
from llm_unlearn.coerce import TypeMismatch, coerce
from llm_unlearn.config import ConfigError, convert_value
from llm_unlearn.stages.spec import check_sources

REPO = Path(__file__).resolve().parents[1]
# One recipe per method and model (TOFU recipes take their split as an override): every recipe is mutated.
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)


def recipe_id(path: Path) -> str:
    return path.relative_to(REPO / "recipes").as_posix()


def stage_of(raw: dict) -> str:
    if "finetune" in raw:
        return "finetune"
    return "unlearn" if "method" in raw else "evaluate"


def command_of(raw: dict) -> str:
    """The CLI command a recipe is run with (MOX recipes through `extrapolate`, which memorizes first)."""
    return "extrapolate" if raw.get("method") == "mox" else stage_of(raw)


# --- the conversion itself -----------------------------------------------------------------------------------


class Color(Enum):
    RED = "red"
    NO = "no"


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("1e-5", float, 1e-5),  # YAML 1.1 reads 1e-5 (no dot) as a string
        ("2e-4", float | None, 2e-4),
        (3, float, 3),  # an int stays an int (warmup_steps >= 1 is a step count)
        ("7", int, 7),
        (4.0, int, 4),
        ("1e3", int, 1000),
        ("true", bool, True),
        ("No", bool, False),
        (None, int | None, None),
        ("red", Color | str, "red"),
        (False, Color | str, "no"),  # an unquoted `save_strategy: no`
        ([1, "2.5"], list[float], [1, 2.5]),
        (["a", "b"], tuple[str, ...], ("a", "b")),
        ("all-linear", str | list[str], "all-linear"),
        (["q_proj"], str | list[str], ["q_proj"]),
        (False, str | None | typing.Literal[False], False),
        ({"x": "1"}, dict[str, int], {"x": 1}),
    ],
)
def test_values_are_converted_to_the_declared_type(value, tp, expected):
    result = coerce(value, tp)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        ("fast", float),
        (2.5, int),
        ("2.5", int),
        (True, int),  # a bool is an int to Python, never a size to a user
        (True, float),
        ("nan", float),
        ("maybe", bool),
        (2, bool),
        (None, int),
        ("blue", Color | str),
        (5, str),
        (False, str | None),
        (2.0, list[float]),
        ([1, "x"], list[float]),
        ("a", dict),
        (True, typing.Literal[False]),
    ],
)
def test_values_that_do_not_fit_are_refused(value, tp):
    with pytest.raises(TypeMismatch):
        coerce(value, tp)


def test_convert_value_names_the_field_and_the_type():
    with pytest.raises(ConfigError, match=r"^training\.learning_rate must be a number, not 'fast'$"):
        convert_value("fast", float, "training.learning_rate")
    with pytest.raises(ConfigError, match=r"must be a string or null, not false \(quote it"):
        convert_value(False, str | None, "format.system_prompt")


def test_readme_override_example_parses_as_a_float():
    """README: `training.learning_rate=2e-4` (and a recipe's `learning_rate: 1e-5`) are floats, not strings."""
    spec = stages.load_spec(str(REPO / "recipes/synthetic/ga_lora.yaml"), ["training.learning_rate=2e-4"])
    args = stages.training_args(spec, "unlearn")
    assert args.learning_rate == 2e-4 and isinstance(args.learning_rate, float)
    assert yaml.safe_load("learning_rate: 1e-5")["learning_rate"] == "1e-5"  # why the conversion is needed
    spec = stages.load_spec(str(REPO / "recipes/synthetic/finetune_target.yaml"), ["training.learning_rate=1e-5"])
    assert stages.training_args(spec, "finetune").learning_rate == 1e-5


def test_readme_override_example_trains(tmp_path, monkeypatch):
    """The README's command as written, on the tiny model and tiny data, runs one step with lr 2e-4."""
    from llm_unlearn.models import load_tokenizer, tiny_llama

    model_dir = tmp_path / "target"
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tiny_llama(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = ["unlearn", "recipes/synthetic/ga_lora.yaml", "training.learning_rate=2e-4"]
    argv += [f"model.name_or_path={model_dir}", f"training.output_dir={tmp_path / 'run'}", "training.max_steps=1"]
    argv += ["data.n_authors=4", "data.qa_per_author=2", "data.forget_authors=1", "data.holdout_authors=1"]
    argv += ["training.per_device_train_batch_size=2", "training.disable_tqdm=true"]
    monkeypatch.chdir(REPO)  # the README runs from the repository root
    assert cli.main(argv) == 0
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["hyperparameters"]["learning_rate"] == 2e-4 and info["hyperparameters"]["max_steps"] == 1


# --- mutants of every shipped recipe -------------------------------------------------------------------------


def set_path(raw: dict, dotted: str, value) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value
    return raw


def delete_path(raw: dict, dotted: str) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.get(key) or {}
    node.pop(last, None)
    return raw


def without(raw: dict, section: str) -> dict:
    raw.pop(section, None)
    return raw


def rename_section(raw: dict, old: str, new: str) -> dict:
    raw[new] = raw.pop(old, {})
    return raw


TRAINS = ("finetune", "unlearn")
EVERY = ("finetune", "unlearn", "evaluate")

# (name, stages it applies to, mutation of the config dict, excerpt the one-line error must contain)
MUTATIONS: list[tuple[str, tuple[str, ...], Callable[[dict], dict], str]] = [
    ("lr-word", TRAINS, lambda r: set_path(r, "training.learning_rate", "fast"), "training.learning_rate must be a number, not 'fast'"),
    ("lr-negative", TRAINS, lambda r: set_path(r, "training.learning_rate", -1), "training.learning_rate must be > 0 (got -1)"),
    ("lr-zero", TRAINS, lambda r: set_path(r, "training.learning_rate", 0), "training.learning_rate must be > 0"),
    ("lr-list", TRAINS, lambda r: set_path(r, "training.learning_rate", [1e-4]), "training.learning_rate must be a number"),
    ("batch-zero", TRAINS, lambda r: set_path(r, "training.per_device_train_batch_size", 0), "per_device_train_batch_size must be at least 1"),
    ("batch-fraction", TRAINS, lambda r: set_path(r, "training.per_device_train_batch_size", 2.5), "per_device_train_batch_size must be a whole number, not 2.5"),
    ("batch-word", TRAINS, lambda r: set_path(r, "training.per_device_train_batch_size", "four"), "must be a whole number, not 'four'"),
    ("batch-bool", TRAINS, lambda r: set_path(r, "training.per_device_train_batch_size", True), "must be a whole number, not true"),
    ("accumulation-zero", TRAINS, lambda r: set_path(r, "training.gradient_accumulation_steps", 0), "gradient_accumulation_steps must be at least 1"),
    ("epochs-negative", TRAINS, lambda r: set_path(delete_path(r, "training.max_steps"), "training.num_train_epochs", -1), "training.num_train_epochs must be > 0"),
    ("max-steps-zero", TRAINS, lambda r: set_path(r, "training.max_steps", 0), "training.max_steps must be -1 (train for num_train_epochs)"),
    ("max-steps-negative", TRAINS, lambda r: set_path(r, "training.max_steps", -5), "training.max_steps must be -1"),
    ("warmup-negative", TRAINS, lambda r: set_path(r, "training.warmup_steps", -0.1), "training.warmup_steps must be a ratio of all steps in [0, 1)"),
    ("weight-decay-negative", TRAINS, lambda r: set_path(r, "training.weight_decay", -0.01), "training.weight_decay must be >= 0"),
    ("beta-one", TRAINS, lambda r: set_path(r, "training.adam_beta2", 1.0), "training.adam_beta2 must be in [0, 1)"),
    ("use-cpu-word", TRAINS, lambda r: set_path(r, "training.use_cpu", "maybe"), "training.use_cpu must be true or false, not 'maybe'"),
    ("scheduler-typo", TRAINS, lambda r: set_path(r, "training.lr_scheduler_type", "cosinee"), "training.lr_scheduler_type must be one of linear, cosine"),
    ("seed-negative", TRAINS, lambda r: set_path(r, "training.seed", -1), "training.seed must be >= 0"),
    ("seed-word", EVERY, lambda r: set_path(r, "training.seed", "zero"), "training.seed must be a whole number, not 'zero'"),
    ("field-typo", TRAINS, lambda r: set_path(r, "training.learning_rat", 1e-4), "training: unknown field(s) ['learning_rat']"),
    ("training-typo", EVERY, lambda r: rename_section(r, "training", "trainig"), "unknown section(s) ['trainig']"),
    ("training-missing", TRAINS, lambda r: without(r, "training"), "training.output_dir is required"),
    ("output-dir-missing", TRAINS, lambda r: delete_path(r, "training.output_dir"), "training.output_dir is required"),
    ("training-not-mapping", EVERY, lambda r: {**r, "training": 5}, "section 'training' must be a mapping"),
    ("method-typo", ("unlearn",), lambda r: {**r, "method": "gradient_ascnt"}, "unknown method 'gradient_ascnt'"),
    ("method-not-name", ("unlearn",), lambda r: {**r, "method": ["ga"]}, "method must be a method name"),
    ("model-missing-folder", EVERY, lambda r: set_path(r, "model.name_or_path", "./no_such_model"), "model folder ./no_such_model does not exist"),
    ("model-missing-nested", EVERY, lambda r: set_path(r, "model.name_or_path", "runs/none/model"), "model folder runs/none/model does not exist"),
    ("model-missing-home", EVERY, lambda r: set_path(r, "model.name_or_path", "~/no_such_model_h5"), "model folder ~/no_such_model_h5 does not exist"),
    ("model-hub-offline", EVERY, lambda r: set_path(r, "model.name_or_path", "nobody-h5/uncached"), "the Hub cannot be reached offline"),
    ("model-bad-name", EVERY, lambda r: set_path(r, "model.name_or_path", "my model!"), "neither an existing folder nor a valid Hub id"),
    ("model-number", EVERY, lambda r: set_path(r, "model.name_or_path", 7), "model.name_or_path must be a string, not 7"),
    ("model-not-mapping", EVERY, lambda r: {**r, "model": "smollm2"}, "section 'model' must be a mapping"),
    ("model-typo", EVERY, lambda r: rename_section(r, "model", "modle"), "unknown section(s) ['modle']"),
    ("adapter-missing", TRAINS, lambda r: set_path(r, "model.adapter", "./no_such_adapter"), "model.adapter: folder ./no_such_adapter does not exist"),
    ("lora-rank-zero", EVERY, lambda r: set_path(r, "model.lora", {"r": 0}), "model.lora.r must be at least 1 (got 0)"),
    ("lora-rank-word", EVERY, lambda r: set_path(r, "model.lora", {"r": "eight"}), "model.lora.r must be a whole number, not 'eight'"),
    ("lora-dropout-one", EVERY, lambda r: set_path(r, "model.lora", {"lora_dropout": 1.0}), "model.lora.lora_dropout must be in [0, 1)"),
    ("lora-not-mapping", EVERY, lambda r: set_path(r, "model.lora", 8), "model.lora must be a mapping of LoraSettings fields or null, not 8"),
    ("dtype-typo", EVERY, lambda r: set_path(r, "model.dtype", "float8"), "model.dtype must be float32, bfloat16 or float16"),
    ("quantization-typo", EVERY, lambda r: set_path(r, "model.quantization", "3bit"), "model.quantization must be null, 4bit or 8bit"),
    ("data-seed-word", EVERY, lambda r: set_path(r, "data.seed", "zero"), "data.seed must be a whole number, not 'zero'"),
    ("data-dataset-number", EVERY, lambda r: set_path(r, "data.dataset", 5), "data.dataset must be a string, not 5"),
    ("data-field-typo", EVERY, lambda r: set_path(r, "data.forget_splt", "forget01"), "data: unknown field(s) ['forget_splt']"),
    ("data-typo", EVERY, lambda r: rename_section(r, "data", "dta"), "unknown section(s) ['dta']"),
    ("data-not-mapping", EVERY, lambda r: {**r, "data": "synthetic"}, "section 'data' must be a mapping"),
    ("format-length-word", EVERY, lambda r: set_path(r, "format.max_length", "long"), "format.max_length must be a whole number, not 'long'"),
    ("format-prompt-bool", EVERY, lambda r: set_path(r, "format.system_prompt", False), "format.system_prompt must be a string or null, not false (quote it"),
    ("eval-every-negative", EVERY, lambda r: set_path(r, "evaluation.every_n_steps", -1), "evaluation.every_n_steps must be 0 (never)"),
    ("eval-every-fraction", EVERY, lambda r: set_path(r, "evaluation.every_n_steps", 0.5), "evaluation.every_n_steps must be a whole number, not 0.5"),
    ("eval-batch-zero", EVERY, lambda r: set_path(r, "evaluation.options.batch_size", 0), "must be at least 1"),
    ("eval-batch-word", EVERY, lambda r: set_path(r, "evaluation.options.batch_size", "big"), "evaluation.options.batch_size must be a whole number, not 'big'"),
    ("eval-options-not-mapping", EVERY, lambda r: set_path(r, "evaluation.options", [16]), "evaluation.options must be a mapping"),
    ("eval-model-missing", ("evaluate",), lambda r: set_path(r, "evaluation.model_path", "./no_such_eval_model"), "evaluation.model_path ./no_such_eval_model is not a folder"),
    ("reference-log-missing", ("evaluate",), lambda r: set_path(r, "evaluation.reference_log", "./no_such_eval/per_sample.json"), "evaluation.reference_log ./no_such_eval/per_sample.json does not exist"),
    ("evaluation-typo", EVERY, lambda r: rename_section(r, "evaluation", "evalution"), "unknown section(s) ['evalution']"),
]  # fmt: skip


TOFU_SOURCE_MUTATION = (
    "tofu-source-missing",
    EVERY,
    lambda r: set_path(r, "data.source", "./no_such_tofu"),
    "no_such_tofu",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An existing model folder and reference log, so a mutant fails for its mutation and nothing else."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")  # nothing loads it: every check runs before loading
    (root / "ref").mkdir()
    (root / "ref" / "per_sample.json").write_text("{}")
    return {"model": root / "model", "reference_log": root / "ref" / "per_sample.json"}


def base_config(path: Path, inputs: dict[str, Path], out: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("model", {})["name_or_path"] = str(inputs["model"])
    evaluation = raw.setdefault("evaluation", {})
    evaluation["output_dir"] = str(out / "eval")
    if not harness_only(raw):  # the lm_eval suite compares with no reference log (and refuses one)
        evaluation["reference_log"] = str(inputs["reference_log"])
    if stage_of(raw) == "evaluate":
        evaluation["model_path"] = str(inputs["model"])
    if "training" in raw:
        raw["training"]["output_dir"] = str(out / "run")
        if raw["training"].get("bf16"):  # GPU recipes: validate every other field on this CPU machine
            raw["training"].update(bf16=False, use_cpu=True)
    return raw


def harness_only(raw: dict) -> bool:
    return (raw.get("evaluation") or {}).get("suite") == "lm_eval"


def check_passes(raw: dict) -> None:
    """The unmutated config passes every check a stage runs before it loads anything."""
    spec = stages.parse_config(raw)
    stage = stage_of(raw)
    if stage != "evaluate":
        stages.training_args(spec, stage)
    check_sources(spec, stage)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_every_mutant_of_a_recipe_stops_with_one_line(path, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = base_config(path, inputs, tmp_path)
    check_passes(copy.deepcopy(base))
    stage, command = stage_of(base), command_of(base)
    mutations = [*MUTATIONS, TOFU_SOURCE_MUTATION] if "tofu" in path.parts else MUTATIONS
    failures, tried = [], 0
    for name, mutant_stages, mutate, excerpt in mutations:
        if stage not in mutant_stages or (name == "reference-log-missing" and harness_only(base)):
            continue
        tried += 1
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(mutate(copy.deepcopy(base)), sort_keys=False))
        status, err = run_cli([command, str(config)], capsys)
        lines = err.strip().splitlines()
        problems = [
            f"exit status {status}" if status != 1 else "",
            f"{len(lines)} lines" if len(lines) != 1 else "",
            "a traceback" if "Traceback" in err else "",
            f"no {excerpt!r}" if excerpt not in err else "",
            "a run folder left" if (tmp_path / "run").exists() or (tmp_path / "eval").exists() else "",
        ]
        if any(problems):
            failures.append(f"{name}: {', '.join(p for p in problems if p)}; stderr: {err.strip()[:300]}")
    assert tried >= 15
    assert not failures, "\n".join(failures)


# --- real processes ------------------------------------------------------------------------------------------


def run_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "llm_unlearn.cli", *argv]
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_process_word_learning_rate_one_line_no_folder(tmp_path):
    """`learning_rate: fast` from a shell: one line on stderr, exit status 1, no output folder."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data: {dataset: synthetic}\nmethod: ga\n"
        f"training: {{output_dir: {tmp_path / 'out'}, max_steps: 1, learning_rate: fast}}\n"
    )
    proc = run_process(["unlearn", str(bad)], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "[llm-unlearn] error: training.learning_rate must be a number, not 'fast'"
    assert not (tmp_path / "out").exists()


def test_process_missing_model_folder_after_readme_override(tmp_path):
    """The README's override parses; the recipe's model folder (not trained here) is then named, not a Hub id."""
    argv = ["unlearn", str(REPO / "recipes/synthetic/ga_lora.yaml"), "training.learning_rate=2e-4"]
    argv += [f"training.output_dir={tmp_path / 'run'}"]
    proc = run_process(argv, tmp_path)  # in an empty folder: runs/synthetic/target/model does not exist
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "[llm-unlearn] error: model.name_or_path: model folder runs/synthetic/target/model does not exist: "
        "fix the path, or run the stage that writes it first"
    ]
    assert not (tmp_path / "run").exists()
