"""The toolkit's metrics as `evaluate` modules: each loaded by path offline through `evaluate.load` and computed on
hand-built inputs whose expected values are worked out here, not through the toolkit."""

from __future__ import annotations

import math
import zlib
from itertools import product
from pathlib import Path

import pytest

from llm_unlearn import evaluate_modules
from llm_unlearn.evaluate_modules import MODULES, module_path

evaluate = pytest.importorskip("evaluate")


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    """`evaluate.load(module_path(name))` offline, its caches in a temporary folder; one instance per module."""
    from evaluate import config

    cache = tmp_path_factory.mktemp("evaluate")
    patch = pytest.MonkeyPatch()
    patch.setattr(config, "HF_EVALUATE_OFFLINE", True)
    patch.setattr(config, "HF_MODULES_CACHE", cache / "modules")
    loaded = {}

    def loader(name, config_name=None):
        if (name, config_name) not in loaded:
            path = module_path(name)
            loaded[name, config_name] = evaluate.load(path, config_name=config_name, cache_dir=str(cache / "data"))
        return loaded[name, config_name]

    yield loader
    patch.undo()


def pair_auc(forget: list[float], holdout: list[float]) -> float:
    """P(forget score < holdout score), ties counted half, by going through every pair."""
    wins = sum(1.0 if f < h else 0.5 if f == h else 0.0 for f, h in product(forget, holdout))
    return wins / (len(forget) * len(holdout))


def test_every_module_folder_holds_a_script_of_its_name():
    for name in MODULES:
        assert (Path(module_path(name)) / f"{name}.py").is_file()


def test_unknown_module_name_lists_the_modules():
    with pytest.raises(ValueError, match=r"unknown evaluate module 'truth_ratios'; the modules are: truth_ratio, "):
        module_path("truth_ratios")


def test_truth_ratio_per_sample_and_both_aggregations(load):
    truth_ratio = load("truth_ratio")
    inputs = {"correct_nll": [1.0, 2.0], "perturbed_nlls": [[2.0, 3.0], [1.0]]}
    ratios = [math.exp(1.0 - 2.5), math.exp(2.0 - 1.0)]  # exp(nll_correct - mean(nll_wrong))

    forget = truth_ratio.compute(**inputs, aggregation="forget")
    retain = truth_ratio.compute(**inputs, aggregation="retain")

    assert forget["per_sample"] == pytest.approx(ratios) and retain["per_sample"] == pytest.approx(ratios)
    assert forget["truth_ratio"] == pytest.approx((ratios[0] + 1 / ratios[1]) / 2)  # mean(min(tr, 1/tr))
    assert retain["truth_ratio"] == pytest.approx((1 - ratios[0] + 0.0) / 2)  # mean(max(0, 1 - tr))


def test_truth_ratio_accumulates_batches(load):
    truth_ratio = load("truth_ratio")
    truth_ratio.add_batch(correct_nll=[1.0], perturbed_nlls=[[2.0]])
    truth_ratio.add_batch(correct_nll=[3.0], perturbed_nlls=[[2.0, 2.0]])

    result = truth_ratio.compute(aggregation="forget")

    assert result["per_sample"] == pytest.approx([math.exp(-1.0), math.exp(1.0)])
    assert result["truth_ratio"] == pytest.approx(math.exp(-1.0))


def test_a_nan_nll_gives_nan_not_a_number(load):
    result = load("truth_ratio").compute(
        correct_nll=[float("nan"), 1.0], perturbed_nlls=[[1.0], [1.0]], aggregation="retain"
    )
    assert math.isnan(result["truth_ratio"]) and math.isnan(result["per_sample"][0])


@pytest.mark.parametrize(
    ("unlearned", "retain", "expected"),
    [
        # Fully separated samples of 3 and 3: D = 1, reached by 2 of the C(6, 3) = 20 orderings.
        ([0.1, 0.2, 0.3], [0.7, 0.8, 0.9], 2 / 20),
        # Identical samples: D = 0, p = 1.
        ([0.1, 0.5, 0.9], [0.1, 0.5, 0.9], 1.0),
    ],
    ids=["separated", "identical"],
)
def test_forget_quality_is_the_exact_ks_p_value(load, unlearned, retain, expected):
    result = load("forget_quality").compute(truth_ratio=unlearned, retain_model_truth_ratio=retain)
    assert result["forget_quality"] == pytest.approx(expected)


