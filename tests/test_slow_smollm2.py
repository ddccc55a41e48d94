"""Real-model checks on SmolLM2-135M-Instruct (marked slow; they run in CI in a few minutes).

One short LoRA fine-tune on synthetic authors is shared by the tests of this module; the numbers each test
measures are printed (pytest -s) so they can be reported.
"""

import pytest
import torch

from llm_unlearn.data import DataConfig, load_qa_splits
from llm_unlearn.data.collate import PaddingCollator, PairedDataset, PromptFormat, QADataset
from llm_unlearn.methods import get_method
from llm_unlearn.methods.base import sequence_stats
from llm_unlearn.models import LoraSettings, load_model, wrap_lora

pytestmark = pytest.mark.slow

DATA = DataConfig(n_authors=5, qa_per_author=3, forget_authors=1, holdout_authors=1, seed=0)


@torch.no_grad()
def mean_nll(model, tokenizer, records) -> float:
    model.eval()
    batch = PaddingCollator(tokenizer.pad_token_id)([QADataset(records, tokenizer)[i] for i in range(len(records))])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(sequence_stats(logits, batch["labels"])[0].mean())


def test_converted_smollm2_knows_paris(smollm2, tokenizer):
    from llm_unlearn.data.collate import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, "What is the capital of France?", PromptFormat())])
    out = smollm2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"\nSmolLM2: {answer!r}")
    assert "Paris" in answer


def test_smollm2_answer_nll_on_tofu_forget01(smollm2, tokenizer, tofu_dir):
    from llm_unlearn.data.tofu import load_tofu_split

    rows = load_tofu_split(str(tofu_dir), "forget01")
    nll = sum(mean_nll(smollm2, tokenizer, rows[i : i + 10]) * len(rows[i : i + 10]) for i in range(0, len(rows), 10))
    nll /= len(rows)
    print(f"\nSmolLM2 mean answer NLL on TOFU forget01 (40 rows): {nll:.3f}")
    assert nll < 3.0


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """SmolLM2 + LoRA fine-tuned on the synthetic authors (forget + retain), merged: the target model."""
    from llm_unlearn.stages import RunOptions, parse_config, run_finetune

    out = tmp_path_factory.mktemp("target")
    config = {
        "model": {"name_or_path": "smollm2-135m-instruct", "lora": {"r": 8, "lora_alpha": 16}},
        "data": vars(DATA),
        "finetune": {"which": "target"},
        "training": {
            "output_dir": str(out),
            "learning_rate": 2e-3,
            "num_train_epochs": 10,
            "per_device_train_batch_size": 12,  # the whole target set: one step per epoch
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    return str(run_finetune(parse_config(config), RunOptions(overwrite=True)))


@pytest.fixture(scope="module")
def splits():
    return load_qa_splits(DATA)


def unlearn(method, target, tokenizer, splits, tmp_path, **overrides):
    model = wrap_lora(load_model(target), LoraSettings())
    dataset = PairedDataset(QADataset(splits.forget, tokenizer), QADataset(splits.retain, tokenizer), seed=0)
    settings = dict(
        output_dir=str(tmp_path / method),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-4,
        warmup_steps=0,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    spec = get_method(method)
    trainer = spec.trainer(model=model, args=spec.config(**settings), train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer, model


def test_finetuning_moves_forget_metrics_in_the_expected_direction(finetuned, smollm2, tokenizer, splits):
    import math

    from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu

    options = TofuEvalOptions(batch_size=8, max_new_tokens=24, sets=("forget",), metrics=("truth_ratio", "rouge"))
    sets = {"forget": splits.forget_eval}
    base = evaluate_tofu(smollm2, tokenizer, sets, options)
    tuned = evaluate_tofu(load_model(finetuned), tokenizer, sets, options)

    def mean_log_ratio(result) -> float:
        ratios = result.per_sample["forget"]["truth_ratio"].values()
        return sum(math.log(r) for r in ratios) / len(ratios)

    print(
        f"\nforget ROUGE-L recall {base.metrics['forget_rougeL_recall']:.3f} -> {tuned.metrics['forget_rougeL_recall']:.3f}; "
        f"mean log truth ratio (p_wrong/p_correct) {mean_log_ratio(base):.3f} -> {mean_log_ratio(tuned):.3f}; "
        f"forget truth-ratio statistic {base.metrics['forget_truth_ratio']:.3f} -> {tuned.metrics['forget_truth_ratio']:.3f}",
        flush=True,
    )
    assert tuned.metrics["forget_rougeL_recall"] > base.metrics["forget_rougeL_recall"]
    # Having learned the facts, the model prefers the (paraphrased) truth over the perturbed answers more.
    assert mean_log_ratio(tuned) < mean_log_ratio(base)


def test_mox_extrapolation_raises_forget_nll_more_than_retain_nll(finetuned, tokenizer, splits, tmp_path):
    from llm_unlearn import extrapolate as xp

    target = load_model(finetuned)
    before = (mean_nll(target, tokenizer, splits.forget), mean_nll(target, tokenizer, splits.retain))
    trainer, model = unlearn("mox", finetuned, tokenizer, splits, tmp_path, learning_rate=5e-4, max_steps=8)
    mem_forget = mean_nll(model, tokenizer, splits.forget)
    alpha = 2.0
    unlearned = load_model(finetuned)
    unlearned.load_state_dict(xp.merged_extrapolated_state(model, alpha), strict=False)
    after = (mean_nll(unlearned, tokenizer, splits.forget), mean_nll(unlearned, tokenizer, splits.retain))
    print(
        f"\nMOX alpha={alpha}: forget NLL {before[0]:.3f} -> memorized {mem_forget:.3f} -> extrapolated {after[0]:.3f}; "
        f"retain NLL {before[1]:.3f} -> {after[1]:.3f}"
    )
    assert mem_forget < before[0]  # the memorization model fits the forget set better
    assert after[0] > before[0]  # extrapolation moves away from it
    assert after[0] - before[0] > 2 * abs(after[1] - before[1])  # ... much more than the retain set moves
