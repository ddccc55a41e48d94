"""Your own data: every file type and TRL shape loads to the same records; every malformed case is one error."""

import json

import pytest

from llm_unlearn.config import ConfigError, build_dataclass
from llm_unlearn.data import DataConfig, DataError, DataFiles
from llm_unlearn.data.custom import load_custom

QA = [
    {"question": "Which plan does customer Mara Quell have?", "answer": "Mara Quell has the Harbor Plus plan."},
    {"question": "Where does customer Mara Quell live?", "answer": "Mara Quell lives at 14 Lantern Row."},
    {"question": "When did Odo Brisk open his account?", "answer": "Odo Brisk opened his account in March 2019."},
]
EXPECTED = [{**row, "index": i} for i, row in enumerate(QA)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path, **files) -> list[dict]:
    return load_custom({"forget": DataFiles(path=str(path), **files), "retain": DataFiles(path=str(path))}).forget


def test_every_file_type_loads_the_same_records(tmp_path):
    import pandas as pd

    (tmp_path / "qa.json").write_text(json.dumps(QA))
    write_jsonl(tmp_path / "qa.jsonl", QA)
    pd.DataFrame(QA).to_csv(tmp_path / "qa.csv", index=False)
    pd.DataFrame(QA).to_parquet(tmp_path / "qa.parquet")
    for name in ("qa.json", "qa.jsonl", "qa.csv", "qa.parquet"):
        assert load(tmp_path / name) == EXPECTED, name


def test_every_trl_shape_becomes_the_same_question_answer_records(tmp_path):
    shapes = {
        "prompt_completion": [{"prompt": r["question"], "completion": r["answer"]} for r in QA],
        "conversational": [
            {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
            for r in QA
        ],
        "conversational_prompt_completion": [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "completion": [{"role": "assistant", "content": r["answer"]}],
            }
            for r in QA
        ],
    }
    for name, rows in shapes.items():
        assert load(write_jsonl(tmp_path / f"{name}.jsonl", rows)) == EXPECTED, name


def test_a_hub_style_dataset_folder_loads_offline_by_id_and_split(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", QA)
    write_jsonl(folder / "test.jsonl", QA[:1])
    data = load_custom(
        {"forget": DataFiles(id=str(folder), split="test"), "retain": DataFiles(id=str(folder), split="train")}
    )
    assert data.forget == EXPECTED[:1] and data.retain == EXPECTED
    assert data.sources["forget"] == f"{folder}[default:test]"


def test_columns_rename_yours_to_ours_and_optional_columns_are_kept(tmp_path):
    rows = [
        {"q": r["question"], "reply": r["answer"], "paraphrased_answer": "p", "perturbed_answer": ["w1", "w2"]}
        for r in QA
    ]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    data = load_custom(
        {
            "forget": DataFiles(path=str(path), columns={"question": "q", "answer": "reply"}),
            "retain": DataFiles(path=str(path), columns={"question": "q", "answer": "reply"}),
        }
    )
    assert data.forget[0] == {**EXPECTED[0], "paraphrased_answer": "p", "perturbed_answer": ["w1", "w2"]}
    assert data.kind == "qa" and data.has_truth_ratio_columns
    assert not load_custom(
        {
            "forget": DataFiles(path=str(write_jsonl(tmp_path / "a.jsonl", QA))),
            "retain": DataFiles(path=str(tmp_path / "a.jsonl")),
        }
    ).has_truth_ratio_columns


def test_text_documents_are_their_own_kind(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "The harbour plan passed."}, {"text": "Rain fell."}])
    data = load_custom({"forget": DataFiles(path=str(path)), "retain": DataFiles(path=str(path))})
    assert data.kind == "text" and data.forget == [
        {"text": "The harbour plan passed.", "index": 0},
        {"text": "Rain fell.", "index": 1},
    ]