def test_forget_quality_agrees_with_scipy_on_overlapping_samples(load):
    stats = pytest.importorskip("scipy.stats")
    unlearned, retain = [0.1, 0.4, 0.35, 0.8, 0.05], [0.3, 0.5, 0.6, 0.45, 0.9]
    result = load("forget_quality").compute(truth_ratio=unlearned, retain_model_truth_ratio=retain)
    assert result["forget_quality"] == pytest.approx(stats.ks_2samp(unlearned, retain).pvalue)


def test_extraction_strength_and_exact_memorization(load):
    flags = [[False, True, True, True], [True, True, False], [True, True]]
    strength = load("extraction_strength").compute(argmax_correct=flags)
    memorized = load("exact_memorization").compute(argmax_correct=flags)

    # 1 - k/n, k where the all-correct suffix starts: k = 1 of 4, none correct at the end (k = n), k = 0 of 2.
    assert strength["per_sample"] == pytest.approx([0.75, 0.0, 1.0])
    assert strength["extraction_strength"] == pytest.approx(1.75 / 3)
    assert memorized["per_sample"] == pytest.approx([3 / 4, 2 / 3, 1.0])
    assert memorized["exact_memorization"] == pytest.approx((3 / 4 + 2 / 3 + 1.0) / 3)


FORGET_SCORES, HOLDOUT_SCORES = [0.1, 0.5, 0.9], [0.4, 1.0]


def test_mia_auc_from_scores_counts_pairs(load):
    result = load("mia_auc").compute(score=FORGET_SCORES + HOLDOUT_SCORES, is_forget=[True] * 3 + [False] * 2)
    assert result["mia_auc"] == pytest.approx(pair_auc(FORGET_SCORES, HOLDOUT_SCORES)) == pytest.approx(4 / 6)
    assert result["scores"] == FORGET_SCORES + HOLDOUT_SCORES


def test_mia_auc_accepts_zero_and_one_as_membership(load):
    result = load("mia_auc").compute(score=[0.2, 0.1], is_forget=[0, 1])
    assert result["mia_auc"] == pytest.approx(1.0)


LOGPROBS = [[-0.1, -0.2, -3.0], [-1.0, -1.0], [-0.5, -4.0, -0.5, -2.0, -1.0]]
IS_FORGET = [True, False, True]


def test_mia_auc_loss_and_min_k_attacks(load):
    loss = load("mia_auc", "loss").compute(token_logprobs=LOGPROBS, is_forget=IS_FORGET)
    min_k = load("mia_auc", "min_k").compute(token_logprobs=LOGPROBS, is_forget=IS_FORGET, k=0.4)

    assert loss["scores"] == pytest.approx([3.3 / 3, 1.0, 8.0 / 5])  # mean NLL
    # k = 0.4 keeps max(1, floor(0.4 n)) lowest log-probs: 1 of 3, 1 of 2, 2 of 5.
    assert min_k["scores"] == pytest.approx([3.0, 1.0, (4.0 + 2.0) / 2])
    assert loss["mia_auc"] == pytest.approx(pair_auc([1.1, 1.6], [1.0])) == 0.0
    assert min_k["mia_auc"] == pytest.approx(pair_auc([3.0, 3.0], [1.0]))


def test_mia_auc_zlib_and_min_k_plus_plus(load):
    texts = ["aaaa aaaa aaaa", "a quick brown fox", "zebra"]
    mu = [[-1.0] * len(row) for row in LOGPROBS]
    sigma = [[2.0] * len(row) for row in LOGPROBS]

    zlib_result = load("mia_auc", "zlib").compute(token_logprobs=LOGPROBS, text=texts, is_forget=IS_FORGET)
    plus = load("mia_auc", "min_k_pp").compute(token_logprobs=LOGPROBS, mu=mu, sigma=sigma, is_forget=IS_FORGET)

    mean_nll = [3.3 / 3, 1.0, 8.0 / 5]
    expected = [nll / len(zlib.compress(text.encode())) for nll, text in zip(mean_nll, texts)]
    assert zlib_result["scores"] == pytest.approx(expected)
    # z = (log p + 1) / 2; the lowest 1, 1 and 2 of them.
    assert plus["scores"] == pytest.approx([1.0, 0.0, (1.5 + 0.5) / 2])


