"""The custom suite on your own sets: the same per-sample values as the TOFU suite on the same rows, and every
metric group through the stages on a tiny model (question/answer and text data, LoRA and full weights)."""

import json
import sys
from pathlib import Path

import pytest

from llm_unlearn import stages
from llm_unlearn.data import DataFiles
from llm_unlearn.data.custom import load_custom
from llm_unlearn.data.utility_sets import make_utility_sets
from llm_unlearn.evaluation.custom import CustomEvalOptions, evaluate_custom
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from reliability_setup import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def by_question(per_sample: dict, set_name: str, column: str) -> dict:
    hashes = per_sample[set_name]["question_hash"]
    return {hashes[index]: value for index, value in per_sample[set_name][column].items()}


def test_tofu_files_as_custom_data_score_exactly_as_the_tofu_suite(tokenizer, tiny_model, tofu_dir):
    data = load_custom(
        {
            "forget": DataFiles(path=str(tofu_dir / "forget01_perturbed.json")),
            "retain": DataFiles(path=str(tofu_dir / "retain_perturbed.json")),
        }
    )
    sets = {"forget": data.forget[:6], "retain": data.retain[:4]}
    assert all("perturbed_answer" in row and "paraphrased_answer" in row for row in sets["forget"])
    groups = ("prob", "truth_ratio", "rouge")
    tofu = evaluate_tofu(
        tiny_model, tokenizer, sets, TofuEvalOptions(batch_size=3, max_new_tokens=6, sets=tuple(sets), metrics=groups)
    )
    custom = evaluate_custom(
        tiny_model,
        tokenizer,
        {"kind": "qa", "sets": sets},
        CustomEvalOptions(batch_size=3, max_new_tokens=6, metrics=groups),
    )
    for set_name in sets:
        for column in ("prob", "truth_ratio", "rougeL_recall"):
            expected = by_question(tofu.per_sample, set_name, column)
            assert by_question(custom.per_sample, set_name, column) == expected, (set_name, column)
    assert custom.metrics["forget_prob"] == tofu.metrics["forget_prob"]
    assert custom.metrics["forget_truth_ratio"] == tofu.metrics["forget_truth_ratio"]


def custom_config(model_dir: Path, out: Path, method: str | None, kind: str = "customers", lora: bool = True) -> dict:
    config = {
        "model": {"name_or_path": str(model_dir), "lora": {"r": 4, "lora_alpha": 8} if lora else None},
        "data": {
            "dataset": "custom",
            **{name: {"path": str(EXAMPLES / kind / f"{name}.jsonl")} for name in ("forget", "retain", "holdout")},
        },
        "training": {
            "output_dir": str(out),
            "learning_rate": 1e-2,
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "warmup_steps": 0,
            "use_cpu": True,
            "seed": 0,
            "disable_tqdm": True,
        },
        "evaluation": {
            "options": {"batch_size": 8, "max_new_tokens": 4, "continuation_tokens": 4, "prompt_tokens": 8},
        },
    }
    if method:
        config["method"] = method
    return config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def unlearn_and_evaluate(config: dict) -> dict:
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    config["evaluation"]["model_path"] = str(Path(config["training"]["output_dir"]) / "unlearned")
    out = stages.run_evaluate(stages.parse_config(config), stages.RunOptions())
    return json.loads((out / "summary.json").read_text())


def test_question_answer_data_through_the_stages_lora(model_dir, tmp_path):
    summary = unlearn_and_evaluate(custom_config(model_dir, tmp_path / "ga", "ga"))
    metrics = summary["metrics"]
    assert summary["suite"] == "custom" and summary["data_kind"] == "qa"
    general = {name: len(rows) for name, rows in make_utility_sets(seed=0).items()}
    assert summary["row_counts"] == {"forget": 10, "retain": 40, "holdout": 10, **general}
    for key in (
        "forget_prob",
        "retain_prob",
        "forget_rougeL_recall",
        "forget_extraction_strength",
        "forget_exact_memorization",
        "mia_min_k_auc",
        "real_authors_prob",
        "general_knowledge",
    ):
        assert metrics[key] is not None, key
    assert metrics["retain_kl_to_start"] > 0  # GA at lr 1e-2 moved the model
    assert "forget_truth_ratio" not in metrics and any("no truth ratio" in note for note in summary["notes"])
    run_info = json.loads((tmp_path / "ga" / "run_info.json").read_text())
    assert (
        run_info["data"]["splits"]["forget"]["rows"] == 10 and len(run_info["data"]["splits"]["forget"]["sha256"]) == 64
    )
    assert "Mara" not in json.dumps(run_info)  # sizes and hashes of the forget set, never its content


def test_full_weights_compare_with_the_loaded_starting_model(model_dir, tmp_path):
    config = custom_config(model_dir, tmp_path / "full", "ga", lora=False)
    config["evaluation"]["options"]["metrics"] = ["prob", "kl"]
    metrics = unlearn_and_evaluate(config)["metrics"]
    assert metrics["retain_kl_to_start"] > 0
    # The starting model evaluated against itself: KL is left out, with a note.
    same = custom_config(model_dir, tmp_path / "same", None, lora=False)
    same["evaluation"].update(model_path=str(model_dir), output_dir=str(tmp_path / "same_eval"))
    same["evaluation"]["options"]["metrics"] = ["prob", "kl"]
    out = stages.run_evaluate(stages.parse_config(same), stages.RunOptions())
    summary = json.loads((out / "summary.json").read_text())
    assert "retain_kl_to_start" not in summary["metrics"] and any("no KL" in note for note in summary["notes"])


def test_text_documents_through_the_stages(model_dir, tmp_path):
    summary = unlearn_and_evaluate(custom_config(model_dir, tmp_path / "text", "ga", kind="passages"))
    metrics = summary["metrics"]
    assert summary["data_kind"] == "text"
    for key in (
        "forget_prob",
        "forget_rougeL_recall",
        "forget_extraction_strength",
        "mia_loss_auc",
        "retain_kl_to_start",
    ):
        assert metrics[key] is not None, key


def test_option_errors_are_one_line():
    with pytest.raises(ValueError, match=r"CustomEvalOptions.metrics: unknown \['bleu'\]"):
        CustomEvalOptions(metrics=("bleu",))
    with pytest.raises(ValueError, match="prompt_tokens must be at least 1"):
        CustomEvalOptions(prompt_tokens=0)


def test_evaluation_during_training_on_your_own_sets(model_dir, tmp_path):
    config = custom_config(model_dir, tmp_path / "steps", "ga")
    config["training"]["max_steps"] = 2
    config["evaluation"].update(every_n_steps=1, during_training_sets=["forget", "retain"])
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    rows = [
        json.loads(line) for line in (tmp_path / "steps" / "eval_steps" / "eval_steps.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == [1, 2]
    # Only forget and retain were scored: no holdout, so no attack AUC; the KL is computed on retain.
    assert all(row["forget_prob"] is not None and row["mia_min_k_auc"] is None for row in rows)
    assert all(row["retain_kl_to_start"] > 0 for row in rows)
