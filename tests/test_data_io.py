"""Record reading, validation messages, cross-split checks, fingerprints and DataConfig validation."""

import hashlib
import json
import logging

import pytest

from llm_unlearn.data import DataConfig, splits_fingerprint
from llm_unlearn.data.io import DataError, check_aligned, read_records, warn_overlap, with_index


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_json_lines(tmp_path):
    path = write(tmp_path / "a.json", '{"question": "q0", "answer": "a0"}\n\n{"question": "q1", "answer": "a1"}\n')
    assert read_records(path, ("question", "answer")) == [
        {"question": "q0", "answer": "a0"},
        {"question": "q1", "answer": "a1"},
    ]


def test_reads_json_list_of_objects(tmp_path):
    rows = [{"question": "q0", "answer": "a0"}, {"question": "q1", "answer": "a1"}]
    path = write(tmp_path / "a.json", json.dumps(rows, indent=2))
    assert read_records(path, ("question",)) == rows


def test_reads_json_list_of_strings_as_text(tmp_path):
    path = write(tmp_path / "a.json", '["first article", "second article"]')
    assert read_records(path, ("text",)) == [{"text": "first article"}, {"text": "second article"}]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.json", '{"question": "q0", "answer": "a0"}\n{"question": "q1", "answer": }\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "malformed JSON" in str(err.value)


def test_malformed_element_of_json_list_names_its_line(tmp_path):
    path = write(tmp_path / "bad.json", '[\n  {"question": "q0"},\n  {"question": "q1",}\n]')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_missing_key_names_line_key_and_expectation(tmp_path):
    path = write(tmp_path / "rows.json", '{"question": "q0", "answer": "a0"}\n{"question": "q1"}\n')
    with pytest.raises(DataError) as err:
        read_records(path, ("question", "answer"))
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "'answer'" in message and "question, answer" in message


def test_missing_key_in_json_list_names_line(tmp_path):
    path = write(tmp_path / "rows.json", '[\n{"question": "q0", "answer": "a0"},\n\n{"answer": "a1"}\n]')
    with pytest.raises(DataError, match=r"line 4: missing key 'question'"):
        read_records(path, ("question", "answer"))


@pytest.mark.parametrize("text", ["", "  \n\n", "[]", "[ \n ]"])
def test_empty_file_or_split_is_an_error(tmp_path, text):
    path = write(tmp_path / "empty.json", text)
    with pytest.raises(DataError, match="empty|no records") as err:
        read_records(path)
    assert str(path) in str(err.value)


def test_non_object_rows_are_errors(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"text": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(DataError, match="line 2: found a JSON list; expected a JSON object"):
        read_records(path)
    mixed = write(tmp_path / "mixed.json", '["a", {"text": "b"}]')
    with pytest.raises(DataError, match="line 1: found a JSON str"):
        read_records(mixed)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.json")


def test_with_index_replaces_index_by_position():
    rows = with_index([{"a": 1, "index": 7}, {"a": 2}], start=10)
    assert rows == [{"a": 1, "index": 10}, {"a": 2, "index": 11}]


def test_check_aligned_accepts_same_questions_in_order():
    base = [{"question": "q0"}, {"question": "q1"}]
    check_aligned(base, [{"question": "q0", "x": 1}, {"question": "q1", "x": 2}], "p")


def test_check_aligned_names_first_mismatching_row():
    base = [{"question": "q0"}, {"question": "q1"}, {"question": "q2"}]
    perturbed = [{"question": "q0"}, {"question": "q2"}, {"question": "q1"}]
    with pytest.raises(DataError, match=r"forget01_perturbed, row 1: question 'q2' differs .* 'q1'"):
        check_aligned(base, perturbed, "forget01_perturbed")


def test_check_aligned_rejects_different_lengths():
    with pytest.raises(DataError, match="has 1 rows but its base split has 2"):
        check_aligned([{"question": "a"}, {"question": "b"}], [{"question": "a"}], "p")


def test_warn_overlap_counts_and_logs(caplog):
    forget = [{"question": "a"}, {"question": "b"}, {"question": "c"}]
    retain = [{"question": "b"}, {"question": "c"}, {"question": "d"}]
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.data.io"):
        assert warn_overlap(forget, retain) == 2
    assert "2 of 3 forget questions also appear in the retain set" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.data.io"):
        assert warn_overlap(forget, [{"question": "z"}]) == 0
    assert caplog.text == ""


def test_fingerprint_is_sha256_of_canonical_json():
    records = [{"b": "x", "a": 1}]
    expected = hashlib.sha256(b'[{"a":1,"b":"x"}]').hexdigest()
    assert splits_fingerprint(records) == expected
    assert splits_fingerprint([{"a": 1, "b": "x"}]) == expected  # key order does not matter
    assert splits_fingerprint([{"a": 1, "b": "y"}]) != expected
    assert splits_fingerprint([{"a": 1}, {"a": 2}]) != splits_fingerprint([{"a": 2}, {"a": 1}])


def test_data_section_is_parsed_by_the_one_config_path_and_rejects_unknown_keys():
    from llm_unlearn.config import ConfigError, build_dataclass

    config = build_dataclass(DataConfig, {"dataset": "tofu", "forget_split": "forget05", "retain_authors": 3}, "data")
    assert (config.dataset, config.forget_split, config.retain_authors) == ("tofu", "forget05", 3)
    with pytest.raises(ConfigError, match=r"forget_spilt.*forget_split"):
        build_dataclass(DataConfig, {"forget_spilt": "forget05"}, "data")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "wikitext"}, "data.dataset must be one of synthetic, tofu, muse, synthetic_news"),
        ({"dataset": "tofu", "forget_split": "forget02"}, "forget01, forget05, forget10"),
        ({"holdout_split": "holdout02"}, "holdout01, holdout05, holdout10"),
        ({"retain_authors": 0}, "data.retain_authors must be null"),
        ({"utility_rows": -1}, "data.utility_rows must be null"),
        ({"n_authors": 4, "forget_authors": 2, "holdout_authors": 2}, "must exceed forget_authors"),
        ({"qa_per_author": 0}, "qa_per_author must be at least 1"),
    ],
)
def test_data_config_validation(kwargs, message):
    with pytest.raises(DataError, match=message):
        DataConfig(**kwargs)
