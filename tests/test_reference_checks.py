"""A reference log is compared with this run beyond its rows: label mode, prompt format, system prompt, min_k and
the privleak token cut. A mismatch that changes what a composite metric compares stops the run before any
scoring, naming both values; the others become notes (and null the one metric they break)."""

import json
import shutil
from dataclasses import replace

import pytest

from llm_unlearn.data.collate import PromptFormat
from llm_unlearn.evaluation import tofu
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse
from llm_unlearn.evaluation.reference import ReferenceMismatchError
from llm_unlearn.evaluation.runner import run_evaluation
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu
from llm_unlearn.models import tiny_llama

TOFU_OPTIONS = TofuEvalOptions(batch_size=4, sets=("forget", "holdout"), metrics=("truth_ratio", "mia"))
MUSE_OPTIONS = MuseEvalOptions(batch_size=4, sets=("privleak",))


def _qa(index, name):
    return {
        "index": index,
        "question": f"Where was {name} born?",
        "answer": f"{name} was born in Lisbon.",
        "paraphrased_answer": f"Lisbon is where {name} was born.",
        "perturbed_answer": [f"{name} was born in Oslo.", f"{name} was born in Rome."],
    }


TOFU_SETS = {
    "forget": [_qa(i, name) for i, name in enumerate(["Ana Brel", "Tomas Ukko", "Lia Fenn"])],
    "holdout": [_qa(10 + i, name) for i, name in enumerate(["Ivo Lark", "Une Dahl"])],
}
NEWS = [f"Residents of town {k} met on Monday to debate the harbour plan and the new bridge." for k in range(4)]
MUSE_DATA = {"privleak": {"forget": [{"text": t} for t in NEWS[:2]], "holdout": [{"text": t} for t in NEWS[2:]]}}


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer), seed=0)


@pytest.fixture(scope="module")
def tofu_reference(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tofu_ref")
    run_evaluation(model, tokenizer, "tofu", TOFU_SETS, folder, TOFU_OPTIONS)
    return folder


@pytest.fixture(scope="module")
def muse_reference(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("muse_ref")
    run_evaluation(model, tokenizer, "muse", MUSE_DATA, folder, MUSE_OPTIONS)
    return folder


def _edited_copy(reference, tmp_path, edit):
    """A copy of a reference folder whose summary.json went through `edit` (an older or altered log)."""
    folder = tmp_path / "edited"
    shutil.copytree(reference, folder)
    summary = json.loads((folder / "summary.json").read_text())
    edit(summary)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (
            PromptFormat(label_mode="open_unlearning"),
            "label_mode='answer_eot', this run with label_mode='open_unlearning': the scored token spans differ",
        ),
        (
            PromptFormat(use_chat_template=False),
            "prompt_format.use_chat_template=True, this run with prompt_format.use_chat_template=False",
        ),
        (
            PromptFormat(system_prompt="Answer briefly."),
            "prompt_format.system_prompt=None, this run with prompt_format.system_prompt='Answer briefly.'",
        ),
    ],
    ids=["label_mode", "chat_template", "system_prompt"],
)
def test_tofu_span_and_prompt_mismatches_stop_before_scoring(
    model, tokenizer, tofu_reference, monkeypatch, fmt, message
):
    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the reference log was checked")

    monkeypatch.setattr(tofu, "score_qa_set", no_scoring)
    with pytest.raises(ReferenceMismatchError) as err:
        evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, fmt, tofu_reference)
    assert message in str(err.value)
    assert "Evaluate the retain model with the same" in str(err.value)


def test_tofu_rendered_template_mismatch_stops(model, tokenizer, tofu_reference, tmp_path):
    def other_template(summary):
        summary["prompt_example"] = "<s>[INST] {question} [/INST]"

    reference = _edited_copy(tofu_reference, tmp_path, other_template)
    with pytest.raises(ReferenceMismatchError, match=r"prompt_example='<s>\[INST\] \{question\} \[/INST\]'"):
        evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, reference_log=reference)


def test_tofu_same_settings_give_ideal_composites_and_no_notes(model, tokenizer, tofu_reference):
    result = evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, reference_log=tofu_reference)
    assert result.notes == []
    assert result.metrics["forget_quality"] == pytest.approx(1.0)
    assert result.metrics["privleak"] == pytest.approx(0.0, abs=1e-9)


