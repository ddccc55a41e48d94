"""MUSE-News layout loader: the three file formats, name validation, writing and the Hub path."""

import json
from pathlib import Path

import pytest

from llm_unlearn.data.io import DataError
from llm_unlearn.data.muse import MUSE_LAYOUT, load_muse, load_muse_split, write_muse_folder
from llm_unlearn.data.synthetic_news import make_news


def _write_mixed_formats(root):
    """knowmem as JSON lists of objects, verbmem as JSON Lines (.jsonl), privleak/raw as lists of strings."""
    for split in MUSE_LAYOUT["knowmem"]:
        (root / "knowmem").mkdir(parents=True, exist_ok=True)
        rows = [{"question": f"{split} q{i}", "answer": f"a{i}"} for i in range(3)]
        (root / "knowmem" / f"{split}.json").write_text(json.dumps(rows, indent=1))
    (root / "verbmem").mkdir()
    lines = [json.dumps({"prompt": f"p{i}", "gt": f"g{i}"}) for i in range(2)]
    (root / "verbmem" / "forget.jsonl").write_text("\n".join(lines) + "\n")
    for subset in ("privleak", "raw"):
        (root / subset).mkdir()
        for split in MUSE_LAYOUT[subset]:
            (root / subset / f"{split}.json").write_text(json.dumps([f"{subset} {split} {i}" for i in range(4)]))


def test_loads_each_file_format_and_adds_index(tmp_path):
    _write_mixed_formats(tmp_path)
    data = load_muse(str(tmp_path))
    assert {subset: set(splits) for subset, splits in data.items()} == {k: set(v) for k, v in MUSE_LAYOUT.items()}
    assert data["knowmem"]["retain_qa_icl"][2] == {"question": "retain_qa_icl q2", "answer": "a2", "index": 2}
    assert data["verbmem"]["forget"] == [
        {"prompt": "p0", "gt": "g0", "index": 0},
        {"prompt": "p1", "gt": "g1", "index": 1},
    ]
    assert data["raw"]["retain2"][3] == {"text": "raw retain2 3", "index": 3}
    assert [r["index"] for r in data["privleak"]["holdout"]] == [0, 1, 2, 3]


def test_wrong_subset_or_split_lists_valid_names(tmp_path):
    with pytest.raises(
        DataError, match="unknown MUSE subset 'knowmen'; valid subsets: knowmem, verbmem, privleak, raw"
    ):
        load_muse_split(str(tmp_path), "knowmen", "forget_qa")
    with pytest.raises(DataError, match="unknown split 'retain' of MUSE subset 'raw'; valid splits: forget, retain1"):
        load_muse_split(str(tmp_path), "raw", "retain")


def test_missing_split_file_names_both_candidates(tmp_path):
    with pytest.raises(DataError) as err:
        load_muse_split(str(tmp_path), "verbmem", "forget")
    assert str(tmp_path / "verbmem" / "forget.json") in str(err.value)
    assert str(tmp_path / "verbmem" / "forget.jsonl") in str(err.value)


def test_missing_subset_key_is_an_error(tmp_path):
    (tmp_path / "verbmem").mkdir()
    (tmp_path / "verbmem" / "forget.json").write_text('{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"line 1: missing key 'gt'"):
        load_muse_split(str(tmp_path), "verbmem", "forget")


def test_write_then_load_round_trips_synthetic_news(tmp_path):
    news = make_news(n_forget=3, n_retain=4, n_holdout=2, seed=1)
    folder = write_muse_folder(news, tmp_path / "news")
    assert load_muse(str(folder)) == news
    first_line = (folder / "raw" / "forget.json").read_text().splitlines()[0]
    assert "index" not in json.loads(first_line)


def test_write_rejects_names_outside_the_layout_and_empty_splits(tmp_path):
    with pytest.raises(DataError, match="unknown split 'retain3'"):
        write_muse_folder({"raw": {"retain3": [{"text": "x"}]}}, tmp_path)
    with pytest.raises(DataError, match="raw/forget: the split has no records"):
        write_muse_folder({"raw": {"forget": []}}, tmp_path)
    with pytest.raises(DataError, match="missing key 'gt'"):
        write_muse_folder({"verbmem": {"forget": [{"prompt": "p"}]}}, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written when validation fails


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"text": "article"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_muse_split("muse-bench/MUSE-News", "privleak", "holdout") == [{"text": "article", "index": 0}]
    assert calls == [("muse-bench/MUSE-News", "privleak", "holdout")]


def test_an_evaluation_reads_only_the_evaluation_subsets(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from reliability_setup import run_config, save_tiny_model

    from llm_unlearn import stages

    news = make_news(n_forget=2, n_retain=2, n_holdout=2, seed=0)
    folder = write_muse_folder({k: v for k, v in news.items() if k != "raw"}, tmp_path / "eval_only")
    assert not (folder / "raw").exists()
    with pytest.raises(DataError, match="raw/forget not found"):
        load_muse(str(folder))  # training needs the raw text ...
    model_dir = save_tiny_model(tmp_path / "model")
    config = run_config(model_dir, tmp_path / "run", None)
    config["data"] = {"dataset": "muse", "source": str(folder)}
    config["evaluation"] = {
        "model_path": str(model_dir),
        "output_dir": str(tmp_path / "eval"),
        "options": {"verbmem_max_new_tokens": 2, "knowmem_max_new_tokens": 2, "batch_size": 4},
    }
    out = stages.run_evaluate(stages.parse_config(config), stages.RunOptions())  # ... an evaluation does not
    assert json.loads((out / "summary.json").read_text())["suite"] == "muse"
