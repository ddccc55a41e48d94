"""MUSE compatibility: whole-text privleak, the `muse` preset, and privleak against a fixed reference AUC.

Expected values are built by hand or through another path (a plain forward pass, rouge_score directly), never
from the function under test.
"""

import json
from dataclasses import asdict

import pytest
import torch
from rouge_score import rouge_scorer

from llm_unlearn.data.collate import IGNORE_INDEX
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse, first_tokens, summarize_muse
from llm_unlearn.evaluation.runner import run_evaluation
from llm_unlearn.evaluation.scoring import encode_raw_text
from llm_unlearn.models import tiny_llama

LONG_TEXT = "The" + " word" * 1999  # 2,000 SmolLM2 tokens, no BOS added
PRIVLEAK_ONLY = MuseEvalOptions(batch_size=1, sets=("privleak",))


def _privleak_data(forget_texts, holdout_texts):
    return {
        "privleak": {"forget": [{"text": t} for t in forget_texts], "holdout": [{"text": t} for t in holdout_texts]}
    }


def test_raw_text_encoding_keeps_the_whole_text_unless_capped(tokenizer):
    whole = encode_raw_text(tokenizer, LONG_TEXT, None)
    assert len(whole["input_ids"]) == 2000 and whole["text_tokens"] == 2000
    assert whole["labels"][0] == IGNORE_INDEX and whole["labels"][1:] == whole["input_ids"][1:]
    capped = encode_raw_text(tokenizer, LONG_TEXT, 512)
    assert len(capped["input_ids"]) == 512 and capped["text_tokens"] == 2000


def test_whole_text_privleak_scores_every_token_but_the_first(tokenizer):
    model = tiny_llama(len(tokenizer), seed=0)
    model.config.max_position_embeddings = 2048  # its rotary embedding has no length limit of its own
    ids = tokenizer(LONG_TEXT)["input_ids"]
    assert len(ids) == 2000
    result = evaluate_muse(model, tokenizer, _privleak_data([LONG_TEXT], ["A short holdout text."]), PRIVLEAK_ONLY)
    forget = result.per_sample["privleak_forget"]
    assert forget["num_tokens"]["0"] == 1999 and forget["cut_tokens"]["0"] == 0
    assert result.meta["privleak_token_limit"] == 2048
    assert not any("privleak scored" in n or "longer than the model's context" in n for n in result.notes)

    # Min-K% (k = 0.4) by hand from one plain forward over all 2,000 tokens: the 799 lowest of 1,999 log-probs.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    lowest = sorted(logprobs.tolist())[: int(1999 * 0.4)]
    assert forget["mia_min_k"]["0"] == pytest.approx(-sum(lowest) / len(lowest), rel=1e-4)
    assert forget["nll"]["0"] == pytest.approx(-logprobs.mean().item(), rel=1e-4)


def test_text_longer_than_the_model_context_is_cut_to_it_with_a_note(tokenizer, tiny_model):
    text = "The" + " word" * 599  # 600 tokens; the tiny model takes 512 positions
    data = _privleak_data([text], ["A short holdout text."])
    result = evaluate_muse(tiny_model, tokenizer, data, PRIVLEAK_ONLY)
    assert result.per_sample["privleak_forget"]["num_tokens"]["0"] == 511
    assert result.per_sample["privleak_forget"]["cut_tokens"]["0"] == 88
    assert any("1 of 2 privleak texts are longer than the model's context (512 tokens" in n for n in result.notes)

    capped = evaluate_muse(
        tiny_model, tokenizer, data, MuseEvalOptions(batch_size=1, sets=("privleak",), max_length=100)
    )
    assert capped.per_sample["privleak_forget"]["num_tokens"]["0"] == 99
    assert capped.per_sample["privleak_holdout"]["cut_tokens"]["0"] == 0
    assert any("privleak scored the first 100 tokens of each text (max_length): 1 of 2" in n for n in capped.notes)


def test_preset_changes_exactly_the_muse_settings():
    ours = asdict(MuseEvalOptions().resolved())
    muse = asdict(MuseEvalOptions(preset="muse").resolved())
    changed = {key for key in ours if ours[key] != muse[key]}
    assert changed == {"preset", "scale_100", "rouge_stemming", "verbmem_reference_tokens", "reference_auc"}
    assert [ours[k] for k in ("scale_100", "rouge_stemming", "verbmem_reference_tokens", "reference_auc")] == [
        False,
        True,
        None,
        "reference_log",
    ]
    assert [muse[k] for k in ("scale_100", "rouge_stemming", "verbmem_reference_tokens", "reference_auc")] == [
        True,
        False,
        128,
        "muse_news",
    ]
    assert ours["max_length"] is None and muse["max_length"] is None  # whole texts either way
    # A field given explicitly wins over the preset; MUSE cuts its reference to as many tokens as it generates.
    assert MuseEvalOptions(preset="muse", rouge_stemming=True).resolved().rouge_stemming is True
    assert MuseEvalOptions(preset="muse", verbmem_max_new_tokens=64).resolved().verbmem_reference_tokens == 64
    resolved = MuseEvalOptions(preset="muse").resolved()
    assert resolved.resolved() == resolved


