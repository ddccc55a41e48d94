"""1 and 2 CPU processes give the same per-sample evaluation values (docs/design.md, Evaluation: Sharding)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import launch_2proc, run_until_done
from transformers import AutoModelForCausalLM

from llm_unlearn.models import tiny_llama

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "eval_distributed.py"


def _assert_same(one, two, where: str) -> None:
    if isinstance(one, dict):
        assert set(one) == set(two), f"{where}: keys differ"
        for key in one:
            _assert_same(one[key], two[key], f"{where}/{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), where
        for i, (a, b) in enumerate(zip(one, two)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(one, float):
        assert math.isclose(one, two, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {one} vs {two}"
    else:
        assert one == two, f"{where}: {one!r} vs {two!r}"


def test_one_and_two_processes_give_the_same_values(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer), seed=3)
    # A random untied head makes greedy generations depend on the prompt (a tied one repeats the input).
    torch.manual_seed(3)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    model.save_pretrained(tmp_path / "model")

    one, two = tmp_path / "one", tmp_path / "two"
    # One process: here, on the reloaded model (saves a second interpreter start-up).
    spec = importlib.util.spec_from_file_location("eval_distributed", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.evaluate_all(AutoModelForCausalLM.from_pretrained(tmp_path / "model"), tokenizer, one)
    # Two processes through accelerate.
    args = ["--model", str(tmp_path / "model")]
    run_until_done(launch_2proc([str(SCRIPT), *args, "--out", str(two), "--world-size", "2"]), two / "done")

    for suite in ("tofu", "muse"):
        per_one = json.loads((one / suite / "per_sample.json").read_text())
        per_two = json.loads((two / suite / "per_sample.json").read_text())
        _assert_same(per_one, per_two, suite)
        sum_one = json.loads((one / suite / "summary.json").read_text())
        sum_two = json.loads((two / suite / "summary.json").read_text())
        assert (sum_one["num_processes"], sum_two["num_processes"]) == (1, 2)
        _assert_same(sum_one["metrics"], sum_two["metrics"], f"{suite} summary")
    tofu = json.loads((two / "tofu" / "per_sample.json").read_text())
    assert list(tofu["forget"]["truth_ratio"]) == ["50", "51", "52", "53", "54"]  # both shards gathered
    assert list(tofu["real_authors"]["truth_ratio"]) == ["3"]  # one row: rank 1 had an empty shard
    generations = list(tofu["forget"]["generation"].values())
    assert all(generations) and len(set(generations)) > 1


@pytest.mark.slow
def test_smollm2_one_and_two_processes_are_identical_at_batch_4(tmp_path):
    """10 rows at batch 4: one process forms batches of 4, 4, 2. Two processes must see those same batches (rank 0
    the first two, rank 1 the last), so generations and per-sample values are equal exactly, not just closely."""
    import sys

    script = REPO / "tests" / "scripts" / "eval_whole_batches.py"
    one, two = tmp_path / "one", tmp_path / "two"
    run_until_done([sys.executable, str(script), "--out", str(one)], one / "done", timeout=900)
    run_until_done(launch_2proc([str(script), "--out", str(two)]), two / "done", timeout=900)
    per_one = json.loads((one / "per_sample.json").read_text())
    per_two = json.loads((two / "per_sample.json").read_text())
    assert per_one == per_two
    generations = per_one["forget"]["generation"]
    assert len(generations) == 10 and len(set(generations.values())) > 1
