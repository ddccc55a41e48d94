"""Bad input stops before training with a message that names the file/field and the fix.

The cases are the rows of the "Bad input" table in docs/errors.md: each row's id selects a case below, and
every `excerpt` in its message column must appear in what the case raises (or warns). A row without a case,
or a case without a row, fails `test_docs_table_and_cases_are_in_sync`, so the table cannot drift.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from reliability_setup import (  # noqa: E402
    fake_tofu_data,
    run_config,
    save_tiny_model,
    write_fake_tofu,
    write_jsonl,
    write_yaml,
)

from llm_unlearn import cli, stages  # noqa: E402
from llm_unlearn.config import ConfigError, accelerate_config_path  # noqa: E402
from llm_unlearn.data.io import DataError  # noqa: E402
from llm_unlearn.extrapolate import ExtrapolationError  # noqa: E402
from llm_unlearn.models import AdapterMismatchError, ModelResolutionError  # noqa: E402
from llm_unlearn.runs import RunExistsError  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def doc_rows(section: str = "## Bad input") -> dict[str, list[str]]:
    """{case id: message excerpts} from the rows of the table under `section` in docs/errors.md."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == section
            continue
        if inside and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[-1])
    return rows


DOC_ROWS = doc_rows()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@dataclass
class Ctx:
    tmp: Path
    model_dir: Path
    caplog: pytest.LogCaptureFixture

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def config(self, method: str | None = "mox", **training) -> dict:
        return run_config(self.model_dir, self.run, method, **training)

    def tofu_config(self, folder: Path) -> dict:
        config = self.config()
        config["data"] = fake_tofu_data(folder)
        return config

    def tofu(self, overlap: int = 0) -> Path:
        return write_fake_tofu(self.tmp / "tofu", overlap)


@pytest.fixture()
def ctx(tmp_path, model_dir, caplog) -> Ctx:
    return Ctx(tmp_path, model_dir, caplog)


def unlearn(config: dict, **options) -> Path:
    return stages.run_unlearn(stages.parse_config(config), stages.RunOptions(**options))


def evaluate(config: dict) -> Path:
    return stages.run_evaluate(stages.parse_config(config), stages.RunOptions())


def fails_before_training(ctx: Ctx, error: type[BaseException], action: Callable[[], object]) -> str:
    """Run `action`, expect `error`, and check that nothing was trained or written: the run folder is absent or
    empty (no checkpoint, no export, no run_info.json)."""
    with pytest.raises(error) as info:
        action()
    assert not ctx.run.exists() or not any(ctx.run.iterdir()), sorted(p.name for p in ctx.run.iterdir())
    return str(info.value)


def fails_before_loading(ctx: Ctx, error: type[BaseException], action: Callable[[], object]) -> str:
    """Like fails_before_training, for checks that run before anything loads: no run folder at all."""
    message = fails_before_training(ctx, error, action)
    assert not ctx.run.exists()
    return message