def test_tofu_format_max_length_mismatch_is_a_note(model, tokenizer, tofu_reference):
    result = evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, PromptFormat(max_length=400), tofu_reference)
    assert any(
        "prompt_format.max_length=512, this run with prompt_format.max_length=400: sequences longer" in note
        for note in result.notes
    )
    assert result.metrics["forget_quality"] == pytest.approx(1.0)  # these short rows are cut by neither


def test_tofu_min_k_mismatch_is_a_note_and_nulls_only_privleak(model, tokenizer, tofu_reference):
    result = evaluate_tofu(model, tokenizer, TOFU_SETS, replace(TOFU_OPTIONS, min_k=0.2), reference_log=tofu_reference)
    assert any("options.min_k=0.4, this run with options.min_k=0.2" in note for note in result.notes)
    assert result.metrics["privleak"] is None
    assert "min_k=0.4, this run with min_k=0.2" in result.null_reasons["privleak"]
    assert result.metrics["forget_quality"] == pytest.approx(1.0)


def test_tofu_older_logs_give_notes_not_errors(model, tokenizer, tofu_reference, tmp_path):
    def drop_fields(summary):
        del summary["options"]["min_k"], summary["prompt_example"]

    older = _edited_copy(tofu_reference, tmp_path, drop_fields)
    result = evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, reference_log=older)
    for name in ("options.min_k", "prompt_example"):
        assert f"does not record {name} (an older log): not compared" in "\n".join(result.notes)
    assert result.metrics["privleak"] == pytest.approx(0.0, abs=1e-9)

    (older / "summary.json").unlink()
    result = evaluate_tofu(model, tokenizer, TOFU_SETS, TOFU_OPTIONS, reference_log=older)
    assert len(result.notes) == 1 and "has no summary.json beside it" in result.notes[0]
    assert "label_mode, prompt_format.use_chat_template" in result.notes[0]
    assert result.metrics["forget_quality"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_k": 0.2}, "options.min_k=0.4, this run with options.min_k=0.2"),
        ({"max_length": 64}, "options.max_length=None, this run with options.max_length=64"),
    ],
    ids=["min_k", "max_length"],
)
def test_muse_min_k_and_token_cut_mismatches_stop(model, tokenizer, muse_reference, change, message):
    with pytest.raises(ReferenceMismatchError) as err:
        evaluate_muse(model, tokenizer, MUSE_DATA, replace(MUSE_OPTIONS, **change), reference_log=muse_reference)
    assert message in str(err.value) and "the Min-K% scores differ" in str(err.value)


def test_muse_log_from_the_512_token_default_is_refused(model, tokenizer, muse_reference, tmp_path):
    def old_default(summary):
        summary["options"]["max_length"] = 512

    reference = _edited_copy(muse_reference, tmp_path, old_default)
    with pytest.raises(ReferenceMismatchError, match="options.max_length=512, this run with options.max_length=None"):
        evaluate_muse(model, tokenizer, MUSE_DATA, MUSE_OPTIONS, reference_log=reference)


def test_muse_label_mode_mismatch_is_a_note(model, tokenizer, muse_reference):
    options = replace(MUSE_OPTIONS, label_mode="open_unlearning")
    result = evaluate_muse(model, tokenizer, MUSE_DATA, options, reference_log=muse_reference)
    assert any("label_mode='answer_eot', this run with label_mode='open_unlearning'" in n for n in result.notes)
    assert result.metrics["privleak"] is not None


def test_muse_with_a_fixed_reference_auc_only_notes_mismatches(model, tokenizer, muse_reference):
    options = replace(MUSE_OPTIONS, reference_auc=0.5, min_k=0.2)
    result = evaluate_muse(model, tokenizer, MUSE_DATA, options, reference_log=muse_reference)
    assert any("options.min_k=0.4, this run with options.min_k=0.2" in n for n in result.notes)
    assert any("a fixed retain-model AUC of 0.5" in n and "only checks the split" in n for n in result.notes)
    expected = ((1 - result.metrics["mia_min_k_auc"]) - 0.5) / 0.5 * 100
    assert result.metrics["privleak"] == pytest.approx(expected)
