"""NaN and inf (a diverged model) stay NaN per sample, and every aggregate over them is null with the rows named:
in the summary, in strict JSON, and in the report."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm_unlearn.evaluation import metrics as M
from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.reference import ReferenceLog
from llm_unlearn.evaluation.report import make_report
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu, summarize_tofu

NAN, INF = math.nan, math.inf
BAD = [NAN, INF, -INF]


@pytest.mark.parametrize("bad", BAD)
def test_probability_and_truth_ratio_functions_give_nan(bad):
    assert math.isnan(M.probability(bad))
    assert math.isnan(M.geometric_mean_probability([0.5, bad]))
    assert math.isnan(M.truth_ratio(bad, [0.5, 0.7]))  # was clamped to ~1e-304 / ~1e304
    assert math.isnan(M.truth_ratio(0.5, [0.7, bad]))
    assert math.isnan(M.normalized_probability(bad, [0.5]))
    assert math.isnan(M.normalized_probability(0.5, [bad, 0.5]))


@pytest.mark.parametrize("bad", BAD)
def test_attack_scores_give_nan(bad):
    assert math.isnan(mia.loss_score([-1.0, bad]))
    assert math.isnan(mia.zlib_score([-1.0, bad], "some text"))
    assert math.isnan(mia.min_k_score([-1.0, -2.0, bad, -0.5, -3.0]))  # never sorted into place
    lp, mu, sigma = [-1.0, -2.0], [-1.5, -1.0], [0.5, 2.0]
    assert math.isnan(mia.min_k_plus_plus_score([bad, -2.0], mu, sigma))
    assert math.isnan(mia.min_k_plus_plus_score(lp, [bad, -1.0], sigma))
    assert math.isnan(mia.min_k_plus_plus_score(lp, mu, [0.5, bad]))  # max(NaN, floor) was NaN or the floor


@pytest.mark.parametrize("bad", BAD)
def test_aggregations_and_composites_give_nan(bad):
    assert math.isnan(M.forget_truth_ratio_aggregate([0.5, bad]))  # NaN > 0 is False: it used to count as 0
    assert math.isnan(M.retain_truth_ratio_aggregate([0.5, bad]))  # max(0, NaN) is 0
    assert math.isnan(M.METRICS["prob"].aggregate([0.5, bad]))
    assert math.isnan(M.forget_quality([0.1, 0.2, bad], [0.3, 0.4, 0.5]))
    assert math.isnan(M.forget_quality([0.1, 0.2, 0.3], [0.3, bad, 0.5]))
    assert math.isnan(M.harmonic_mean([0.5, 0.0, bad]))  # not 0 because of the 0
    assert math.isnan(mia.mia_auc([0.1, bad], [0.3, 0.4]))
    assert math.isnan(mia.mia_auc([0.1, 0.2], [bad, 0.4]))
    assert math.isnan(mia.privleak(bad, 0.5))
    assert math.isnan(mia.privleak(0.5, bad))


def _rows(values: dict) -> dict:
    return {str(k): v for k, v in values.items()}


def utility_per_sample(retain_tr_at_3=0.5) -> dict:
    """Hand-built per-sample values for all nine model-utility parts and the forget set."""
    per_sample = {
        "forget": {"prob": _rows({1: 0.9, 2: 0.8}), "truth_ratio": _rows({1: 0.5, 2: 2.0})},
        "retain": {
            "prob": _rows({3: 0.6, 4: 0.8}),
            "rougeL_recall": _rows({3: 0.5, 4: 0.7}),
            "truth_ratio": _rows({3: retain_tr_at_3, 4: 0.25}),
        },
    }
    for name in ("real_authors", "world_facts"):
        per_sample[name] = {
            "normalized_prob": _rows({0: 0.5, 1: 0.7}),
            "rougeL_recall": _rows({0: 1.0, 1: 0.5}),
            "truth_ratio": _rows({0: 0.5, 1: 0.5}),
        }
    return per_sample


OPTIONS = TofuEvalOptions(metrics=("prob", "truth_ratio", "rouge"))


def test_summary_nulls_the_aggregate_and_names_the_row():
    finite, _ = summarize_tofu(utility_per_sample(), OPTIONS, None)
    # Hand values: retain truth ratio mean(1 - 0.5, 1 - 0.25) = 0.625; utility: harmonic mean of the nine parts.
    assert finite["retain_truth_ratio"] == pytest.approx(0.625)
    parts = [0.7, 0.6, 0.625, 0.6, 0.75, 0.5, 0.6, 0.75, 0.5]
    assert finite["model_utility"] == pytest.approx(9 / sum(1 / p for p in parts))

    metrics, reasons = summarize_tofu(utility_per_sample(retain_tr_at_3=NAN), OPTIONS, None)
    assert metrics["retain_truth_ratio"] is None
    assert (
        reasons["retain_truth_ratio"] == "non-finite (NaN or inf) per-sample values: 'retain' truth_ratio at rows [3]"
    )
    assert metrics["model_utility"] is None
    assert "retain_truth_ratio" in reasons["model_utility"] and "rows [3]" in reasons["model_utility"]
    assert metrics["retain_prob"] == pytest.approx(0.7)  # other sets' and metrics' aggregates are untouched
    json.dumps(metrics, allow_nan=False)  # a strict JSON summary: null, never NaN


def _reference(truth_ratios: dict) -> ReferenceLog:
    return ReferenceLog(Path("retain/per_sample.json"), {"forget": {"truth_ratio": _rows(truth_ratios)}}, None)


def test_forget_quality_is_null_when_either_models_ratios_are_not_finite():
    metrics, _ = summarize_tofu(utility_per_sample(), OPTIONS, _reference({1: 0.5, 2: 2.0}))
    assert metrics["forget_quality"] == pytest.approx(1.0)  # same distribution

    per_sample = utility_per_sample()
    per_sample["forget"]["truth_ratio"]["2"] = INF
    metrics, reasons = summarize_tofu(per_sample, OPTIONS, _reference({1: 0.5, 2: 2.0}))
    assert metrics["forget_quality"] is None and "'forget' truth_ratio at rows [2]" in reasons["forget_quality"]

    metrics, reasons = summarize_tofu(utility_per_sample(), OPTIONS, _reference({1: NAN, 2: 2.0}))
    assert metrics["forget_quality"] is None
    assert reasons["forget_quality"].startswith("reference log retain/per_sample.json: non-finite")
    assert "rows [1]" in reasons["forget_quality"]


class NanOnTrigger(torch.nn.Module):
    """Uniform logits, except NaN logits for every sequence that contains the trigger token."""

    def __init__(self, vocab_size: int, trigger: int):
        super().__init__()
        self.vocab_size, self.trigger = vocab_size, trigger

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[(input_ids == self.trigger).any(dim=1)] = math.nan
        return SimpleNamespace(logits=logits)


def _qa(index, question):
    return {
        "index": index,
        "question": question,
        "answer": "She was born in Lisbon.",
        "paraphrased_answer": "Lisbon is where she was born.",
        "perturbed_answer": ["She was born in Rome.", "She was born in Oslo."],
    }


def test_a_diverged_row_is_null_in_the_summary_and_named_in_the_report(tokenizer, tmp_path):
    trigger = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sets = {
        "forget": [_qa(10, "Where was Ana born?"), _qa(11, "Where was <|endoftext|> born?"), _qa(12, "And Lia?")],
        "holdout": [_qa(20, "Where was Ivo born?"), _qa(21, "Where was Une born?")],
    }
    options = TofuEvalOptions(
        batch_size=2, sets=("forget", "holdout"), metrics=("prob", "truth_ratio", "mia", "memorization")
    )
    result = evaluate_tofu(NanOnTrigger(len(tokenizer), trigger), tokenizer, sets, options)
    forget = result.per_sample["forget"]
    for metric in ("nll", "prob", "truth_ratio", "extraction_strength", "exact_memorization", "mia_min_k"):
        assert math.isnan(forget[metric]["11"]), metric
        assert math.isfinite(forget[metric]["10"]), metric
    # Uniform logits elsewhere: p = 1/V per token, so the healthy rows' Prob is 1/V.
    assert forget["prob"]["10"] == pytest.approx(1 / len(tokenizer), rel=1e-4)
    for key in ("forget_prob", "forget_truth_ratio", "forget_extraction_strength", "mia_min_k_auc", "privleak"):
        assert result.metrics[key] is None, key
        assert "'forget'" in result.null_reasons[key] and "rows [11]" in result.null_reasons[key], key
    assert result.meta["nonfinite_rows"]["forget"]["truth_ratio"] == ["11"]
    assert "holdout" not in result.meta["nonfinite_rows"]

    run = tmp_path / "diverged"
    run.mkdir()
    summary = result.summary()
    (run / "summary.json").write_text(json.dumps(summary, allow_nan=False))
    report = make_report([run], tmp_path / "report").read_text()
    assert "non-finite (NaN or inf) truth_ratio on 'forget' at rows 11" in report
    assert "'forget' prob at rows [11]" in report  # the "why null" column of forget_prob


def test_muse_attack_auc_with_a_nan_row_is_null_with_the_row_named():
    from llm_unlearn.evaluation.muse import PRIV_F, PRIV_H, MuseEvalOptions, summarize_muse

    finite = {"mia_loss": 1.0, "mia_zlib": 0.1, "mia_min_k": 2.0, "mia_min_k_pp": 0.5}
    forget = {str(i): {**finite, "mia_loss": 1.0 + i} for i in range(3)}
    forget["1"]["mia_loss"] = math.nan
    holdout = {str(i): {**finite, "mia_loss": 3.0 + i} for i in range(3)}

    def by_metric(rows):
        return {metric: {index: row[metric] for index, row in rows.items()} for metric in finite}

    per_sample = {PRIV_F: by_metric(forget), PRIV_H: by_metric(holdout)}
    metrics, reasons = summarize_muse(per_sample, MuseEvalOptions(sets=("privleak",), reference_auc=0.5), None)
    assert metrics["mia_loss_auc"] is None
    assert f"'{PRIV_F}' mia_loss at rows [1]" in reasons["mia_loss_auc"]
    # The other attacks are unaffected: their AUC is the plain one over the same rows.
    assert metrics["mia_min_k_auc"] == mia.mia_auc([2.0] * 3, [2.0] * 3) == 0.5
    assert json.dumps(metrics, allow_nan=False)