def test_the_data_section_takes_your_sets_through_the_config_parser(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", QA)
    config = build_dataclass(
        DataConfig, {"dataset": "custom", "forget": {"path": str(path)}, "retain": {"path": str(path)}}, "data"
    )
    assert config.forget == DataFiles(path=str(path)) and config.holdout is None


def _message(exc_info) -> str:
    return str(exc_info.value)


BAD_ROWS = [
    ([{"q": "x"}], r"data.forget \(.*\), row 0: no known shape \(columns q\); expected question/answer"),
    ([{"question": "Q?", "answer": ""}], r"row 0: answer must be a non-empty string"),
    ([{"question": "Q?", "answer": 3}], r"row 0: answer must be a non-empty string"),
    (
        [{"question": "Q?", "answer": "A.", "perturbed_answer": "wrong"}],
        r"row 0: perturbed_answer must be a non-empty list of strings",
    ),
    (
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2}],
        r"row 0: messages must be one user turn then the assistant's answer .*multi-turn conversations",
    ),
    (
        [
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ]
            }
        ],
        r"put a system message into format.system_prompt",
    ),
    ([{"messages": "hello"}], r"row 0: messages must be a list of \{role, content\} messages"),
    ([{"text": "doc"}, {"question": "Q?", "answer": "A."}], r"rows mix text and question/answer shapes"),
]


@pytest.mark.parametrize("rows, message", BAD_ROWS)
def test_malformed_rows_name_the_set_row_and_what_was_expected(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_custom({"forget": DataFiles(path=str(path)), "retain": DataFiles(path=str(path))})


def test_malformed_sources_are_refused_before_loading(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", QA)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "doc"}])
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "qa.txt").write_text("x")
    cases = [
        ({"dataset": "custom", "retain": {"path": str(good)}}, r"data.forget: required for dataset custom"),
        (
            {"dataset": "custom", "forget": {"path": str(tmp_path / "nope.jsonl")}, "retain": {"path": str(good)}},
            r"data.forget.path: file .*nope.jsonl does not exist",
        ),
        (
            {"dataset": "custom", "forget": {"path": str(tmp_path / "qa.txt")}, "retain": {"path": str(good)}},
            r"data.forget.path .*qa.txt: unsupported file type; use one of .json, .jsonl, .csv, .parquet",
        ),
        (
            {"dataset": "custom", "forget": {"path": str(good), "id": "x/y"}, "retain": {"path": str(good)}},
            r"data.forget: give exactly one of path",
        ),
        ({"dataset": "tofu", "forget": {"path": str(good)}}, r"data.forget is for your own data: set data.dataset"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_dataclass(DataConfig, section, "data")
    with pytest.raises(DataError, match=r"empty.jsonl: the file is empty"):
        load_custom({"forget": DataFiles(path=str(tmp_path / "empty.jsonl")), "retain": DataFiles(path=str(good))})
    with pytest.raises(DataError, match=r"the sets mix text and question/answer data"):
        load_custom({"forget": DataFiles(path=str(docs)), "retain": DataFiles(path=str(good))})
    with pytest.raises(DataError, match=r"data.forget.columns: column\(s\) \['prompt_text'\] are not in the data"):
        load_custom(
            {
                "forget": DataFiles(path=str(good), columns={"question": "prompt_text"}),
                "retain": DataFiles(path=str(good)),
            }
        )
    with pytest.raises(DataError, match=r"data.forget \(.*missing_ds\[default:train\]\): could not load it"):
        load_custom({"forget": DataFiles(id=str(tmp_path / "missing_ds")), "retain": DataFiles(path=str(good))})


def test_min_chars_drops_short_documents_before_loading(tmp_path):
    # wikitext-style: empty lines and a heading between documents
    rows = [{"text": ""}, {"text": " = Heading = "}, {"text": "A document long enough to keep."}, {"text": "  \n"}]
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)

    def forget(min_chars: int) -> list[dict]:
        sets = {name: DataFiles(path=str(path), min_chars=min_chars) for name in ("forget", "retain")}
        return load_custom(sets).forget

    with pytest.raises(DataError, match="row 0: text must be a non-empty string"):
        forget(0)  # every row is kept, and an empty one is refused
    assert forget(1) == [{"text": " = Heading = ", "index": 0}, {"text": rows[2]["text"], "index": 1}]
    assert forget(12) == [{"text": rows[2]["text"], "index": 0}]
