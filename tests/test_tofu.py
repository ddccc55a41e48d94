"""TOFU loader: real row counts and hashes (PROVENANCE.md), complement/holdout invariants, validation errors.

Tests marked by the `tofu_dir` fixture read the real data (skipped when absent); error-path tests build a
small fake TOFU folder with made-up rows so they can break files without touching the real copy.
"""

import json
import logging
import re

import pytest

from llm_unlearn.data import DataConfig, load_qa_splits
from llm_unlearn.data.io import DataError
from llm_unlearn.data.tofu import (
    HOLDOUT_BLOCK_STOP,
    TOFU_SHA256,
    TOFU_SPLITS,
    load_tofu_split,
    load_tofu_splits,
)

PROVENANCE_ROWS = {
    "full": 4000,
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "forget01_perturbed": 40,
    "forget05_perturbed": 200,
    "forget10_perturbed": 400,
    "retain99": 3960,
    "retain95": 3800,
    "retain90": 3600,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
}


def test_split_names_cover_provenance_and_hub_holdouts():
    assert set(TOFU_SPLITS) == set(PROVENANCE_ROWS) | {"holdout01", "holdout05", "holdout10"}


def test_wrong_split_name_lists_valid_ones(tmp_path):
    with pytest.raises(DataError) as err:
        load_tofu_split(str(tmp_path), "forget02")
    assert "'forget02'" in str(err.value) and "forget01" in str(err.value) and "holdout10" in str(err.value)


# ---- real data ----


def test_real_row_counts_match_provenance(tofu_dir):
    for split, rows in PROVENANCE_ROWS.items():
        records = load_tofu_split(str(tofu_dir), split)
        assert len(records) == rows, split
        assert [r["index"] for r in records] == list(range(rows))


def test_embedded_hashes_match_provenance(tofu_dir):
    text = (tofu_dir / "PROVENANCE.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+\.json)$", text, re.M))
    assert listed == TOFU_SHA256


@pytest.mark.parametrize("forget_split, n_authors", [("forget01", 2), ("forget05", 10), ("forget10", 20)])
def test_real_splits_complement_and_holdout(tofu_dir, forget_split, n_authors):
    splits = load_tofu_splits(DataConfig(dataset="tofu", source=str(tofu_dir), forget_split=forget_split))
    n = 20 * n_authors
    sizes = splits.sizes()
    assert sizes["forget"] == sizes["forget_eval"] == sizes["holdout"] == n
    assert sizes["retain"] == sizes["retain_train"] == 4000 - 2 * n
    assert sizes["target_train"] == 4000 - n
    assert (sizes["retain_eval"], sizes["real_authors"], sizes["world_facts"]) == (400, 100, 117)

    forget_authors = {r["author"] for r in splits.forget}
    holdout_authors = {r["author"] for r in splits.holdout}
    assert forget_authors == set(range(200 - n_authors, 200))
    assert holdout_authors == set(range(180 - n_authors, 180))  # the block ending just before row 3600
    assert [r["index"] for r in splits.holdout] == list(range(HOLDOUT_BLOCK_STOP - n, HOLDOUT_BLOCK_STOP))
    # Holdout rows are never trained on, never in D_r or its eval set, and never in any forget split.
    for name in ("target_train", "retain_train", "retain", "retain_eval", "forget"):
        assert not holdout_authors & {r["author"] for r in getattr(splits, name)}, name
    assert max(r["index"] for r in splits.holdout) < 4000 - 400  # below forget10's first row
    # target = forget + retain; retain model data = retain only.
    pairs = lambda rows: sorted((r["question"], r["answer"]) for r in rows)  # noqa: E731
    assert pairs(splits.target_train) == pairs(splits.forget + splits.retain)
    assert not forget_authors & {r["author"] for r in splits.retain_train}
    # forget_eval follows forget row by row and carries the perturbations.
    assert [r["question"] for r in splits.forget_eval] == [r["question"] for r in splits.forget]
    assert all(len(r["perturbed_answer"]) == 5 and "paraphrased_answer" in r for r in splits.forget_eval)
    assert all(len(r["perturbed_answer"]) == 3 for r in splits.real_authors + splits.world_facts)
    assert [r["index"] for r in splits.forget] == list(range(n))

    meta = splits.meta
    assert meta["holdout"] == {
        "mode": "auto_block",
        "source_split": "full",
        "row_start": HOLDOUT_BLOCK_STOP - n,
        "row_stop": HOLDOUT_BLOCK_STOP,
        "authors": sorted(holdout_authors),
    }
    assert meta["holdout_rows"] == [r["index"] for r in splits.holdout]
    assert meta["sizes"] == sizes and meta["fingerprints"] == splits.fingerprints()
    read = {"full", forget_split, f"{forget_split}_perturbed", "retain_perturbed"}
    assert read <= set(meta["files"])
    assert all(
        info["matches_published"] and info["sha256"] == TOFU_SHA256[f"{name}.json"]
        for name, info in meta["files"].items()
    )


