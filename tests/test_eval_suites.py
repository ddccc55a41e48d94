"""TOFU and MUSE suites, the runner's files and reference checks, and the training callback, on the tiny model.

Values from the tiny random model mean nothing; these tests pin structure, consistency between per-sample
values and summaries, and the reference-log contract.
"""

import json
import math
from dataclasses import replace

import pytest
import torch

from llm_unlearn.data.collate import PaddingCollator, PromptFormat, QADataset
from llm_unlearn.evaluation.callback import EvaluationCallback
from llm_unlearn.evaluation.logs import sorted_values
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse, knowmem_prompt, summarize_muse
from llm_unlearn.evaluation.reference import load_reference_log
from llm_unlearn.evaluation.runner import run_evaluation
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu

FAST = TofuEvalOptions(batch_size=2, max_new_tokens=3)


def _qa(index, subject, perturbed=5, paraphrase=True):
    record = {
        "index": index,
        "question": f"Where was the writer {subject} born?",
        "answer": f"{subject} was born in Lisbon.",
        "perturbed_answer": [f"{subject} was born in city number {k}." for k in range(perturbed)],
    }
    if paraphrase:
        record["paraphrased_answer"] = f"Lisbon is the birthplace of {subject}."
    return record


def tofu_sets(forget_names=("Ana Brel", "Tomas Ukko", "Lia Fenn")):
    return {
        "forget": [_qa(100 + i, name) for i, name in enumerate(forget_names)],
        "retain": [_qa(i, name) for i, name in enumerate(["Oren Vale", "Kira Moss"])],
        "real_authors": [
            {"index": 0, "question": "Who wrote Hamlet?", "answer": "Shakespeare", "perturbed_answer": ["A", "B", "C"]},
        ],
        "world_facts": [
            {
                "index": 0,
                "question": "Capital of France?",
                "answer": "Paris",
                "perturbed_answer": ["Rome", "Oslo", "Bern"],
            },
            {
                "index": 1,
                "question": "Largest ocean?",
                "answer": "The Pacific",
                "perturbed_answer": ["Arctic", "X", "Y"],
            },
        ],
        "holdout": [_qa(200 + i, name, paraphrase=False) for i, name in enumerate(["Ivo Lark", "Une Dahl"])],
    }


def test_tofu_per_sample_values_and_summary_agree(tokenizer, tiny_model):
    result = evaluate_tofu(tiny_model, tokenizer, tofu_sets(), FAST)
    forget = result.per_sample["forget"]
    assert list(forget["truth_ratio"]) == ["100", "101", "102"]
    for key in forget["truth_ratio"]:
        wrong = forget["perturbed_nll"][key]
        assert len(wrong) == 5
        assert forget["truth_ratio"][key] == pytest.approx(
            math.exp(forget["paraphrased_nll"][key] - sum(wrong) / 5), rel=1e-9
        )
        assert forget["prob"][key] == pytest.approx(math.exp(-forget["nll"][key]))
        assert 0.0 <= forget["extraction_strength"][key] <= 1.0
        assert isinstance(forget["generation"][key], str)
        assert len(forget["question_hash"][key]) == 16
    facts = result.per_sample["world_facts"]
    for key in facts["truth_ratio"]:
        # Utility sets: p_correct is the answer's own p, and Prob is normalized over answer + perturbations.
        p_answer = math.exp(-facts["nll"][key])
        p_wrong = [math.exp(-n) for n in facts["perturbed_nll"][key]]
        assert facts["normalized_prob"][key] == pytest.approx(p_answer / (p_answer + sum(p_wrong)))
        assert facts["truth_ratio"][key] == pytest.approx(math.exp(-sum(facts["perturbed_nll"][key]) / 3) / p_answer)
    assert "mia_min_k" in result.per_sample["holdout"] and "truth_ratio" not in result.per_sample["holdout"]

    metrics = result.metrics
    ratios = sorted_values(result.per_sample, "forget", "truth_ratio")
    assert metrics["forget_truth_ratio"] == pytest.approx(sum(min(r, 1 / r) for r in ratios) / 3)
    retain = sorted_values(result.per_sample, "retain", "truth_ratio")
    assert metrics["retain_truth_ratio"] == pytest.approx(sum(max(0, 1 - r) for r in retain) / 2)
    assert metrics["world_facts_prob"] == pytest.approx(sum(facts["normalized_prob"].values()) / 2)
    parts = [
        metrics[f"{s}_{m}"]
        for s in ("retain", "real_authors", "world_facts")
        for m in ("prob", "rougeL_recall", "truth_ratio")
    ]
    expected_utility = 0.0 if min(parts) == 0 else len(parts) / sum(1 / p for p in parts)
    assert metrics["model_utility"] == pytest.approx(expected_utility)
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        assert 0.0 <= metrics[f"mia_{attack}_auc"] <= 1.0
    # No reference log: composites that need the retain model are null, with a reason.
    assert metrics["forget_quality"] is None and "reference" in result.null_reasons["forget_quality"]
    assert metrics["privleak"] is None and "reference" in result.null_reasons["privleak"]
    assert result.meta["row_counts"] == {"forget": 3, "retain": 2, "real_authors": 1, "world_facts": 2, "holdout": 2}
    assert result.meta["label_mode"] == "answer_eot"
    assert result.meta["higher_is_better"]["forget_rougeL_recall"] is False