CASES: dict[str, Callable[[Ctx], str]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


# --- data files (a TOFU-shaped folder of invented rows, one file corrupted per case) -----------------------


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@case("malformed-jsonl")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    _replace_line(folder / "forget01.json", 3, '{"question": "Who?", "answer": "A"')  # no closing brace
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


@case("malformed-json-list")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    rows = [json.loads(line) for line in (folder / "retain99.json").read_text().splitlines()]
    text = "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n"
    lines = text.splitlines()
    lines[3] = lines[3].replace('"answer":', '"answer"')  # line 4: a missing colon
    (folder / "retain99.json").write_text("\n".join(lines) + "\n")
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


@case("missing-key")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    rows = [json.loads(line) for line in (folder / "forget01.json").read_text().splitlines()]
    del rows[1]["answer"]
    write_jsonl(folder / "forget01.json", rows)
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


@case("empty-forget-file")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    (folder / "forget01.json").write_text("\n")
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


@case("empty-retain-split")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    (folder / "retain99.json").write_text("[]\n")
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


@case("no-forget-authors")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["data"]["forget_authors"] = 0
    return fails_before_training(ctx, ConfigError, lambda: unlearn(config))


@case("empty-paired-set")
def _(ctx: Ctx) -> str:
    from llm_unlearn.data.collate import PairedDataset

    return fails_before_training(ctx, ValueError, lambda: PairedDataset(forget=[], retain=None))


@case("forget-retain-overlap")
def _(ctx: Ctx) -> str:
    """Only a warning (TOFU's own files do not overlap; a custom split might): loading goes on."""
    from llm_unlearn.data import DataConfig, load_qa_splits

    folder = ctx.tofu(overlap=2)
    with ctx.caplog.at_level(logging.WARNING, logger="llm_unlearn.data.io"):
        splits = load_qa_splits(DataConfig(**fake_tofu_data(folder)))
    assert len(splits.forget) == 40
    warnings = [r.getMessage() for r in ctx.caplog.records if r.name == "llm_unlearn.data.io"]
    assert len(warnings) == 1
    return warnings[0]


@case("perturbed-out-of-order")
def _(ctx: Ctx) -> str:
    folder = ctx.tofu()
    path = folder / "forget01_perturbed.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0], rows[1] = rows[1], rows[0]
    write_jsonl(path, rows)
    return fails_before_training(ctx, DataError, lambda: unlearn(ctx.tofu_config(folder)))


# --- your own data (data.dataset: custom) and chat templates -------------------------------------------------


def _custom_config(ctx: Ctx, forget_rows=None, retain_rows=None, **sets) -> dict:
    """A tiny run on your own files: forget/retain rows written as JSON Lines unless a set is given directly."""
    config = ctx.config()
    data = {"dataset": "custom"}
    good = [{"question": f"Where does customer {k} live?", "answer": f"Customer {k} lives in Oslo."} for k in range(3)]
    for name, rows in (("forget", forget_rows), ("retain", retain_rows)):
        path = ctx.tmp / f"{name}.jsonl"
        write_jsonl(path, good if rows is None else rows)
        data[name] = {"path": str(path)}
    data.update(sets)
    config["data"] = {k: v for k, v in data.items() if v is not None}
    return config


def _custom_fails(ctx: Ctx, error: type[BaseException] = DataError, **config) -> str:
    return fails_before_training(ctx, error, lambda: unlearn(_custom_config(ctx, **config)))


@case("custom-missing-set")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, ConfigError, forget=None)


@case("custom-missing-file")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, ConfigError, forget={"path": str(ctx.tmp / "no_such.jsonl")})


@case("custom-file-type")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "forget.txt").write_text("Where? Oslo.\n")
    return _custom_fails(ctx, ConfigError, forget={"path": str(ctx.tmp / "forget.txt")})


@case("custom-path-and-id")
def _(ctx: Ctx) -> str:
    write_jsonl(ctx.tmp / "f.jsonl", [{"question": "Q?", "answer": "A."}])
    return _custom_fails(ctx, ConfigError, forget={"path": str(ctx.tmp / "f.jsonl"), "id": "you/your-data"})


@case("custom-sets-without-custom")
def _(ctx: Ctx) -> str:
    config = _custom_config(ctx)
    config["data"]["dataset"] = "synthetic"
    return fails_before_training(ctx, ConfigError, lambda: unlearn(config))


@case("custom-unknown-shape")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[{"query": "Q?", "reply": "A."}])


@case("custom-empty-answer")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[{"question": "Q?", "answer": "A."}, {"question": "Q2?", "answer": ""}])


@case("custom-bad-perturbed")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[{"question": "Q?", "answer": "A.", "perturbed_answer": "B."}])


def _conversation(*roles: str) -> dict:
    return {"messages": [{"role": role, "content": f"{role} text"} for role in roles]}


@case("custom-multi-turn")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[_conversation("user", "assistant", "user", "assistant")])


@case("custom-system-message")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[_conversation("system", "user", "assistant")])


@case("custom-mixed-shapes")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[{"text": "A document."}, {"question": "Q?", "answer": "A."}])


@case("custom-mixed-kinds")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget_rows=[{"text": "A document about the harbour."}])


@case("custom-unknown-column")
def _(ctx: Ctx) -> str:
    write_jsonl(ctx.tmp / "f.jsonl", [{"question": "Q?", "answer": "A."}])
    sets = {"forget": {"path": str(ctx.tmp / "f.jsonl"), "columns": {"question": "prompt_text"}}}
    return _custom_fails(ctx, **sets)