def test_real_retain_authors_and_utility_rows(tofu_dir):
    config = DataConfig(dataset="tofu", source=str(tofu_dir), retain_authors=3, utility_rows=5)
    splits = load_qa_splits(config)
    assert {r["author"] for r in splits.retain} == {0, 1, 2}
    assert splits.retain_train == splits.retain and len(splits.retain) == 60
    assert {r["author"] for r in splits.target_train} == {0, 1, 2, 198, 199}
    assert {r["author"] for r in splits.retain_eval} == {0, 1, 2} and len(splits.retain_eval) == 60
    assert len(splits.real_authors) == len(splits.world_facts) == 5
    assert splits.meta["retain_eval_filtered"] is True and splits.meta["retain_authors_kept"] == 3


# ---- a fake folder for the error paths ----


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_tofu(folder, with_holdout=False):
    full = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4000)]

    def perturbed(row):
        return {**row, "paraphrased_answer": "p " + row["answer"], "perturbed_answer": [f"w{k}" for k in range(5)]}

    _write_jsonl(folder / "full.json", full)
    _write_jsonl(folder / "forget01.json", full[-40:])
    _write_jsonl(folder / "retain99.json", full[:-40])
    _write_jsonl(folder / "forget01_perturbed.json", [perturbed(r) for r in full[-40:]])
    _write_jsonl(folder / "retain_perturbed.json", [perturbed(r) for r in full[:400]])
    utility = [{"question": f"u{i}", "answer": f"b{i}", "perturbed_answer": ["x", "y", "z"]} for i in range(8)]
    _write_jsonl(folder / "real_authors_perturbed.json", utility)
    _write_jsonl(folder / "world_facts_perturbed.json", utility)
    if with_holdout:
        _write_jsonl(folder / "holdout01.json", [{"question": f"h{i}", "answer": f"c{i}"} for i in range(40)])
    return folder


def _config(folder, **kwargs):
    return DataConfig(dataset="tofu", source=str(folder), **kwargs)


def test_fake_folder_loads_and_flags_unpublished_hashes(tmp_path, caplog):
    _fake_tofu(tmp_path)
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.data.tofu"):
        splits = load_tofu_splits(_config(tmp_path))
    assert splits.forget[0] == {"question": "q3960", "answer": "a3960", "index": 0, "author": 198}
    assert all(info["matches_published"] is False for info in splits.meta["files"].values())
    assert "differs from the published TOFU file" in caplog.text


def test_perturbed_out_of_order_names_the_row(tmp_path):
    _fake_tofu(tmp_path)
    path = tmp_path / "forget01_perturbed.json"
    lines = path.read_text().splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"forget01_perturbed, row 3: question 'q3964' differs .* 'q3963'"):
        load_tofu_splits(_config(tmp_path))


def test_forget_not_the_tail_of_full_is_an_error(tmp_path):
    _fake_tofu(tmp_path)
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3960, 4000)]
    rows[5]["answer"] = "changed"
    _write_jsonl(tmp_path / "forget01.json", rows)
    with pytest.raises(DataError, match=r"forget01, row 5: differs from full row 3965"):
        load_tofu_splits(_config(tmp_path))


def test_retain_not_complementary_is_an_error(tmp_path):
    _fake_tofu(tmp_path)
    _write_jsonl(tmp_path / "retain99.json", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3950)])
    with pytest.raises(DataError, match=r"must together make full"):
        load_tofu_splits(_config(tmp_path))


def test_malformed_line_in_a_tofu_file_names_file_and_line(tmp_path):
    _fake_tofu(tmp_path)
    path = tmp_path / "retain_perturbed.json"
    lines = path.read_text().splitlines()
    lines[6] = lines[6][:-1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, line 7: malformed JSON")):
        load_tofu_splits(_config(tmp_path))


def test_missing_perturbed_key_is_an_error(tmp_path):
    _fake_tofu(tmp_path)
    _write_jsonl(tmp_path / "world_facts_perturbed.json", [{"question": "u", "answer": "b"}])
    with pytest.raises(DataError, match=r"line 1: missing key 'perturbed_answer'"):
        load_tofu_splits(_config(tmp_path))


def test_hub_only_holdout_missing_locally_says_what_to_do(tmp_path):
    _fake_tofu(tmp_path)
    with pytest.raises(DataError, match=r"holdout01.*exist only on the Hub: set data.holdout_split to null"):
        load_tofu_splits(_config(tmp_path, holdout_split="holdout01"))


def test_given_holdout_split_removes_nothing_from_training(tmp_path):
    _fake_tofu(tmp_path, with_holdout=True)
    splits = load_tofu_splits(_config(tmp_path, holdout_split="holdout01"))
    assert len(splits.target_train) == 4000 and len(splits.retain) == 3960
    assert [r["question"] for r in splits.holdout] == [f"h{i}" for i in range(40)]
    assert splits.meta["holdout"] == {"mode": "split", "split": "holdout01"} and splits.meta["holdout_rows"] is None


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"question": "q", "answer": "a"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_tofu_split("locuslab/TOFU", "forget01") == [{"question": "q", "answer": "a", "index": 0}]
    assert calls == [("locuslab/TOFU", "forget01", "train")]

    def offline(path, name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="set data.source to a local folder"):
        load_tofu_split("locuslab/TOFU", "full")
