"""Embedded generators: determinism, perturbation invariants, sizes, split blocks, MUSE-style news."""

import json
import re

import pytest

from llm_unlearn.data import DataConfig, load_qa_splits
from llm_unlearn.data.io import DataError
from llm_unlearn.data.synthetic import MAX_QA_PER_AUTHOR, make_authors, synthetic_splits
from llm_unlearn.data.synthetic_news import make_news
from llm_unlearn.data.utility_sets import make_utility_sets


def test_authors_are_deterministic_per_seed():
    assert make_authors(4, 6, seed=3) == make_authors(4, 6, seed=3)
    assert make_authors(4, 6, seed=3) != make_authors(4, 6, seed=4)


def test_author_rows_sizes_and_indices():
    rows = make_authors(5, 7, seed=0)
    assert len(rows) == 35
    assert [r["index"] for r in rows] == list(range(35))
    assert [r["author"] for r in rows] == [i // 7 for i in range(35)]
    keys = {"question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer", "author", "index"}
    assert all(set(r) == keys for r in rows)


def test_perturbed_answers_are_five_distinct_wrong_versions():
    for row in make_authors(6, MAX_QA_PER_AUTHOR, seed=1):
        wrong = row["perturbed_answer"]
        assert len(wrong) == 5 and len(set(wrong)) == 5
        assert row["answer"] not in wrong and row["paraphrased_answer"] not in wrong
        assert row["paraphrased_answer"] != row["answer"]
        assert row["paraphrased_question"] != row["question"]


def test_author_names_are_unique():
    rows = make_authors(60, 1, seed=2)  # the first template asks for the name
    names = [re.fullmatch(r"The author born in .* is (.+)\.", r["answer"]).group(1) for r in rows]
    assert len(set(names)) == 60


def test_qa_per_author_beyond_the_templates_is_an_error():
    with pytest.raises(DataError, match=f"between 1 and {MAX_QA_PER_AUTHOR}"):
        make_authors(2, MAX_QA_PER_AUTHOR + 1, seed=0)


def test_answers_are_short_sentences(tokenizer):
    for row in make_authors(10, MAX_QA_PER_AUTHOR, seed=0):
        for text in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]:
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < 40, text
            assert text.endswith(".") and text.count(". ") == 0, text


def test_utility_sets():
    sets = make_utility_sets(seed=0)
    assert make_utility_sets(seed=0) == sets and make_utility_sets(seed=1) != sets
    for name in ("real_authors", "world_facts"):
        rows = sets[name]
        assert 25 <= len(rows) <= 40
        assert [r["index"] for r in rows] == list(range(len(rows)))
        assert len({r["question"] for r in rows}) == len(rows)
        for row in rows:
            assert len(row["perturbed_answer"]) == 3 and len(set(row["perturbed_answer"])) == 3
            assert row["answer"] not in row["perturbed_answer"]


def test_no_question_is_copied_from_tofu(tofu_dir):
    tofu = set()
    for path in tofu_dir.glob("*.json"):
        tofu |= {json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()}
    ours = {r["question"] for rows in make_utility_sets(0).values() for r in rows}
    ours |= {r["question"] for r in make_authors(20, MAX_QA_PER_AUTHOR, seed=0)}
    assert not ours & tofu


def test_synthetic_splits_blocks():
    config = DataConfig(n_authors=10, qa_per_author=4, forget_authors=2, holdout_authors=3, seed=5)
    splits = synthetic_splits(config, retain_eval_rows=7)
    authors = lambda rows: {r["author"] for r in rows}  # noqa: E731
    assert authors(splits.forget) == {8, 9}
    assert authors(splits.holdout) == {5, 6, 7}
    assert authors(splits.retain) == authors(splits.retain_train) == set(range(5))
    assert authors(splits.target_train) == set(range(5)) | {8, 9}
    assert splits.sizes() == {
        "target_train": 28,
        "retain_train": 20,
        "forget": 8,
        "retain": 20,
        "forget_eval": 8,
        "retain_eval": 7,
        "real_authors": len(make_utility_sets(5)["real_authors"]),
        "world_facts": len(make_utility_sets(5)["world_facts"]),
        "holdout": 12,
    }
    assert splits.forget_eval == splits.forget and splits.retain_eval == splits.retain[:7]
    assert [r["index"] for r in splits.forget] == list(range(8))
    assert [r["index"] for r in splits.holdout] == list(range(20, 32))  # global rows of the table
    assert splits.meta["holdout"]["row_start"] == 20 and splits.meta["holdout"]["row_stop"] == 32
    assert splits.meta["holdout_rows"] == list(range(20, 32))
    assert splits.meta["fingerprints"] == splits.fingerprints()
    # dispatch + determinism
    assert load_qa_splits(config).fingerprints() == synthetic_splits(config).fingerprints()


def test_synthetic_retain_authors_and_utility_rows():
    splits = load_qa_splits(DataConfig(retain_authors=2, utility_rows=4))
    assert {r["author"] for r in splits.retain} == {0, 1}
    assert {r["author"] for r in splits.target_train} == {0, 1, 18, 19}
    assert len(splits.real_authors) == len(splits.world_facts) == 4


def test_news_is_deterministic():
    assert make_news(2, 3, 2, seed=0) == make_news(2, 3, 2, seed=0)
    assert make_news(2, 3, 2, seed=0) != make_news(2, 3, 2, seed=1)


def test_news_layout_sizes_and_verbmem():
    news = make_news(n_forget=3, n_retain=5, n_holdout=2, seed=0, qa_per_article=2, icl_pairs=3)
    assert [len(news["raw"][s]) for s in ("forget", "retain1", "retain2", "holdout")] == [3, 3, 2, 2]
    assert news["privleak"]["retain"] == [
        {**r, "index": i} for i, r in enumerate(news["raw"]["retain1"] + news["raw"]["retain2"])
    ]
    assert news["privleak"]["forget"] == news["raw"]["forget"]
    assert len(news["knowmem"]["forget_qa"]) == 6 and len(news["knowmem"]["retain_qa"]) == 10
    assert len(news["knowmem"]["forget_qa_icl"]) == len(news["knowmem"]["retain_qa_icl"]) == 3
    for row, article in zip(news["verbmem"]["forget"], news["raw"]["forget"]):
        assert row["prompt"] + " " + row["gt"] == article["text"]
        assert len(row["gt"].split()) > 60  # enough continuation for a 128-token comparison


def test_news_qa_answers_come_from_their_own_articles_and_sets_are_disjoint():
    news = make_news(n_forget=4, n_retain=4, n_holdout=4, seed=2)
    text = {
        "forget": " ".join(r["text"] for r in news["raw"]["forget"]),
        "retain": " ".join(r["text"] for r in news["raw"]["retain1"] + news["raw"]["retain2"]),
        "holdout": " ".join(r["text"] for r in news["raw"]["holdout"]),
    }
    for own, others in (("forget", ("retain", "holdout")), ("retain", ("forget", "holdout"))):
        for split in (f"{own}_qa", f"{own}_qa_icl"):
            for row in news["knowmem"][split]:
                assert row["answer"] in text[own]
                if not re.search(r"\d", row["answer"]):  # invented names/towns are unique to one article
                    assert all(row["answer"] not in text[other] for other in others), row
        tested = {r["question"] for r in news["knowmem"][f"{own}_qa"]}
        assert not tested & {r["question"] for r in news["knowmem"][f"{own}_qa_icl"]}


def test_news_size_errors():
    with pytest.raises(DataError, match="n_retain >= 2"):
        make_news(1, 1, 1, seed=0)