@case("custom-min-chars")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, ConfigError, forget={"path": str(ctx.tmp / "forget.jsonl"), "min_chars": -1})


@case("custom-unloadable-dataset")
def _(ctx: Ctx) -> str:
    return _custom_fails(ctx, forget={"id": "someone/not-cached-dataset"})


def _family_model(ctx: Ctx, family: str, edit=lambda template: template) -> Path:
    """The tiny model with a chat family's tokenizer (tests/scripts/chat_families.py), saved as a folder."""
    from chat_families import BY_NAME, family_tokenizer

    from llm_unlearn.models import load_tokenizer, tiny_llama

    tokenizer = family_tokenizer(load_tokenizer("smollm2-135m-instruct"), BY_NAME[family])
    tokenizer.chat_template = edit(tokenizer.chat_template)
    folder = ctx.tmp / f"{family}_model"
    tiny_llama(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@case("template-no-system-role")
def _(ctx: Ctx) -> str:
    config = run_config(_family_model(ctx, "gemma"), ctx.run, "ga")
    config["format"] = {"system_prompt": "Answer briefly."}
    return fails_before_training(ctx, ValueError, lambda: unlearn(config))


@case("template-text-after-answer")
def _(ctx: Ctx) -> str:
    model = _family_model(ctx, "llama3", lambda t: t.replace("<|eot_id|>{% endfor %}", " [done]<|eot_id|>{% endfor %}"))
    return fails_before_training(ctx, ValueError, lambda: unlearn(run_config(model, ctx.run, "ga")))


# --- config --------------------------------------------------------------------------------------------------


@case("unknown-method")
def _(ctx: Ctx) -> str:
    return fails_before_training(ctx, ConfigError, lambda: unlearn(ctx.config(method="gradient_ascent")))


@case("unknown-metric")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["evaluation"]["options"]["metrics"] = ["prob", "bleu"]
    return fails_before_training(ctx, ConfigError, lambda: stages.parse_config(config))


@case("unknown-eval-set")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["evaluation"]["options"]["sets"] = ["forgett"]
    return fails_before_training(ctx, ConfigError, lambda: stages.parse_config(config))


@case("alpha-not-positive")
def _(ctx: Ctx) -> str:
    return fails_before_training(ctx, ConfigError, lambda: unlearn(ctx.config(alpha=0)))


@case("rmu-layer-out-of-range")
def _(ctx: Ctx) -> str:
    # The tiny model has 2 decoder layers; RMU's default layer 7 is SmolLM2's.
    return fails_before_training(ctx, ValueError, lambda: unlearn(ctx.config(method="rmu")))


@case("rmu-pattern-no-match")
def _(ctx: Ctx) -> str:
    config = ctx.config(method="rmu", layer=1, trainable_pattern=r"layers\.1\.attention")
    return fails_before_training(ctx, ValueError, lambda: unlearn(config))


@case("export-dtype-unknown")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(export_dtype="bf16")))


@case("shard-size-invalid")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(max_shard_size="5 gigabytes")))


@case("unknown-accelerate-config")
def _(ctx: Ctx) -> str:
    assert accelerate_config_path("cpu_2proc").name == "cpu_2proc.yaml"  # a valid name resolves
    return fails_before_training(ctx, ConfigError, lambda: accelerate_config_path("zero9"))


@case("unknown-section")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["trainig"] = config.pop("training")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trainig'\]"):
        stages.parse_config(config)  # a dict config (Python API) is checked like a YAML file
    path = write_yaml(ctx.tmp / "typo.yaml", config)
    return fails_before_training(ctx, ConfigError, lambda: cli.main(["--verbose", "unlearn", str(path)]))


@case("unknown-field")
def _(ctx: Ctx) -> str:
    return fails_before_training(ctx, ConfigError, lambda: unlearn(ctx.config(learning_rat=1e-3)))


@case("missing-output-dir")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    del config["training"]["output_dir"]
    return fails_before_training(ctx, ConfigError, lambda: unlearn(config))


