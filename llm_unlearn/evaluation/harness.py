"""The lm_eval suite: any lm-evaluation-harness task on the model being unlearned, in memory.

The model object (a PEFT adapter included: no merge, no save) and its tokenizer are handed to the harness's
`HFLM` wrapper, so the numbers are the harness's own: a multiple-choice row is correct when the choice with the
highest summed continuation log-probability is the gold one (`acc`), or the highest per character (`acc_norm`).
Tasks are harness registry names (mmlu, wmdp_bio, ...: Hub data, for users online) or tasks defined by YAML files in
`include` folders (local data: `dataset_path: json` with `dataset_kwargs: {data_files: ...}`).

Used as the `lm_eval` suite, or after any other suite as its general-capability part (`evaluation.general`, the
same options): `with_general` adds the tasks' accuracies to that suite's summary.

lm-evaluation-harness is an optional dependency (`pip install "llm_unlearn[lm_eval]"`), imported only when these
options are built or the suite runs. The harness does not shard a model object across processes: under several
processes each one evaluates every row (the same numbers), and rank 0 writes the logs.
"""

from __future__ import annotations

import difflib
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm_unlearn.data.io import DataError
from llm_unlearn.evaluation.logs import HASH_KEY, EvalResult, text_hash
from llm_unlearn.evaluation.scoring import evaluation_mode