def test_privleak_from_aucs(load):
    result = load("privleak", "aucs").compute(auc_unlearned=[0.8], auc_retain=[0.6])
    assert result["privleak"] == pytest.approx((0.2 - 0.4) / 0.4 * 100)


def test_privleak_from_both_models_scores(load):
    unlearned = FORGET_SCORES + HOLDOUT_SCORES
    retain = [0.6, 0.2, 0.9, 0.3, 0.8]
    is_forget = [True] * 3 + [False] * 2

    result = load("privleak").compute(score=unlearned, retain_model_score=retain, is_forget=is_forget)

    auc_unlearned = pair_auc(FORGET_SCORES, HOLDOUT_SCORES)
    auc_retain = pair_auc(retain[:3], retain[3:])
    assert result["auc_unlearned"] == pytest.approx(auc_unlearned)
    assert result["auc_retain"] == pytest.approx(auc_retain)
    assert result["privleak"] == pytest.approx(((1 - auc_unlearned) - (1 - auc_retain)) / (1 - auc_retain) * 100)


def test_the_package_loader_loads_the_same_module(load, tmp_path, monkeypatch):
    from evaluate import config

    monkeypatch.setattr(config, "HF_METRICS_CACHE", str(tmp_path))  # where evaluate.load keeps its rows by default
    privleak = evaluate_modules.load("privleak", config_name="aucs")
    assert type(privleak).__name__ == "Privleak" and privleak.config_name == "aucs"
    assert privleak.compute(auc_unlearned=[0.7], auc_retain=[0.5])["privleak"] == pytest.approx((0.3 - 0.5) / 0.5 * 100)


@pytest.mark.parametrize(
    ("name", "config_name", "arguments", "message"),
    [
        (
            "truth_ratio",
            None,
            {"correct_nll": [1.0], "perturbed_nlls": [[2.0]]},
            r"truth_ratio: aggregation must be one of 'forget', 'retain', got None",
        ),
        (
            "truth_ratio",
            None,
            {"correct_nll": [1.0], "perturbed_nll": [[2.0]], "aggregation": "forget"},
            r"truth_ratio: unknown argument\(s\) \['perturbed_nll'\]; inputs: correct_nll",
        ),
        (
            "truth_ratio",
            None,
            {"correct_nll": [1.0], "aggregation": "forget"},
            r"truth_ratio: missing input\(s\) \['perturbed_nlls'\]",
        ),
        (
            "forget_quality",
            None,
            {"truth_ratio": [0.1, 0.2], "retain_model_truth_ratio": [0.3]},
            r"forget_quality: every input needs one value per row, got lengths \{'truth_ratio': 2, ",
        ),
        (
            "extraction_strength",
            None,
            {"argmax_correct": [True, False]},
            r"extraction_strength: first row \{'argmax_correct': True\} does not match the inputs: argmax_correct",
        ),
        ("exact_memorization", None, {"argmax_correct": []}, r"exact_memorization: no rows given"),
        ("mia_auc", "scores", {"score": [0.1], "is_forget": [True], "k": 0.4}, r"k applies to the configs"),
        ("mia_auc", "min_k", {"token_logprobs": [[-1.0]], "is_forget": [True], "k": 1.5}, r"k must be in \(0, 1\]"),
        ("privleak", "aucs", {"auc_unlearned": [0.8, 0.7], "auc_retain": [0.6, 0.6]}, r"takes one row, got 2"),
    ],
    ids=[
        "no-aggregation",
        "misspelt-input",
        "missing-input",
        "unequal-rows",
        "wrong-type",
        "no-rows",
        "k-unused",
        "k-range",
        "aucs-rows",
    ],
)
def test_bad_input_gets_a_one_line_error(load, name, config_name, arguments, message):
    with pytest.raises(ValueError, match=message) as caught:
        load(name, config_name).compute(**arguments)
    assert "\n" not in str(caught.value)


def test_unknown_configuration_is_refused(load):
    with pytest.raises(
        ValueError, match=r"privleak: config_name must be one of 'default', 'scores', 'aucs', got 'auc'"
    ):
        load("privleak", "auc")
