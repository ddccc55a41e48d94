"""Answer-only labels under the chat formats of the families people fine-tune (tests/scripts/chat_families.py):
the labels decode to exactly the answer plus the family's end-of-turn token, BOS appears once when the
tokenizer adds one, and generation starts from the same ids scoring uses."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from llm_unlearn.data.collate import IGNORE_INDEX, PromptFormat, encode_prompt, encode_qa
from llm_unlearn.evaluation.scoring import end_of_turn_ids

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from chat_families import BY_NAME, FAMILIES, family_tokenizer  # noqa: E402

QUESTION = "Where was Ilsa Varnholt born?"
ANSWER = "Ilsa Varnholt was born in Tallinn in 1961."


def labelled_text(tokenizer, encoded: dict) -> str:
    return tokenizer.decode([tok for tok in encoded["labels"] if tok != IGNORE_INDEX])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("system_prompt", [None, "Answer briefly."])
def test_labels_are_the_answer_and_its_end_token(tokenizer, family, system_prompt):
    if system_prompt is not None and not family.system_role:
        pytest.skip("no system role in this family (tested below)")
    tok = family_tokenizer(tokenizer, family)
    fmt = PromptFormat(system_prompt=system_prompt)
    encoded = encode_qa(tok, QUESTION, ANSWER, fmt)
    # The answer's first token may carry the space before it (BPE): compare without leading whitespace.
    assert labelled_text(tok, encoded).lstrip() == ANSWER + family.end_of_turn
    assert encoded["end_tokens"] == 1
    bos_id = tok.convert_tokens_to_ids(family.bos)
    ids = encoded["input_ids"]
    if family.adds_bos:
        assert ids[0] == bos_id and ids.count(bos_id) == 1  # the template's own BOS is not doubled
    # Generation starts from the text scoring puts before the answer (token boundaries may differ where the
    # prompt's last whitespace meets the answer, as with apply_chat_template itself), and none of it is labelled.
    first_label = next(i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX)
    prompt_ids = encode_prompt(tok, QUESTION, fmt)
    assert tok.decode(prompt_ids).rstrip() == tok.decode(ids[:first_label]).rstrip()
    assert prompt_ids[0] == ids[0]
    assert tok.convert_tokens_to_ids(family.end_of_turn) in end_of_turn_ids(tok, fmt)


def test_text_between_answer_and_end_token_is_not_labelled(tokenizer):
    tok = family_tokenizer(tokenizer, BY_NAME["llama2"])
    encoded = encode_qa(tok, QUESTION, ANSWER, PromptFormat())
    rendered = tok.decode(encoded["input_ids"])
    assert rendered.endswith(f"[/INST] {ANSWER} </s>")
    # Labelled: the answer and </s>; the space token in between is not.
    labelled = [i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX]
    assert labelled[-1] == len(encoded["input_ids"]) - 1 and labelled[-2] < labelled[-1] - 1
    assert tok.decode(encoded["input_ids"][labelled[-2] + 1 : labelled[-1]]).strip() == ""


def test_a_template_ending_in_eos_is_not_labelled_twice(tokenizer):
    tok = family_tokenizer(tokenizer, BY_NAME["phi3"])
    encoded = encode_qa(tok, QUESTION, ANSWER, PromptFormat())
    assert tok.decode(encoded["input_ids"]).endswith(f"{ANSWER}<|end|>\n<|endoftext|>")
    assert labelled_text(tok, encoded).lstrip() == ANSWER + "<|end|>"
    # open_unlearning labels everything after the answer and appends eos only when the text does not end in it.
    ou = encode_qa(tok, QUESTION, ANSWER, PromptFormat(label_mode="open_unlearning"))
    assert ou["input_ids"] == encoded["input_ids"]
    assert labelled_text(tok, ou).lstrip() == ANSWER + "<|end|>\n<|endoftext|>"


@pytest.mark.parametrize("name", ["gemma", "mistral"])
def test_a_system_prompt_without_a_system_role_is_refused_with_a_clear_error(tokenizer, name):
    tok = family_tokenizer(tokenizer, BY_NAME[name])
    with pytest.raises(ValueError, match="format.system_prompt: this model's chat template has no system role"):
        encode_qa(tok, QUESTION, ANSWER, PromptFormat(system_prompt="Be brief."))


@pytest.mark.parametrize("name", ["llama2", "qwen2"])
def test_without_a_template_the_plain_format_is_used_with_the_tokenizers_bos(tokenizer, name):
    family = BY_NAME[name]
    tok = family_tokenizer(tokenizer, family, with_template=False)
    encoded = encode_qa(tok, QUESTION, ANSWER, PromptFormat())
    bos = f"{family.bos}" if family.adds_bos else ""
    assert tok.decode(encoded["input_ids"]) == f"{bos}Question: {QUESTION}\nAnswer: {ANSWER}{family.eos}"
    assert labelled_text(tok, encoded).lstrip() == ANSWER + family.eos


def test_a_template_that_adds_no_bos_gets_the_tokenizers(tokenizer):
    # Phi-3's template writes no BOS; a tokenizer that adds one puts it in front, as tokenizer(text) would.
    tok = family_tokenizer(tokenizer, replace(BY_NAME["phi3"], adds_bos=True))
    encoded = encode_qa(tok, QUESTION, ANSWER, PromptFormat())
    assert tok.convert_ids_to_tokens(encoded["input_ids"][0]) == "<s>"
    assert encode_prompt(tok, QUESTION, PromptFormat())[0] == encoded["input_ids"][0]


def test_text_other_than_whitespace_after_the_answer_is_an_error(tokenizer):
    tok = family_tokenizer(tokenizer, BY_NAME["llama3"])
    tok.chat_template = tok.chat_template.replace("<|eot_id|>{% endfor %}", " [done]<|eot_id|>{% endfor %}")
    with pytest.raises(ValueError, match="between the answer and its end-of-turn token"):
        encode_qa(tok, QUESTION, ANSWER, PromptFormat())


def test_mox_ga_and_evaluation_run_on_a_llama3_template_model(tokenizer, tmp_path):
    import json

    from reliability_setup import run_config

    from llm_unlearn import stages
    from llm_unlearn.models import tiny_llama

    tok = family_tokenizer(tokenizer, BY_NAME["llama3"])
    model_dir = tmp_path / "llama3-tiny"
    tiny_llama(len(tok), seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    from llm_unlearn.models import load_tokenizer

    assert load_tokenizer(str(model_dir)).chat_template == BY_NAME["llama3"].template  # the run sees this format
    for method in ("mox", "ga"):
        config = run_config(model_dir, tmp_path / method, method)
        stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
        config["evaluation"]["model_path"] = str(tmp_path / method / "unlearned")
        out = stages.run_evaluate(stages.parse_config(config), stages.RunOptions())
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metrics"]["forget_prob"] is not None and summary["metrics"]["model_utility"] is not None
        run_info = json.loads((tmp_path / method / "run_info.json").read_text())
        assert run_info["method"] == method