INSTALL_HINT = 'pip install "llm_unlearn[lm_eval]"'
FILTER = "none"  # the harness's key suffix for unfiltered results ("acc,none"), what multiple-choice tasks report
# Builders the harness loads local files with: their name says nothing about which data a result is on.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def require_lm_eval():
    """The lm_eval package, or a one-line error saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ValueError(f"the lm_eval suite needs lm-evaluation-harness: {INSTALL_HINT}") from None
    return lm_eval


@dataclass
class LmEvalOptions:
    """Settings of an lm-evaluation-harness run (`evaluation.options` of the lm_eval suite, or
    `evaluation.general`), recorded in summary.json.

    tasks: harness task, group or tag names (the harness registry, or tasks defined in `include`).
    include: folders of task YAML files (every YAML below them, as the harness's --include_path); a file stands for
        the folder holding it (so the YAML files it includes resolve).
    num_fewshot: examples in each prompt (None: each task's own default, 0 when it has none).
    limit: evaluate only the first N rows of each task (None: all).
    batch_size: requests per forward.
    metric: the headline metric of every task (acc or acc_norm for multiple choice; the summary reports it as
        `<task>_<metric>` with `<task>_<metric>_stderr`).
    task_metrics: {task: metric} for tasks whose headline differs (e.g. {hellaswag: acc_norm}).
    forget_tasks: tasks that measure the knowledge being removed (wmdp_bio, the hazard questions): lower is better
        there, higher everywhere else.
    apply_chat_template: render prompts with the tokenizer's chat template (the harness's flag; WMDP and MMLU are
        published without).
    """

    tasks: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 16
    metric: str = "acc"
    task_metrics: dict[str, str] = field(default_factory=dict)
    forget_tasks: list[str] = field(default_factory=list)
    apply_chat_template: bool = False

    def __post_init__(self):
        self.tasks, self.include, self.forget_tasks = list(self.tasks), list(self.include), list(self.forget_tasks)
        if not self.tasks:
            raise ValueError("LmEvalOptions.tasks is empty: name at least one harness task (e.g. [mmlu])")
        if missing := [path for path in self.include if not Path(path).expanduser().exists()]:
            raise ValueError(f"LmEvalOptions.include: {missing} do not exist (folders of task YAML files)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"LmEvalOptions.num_fewshot must be None (task default) or >= 0, not {self.num_fewshot}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"LmEvalOptions.limit must be None (all rows) or at least 1, not {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"LmEvalOptions.batch_size must be at least 1, not {self.batch_size}")
        if not self.metric or not all(self.task_metrics.values()):
            raise ValueError("LmEvalOptions.metric and task_metrics name a metric the tasks report, e.g. acc")
        for option in ("task_metrics", "forget_tasks"):
            if unknown := [task for task in getattr(self, option) if task not in self.tasks]:
                raise ValueError(f"LmEvalOptions.{option}: {unknown} are not in tasks {self.tasks}")
        check_task_names(self.tasks, self.include)

    def headline(self, name: str) -> str:
        return self.task_metrics.get(name, self.metric)


def _include_key(include: list[str]) -> tuple:
    """The include folders with the newest YAML time in each: a folder edited since gets a fresh index."""
    key = []
    for entry in include:
        path = Path(entry).expanduser().resolve()
        path = path if path.is_dir() else path.parent
        times = [p.stat().st_mtime for p in path.glob("**/*.y*ml")]
        key.append((str(path), max(times, default=0.0)))
    return tuple(key)


@lru_cache(maxsize=8)
def _manager(include_key: tuple, with_registry: bool):
    """A harness TaskManager over the include folders (and the whole registry: ~15k YAML files, seconds to index)."""
    from lm_eval.tasks import TaskManager

    folders = [folder for folder, _ in include_key]
    return TaskManager(include_path=folders or None, include_defaults=with_registry)


def task_manager(names: list[str], include: list[str]):
    """The smallest index that knows every name: the include folders alone when they define them all."""
    require_lm_eval()
    key = _include_key(include)
    if include:
        local = _manager(key, False)
        if all(name in local.all_tasks for name in names):
            return local
    return _manager(key, True)


def check_task_names(names: list[str], include: list[str]) -> None:
    """Every name is a task, group or tag the harness knows (its local registry plus the include folders)."""
    manager = task_manager(names, include)
    if unknown := [name for name in names if name not in manager.all_tasks]:
        close = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
        hints = "; ".join(f"{name!r}: did you mean {', '.join(map(repr, c))}?" for name, c in close.items() if c)
        raise ValueError(
            f"LmEvalOptions.tasks: unknown task(s) {unknown}. {hints + ' ' if hints else ''}"
            "Name a harness task (`lm-eval ls tasks` lists them) or one defined in an include folder"
        )


@dataclass
class HarnessTasks:
    """Harness tasks built with their data loaded, before anything is scored. `objects`: what the harness runs (a
    group, or the tasks of a task name or tag); `reported`: {name: headline metric} for the summary, every group
    and task asked for (a tag's tasks one by one)."""

    options: LmEvalOptions
    manager: Any
    objects: list
    reported: dict[str, str]


def _top_groups(loaded: dict) -> list:
    children = {child for names in loaded.get("group_map", {}).values() for child in names}
    return [group for name, group in loaded.get("groups", {}).items() if name not in children]


def load_tasks(options: LmEvalOptions) -> HarnessTasks:
    """Build every task (its data is loaded now), so a missing file or an uncached Hub dataset stops the run before
    any model is scored; check that each task reports the headline metric asked of it."""
    manager = task_manager(options.tasks, options.include)
    objects, reported = [], {}
    for name in options.tasks:
        try:
            loaded = manager.load(name)
        except Exception as err:  # the harness and datasets raise many types for "cannot load": one message
            detail = " ".join(str(err).split())[:300]
            raise DataError(
                f"lm_eval task {name!r}: could not load it or its data ({type(err).__name__}: {detail}); offline, "
                "a Hub dataset must already be in the cache"
            ) from None
        groups = _top_groups(loaded)
        tops = {group.name: group for group in groups} if groups else loaded["tasks"]
        objects += tops.values()
        metric = options.headline(name)
        reported.update(dict.fromkeys(tops, metric))
        for task_name, task in loaded["tasks"].items():
            if metric not in (known := list(task.aggregation())):
                raise ValueError(
                    f"lm_eval task {task_name!r} does not report {metric!r} (it reports {', '.join(known)}): set "
                    "LmEvalOptions.metric or task_metrics"
                )
    return HarnessTasks(options, manager, objects, reported)


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _per_sample(samples: dict, configs: dict) -> tuple[dict, dict]:
    """set (task) -> column -> str(doc_id) -> value: each per-row metric the harness logged (1.0 / 0.0 for acc),
    and for multiple-choice tasks the choices' summed log-probabilities and the argmax `choice`; plus prompt hashes."""
    per_sample, counts = {}, {}
    for task, rows in samples.items():
        columns: dict[str, dict[str, Any]] = {}
        hashes = {}
        multiple_choice = configs.get(task, {}).get("output_type") == "multiple_choice"
        for row in rows:
            key = str(row["doc_id"])
            suffix = "" if row.get("filter", FILTER) == FILTER else f"/{row['filter']}"
            for metric in row["metrics"]:
                if (value := _number(row.get(metric))) is not None:
                    columns.setdefault(metric + suffix, {})[key] = value
            if multiple_choice:
                logprobs = [float(response[0]) for response in row["filtered_resps"]]
                if "acc_mutual_info" in row["metrics"]:
                    logprobs = logprobs[: len(logprobs) // 2]  # the unconditional scores follow the choices'
                columns.setdefault("choice_logprobs" + suffix, {})[key] = logprobs
                columns.setdefault("choice" + suffix, {})[key] = max(range(len(logprobs)), key=logprobs.__getitem__)
            hashes[key] = text_hash(row["arguments"][0][0])
        columns = {
            name: dict(sorted(values.items(), key=lambda item: int(item[0]))) for name, values in columns.items()
        }
        per_sample[task] = {**columns, HASH_KEY: dict(sorted(hashes.items(), key=lambda item: int(item[0])))}
        counts[task] = len(hashes)
    return per_sample, counts


def _dataset(config: dict | None) -> dict:
    """The Hub dataset a task reads (for the model card), None for local files and groups."""
    path = (config or {}).get("dataset_path")
    if not isinstance(path, str) or path in LOCAL_BUILDERS:
        return {"dataset": None, "dataset_config": None}
    return {"dataset": path, "dataset_config": (config or {}).get("dataset_name")}


def _all_results(output: dict) -> dict:
    """{task or group: its harness results row ("acc,none": ...)}."""
    return {**output.get("groups", {}), **output["results"]}


def _summary(output: dict, tasks: HarnessTasks) -> tuple[dict, dict, dict, dict]:
    """metrics `<name>_<metric>` and `<name>_<metric>_stderr` for every reported name, null reasons, directions
    and the headline table (which task and metric each key is)."""
    results = _all_results(output)
    metrics, reasons, directions, headline = {}, {}, {}, {}
    forget = set(tasks.options.forget_tasks)
    for name, metric in tasks.reported.items():
        key, stderr_key = f"{name}_{metric}", f"{name}_{metric}_stderr"
        row = results.get(name, {})
        metrics[key] = _number(row.get(f"{metric},{FILTER}"))
        metrics[stderr_key] = _number(row.get(f"{metric}_stderr,{FILTER}"))
        if metrics[key] is None:
            reported = sorted(k.split(",")[0] for k in row if "," in k and "_stderr" not in k)
            reasons[key] = f"the harness reported no {metric} for {name} (it reported {reported})"
        if metrics[stderr_key] is None:
            reasons[stderr_key] = f"the harness gave no stderr for {name} ({row.get(f'{metric}_stderr,{FILTER}')!r})"
        higher = output.get("higher_is_better", {}).get(name, {}).get(metric, True)
        directions[key] = (not higher) if name in forget else higher
        directions[stderr_key] = None
        headline[key] = {"task": name, "metric": metric, "stderr": stderr_key, **_dataset(output["configs"].get(name))}
    return metrics, reasons, directions, headline


def _results_table(output: dict) -> dict:
    return {
        name: {key: _number(value) for key, value in row.items() if _number(value) is not None and key != "sample_len"}
        for name, row in _all_results(output).items()
    }


@contextmanager
def _as_local_rank_zero():
    """simple_evaluate returns its results only where LOCAL_RANK is 0 (under accelerate launch, rank 0 of each node);
    given a model object it runs every row in every process, so each process may read its own results."""
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK")
        else:
            os.environ["LOCAL_RANK"] = saved


def evaluate_lm_eval(
    model,
    tokenizer,
    data: HarnessTasks | None = None,
    options: LmEvalOptions | None = None,
    fmt=None,
    reference_log=None,
) -> EvalResult:
    """Run harness tasks on `model` (every process runs all of them). `data`: tasks from `load_tasks` (else they
    are loaded from `options`). The prompt format is the task's own, not `fmt`; there is no reference log."""
    if reference_log is not None:
        raise ValueError("the lm_eval suite compares with no reference log: set evaluation.reference_log to null")
    if data is None:
        if options is None:
            raise ValueError("evaluate_lm_eval needs LmEvalOptions (with tasks) or tasks from load_tasks")
        data = load_tasks(options)
    options = data.options
    lm_eval = require_lm_eval()
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with evaluation_mode(model), _as_local_rank_zero():
        output = simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size),
            tasks=data.objects,
            task_manager=data.manager,
            num_fewshot=options.num_fewshot,
            limit=options.limit,
            apply_chat_template=options.apply_chat_template,
            log_samples=True,
            # Multiple-choice scoring draws nothing at random and few-shot examples come from the harness's own
            # seeded sampler; reseeding Python, NumPy and torch globally would reset a training run's generators.
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    per_sample, counts = _per_sample(output["samples"], output["configs"])
    metrics, reasons, directions, headline = _summary(output, data)
    notes = []
    if options.limit is not None:
        notes.append(f"lm_eval: only the first {options.limit} rows of each task (limit); not a full benchmark score")
    meta = {
        "options": asdict(options),
        "row_counts": counts,
        "higher_is_better": directions,
        "lm_eval": {
            "version": getattr(lm_eval, "__version__", None),
            "headline": headline,
            "results": _results_table(output),
            "n_shot": output.get("n-shot", {}),
            "task_versions": output.get("versions", {}),
        },
    }
    return EvalResult("lm_eval", per_sample, metrics, reasons, notes, meta)


def with_general(result: EvalResult, general: EvalResult) -> EvalResult:
    """`result` (any suite's) with the harness tasks of `general` added: their per-task sets, summary metrics and
    directions; the options go under `general_options`."""
    if clash := sorted(set(result.per_sample) & set(general.per_sample)):
        raise ValueError(f"evaluation.general: task(s) {clash} share a name with the suite's own sets; rename them")
    meta = dict(result.meta)
    meta["higher_is_better"] = {**meta.get("higher_is_better", {}), **general.meta["higher_is_better"]}
    meta["row_counts"] = {**meta.get("row_counts", {}), **general.meta["row_counts"]}
    meta["lm_eval"], meta["general_options"] = general.meta["lm_eval"], general.meta["options"]
    return EvalResult(
        result.suite,
        {**result.per_sample, **general.per_sample},
        {**result.metrics, **general.metrics},
        {**result.null_reasons, **general.null_reasons},
        result.notes + general.notes,
        meta,
    )
