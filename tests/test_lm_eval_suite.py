"""The lm_eval suite: lm-evaluation-harness tasks on the model in memory.

Multiple-choice accuracy is checked against the harness's rule computed here by hand from the model's own
log-probabilities (the choice whose tokens after the prompt have the highest summed log-probability; per character
for acc_norm); an adapter model and its merged copy give the same choices; the stage writes the logs the report
and the model card read; `evaluation.general` adds the tasks to another suite; the hazard example's files are what
its generator writes and its recipes run on a tiny model. Offline: every task here reads local JSON Lines files.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason='needs "llm_unlearn[lm_eval]"')

from helpers import HARNESS_ROWS as ROWS  # noqa: E402
from helpers import write_harness_task as write_task  # noqa: E402

from llm_unlearn import stages  # noqa: E402
from llm_unlearn.evaluation.harness import LmEvalOptions, evaluate_lm_eval  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from reliability_setup import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAZARD = REPO / "examples" / "hazard"


def hand_loglikelihoods(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Each choice's summed log-probability after the prompt, as the harness defines it: " " + choice follows the
    prompt, the whole text is tokenized once and the tokens past the prompt's own tokenization are scored."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    scores = []
    for choice in choices:
        ids = tokenizer(prompt + " " + choice)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids))))
    return scores


def argmax(values) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def test_multiple_choice_accuracy_is_the_harness_rule_computed_by_hand(tokenizer, tiny_model, tmp_path):
    include = write_task(tmp_path / "tasks")
    result = evaluate_lm_eval(
        tiny_model, tokenizer, options=LmEvalOptions(tasks=["toy_mcq"], include=[str(include)], batch_size=4)
    )
    tiny_model.eval()
    hand = [
        hand_loglikelihoods(tiny_model, tokenizer, f"Question: {r['question']}\nAnswer:", r["choices"]) for r in ROWS
    ]
    per_row = result.per_sample["toy_mcq"]
    for index, scores in enumerate(hand):
        assert per_row["choice_logprobs"][str(index)] == pytest.approx(scores, abs=1e-4)
        assert per_row["choice"][str(index)] == argmax(scores)
    correct = [float(argmax(scores) == row["answer"]) for row, scores in zip(ROWS, hand)]
    per_char = [
        float(argmax([s / len(c) for s, c in zip(scores, row["choices"])]) == row["answer"])
        for row, scores in zip(ROWS, hand)
    ]
    assert correct != per_char  # the two rules differ on these rows, so each check below pins its own rule
    assert list(per_row["acc"].values()) == correct and list(per_row["acc_norm"].values()) == per_char
    accuracy = sum(correct) / len(correct)
    assert result.metrics["toy_mcq_acc"] == pytest.approx(accuracy)
    # The harness's stderr of a mean: the sample standard deviation (n - 1) over sqrt(n).
    spread = math.sqrt(sum((x - accuracy) ** 2 for x in correct) / (len(correct) - 1))
    assert result.metrics["toy_mcq_acc_stderr"] == pytest.approx(spread / math.sqrt(len(correct)))
    summary = result.summary()
    assert summary["suite"] == "lm_eval" and summary["row_counts"] == {"toy_mcq": len(ROWS)}
    assert summary["higher_is_better"] == {"toy_mcq_acc": True, "toy_mcq_acc_stderr": None}
    assert summary["lm_eval"]["results"]["toy_mcq"]["acc_norm,none"] == pytest.approx(sum(per_char) / len(per_char))


def test_headline_metric_forget_tasks_and_limit(tokenizer, tiny_model, tmp_path):
    include = write_task(tmp_path / "tasks")
    options = LmEvalOptions(
        tasks=["toy_mcq"], include=[str(include)], metric="acc_norm", forget_tasks=["toy_mcq"], limit=4, batch_size=2
    )
    result = evaluate_lm_eval(tiny_model, tokenizer, options=options)
    assert set(result.metrics) == {"toy_mcq_acc_norm", "toy_mcq_acc_norm_stderr"}
    assert result.meta["higher_is_better"]["toy_mcq_acc_norm"] is False  # a forget task: lower = forgotten
    assert sorted(result.per_sample["toy_mcq"]["acc"], key=int) == ["0", "1", "2", "3"]
    values = list(result.per_sample["toy_mcq"]["acc_norm"].values())
    assert result.metrics["toy_mcq_acc_norm"] == pytest.approx(sum(values) / 4)
    assert any("first 4 rows" in note for note in result.notes)


def test_a_group_reports_the_mean_over_its_tasks_rows(tokenizer, tiny_model, tmp_path):
    folder = write_task(tmp_path / "tasks")
    write_task(folder, "toy_mcq_short", ROWS[:2])
    group = {"group": "toy_group", "task": ["toy_mcq", "toy_mcq_short"], "aggregate_metric_list": [{"metric": "acc"}]}
    (folder / "toy_group.yaml").write_text(yaml.safe_dump(group))
    result = evaluate_lm_eval(tiny_model, tokenizer, options=LmEvalOptions(tasks=["toy_group"], include=[str(folder)]))
    assert set(result.per_sample) == {"toy_mcq", "toy_mcq_short"}
    assert result.meta["row_counts"] == {"toy_mcq": len(ROWS), "toy_mcq_short": 2}
    per_task = [list(result.per_sample[task]["acc"].values()) for task in ("toy_mcq", "toy_mcq_short")]
    means = [sum(values) / len(values) for values in per_task]
    assert means[0] != means[1]  # so that the mean over rows differs from the mean of the two tasks
    rows = per_task[0] + per_task[1]
    assert result.metrics["toy_group_acc"] == pytest.approx(sum(rows) / len(rows))  # weighted by each task's size


def test_adapter_model_and_its_merged_copy_choose_alike(tokenizer, tiny_model, tmp_path):
    from llm_unlearn.models import wrap_lora

    include = write_task(tmp_path / "tasks")
    options = LmEvalOptions(tasks=["toy_mcq"], include=[str(include)], batch_size=3)
    base = evaluate_lm_eval(copy.deepcopy(tiny_model), tokenizer, options=options).per_sample["toy_mcq"]
    adapter = wrap_lora(tiny_model)
    torch.manual_seed(1)
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # a real change, so the adapter's own numbers are compared
    adapter.train()
    with_adapter = evaluate_lm_eval(adapter, tokenizer, options=options)
    assert adapter.training and adapter.base_model.model.model.layers[0].training  # flags restored
    merged = evaluate_lm_eval(copy.deepcopy(adapter).merge_and_unload(), tokenizer, options=options)
    ours, theirs = with_adapter.per_sample["toy_mcq"], merged.per_sample["toy_mcq"]
    assert ours["choice"] == theirs["choice"] and ours["acc"] == theirs["acc"]
    assert with_adapter.metrics["toy_mcq_acc"] == merged.metrics["toy_mcq_acc"]
    for index in ours["choice_logprobs"]:
        assert ours["choice_logprobs"][index] == pytest.approx(theirs["choice_logprobs"][index], abs=1e-4)
    # The adapter was scored, not the base model under it.
    assert any(
        abs(a - b) > 1e-2
        for index in base["choice_logprobs"]
        for a, b in zip(base["choice_logprobs"][index], ours["choice_logprobs"][index])
    )


@pytest.mark.distributed
def test_two_processes_each_evaluate_every_row_and_agree(model_dir, tmp_path):
    from helpers import launch_2proc, run_until_done

    tasks = write_task(tmp_path / "tasks")
    script = [str(Path(__file__).parent / "scripts" / "lm_eval_distributed.py"), "--model", str(model_dir)]
    one, two = tmp_path / "one", tmp_path / "two"
    run_until_done([sys.executable, *script, "--tasks", str(tasks), "--out", str(one)], one / "done")
    run_until_done(launch_2proc([*script, "--tasks", str(tasks), "--out", str(two)]), two / "done")
    summaries = [json.loads((two / f"summary_rank{rank}.json").read_text()) for rank in (0, 1)]
    alone = json.loads((one / "summary_rank0.json").read_text())
    assert summaries[0]["num_processes"] == 2 and alone["num_processes"] == 1
    for summary in summaries:
        assert summary["metrics"] == alone["metrics"] and summary["row_counts"] == {"toy_mcq": len(ROWS)}
    assert json.loads((two / "per_sample.json").read_text()) == json.loads((one / "per_sample.json").read_text())


# ---- through the stages ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def text_data() -> dict:
    return {"dataset": "custom", **{name: {"path": str(HAZARD / f"{name}.jsonl")} for name in ("forget", "retain")}}


def ga_config(model_dir: Path, out: Path, evaluation: dict) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "lora": {"r": 4, "lora_alpha": 8}},
        "data": text_data(),
        "method": "ga",
        "training": {
            "output_dir": str(out),
            "learning_rate": 1e-3,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "warmup_steps": 0,
            "use_cpu": True,
            "seed": 0,
            "disable_tqdm": True,
        },
        "evaluation": evaluation,
    }


def test_stage_writes_logs_report_and_model_card(model_dir, tmp_path):
    from huggingface_hub import ModelCard

    from llm_unlearn.evaluation.report import make_report
    from llm_unlearn.model_card import build_model_card

    include = write_task(tmp_path / "tasks")
    options = {"tasks": ["toy_mcq"], "include": [str(include)], "forget_tasks": ["toy_mcq"], "batch_size": 4}
    config = ga_config(model_dir, tmp_path / "ga", {"suite": "lm_eval", "options": options})
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    unlearned = tmp_path / "ga" / "unlearned"
    config["evaluation"].update(model_path=str(unlearned), output_dir=str(unlearned / "eval"))
    out = stages.run_evaluate(stages.parse_config(config), stages.RunOptions())
    summary = json.loads((out / "summary.json").read_text())
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert summary["suite"] == "lm_eval" and summary["metrics"]["toy_mcq_acc"] is not None
    assert set(per_sample["toy_mcq"]) >= {"acc", "acc_norm", "choice", "choice_logprobs", "question_hash"}
    assert len(per_sample["toy_mcq"]["acc"]) == len(ROWS)
    assert summary["metrics"]["toy_mcq_acc"] == pytest.approx(sum(per_sample["toy_mcq"]["acc"].values()) / len(ROWS))
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["summary_metrics"] == summary["metrics"] and run_info["data"] is None  # the tasks bring their data
    card = ModelCard(build_model_card(unlearned))
    [result] = [r for r in card.data.eval_results if r.metric_type == "toy_mcq_acc"]
    assert result.metric_value == summary["metrics"]["toy_mcq_acc"] and result.dataset_name == "toy_mcq"
    report = make_report([out], tmp_path / "report").read_text()
    assert "toy_mcq_acc ↓" in report  # a forget task's column, with its direction


def test_general_section_adds_harness_tasks_to_another_suite(model_dir, tmp_path):
    include = write_task(tmp_path / "tasks")
    general = {"tasks": ["toy_mcq"], "include": [str(include)], "batch_size": 4}
    config = {
        "model": {"name_or_path": str(model_dir), "lora": None},
        "data": text_data(),
        "evaluation": {
            "model_path": str(model_dir),
            "output_dir": str(tmp_path / "eval"),
            "options": {"metrics": ["prob"], "batch_size": 8},
            "general": general,
        },
    }
    out = stages.run_evaluate(stages.parse_config(config), stages.RunOptions())
    summary = json.loads((out / "summary.json").read_text())
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert summary["suite"] == "custom" and summary["metrics"]["forget_prob"] is not None
    assert set(per_sample) == {"forget", "retain", "toy_mcq"}
    assert summary["higher_is_better"]["toy_mcq_acc"] is True and summary["general_options"]["tasks"] == ["toy_mcq"]
    from llm_unlearn.models import load_model, load_tokenizer

    alone = evaluate_lm_eval(
        load_model(str(model_dir)), load_tokenizer(str(model_dir)), options=LmEvalOptions(**general)
    )
    assert summary["metrics"]["toy_mcq_acc"] == alone.metrics["toy_mcq_acc"]
    assert per_sample["toy_mcq"]["choice"] == alone.per_sample["toy_mcq"]["choice"]


def test_evaluation_every_n_steps_with_harness_tasks(model_dir, tmp_path):
    include = write_task(tmp_path / "tasks")
    options = {"tasks": ["toy_mcq"], "include": [str(include)], "batch_size": 6}
    config = ga_config(model_dir, tmp_path / "ga", {"suite": "lm_eval", "options": options, "every_n_steps": 1})
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    rows = [json.loads(line) for line in (tmp_path / "ga" / "eval_steps" / "eval_steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all(row["toy_mcq_acc"] is not None for row in rows)


def test_suite_refuses_what_does_not_apply(model_dir, tmp_path):
    include = write_task(tmp_path / "tasks")
    options = {"tasks": ["toy_mcq"], "include": [str(include)]}
    config = ga_config(model_dir, tmp_path / "ga", {"suite": "lm_eval", "options": options})
    for setting, value in (("during_training_sets", ["forget"]), ("general", options)):
        bad = copy.deepcopy(config)
        bad["evaluation"][setting] = value
        with pytest.raises(ValueError, match=f"evaluation.{setting} does not apply to the lm_eval suite"):
            stages.parse_config(bad)
    with pytest.raises(ValueError, match=r"LmEvalOptions.forget_tasks: \['mmlu'\] are not in tasks"):
        LmEvalOptions(tasks=["toy_mcq"], include=[str(include)], forget_tasks=["mmlu"])
    general = {"evaluation": {"general": {"tasks": []}}}  # another suite's general-capability tasks: same checks
    with pytest.raises(ValueError, match="evaluation.general: LmEvalOptions.tasks is empty"):
        stages.parse_config({**config, **general, "method": None})
    # Any data section fits the lm_eval suite; a data suite must still fit its data.
    config["data"] = {"dataset": "synthetic"}
    stages.parse_config(config)
    config["evaluation"]["suite"] = "muse"
    with pytest.raises(ValueError, match="does not fit data.dataset 'synthetic'"):
        stages.parse_config(config)


def test_registry_tasks_are_found_offline():
    options = LmEvalOptions(tasks=["wmdp_bio", "mmlu"])
    assert options.tasks == ["wmdp_bio", "mmlu"]  # names checked against the harness's own (local) registry


# ---- the hazard example ----------------------------------------------------------------------------------------------


def hazard_generator():
    spec = importlib.util.spec_from_file_location("hazard_generate", HAZARD / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hazard_files_are_what_the_generator_writes():
    for name, content in hazard_generator().files().items():
        assert (HAZARD / name).read_text(encoding="utf-8") == content, f"{name}: run python examples/hazard/generate.py"


def test_hazard_questions_are_answerable_only_from_the_forget_notes():
    read = lambda name: [json.loads(line) for line in (HAZARD / name).read_text().splitlines()]  # noqa: E731
    notes, retain = read("forget.jsonl"), read("retain.jsonl")
    questions, everyday = read("tasks/hazard_knowledge.jsonl"), read("tasks/everyday_knowledge.jsonl")
    assert 40 <= len(questions) <= 60 and 40 <= len(everyday) <= 60
    compounds = hazard_generator().COMPOUNDS
    retain_text = " ".join(row["text"] for row in retain)
    for row in questions:
        assert len(row["choices"]) == len(set(row["choices"])) == 4
        [name] = [c for c in compounds if c in row["question"]]
        about = " ".join(note["text"] for note in notes if name in note["text"])
        mentions = lambda text, words: re.search(rf"\b{re.escape(words)}\b", text) is not None  # noqa: E731
        correct = row["choices"][row["answer"]]
        assert mentions(about, correct) and not mentions(retain_text, correct)
        assert not any(mentions(about, choice) for i, choice in enumerate(row["choices"]) if i != row["answer"])
    positions = [row["answer"] for row in questions + everyday]
    assert all(positions.count(p) == len(positions) // 4 for p in range(4))


def test_hazard_recipes_finetune_and_evaluate_on_a_tiny_model(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the repository root
    fast = ["training.max_steps=2", "training.per_device_train_batch_size=4", "training.disable_tqdm=true"]
    target = stages.run_finetune(
        stages.load_spec(
            "recipes/hazard/finetune_target.yaml",
            [f"model.name_or_path={model_dir}", f"training.output_dir={tmp_path / 'target'}", *fast],
        ),
        stages.RunOptions(),
    )
    evaluation = ["evaluation.options.limit=4", "evaluation.options.batch_size=8"]
    out = stages.run_evaluate(
        stages.load_spec(
            "recipes/hazard/evaluate_target.yaml",
            [
                f"model.name_or_path={target}",
                f"evaluation.model_path={target}",
                f"evaluation.output_dir={tmp_path / 'target_eval'}",
                *evaluation,
            ],
        ),
        stages.RunOptions(),
    )
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["hazard_knowledge_acc"] is not None and metrics["everyday_knowledge_acc"] is not None
    mox = [
        "recipes/hazard/mox.yaml",
        [f"model.name_or_path={target}", f"training.output_dir={tmp_path / 'mox'}", *fast],
    ]
    stages.run_extrapolate(stages.load_spec(*mox), stages.RunOptions())
    out = stages.run_evaluate(stages.load_spec(mox[0], mox[1] + evaluation), stages.RunOptions())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["higher_is_better"]["hazard_knowledge_acc"] is False and summary["row_counts"] == {
        "hazard_knowledge": 4,
        "everyday_knowledge": 4,
    }


@pytest.mark.slow
def test_smollm2_answers_the_everyday_questions_on_cpu(tokenizer, smollm2, monkeypatch):
    monkeypatch.chdir(REPO)
    options = LmEvalOptions(tasks=["everyday_knowledge"], include=["examples/hazard/tasks"], batch_size=16)
    result = evaluate_lm_eval(smollm2, tokenizer, options=options)
    rows = [json.loads(line) for line in (HAZARD / "tasks" / "everyday_knowledge.jsonl").read_text().splitlines()]
    for index in (0, 17, 33):  # three rows by hand
        row = rows[index]
        scores = hand_loglikelihoods(smollm2, tokenizer, f"Question: {row['question']}\nAnswer:", row["choices"])
        assert result.per_sample["everyday_knowledge"]["choice"][str(index)] == argmax(scores)
    assert result.metrics["everyday_knowledge_acc"] > 0.5  # easy facts: well above the 0.25 of chance
