"""A new metric is one registration: registered here (and removed afterwards), it appears in TOFU's and MUSE's
per-sample logs and summaries, with its direction, without any change to the suite code."""

import pytest
import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PromptFormat, encode_qa
from llm_unlearn.evaluation import registry
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse
from llm_unlearn.evaluation.registry import FORGET, PRIV_F, PRIV_H, RETAIN, Metric, Report, register
from llm_unlearn.evaluation.scoring import encode_raw_text
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu


def _qa(index, name):
    return {"index": index, "question": f"Where was {name} born?", "answer": f"{name} was born in Lisbon."}


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture()
def first_token_metric():
    """The first scored token's log-prob (a throwaway metric), unregistered after the test."""
    metric = register(
        Metric(
            "first_token_logprob",
            lambda token_logprobs: token_logprobs[0],
            _mean,
            True,
            "log-prob of the first scored token",
            group="mia",  # on with the attacks, the group MUSE runs on its privleak texts
            needs=("answer",),
            sets=(FORGET, RETAIN, PRIV_F, PRIV_H),
            inputs=lambda row, settings: (row.answer.token_logprobs,),
            reports=(Report("forget_first_token_logprob", (FORGET,), False),),
        )
    )
    gap = register(
        Metric(
            "first_token_gap",
            None,
            lambda forget, holdout: _mean(forget) - _mean(holdout),
            None,
            "mean first-token log-prob, forget minus holdout",
            group="mia",
            column="first_token_logprob",
            reports=(Report("first_token_gap", (PRIV_F, PRIV_H), missing="needs both privleak splits"),),
        )
    )
    yield metric
    for name in (metric.name, gap.name):
        registry.unregister(name)
        assert name not in registry.METRICS and all(entry.name != name for entry in registry.COLUMNS)


def _first_logprob(model, input_ids, labels) -> float:
    """Brute force, without the scoring code: one unpadded forward, the log-prob of the first labelled token."""
    position = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0, position - 1].double()
    return float(torch.log_softmax(logits, dim=-1)[input_ids[position]])


def test_a_registered_metric_reaches_tofu_per_sample_and_summary(tokenizer, tiny_model, first_token_metric):
    sets = {"forget": [_qa(4, "Ana Brel"), _qa(7, "Lia Fenn")], "retain": [_qa(1, "Oren Vale")]}
    options = TofuEvalOptions(batch_size=2, sets=("forget", "retain"), metrics=("mia",))
    result = evaluate_tofu(tiny_model, tokenizer, sets, options)
    forget = result.per_sample["forget"]["first_token_logprob"]
    expected = {}
    for record in sets["forget"]:
        item = encode_qa(tokenizer, record["question"], record["answer"], PromptFormat())
        expected[str(record["index"])] = _first_logprob(tiny_model, item["input_ids"], item["labels"])
    assert forget == pytest.approx(expected, rel=1e-4)
    assert list(result.per_sample["retain"]["first_token_logprob"]) == ["1"]
    assert result.metrics["forget_first_token_logprob"] == pytest.approx(_mean(list(expected.values())), rel=1e-4)
    assert result.meta["higher_is_better"]["forget_first_token_logprob"] is False
    assert "retain_first_token_logprob" not in result.metrics  # only the reports it registers
    assert "first_token_gap" not in result.metrics  # its sets are MUSE's


def test_a_registered_metric_is_off_with_its_group(tokenizer, tiny_model, first_token_metric):
    options = TofuEvalOptions(batch_size=2, max_new_tokens=2, sets=("forget",), metrics=("rouge",))
    result = evaluate_tofu(tiny_model, tokenizer, {"forget": [_qa(4, "Ana Brel")]}, options)
    assert "first_token_logprob" not in result.per_sample["forget"]
    assert "forget_first_token_logprob" not in result.metrics


def test_a_registered_two_set_metric_reaches_muse(tokenizer, tiny_model, first_token_metric):
    texts = [f"Residents of town {k} met on Monday to debate the harbour plan." for k in range(4)]
    data = {"privleak": {"forget": [{"text": t} for t in texts[:2]], "holdout": [{"text": t} for t in texts[2:]]}}
    result = evaluate_muse(tiny_model, tokenizer, data, MuseEvalOptions(batch_size=2, sets=("privleak",)))
    values = {}
    for name, split in ((PRIV_F, "forget"), (PRIV_H, "holdout")):
        values[name] = result.per_sample[name]["first_token_logprob"]
        for index, record in enumerate(data["privleak"][split]):
            item = encode_raw_text(tokenizer, record["text"], None)
            brute = _first_logprob(tiny_model, item["input_ids"], item["labels"])
            assert values[name][str(index)] == pytest.approx(brute, rel=1e-4)
    gap = _mean(list(values[PRIV_F].values())) - _mean(list(values[PRIV_H].values()))
    assert result.metrics["first_token_gap"] == pytest.approx(gap)
    assert "forget_first_token_logprob" not in result.metrics  # a TOFU set

    without_holdout = {"privleak": {"forget": data["privleak"]["forget"]}}
    result = evaluate_muse(tiny_model, tokenizer, without_holdout, MuseEvalOptions(batch_size=2, sets=("privleak",)))
    assert result.metrics["first_token_gap"] is None
    assert result.null_reasons["first_token_gap"] == "needs both privleak splits"


def test_a_name_can_be_registered_once(first_token_metric):
    with pytest.raises(ValueError, match="'first_token_logprob' is already registered"):
        register(first_token_metric)