@case("bad-override")
def _(ctx: Ctx) -> str:
    path = write_yaml(ctx.tmp / "run.yaml", ctx.config())
    return fails_before_training(
        ctx, ConfigError, lambda: cli.main(["--verbose", "unlearn", str(path), "training.max_steps"])
    )


@case("bad-override-value")
def _(ctx: Ctx) -> str:
    path = write_yaml(ctx.tmp / "run.yaml", ctx.config())
    return fails_before_loading(
        ctx, ConfigError, lambda: cli.main(["--verbose", "unlearn", str(path), "training.alphas=[1,"])
    )


@case("malformed-yaml")
def _(ctx: Ctx) -> str:
    path = ctx.tmp / "broken.yaml"
    path.write_text(f"training: {{output_dir: {ctx.run}\nmethod: ga\n")  # the flow mapping is never closed
    return fails_before_loading(ctx, ConfigError, lambda: cli.main(["--verbose", "unlearn", str(path)]))


@case("section-not-mapping")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["training"] = 5
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(config))


@case("wrong-type")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(learning_rate="fast")))


@case("fractional-count")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(per_device_train_batch_size=2.5)))


@case("unquoted-yes-no")
def _(ctx: Ctx) -> str:
    path = ctx.tmp / "run.yaml"
    path.write_text(write_yaml(path, ctx.config()).read_text() + "format: {system_prompt: no}\n")
    return fails_before_loading(ctx, ConfigError, lambda: cli.main(["--verbose", "unlearn", str(path)]))


@case("unknown-choice")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(lr_scheduler_type="cosinee")))


@case("out-of-range")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(learning_rate=-1)))


@case("max-steps-zero")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(ctx.config(max_steps=0)))


@case("lora-rank-zero")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["model"]["lora"]["r"] = 0
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(config))


# --- models and logs -----------------------------------------------------------------------------------------


def _with_model(ctx: Ctx, name_or_path: str) -> dict:
    config = ctx.config()
    config["model"]["name_or_path"] = name_or_path
    return config


@case("missing-model-folder")
def _(ctx: Ctx) -> str:
    config = _with_model(ctx, "./no_such_model")
    return fails_before_loading(ctx, ModelResolutionError, lambda: unlearn(config))


@case("hub-model-offline")
def _(ctx: Ctx) -> str:
    config = _with_model(ctx, "nobody-h5/uncached")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return fails_before_loading(ctx, ModelResolutionError, lambda: unlearn(config))


@case("invalid-model-name")
def _(ctx: Ctx) -> str:
    config = _with_model(ctx, "my model!")
    return fails_before_loading(ctx, ModelResolutionError, lambda: unlearn(config))


@case("not-a-model-folder")
def _(ctx: Ctx) -> str:
    (ctx.tmp / "empty_folder").mkdir()
    config = _with_model(ctx, str(ctx.tmp / "empty_folder"))
    return fails_before_loading(ctx, ModelResolutionError, lambda: unlearn(config))


@case("missing-adapter-folder")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["model"]["adapter"] = "./no_such_adapter"
    return fails_before_loading(ctx, ConfigError, lambda: unlearn(config))


@case("missing-memorization-folder")
def _(ctx: Ctx) -> str:
    config = ctx.config()
    config["extrapolate"] = {"memorization": "./no_such_memorization"}
    spec = stages.parse_config(config)
    return fails_before_loading(ctx, ConfigError, lambda: stages.run_extrapolate(spec, stages.RunOptions()))


def _lazy_alpha(ctx: Ctx) -> Path:
    """A full-weight α sweep's lazy alpha_2/ (memorization = a copy of the tiny model), from a reference copy."""
    from llm_unlearn.config import ModelConfig
    from llm_unlearn.methods.saved import extrapolate_saved
    from llm_unlearn.models import load_tokenizer

    reference = shutil.copytree(ctx.model_dir, ctx.tmp / "reference")
    sweep = ctx.tmp / "sweep"
    shutil.copytree(ctx.model_dir, sweep / "memorization")
    cfg = ModelConfig(name_or_path=str(reference), lora=None)
    tokenizer = load_tokenizer(str(reference))
    extrapolate_saved(cfg, str(sweep / "memorization"), [1.0, 2.0], sweep, tokenizer)
    return sweep / "alpha_2"