def test_runner_writes_logs_and_reference_gives_ideal_composites(tokenizer, tiny_model, tmp_path):
    retain_dir = tmp_path / "retain"
    summary = run_evaluation(tiny_model, tokenizer, "tofu", tofu_sets(), retain_dir, FAST)
    per_sample = json.loads((retain_dir / "per_sample.json").read_text())
    on_disk = json.loads((retain_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["options"]["batch_size"] == 2 and on_disk["options"]["truncate_rows"] is None
    assert on_disk["prompt_format"]["use_chat_template"] is True
    assert on_disk["num_processes"] == 1 and on_disk["reference_log"] is None
    assert set(per_sample["forget"]["truth_ratio"]) == {"100", "101", "102"}
    assert not list(retain_dir.glob(".*"))  # no temp files left behind

    # The same model against itself: identical truth-ratio distributions and identical MIA AUC.
    again = run_evaluation(
        tiny_model, tokenizer, "tofu", tofu_sets(), tmp_path / "self", FAST, reference_log=retain_dir
    )
    assert again["metrics"]["forget_quality"] == pytest.approx(1.0)
    assert again["metrics"]["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert again["reference_log"] == str(retain_dir / "per_sample.json")


def test_reference_log_from_another_split_is_rejected(tokenizer, tiny_model, tmp_path):
    only_forget = replace(FAST, sets=("forget",), metrics=("truth_ratio",))
    run_evaluation(tiny_model, tokenizer, "tofu", tofu_sets(), tmp_path / "ref", only_forget)
    reference = load_reference_log(tmp_path / "ref" / "per_sample.json")

    other_questions = tofu_sets(forget_names=("Ana Brel", "Someone Else", "Lia Fenn"))
    with pytest.raises(ValueError, match=r"questions differ at indices \[101\]"):
        evaluate_tofu(tiny_model, tokenizer, other_questions, only_forget, reference_log=reference)
    with pytest.raises(ValueError, match="different 'forget' split: 3 rows vs 2"):
        evaluate_tofu(
            tiny_model, tokenizer, tofu_sets(), replace(only_forget, truncate_rows=2), reference_log=reference
        )
    retain_only = replace(only_forget, sets=("retain",))
    run_evaluation(tiny_model, tokenizer, "tofu", tofu_sets(), tmp_path / "wrong", retain_only)
    with pytest.raises(ValueError, match="has no 'forget' set"):
        evaluate_tofu(tiny_model, tokenizer, tofu_sets(), only_forget, reference_log=tmp_path / "wrong")
    with pytest.raises(FileNotFoundError, match="per_sample.json"):
        evaluate_tofu(tiny_model, tokenizer, tofu_sets(), only_forget, reference_log=tmp_path / "missing")


def test_open_unlearning_label_mode_changes_scores_and_is_recorded(tokenizer, tiny_model):
    sets = {"forget": tofu_sets()["forget"]}
    options = replace(FAST, sets=("forget",), metrics=("prob",))
    ours = evaluate_tofu(tiny_model, tokenizer, sets, options)
    theirs = evaluate_tofu(tiny_model, tokenizer, sets, replace(options, label_mode="open_unlearning"))
    assert theirs.meta["label_mode"] == "open_unlearning"
    assert theirs.meta["prompt_format"]["label_mode"] == "open_unlearning"
    assert ours.per_sample["forget"]["nll"]["100"] != pytest.approx(theirs.per_sample["forget"]["nll"]["100"])


def test_tofu_options_truncation_and_input_errors(tokenizer, tiny_model):
    options = replace(FAST, truncate_rows=1, sets=("forget", "retain"), metrics=("prob", "truth_ratio"))
    result = evaluate_tofu(tiny_model, tokenizer, tofu_sets(), options)
    assert result.meta["row_counts"] == {"forget": 1, "retain": 1}
    assert result.meta["options"]["truncate_rows"] == 1
    assert result.metrics["model_utility"] is None and "real_authors_prob" in result.null_reasons["model_utility"]
    assert "rougeL_recall" not in result.per_sample["forget"]

    broken = tofu_sets()
    del broken["retain"][1]["paraphrased_answer"]
    with pytest.raises(ValueError, match=r"set 'retain', row 1: missing \['paraphrased_answer'\]"):
        evaluate_tofu(tiny_model, tokenizer, broken, replace(options, truncate_rows=None))
    with pytest.raises(ValueError, match="unknown TOFU eval set"):
        evaluate_tofu(tiny_model, tokenizer, {"forget_eval": []}, options)
    with pytest.raises(ValueError, match="unknown"):
        TofuEvalOptions(metrics=("bleu",))

    no_holdout = {k: v for k, v in tofu_sets().items() if k != "holdout"}
    result = evaluate_tofu(
        tiny_model, tokenizer, no_holdout, replace(FAST, sets=("forget", "holdout"), metrics=("mia",))
    )
    assert result.metrics["privleak"] is None and result.metrics["mia_min_k_auc"] is None
    assert any("holdout" in note for note in result.notes)


def test_tofu_rows_option_keeps_evenly_spaced_rows(tokenizer, tiny_model):
    options = replace(FAST, rows={"forget": 2, "world_facts": 5}, sets=("forget", "world_facts"), metrics=("prob",))
    result = evaluate_tofu(tiny_model, tokenizer, tofu_sets(("A a", "B b", "C c", "D d", "E e")), options)
    # 5 forget rows, keep 2: positions 0 and 5 // 2 = 2 -> indices 100 and 102; 5 > 2 world facts keeps both.
    assert result.meta["row_counts"] == {"forget": 2, "world_facts": 2}
    assert sorted(int(i) for i in result.per_sample["forget"]["prob"]) == [100, 102]
    with pytest.raises(ValueError, match="rows: unknown set"):
        TofuEvalOptions(rows={"forgets": 2})
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        TofuEvalOptions(rows={"forget": 0})


def muse_data():
    qa = [{"question": f"What did council {k} vote on?", "answer": f"The bridge number {k}."} for k in range(3)]
    texts = [f"Residents of town {k} gathered on Monday to debate the new harbour plan." for k in range(6)]
    return {
        "knowmem": {
            "forget_qa": qa[:2],
            "retain_qa": qa[2:],
            "forget_qa_icl": [
                {"question": "Who won?", "answer": "The mayor."},
                {"question": "When?", "answer": "May."},
            ],
            "retain_qa_icl": [{"question": "Where?", "answer": "Bergen."}],
        },
        "verbmem": {"forget": [{"prompt": t[:30], "gt": t[30:]} for t in texts[:2]]},
        "privleak": {"forget": [{"text": t} for t in texts[:3]], "holdout": [{"text": t} for t in texts[3:]]},
    }


def test_muse_suite(tokenizer, tiny_model, tmp_path):
    options = MuseEvalOptions(batch_size=2, knowmem_max_new_tokens=4, verbmem_max_new_tokens=4, icl_shots=1)
    summary = run_evaluation(tiny_model, tokenizer, "muse", muse_data(), tmp_path / "ret", options)
    metrics = summary["metrics"]
    for key in ("verbmem_f", "knowmem_f", "knowmem_r"):
        assert 0.0 <= metrics[key] <= 1.0
    assert summary["icl_shots_used"] == {"knowmem_forget": 1, "knowmem_retain": 1}
    assert summary["row_counts"]["privleak_forget"] == 3
    assert metrics["privleak"] is None and 0.0 <= metrics["mia_min_k_auc"] <= 1.0

    result = evaluate_muse(tiny_model, tokenizer, muse_data(), options, reference_log=tmp_path / "ret")
    assert result.metrics["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert set(result.per_sample["privleak_holdout"]["mia_min_k"]) == {"0", "1", "2"}
    scaled, _ = summarize_muse(result.per_sample, replace(options, scale_100=True), None)
    assert scaled["knowmem_f"] == pytest.approx(100 * result.metrics["knowmem_f"])
    assert scaled["mia_loss_auc"] == pytest.approx(result.metrics["mia_loss_auc"])


def test_knowmem_prompt_matches_muse():
    shots = [{"question": "Who won?", "answer": "The mayor."}]
    assert knowmem_prompt("When?", shots) == "Question: Who won?\nAnswer: The mayor.\n\nQuestion: When?\nAnswer: "


class _DropIndex(PaddingCollator):
    def __call__(self, items):
        batch = super().__call__(items)
        batch.pop("index", None)
        return batch


def test_callback_logs_every_n_steps_during_training(tokenizer, tiny_model, tmp_path):
    from transformers import Trainer, TrainingArguments

    sets = tofu_sets()
    train = QADataset(sets["retain"] + sets["forget"], tokenizer, PromptFormat())
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"),
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=tiny_model, args=args, train_dataset=train, data_collator=_DropIndex(tokenizer.pad_token_id)
    )
    callback = EvaluationCallback(
        tokenizer,
        "tofu",
        {"forget": sets["forget"]},
        tmp_path / "eval",
        every_n_steps=1,
        options=replace(FAST, metrics=("prob", "truth_ratio")),
        sets=("forget",),
        eval_on_train_begin=True,
    ).attach(trainer)
    trainer.add_callback(callback)
    forget_probs = []
    callback_evaluate = callback.evaluate

    def recording_evaluate(state, model):
        assert model.training  # mid-training...
        metrics = callback_evaluate(state, model)
        assert model.training  # ...and restored afterwards
        forget_probs.append(metrics["forget_prob"])
        return metrics

    callback.evaluate = recording_evaluate
    trainer.train()

    rows = [json.loads(line) for line in (tmp_path / "eval" / "eval_steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert [row["forget_prob"] for row in rows] == forget_probs
    assert forget_probs[0] != forget_probs[-1]  # the model trained on the forget rows in between
    logged = [entry for entry in trainer.state.log_history if "unlearn_eval/forget_prob" in entry]
    assert [entry["step"] for entry in logged] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(entry["unlearn_eval/forget_truth_ratio"])) for entry in logged)


@pytest.mark.slow
def test_real_smollm2_scores_match_design_measurements(tokenizer, smollm2, tofu_dir):
    """Measured facts on forget01 before fine-tuning: answer NLL around 2 (all 40 rows: 2.19 here, against an
    earlier estimate of "about 2.5"; these 6 rows: 1.34; a random model: ~10.8), and open-unlearning's span and mask
    move per-sample answer probabilities by 0.84-1.10x (all 40 rows here: 0.835-1.097)."""
    rows = [json.loads(line) for line in (tofu_dir / "forget01_perturbed.json").read_text().splitlines()[:6]]
    sets = {"forget": [{**row, "index": i} for i, row in enumerate(rows)]}
    options = TofuEvalOptions(batch_size=6, sets=("forget",), metrics=("prob",))
    ours = evaluate_tofu(smollm2, tokenizer, sets, options).per_sample["forget"]
    theirs = evaluate_tofu(smollm2, tokenizer, sets, replace(options, label_mode="open_unlearning")).per_sample[
        "forget"
    ]
    mean_nll = sum(ours["nll"].values()) / len(rows)
    assert 1.0 < mean_nll < 3.0
    ratios = [theirs["prob"][k] / ours["prob"][k] for k in ours["prob"]]
    assert all(0.8 < r < 1.15 for r in ratios)
    assert max(abs(r - 1) for r in ratios) > 0.01