def test_first_tokens_cuts_the_reference_like_muse(tokenizer):
    assert first_tokens(tokenizer, "The council met on Tuesday", 2) == "The council"
    assert first_tokens(tokenizer, "The council met on Tuesday", None) == "The council met on Tuesday"


def _news():
    texts = [f"Residents of town {k} gathered on Monday to debate the new harbour plan." for k in range(4)]
    return {
        "verbmem": {"forget": [{"prompt": "Residents of town", "gt": " alpha beta gamma delta epsilon zeta"}]},
        "privleak": {"forget": [{"text": t} for t in texts[:2]], "holdout": [{"text": t} for t in texts[2:]]},
    }


def test_summary_records_the_preset_and_uses_its_settings(tokenizer, tiny_model, tmp_path):
    options = MuseEvalOptions(batch_size=2, verbmem_max_new_tokens=3, preset="muse", sets=("verbmem", "privleak"))
    summary = run_evaluation(tiny_model, tokenizer, "muse", _news(), tmp_path / "run", options)
    recorded = summary["options"]
    assert recorded["preset"] == "muse" and recorded["scale_100"] is True and recorded["rouge_stemming"] is False
    assert recorded["verbmem_reference_tokens"] == 3 and recorded["reference_auc"] == "muse_news"
    assert summary["privleak_reference_auc"] == pytest.approx(1 - 0.4772)
    assert any("MUSE's published retain-model AUC for muse_news (0.4772" in note for note in summary["notes"])

    # verbmem against the first 3 tokens of the continuation, ROUGE-L F1 without stemming, x100.
    per_sample = json.loads((tmp_path / "run" / "per_sample.json").read_text())
    generation = per_sample["verbmem_forget"]["generation"]["0"]
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(" alpha beta gamma", generation)
    assert per_sample["verbmem_forget"]["rougeL_f1"]["0"] == pytest.approx(expected["rougeL"].fmeasure)
    assert summary["metrics"]["verbmem_f"] == pytest.approx(100 * expected["rougeL"].fmeasure)
    # privleak needs no reference log: MUSE's formula on MUSE's AUC (1 - this project's) and its published value.
    auc_muse = 1 - summary["metrics"]["mia_min_k_auc"]
    assert summary["metrics"]["privleak"] == pytest.approx((auc_muse - 0.4772) / 0.4772 * 100)


# Min-K% scores (loss-like) by hand: forget texts beat holdout texts in 8 of the 9 pairs, so this project's AUC
# is 8/9 and MUSE's (the chance a holdout text looks more member-like) 1/9.
HAND_PER_SAMPLE = {
    "privleak_forget": {"mia_min_k": {"0": 1.0, "1": 2.0, "2": 3.0}},
    "privleak_holdout": {"mia_min_k": {"0": 2.5, "1": 4.0, "2": 5.0}},
}


@pytest.mark.parametrize(
    ("reference_auc", "preset", "expected"),
    [
        ("muse_news", None, (1 / 9 - 0.4772) / 0.4772 * 100),
        (None, "muse", (1 / 9 - 0.4772) / 0.4772 * 100),
        ("muse_books", None, (1 / 9 - 0.5393) / 0.5393 * 100),
        # A number is in this project's convention: ((1 - 8/9) - (1 - 0.6)) / (1 - 0.6) x 100.
        (0.6, None, ((1 - 8 / 9) - 0.4) / 0.4 * 100),
    ],
)
def test_privleak_with_a_fixed_reference_auc_equals_the_formula(reference_auc, preset, expected):
    options = MuseEvalOptions(sets=("privleak",), reference_auc=reference_auc, preset=preset)
    metrics, reasons = summarize_muse(HAND_PER_SAMPLE, options, None)
    assert metrics["mia_min_k_auc"] == pytest.approx(8 / 9)
    assert metrics["privleak"] == pytest.approx(expected) and "privleak" not in reasons


def test_without_a_fixed_auc_privleak_still_needs_the_reference_log():
    metrics, reasons = summarize_muse(HAND_PER_SAMPLE, MuseEvalOptions(sets=("privleak",)), None)
    assert metrics["privleak"] is None and "no reference log" in reasons["privleak"]


def test_bad_preset_and_reference_auc_are_refused_up_front():
    with pytest.raises(ValueError, match="preset must be null"):
        MuseEvalOptions(preset="open_unlearning")
    with pytest.raises(ValueError, match=r"reference_auc must be a number in \(0, 1\) or one of"):
        MuseEvalOptions(reference_auc="news")
    with pytest.raises(ValueError, match="privleak is undefined at 1"):
        MuseEvalOptions(reference_auc=1.0)
    with pytest.raises(ValueError, match=r"MUSE's Min-40% AUC on whole texts: it needs min_k: 0.4"):
        MuseEvalOptions(preset="muse", min_k=0.2)
    with pytest.raises(ValueError, match="max_length=512"):
        MuseEvalOptions(reference_auc="muse_news", max_length=512)
    with pytest.raises(ValueError, match="max_length must be null or a whole number"):
        MuseEvalOptions(max_length=0)
    # MUSE's settings with this project's own retain log: allowed at any min_k.
    assert MuseEvalOptions(preset="muse", reference_auc="reference_log", min_k=0.2).fixed_reference_auc() is None