def _evaluate_lazy(ctx: Ctx, lazy: Path) -> str:
    config = ctx.config(method=None)
    config["evaluation"].update(model_path=str(lazy), output_dir=str(ctx.run))
    return fails_before_loading(ctx, ExtrapolationError, lambda: evaluate(config))


@case("lazy-alpha-as-model")
def _(ctx: Ctx) -> str:
    config = _with_model(ctx, str(_lazy_alpha(ctx)))
    return fails_before_loading(ctx, ModelResolutionError, lambda: unlearn(config))


@case("lazy-alpha-missing-memorization")
def _(ctx: Ctx) -> str:
    lazy = _lazy_alpha(ctx)
    shutil.rmtree(lazy.parent / "memorization")
    return _evaluate_lazy(ctx, lazy)


@case("lazy-alpha-missing-reference")
def _(ctx: Ctx) -> str:
    lazy = _lazy_alpha(ctx)
    shutil.rmtree(ctx.tmp / "reference")
    return _evaluate_lazy(ctx, lazy)


@case("missing-reference-log")
def _(ctx: Ctx) -> str:
    config = ctx.config(method=None)
    config["evaluation"].update(
        model_path=str(ctx.model_dir), output_dir=str(ctx.run), reference_log=str(ctx.tmp / "none" / "per_sample.json")
    )
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(config))


@case("adapter-base-mismatch")
def _(ctx: Ctx) -> str:
    from llm_unlearn.models import load_model, wrap_lora

    wrap_lora(load_model(str(ctx.model_dir))).save_pretrained(ctx.tmp / "adapter")  # records its base folder
    other = shutil.copytree(ctx.model_dir, ctx.tmp / "other_base")
    config = ctx.config()
    config["model"].update(name_or_path=str(other), adapter=str(ctx.tmp / "adapter"))
    return fails_before_training(ctx, AdapterMismatchError, lambda: unlearn(config))


@case("reference-log-other-split")
def _(ctx: Ctx) -> str:
    reference = {"forget": {"question_hash": {"0": "0" * 16, "7": "1" * 16}}}
    (ctx.tmp / "retain_eval").mkdir()
    (ctx.tmp / "retain_eval" / "per_sample.json").write_text(json.dumps(reference))
    config = ctx.config(method=None)
    config["evaluation"].update(
        model_path=str(ctx.model_dir), output_dir=str(ctx.run), reference_log=str(ctx.tmp / "retain_eval")
    )
    return fails_before_training(ctx, ValueError, lambda: evaluate(config))


@case("reference-log-other-settings")
def _(ctx: Ctx) -> str:
    from llm_unlearn.data.collate import PromptFormat
    from llm_unlearn.evaluation.reference import ReferenceMismatchError
    from llm_unlearn.evaluation.runner import run_evaluation
    from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu
    from llm_unlearn.models import load_tokenizer, tiny_llama

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = tiny_llama(len(tokenizer), seed=0)
    rows = [{"index": i, "question": f"Where was author {i} born?", "answer": f"In town {i}."} for i in range(2)]
    sets = {"forget": rows, "holdout": rows}
    options = TofuEvalOptions(batch_size=2, sets=("forget", "holdout"), metrics=("mia",))
    run_evaluation(model, tokenizer, "tofu", sets, ctx.tmp / "retain_eval", options)  # label_mode answer_eot
    fmt = PromptFormat(label_mode="open_unlearning")
    with pytest.raises(ReferenceMismatchError) as info:
        evaluate_tofu(model, tokenizer, sets, options, fmt, reference_log=ctx.tmp / "retain_eval")
    return str(info.value)


# --- lm-evaluation-harness tasks (the lm_eval suite; evaluation.general takes the same options) ------------------


def _lm_eval_config(ctx: Ctx, **options) -> dict:
    """An lm_eval evaluation of the tiny model on a local multiple-choice task (a JSON Lines file in ctx.tmp)."""
    pytest.importorskip("lm_eval")
    from helpers import write_harness_task

    include = write_harness_task(ctx.tmp / "tasks")
    config = ctx.config(method=None)
    config["evaluation"] = {
        "suite": "lm_eval",
        "model_path": str(ctx.model_dir),
        "output_dir": str(ctx.run),
        "options": {"tasks": ["toy_mcq"], "include": [str(include)], **options},
    }
    return config


@case("lm-eval-no-tasks")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(_lm_eval_config(ctx, tasks=[])))


@case("lm-eval-unknown-task")
def _(ctx: Ctx) -> str:
    config = _lm_eval_config(ctx, tasks=["wmdp_bioo"], include=[])
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(config))


@case("lm-eval-missing-include")
def _(ctx: Ctx) -> str:
    config = _lm_eval_config(ctx, include=[str(ctx.tmp / "no_such_tasks")])
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(config))


@case("lm-eval-unknown-option")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(_lm_eval_config(ctx, shots=5)))


@case("lm-eval-task-data-missing")
def _(ctx: Ctx) -> str:
    config = _lm_eval_config(ctx)
    (ctx.tmp / "tasks" / "toy_mcq.jsonl").unlink()
    return fails_before_loading(ctx, DataError, lambda: evaluate(config))


@case("lm-eval-metric-not-reported")
def _(ctx: Ctx) -> str:
    return fails_before_loading(ctx, ValueError, lambda: evaluate(_lm_eval_config(ctx, metric="f1")))


@case("lm-eval-reference-log")
def _(ctx: Ctx) -> str:
    config = _lm_eval_config(ctx)
    config["evaluation"]["reference_log"] = str(ctx.tmp / "retain_eval")
    return fails_before_loading(ctx, ConfigError, lambda: evaluate(config))


@case("lm-eval-not-installed")
def _(ctx: Ctx) -> str:
    config = _lm_eval_config(ctx)
    saved = sys.modules.get("lm_eval")
    sys.modules["lm_eval"] = None  # what `import lm_eval` sees when the package is absent
    try:
        return fails_before_loading(ctx, ConfigError, lambda: evaluate(config))
    finally:
        sys.modules["lm_eval"] = saved


# --- run folders ---------------------------------------------------------------------------------------------


@case("existing-run-folder")
def _(ctx: Ctx) -> str:
    ctx.run.mkdir()
    (ctx.run / "notes.txt").write_text("an earlier run")
    path = write_yaml(ctx.tmp / "run.yaml", ctx.config())
    with pytest.raises(RunExistsError) as info:
        cli.main(["--verbose", "unlearn", str(path)])
    assert sorted(p.name for p in ctx.run.iterdir()) == ["notes.txt"]  # untouched
    return str(info.value)


@case("resume-without-checkpoint")
def _(ctx: Ctx) -> str:
    (ctx.run / "checkpoint-2").mkdir(parents=True)
    (ctx.run / "checkpoint-2" / "trainer_state.json").write_text("{}")  # cut short before MOX saved momentum.pt
    path = write_yaml(ctx.tmp / "run.yaml", ctx.config(momentum=True))
    with pytest.raises(FileNotFoundError) as info:
        cli.main(["--verbose", "unlearn", str(path), "--resume"])
    assert not (ctx.run / "run_info.json").exists()
    return str(info.value)


def test_docs_table_and_cases_are_in_sync():
    assert DOC_ROWS, f"no rows found under '## Bad input' in {DOC}"
    assert sorted(DOC_ROWS) == sorted(CASES)
    assert all(DOC_ROWS.values()), "every row needs at least one `excerpt` in its message column"


@pytest.mark.parametrize("name", sorted(DOC_ROWS))
def test_bad_input_message_matches_docs(name, ctx):
    message = CASES[name](ctx)
    for excerpt in DOC_ROWS[name]:
        assert excerpt in message, f"{name}: {excerpt!r} not in {message!r}"


def test_cli_prints_one_line_and_exits_1_on_bad_input(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("trainig: {}\n")
    assert cli.main(["unlearn", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("[llm-unlearn] error:") and "unknown section" in err and "Traceback" not in err
    # PyYAML's own message spans several lines; the CLI prints one.
    path.write_text("training: {output_dir: x\nmethod: ga\n")
    assert cli.main(["unlearn", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not valid YAML (line 2" in err
