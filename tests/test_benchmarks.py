"""The benchmark harness end to end at the toy scale (tiny random model), and make_tables on result JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import apply_selection  # noqa: E402
import harness  # noqa: E402
import make_tables  # noqa: E402
import recipe_runs  # noqa: E402
import run_benchmark as rb  # noqa: E402
import selection  # noqa: E402


def test_tags_name_runs_unambiguously():
    assert harness.lr_tag(3e-4) == "3e-4"
    assert harness.lr_tag(1e-3) == "1e-3"
    assert harness.alpha_tag(0.5) == "0.5" and harness.alpha_tag(8.0) == "8"


def test_every_registered_method_has_a_recipe_and_every_scale_a_grid():
    from llm_unlearn.methods import METHODS

    assert recipe_runs.missing_recipes(list(METHODS)) == [], "add recipes/tofu/smollm2/<method>_lora.yaml"
    families = rb.method_families()
    for scale in rb.SCALES.values():
        assert recipe_runs.missing_recipes(list(scale.methods or METHODS), recipe_runs.REPO / scale.recipes) == []
        for method in scale.methods or METHODS:
            for weights in scale.weights_of(method, families[method]):
                grid = scale.lr_grid[(families[method], weights)]
                assert list(grid) == sorted(grid, reverse=True), f"{scale.name}: grids run largest first"
    paper_sweep = {8.0, 4.0, 2.0, 1.0, 0.5}
    for scale in ("cpu", "gpu", "protocol"):
        alphas = rb.SCALES[scale].alphas
        assert paper_sweep <= set(alphas) and list(alphas) == sorted(alphas, reverse=True)


def test_a_finished_run_is_reused_only_with_the_same_config_and_its_exports(tmp_path):
    """An α sweep that changes between invocations, or an export deleted after evaluation, forces a rerun."""
    config = {"training": {"output_dir": str(tmp_path), "alpha": 8.0}}
    export = tmp_path / "unlearned"
    assert recipe_runs.reusable(tmp_path, config, [export]) is None  # nothing finished yet
    (tmp_path / "run_info.json").write_text(json.dumps({"bench_config": config, "wall_time_s": 3.0}))
    assert recipe_runs.reusable(tmp_path, config, [export]) is None  # the export is gone
    export.mkdir()
    assert recipe_runs.reusable(tmp_path, config, [export])["wall_time_s"] == 3.0
    changed = {"training": {**config["training"], "alpha": 16.0}}
    assert recipe_runs.reusable(tmp_path, changed, [export]) is None


def test_overrides_read_back_as_the_values_given(tmp_path):
    """Each value becomes override text that load_yaml reads back unchanged: floats in exponent notation (YAML 1.1
    reads a bare 1e-05 as a string), empty strings, null, lists, and a mapping that replaces a section whole."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: tofu, source: somewhere, forget_split: forget10}\ntraining: {seed: 3}\n")
    values = {"learning_rate": 1e-05, "system": "", "alphas": [8.0, 0.5], "lora": None, "use_cpu": True}
    run = recipe_runs.RecipeRun(recipe, [*recipe_runs.overrides("training", values), "data={dataset: synthetic}"])
    assert run.raw() == {"data": {"dataset": "synthetic"}, "training": {"seed": 3, **values}}


def test_a_run_is_its_recipe_plus_the_scale_overrides(tmp_path):
    """The toy GA run over full weights: the GA recipe, its model and data replaced, the toy budget, rows."""
    scale = rb.SCALES["toy"]
    ctx = harness.Context(scale, 0, scale.settings[0], tmp_path, tmp_path, tmp_path, "base", target_model="t")
    ctx.reference_log = "ref/per_sample.json"
    run = ctx.method_run("ga", "full", 1e-3, tmp_path / "work")
    assert run.recipe == recipe_runs.RECIPES / "ga_lora.yaml"  # no ga_full recipe: the LoRA one, lora=null
    config = run.spec().raw
    assert config["model"] == {"name_or_path": "t", "lora": None}
    assert config["data"] == scale.settings[0].data
    assert config["method"] == "ga"
    expected_training = {"max_steps": 2, "per_device_train_batch_size": 2, "warmup_steps": 0, "seed": 0}
    assert expected_training.items() <= config["training"].items()
    assert config["training"]["learning_rate"] == 1e-3 and config["training"]["output_dir"] == str(tmp_path / "work")
    assert config["evaluation"]["reference_log"] == "ref/per_sample.json"
    assert config["evaluation"]["options"] == {"batch_size": 4, "max_new_tokens": 4, "rows": scale.eval_rows}
    mox = ctx.method_run("mox", "full", 1e-4, tmp_path / "work")
    assert mox.recipe.name == "mox_full.yaml" and mox.spec().raw["training"]["momentum_refresh"] == "steps"


def test_the_tofu_folder_is_an_argument(tmp_path):
    cpu = rb.with_tofu(rb.SCALES["cpu"], "/data/tofu")
    assert [s.data["source"] for s in cpu.settings] == ["/data/tofu"]
    assert "source" not in rb.SCALES["cpu"].settings[0].data
    assert rb.with_tofu(rb.SCALES["toy"], "/data/tofu") == rb.SCALES["toy"]  # synthetic settings keep no source
    with pytest.raises(SystemExit, match="--tofu: folder"):
        rb.run_benchmark("cpu", 0, ["ga"], tmp_path / "out", tmp_path / "cache", tofu=str(tmp_path / "missing"))
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The toy scale, setting f1, with MOX and GA; the utility rule is made to reject lr 1e-3 so that both the
    'next grid point' and the 'nothing passes' branches run (the tiny model's utility is 0 and would pass all)."""
    root = tmp_path_factory.mktemp("bench")
    out, cache = root / "results", root / "cache"
    patch = pytest.MonkeyPatch()
    patch.setattr(selection, "passes", lambda result, target, fraction=0.9: result.get("learning_rate") != 1e-3)
    try:
        seed_dir = rb.run_benchmark("toy", 0, ["mox", "ga"], out, cache, settings=["f1"])
    finally:
        patch.undo()
    return out, cache, seed_dir


def test_selection_keeps_what_earlier_invocations_chose_for_other_methods_and_settings():
    earlier = {
        "forget01": {
            "target_model_utility": 0.4,
            "choices": {"forget01/lora/ga": "ga-a", "forget01/lora/npo": "npo-a"},
        },
        "forget05": {"target_model_utility": 0.5, "choices": {"forget05/lora/ga": "ga-b"}},
    }
    now = {
        "forget01": {"target_model_utility": 0.41, "choices": {"forget01/lora/npo": "npo-b", "forget01/lora/rmu": "r"}}
    }
    merged = rb.merged_settings(earlier, now)
    assert merged["forget05"] == earlier["forget05"]
    assert merged["forget01"]["target_model_utility"] == 0.41
    assert merged["forget01"]["choices"] == {
        "forget01/lora/ga": "ga-a",
        "forget01/lora/npo": "npo-b",
        "forget01/lora/rmu": "r",
    }


def test_toy_benchmark_writes_one_json_per_run_and_a_selection(toy_run):
    _, cache, seed_dir = toy_run
    names = sorted(p.stem for p in seed_dir.glob("*.json"))
    assert names == sorted(
        [
            "f1-retain",
            "f1-target",
            # MOX-LoRA: lr 1e-3 is the only grid point and fails, so the whole α sweep is evaluated
            "f1-lora-mox-lr1e-3-a2",
            "f1-lora-mox-lr1e-3-a0.5",
            "f1-lora-mox_momentum-lr1e-3-a0.5",
            # full weights start at 1e-4, which passes
            "f1-full-mox-lr1e-4-a0.5",
            "f1-full-mox_momentum-lr1e-4-a0.5",
            # GA-LoRA: 1e-3 fails, so 1e-4 is evaluated and chosen
            "f1-lora-ga-lr1e-3",
            "f1-lora-ga-lr1e-4",
            "f1-full-ga-lr1e-4",
            "selection",
        ]
    )
    selection = json.loads((seed_dir / "selection.json").read_text())
    choices = selection["settings"]["f1"]["choices"]
    assert choices["f1/lora/ga"] == {
        "run": "f1-lora-ga-lr1e-4",
        "met_rule": True,
        "evaluated": ["f1-lora-ga-lr1e-3", "f1-lora-ga-lr1e-4"],
    }
    # Nothing passed: the smallest lr and α are kept and flagged; the other variants use that α*.
    assert choices["f1/lora/mox"]["run"] == "f1-lora-mox-lr1e-3-a0.5"
    assert choices["f1/lora/mox"]["met_rule"] is False and choices["f1/lora/mox"]["alpha_star"] == 0.5
    assert choices["f1/lora/mox"]["alpha_sweep"] is True and "alpha_sweep" not in choices["f1/full/mox"]
    assert choices["f1/full/mox_momentum"]["run"] == "f1-full-mox_momentum-lr1e-4-a0.5"
    assert "0.9" in selection["rule"] or "0.9 x" in selection["rule"]
    assert selection["scale"]["unlearn_budget"] == rb.SCALES["toy"].unlearn

    run = json.loads((seed_dir / "f1-lora-ga-lr1e-4.json").read_text())
    assert run["learning_rate"] == 1e-4 and run["weights"] == "lora" and run["family"] == "ascent"
    assert run["config"]["training"]["max_steps"] == rb.SCALES["toy"].unlearn["max_steps"]
    assert set(run["wall_time_s"]) == {"train", "evaluate"} and run["peak_memory_mb"]["evaluate"] > 0
    assert run["environment"]["versions"]["torch"] and "git_commit" in run["environment"]
    for key in ("forget_quality", "model_utility", "forget_rougeL_recall", "retain_rougeL_recall"):
        assert key in run["metrics"]
    assert run["metrics"]["forget_quality"] is not None  # the retain model's log was the reference
    plain = json.loads((seed_dir / "f1-lora-mox-lr1e-3-a2.json").read_text())
    assert plain["variant"] == "mox" and plain["alpha"] == 2.0 and "extrapolated" in plain["note"]
    # Fine-tuned models live in the cache (never the repository), keyed by the config hash.
    assert len(list((cache / "finetuned").glob("target-*"))) == 1
    assert len(list((cache / "finetuned").glob("retain-*"))) == 1


def test_toy_benchmark_resumes_without_running_anything(toy_run, monkeypatch):
    out, cache, seed_dir = toy_run
    before = {p.name: p.read_text() for p in seed_dir.glob("f1-*.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    import llm_unlearn.stages

    for stage in ("run_finetune", "run_unlearn", "run_extrapolate", "run_evaluate"):
        monkeypatch.setattr(llm_unlearn.stages, stage, refuse)
    monkeypatch.setattr(selection, "passes", lambda result, target, fraction=0.9: result.get("learning_rate") != 1e-3)
    rb.run_benchmark("toy", 0, ["mox", "ga"], out, cache, settings=["f1"])
    assert {p.name: p.read_text() for p in seed_dir.glob("f1-*.json")} == before


def test_an_interrupted_chunk_keeps_its_choices_and_recorded_only_finishes_it(toy_run, tmp_path, monkeypatch):
    """selection.json is rewritten after every choice: a chunk killed in GA-LoRA keeps the MOX choices (marked
    incomplete), and --recorded-only then records every choice whose runs are on disk, running nothing."""
    import shutil

    import llm_unlearn.stages

    out, cache, seed_dir = toy_run
    copy = tmp_path / "results"
    shutil.copytree(seed_dir, copy / "toy" / "seed0")
    (copy / "toy" / "seed0" / "selection.json").unlink()
    (copy / "toy" / "seed0" / "f1-lora-ga-lr1e-4.json").unlink()

    def killed(spec, options):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, "passes", lambda result, target, fraction=0.9: result.get("learning_rate") != 1e-3)
    monkeypatch.setattr(llm_unlearn.stages, "run_unlearn", killed)
    with pytest.raises(KeyboardInterrupt):
        rb.run_benchmark("toy", 0, ["mox", "ga"], copy, cache, settings=["f1"])
    partial = json.loads((copy / "toy" / "seed0" / "selection.json").read_text())
    assert set(partial["settings"]["f1"]["choices"]) == {
        "f1/lora/mox",
        "f1/lora/mox_momentum",
        "f1/full/mox",
        "f1/full/mox_momentum",
    }
    assert partial["invocations"][-1]["complete"] is False

    for stage in ("run_finetune", "run_unlearn", "run_extrapolate", "run_evaluate"):
        monkeypatch.setattr(llm_unlearn.stages, stage, killed)
    rb.run_benchmark("toy", 0, ["mox", "ga"], copy, cache, settings=["f1"], recorded_only=True)
    record = json.loads((copy / "toy" / "seed0" / "selection.json").read_text())
    assert "f1/lora/ga" not in record["settings"]["f1"]["choices"]  # its lr 1e-4 run is missing
    assert record["settings"]["f1"]["choices"]["f1/full/ga"]["run"] == "f1-full-ga-lr1e-4"
    assert [(c["complete"], c["recorded_only"]) for c in record["invocations"]] == [(False, False), (True, True)]


def test_a_failed_run_is_recorded_and_the_benchmark_goes_on(toy_run, tmp_path, monkeypatch):
    """Every GA training raises: each grid point gets a failure JSON, the smallest is kept (flagged), and the
    benchmark still writes selection.json. The cached target and retain models are reused."""
    _, cache, _ = toy_run
    import llm_unlearn.stages

    def broken(spec, options):
        raise RuntimeError("boom")

    monkeypatch.setattr(llm_unlearn.stages, "run_unlearn", broken)
    seed_dir = rb.run_benchmark("toy", 0, ["ga"], tmp_path / "out", cache, settings=["f1"])
    failed = json.loads((seed_dir / "f1-lora-ga-lr1e-4.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom" and failed["metrics"] == {}
    choices = json.loads((seed_dir / "selection.json").read_text())["settings"]["f1"]["choices"]
    assert choices["f1/lora/ga"] == {
        "run": "f1-lora-ga-lr1e-4",
        "met_rule": False,
        "evaluated": ["f1-lora-ga-lr1e-3", "f1-lora-ga-lr1e-4"],
    }
    assert choices["f1/full/ga"]["evaluated"] == ["f1-full-ga-lr1e-4", "f1-full-ga-lr1e-5"]


def test_protocol_rules_stop_the_sweep_at_the_first_pass_and_reuse_seed_0s_choices(toy_run, tmp_path, monkeypatch):
    """The protocol scale's rules on the toy model: the α sweep stops at its first passing α (the largest that
    passes), GA runs on the weights named for it only, MOX variants run at plain MOX's lr* (a momentum variant at
    its α*, another over its own sweep), and seed 1 reruns exactly seed 0's choices, refusing to start (before
    any folder exists) while seed 0 has none."""
    from dataclasses import replace

    _, cache, _ = toy_run
    scale = replace(
        rb.SCALES["toy"],
        name="toy_protocol",
        alphas=(4.0, 2.0, 0.5),
        sweep_every_alpha=False,
        select_on_seed=0,
        method_weights={"ga": ("lora",)},
        mox_variants=(
            rb.MoxVariant("kl2", "retain KL weight 2", {"kl_weight": 2.0}, alphas=(8.0, 4.0)),
            rb.MoxVariant("refresh_epoch", "per-epoch refresh", {"momentum_refresh": "epoch"}, momentum=True),
        ),
    )
    monkeypatch.setitem(rb.SCALES, scale.name, scale)

    def passes(result, target, fraction=0.9):  # α = 4 and GA at 1e-3 fail; everything else passes
        return result.get("alpha") != 4.0 and not (result.get("alpha") is None and result["learning_rate"] == 1e-3)

    monkeypatch.setattr(selection, "passes", passes)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="reuses seed 0's selection, which has no f1/lora/mox"):
        rb.run_benchmark(scale.name, 1, ["mox", "ga"], out, cache, settings=["f1"])
    assert not out.exists()

    seed0 = rb.run_benchmark(scale.name, 0, ["mox", "ga"], out, cache, settings=["f1"])
    assert sorted(p.stem for p in seed0.glob("f1-lora-*")) == [
        "f1-lora-ga-lr1e-3",
        "f1-lora-ga-lr1e-4",
        "f1-lora-mox+kl2-lr1e-3-a8",  # the variant's own sweep: a8 passes first
        "f1-lora-mox-lr1e-3-a2",  # a4 failed, a2 passed: a0.5 is never evaluated
        "f1-lora-mox-lr1e-3-a4",
        "f1-lora-mox_momentum+refresh_epoch-lr1e-3-a2",  # a momentum variant at plain MOX's α*
        "f1-lora-mox_momentum-lr1e-3-a2",
    ]
    assert not list(seed0.glob("f1-full-ga-*"))
    kl2 = json.loads((seed0 / "f1-lora-mox+kl2-lr1e-3-a8.json").read_text())
    assert kl2["config"]["training"]["kl_weight"] == 2.0 and kl2["mox_variant"]["name"] == "kl2"
    epoch = json.loads((seed0 / "f1-lora-mox_momentum+refresh_epoch-lr1e-3-a2.json").read_text())
    assert epoch["config"]["training"]["momentum_refresh"] == "epoch" and epoch["config"]["training"]["momentum"]
    chosen0 = json.loads((seed0 / "selection.json").read_text())["settings"]["f1"]["choices"]
    assert chosen0["f1/lora/mox"]["alpha_star"] == 2.0 and "selected_on_seed" not in chosen0["f1/lora/mox"]

    seed1 = rb.run_benchmark(scale.name, 1, ["mox", "ga"], out, cache, settings=["f1"])
    assert sorted(p.stem for p in seed1.glob("f1-*")) == [
        "f1-full-mox-lr1e-4-a2",
        "f1-full-mox_momentum-lr1e-4-a2",
        "f1-lora-ga-lr1e-4",
        "f1-lora-mox+kl2-lr1e-3-a8",
        "f1-lora-mox-lr1e-3-a2",
        "f1-lora-mox_momentum+refresh_epoch-lr1e-3-a2",
        "f1-lora-mox_momentum-lr1e-3-a2",
        "f1-retain",
        "f1-target",
    ]
    record1 = json.loads((seed1 / "selection.json").read_text())
    assert [c["methods"] for c in record1["invocations"]] == [["mox", "ga"]] and record1["invocations"][0][
        "wall_time_s"
    ] > 0
    rows = make_tables.chunk_rows({"selection": {1: record1}})
    assert rows[0][:3] == ["1", "f1", "mox, ga"] and rows[0][4] == "complete"
    chosen1 = record1["settings"]["f1"]["choices"]
    assert set(chosen1) == set(chosen0)
    for key, choice in chosen1.items():
        assert choice["selected_on_seed"] == 0 and choice["run"] == chosen0[key]["run"], key
        assert choice["evaluated"] == [choice["run"]], key


def test_the_news_scale_runs_the_muse_suite_and_selects_on_retain_knowledge(toy_run, tmp_path, monkeypatch):
    """The news scale's recipes, suite and utility through the same harness, on the toy model and 2 articles."""
    from dataclasses import replace

    _, cache, _ = toy_run
    news = rb.SCALES["news"]
    scale = replace(
        news,
        name="toy_news",
        base_model="tiny",
        settings=(rb.Setting("news", {**news.settings[0].data, "news_articles": 2}),),
        finetune={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 4},
        unlearn={"max_steps": 2, "per_device_train_batch_size": 2, "warmup_steps": 0},
        lr_grid={("ascent", "lora"): (1e-3,), ("mox", "lora"): (1e-3,)},
        alphas=(2.0,),
        eval_options={"batch_size": 4, "knowmem_max_new_tokens": 4, "verbmem_max_new_tokens": 4},
        lora={"r": 4, "lora_alpha": 8},
        methods=("mox", "ga"),
    )
    monkeypatch.setitem(rb.SCALES, scale.name, scale)
    seen = []

    def passes(result, target, fraction=0.9):
        seen.append((result.get("utility_metric"), target))
        return True

    monkeypatch.setattr(selection, "passes", passes)
    out = tmp_path / "out"
    seed_dir = rb.run_benchmark(scale.name, 0, None, out, cache)
    assert sorted(p.stem for p in seed_dir.glob("news-*")) == [
        "news-lora-ga-lr1e-3",
        "news-lora-mox-lr1e-3-a2",
        "news-lora-mox_momentum-lr1e-3-a2",
        "news-retain",
        "news-target",
    ]
    target = json.loads((seed_dir / "news-target.json").read_text())
    assert {"verbmem_f", "knowmem_f", "knowmem_r"} <= set(target["metrics"])
    assert seen and all(metric == "knowmem_r" for metric, _ in seen)
    assert {target_utility for _, target_utility in seen} == {target["metrics"]["knowmem_r"]}
    ga = json.loads((seed_dir / "news-lora-ga-lr1e-3.json").read_text())
    assert ga["recipe"] == "recipes/muse/synthetic_news/ga_lora.yaml" and ga["config"]["evaluation"]["suite"] == "muse"
    assert ga["metrics"]["privleak"] is not None  # against the retain model's log

    readme = tmp_path / "README.md"
    readme.write_text("<!-- tables:begin -->\n<!-- tables:end -->\n")
    assert make_tables.main(["--results", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert "knowmem retain ↑" in header and "forget quality" not in header
    row = next(line for line in text.splitlines() if line.startswith("| ga | lora |"))
    assert make_tables.fmt_number(ga["metrics"]["knowmem_r"]) in row
    assert (out / "toy_news" / "forget_quality_vs_utility.png").stat().st_size > 1000


def test_apply_selection_gives_each_recipe_its_chosen_settings_and_names_the_result(toy_run, tmp_path):
    import yaml

    from llm_unlearn.stages import load_spec

    out, _, seed_dir = toy_run
    plans = apply_selection.planned(rb.SCALES["toy"], 0, "f1", out)
    recipes = recipe_runs.RECIPES
    assert set(plans) == {recipes / f"{stem}.yaml" for stem in ("ga_lora", "mox_lora", "mox_momentum_lora", "mox_full")}
    ga = plans[recipes / "ga_lora.yaml"]
    assert (
        ga.splitlines()[1]
        == f"{apply_selection.HEADER} {(seed_dir / 'f1-lora-ga-lr1e-4.json').as_posix()} (toy scale, seed 0)"
    )
    assert ga.splitlines()[0] == (recipes / "ga_lora.yaml").read_text().splitlines()[0]
    training = yaml.safe_load(ga)["training"]
    assert training["learning_rate"] == 1e-4 and training["max_steps"] == 2 and training["warmup_steps"] == 0
    assert training["per_device_train_batch_size"] == 2 and training["output_dir"].endswith("_{forget_split}")
    plain = yaml.safe_load(plans[recipes / "mox_lora.yaml"])["training"]
    assert (plain["alpha"], plain["alphas"], plain["momentum"]) == (0.5, [2.0], False)
    assert "momentum_refresh" not in plain
    momentum = yaml.safe_load(plans[recipes / "mox_momentum_lora.yaml"])["training"]
    assert momentum["momentum"] is True and momentum["momentum_refresh"] == "steps" and momentum["alpha"] == 0.5
    for path, text in plans.items():  # still a valid recipe
        written = tmp_path / path.name
        written.write_text(text)
        load_spec(str(written), [])


SELECTED_RECIPE_FOLDERS = sorted({scale.recipes for scale in rb.SCALES.values()})


@pytest.mark.parametrize(("scale", "setting"), [("protocol", "forget01"), ("news", "news")])
def test_shipped_recipes_agree_with_the_committed_selection(scale, setting):
    if not (BENCHMARKS / "results" / scale / "seed0" / "selection.json").is_file():
        pytest.skip(f"no committed {scale} selection yet")
    assert apply_selection.main(["--scale", scale, "--setting", setting, "--check"]) == 0


def test_a_recipe_names_a_selection_only_while_that_selection_chooses_it():
    planned = set()
    for scale, setting in (("protocol", "forget01"), ("news", "news")):
        if (BENCHMARKS / "results" / scale / "seed0" / "selection.json").is_file():
            planned |= set(apply_selection.planned(rb.SCALES[scale], 0, setting, BENCHMARKS / "results"))
    claiming = {
        path
        for folder in SELECTED_RECIPE_FOLDERS
        for path in (recipe_runs.REPO / folder).glob("*.yaml")
        if apply_selection.HEADER in path.read_text()
    }
    assert claiming <= planned


def test_make_tables_regenerates_the_readme_from_toy_results(toy_run, tmp_path):
    out, _, _ = toy_run
    readme = tmp_path / "README.md"
    readme.write_text("# Bench\n\nintro\n\n<!-- tables:begin -->\nstale\n<!-- tables:end -->\n\nreading\n")
    assert make_tables.main(["--results", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Bench\n\nintro\n") and text.endswith("<!-- tables:end -->\n\nreading\n")
    assert "stale" not in text
    assert "#### f1: selected runs" in text and "#### f1: MOX-LoRA α sweep" in text
    sweep = text.split("#### f1: MOX-LoRA α sweep")[1].split("<details>")[0]
    assert [line.split("|")[1].strip() for line in sweep.splitlines() if line.startswith("| ")][1:] == ["2", "0.5"]
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows.index("MOX †") < rows.index("MOX-momentum †") < rows.index("ga") < rows.index("MOX")
    ga = json.loads((out / "toy" / "seed0" / "f1-lora-ga-lr1e-4.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| ga | lora |"))
    assert make_tables.fmt_number(ga["metrics"]["model_utility"]) in row
    assert (out / "toy" / "forget_quality_vs_utility.png").stat().st_size > 1000
    assert make_tables.main(["--results", str(out), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("| ga | lora |", "| ga | LORA |"))
    assert make_tables.main(["--results", str(out), "--readme", str(readme), "--check"]) == 1


def _result(run: str, seed: int, metrics: dict, **fields) -> dict:
    return {"run": run, "seed": seed, "setting": "s", "metrics": metrics, **fields}


def test_make_tables_aggregates_seeds_and_adds_cost_ratios(tmp_path):
    """Two seeds of one selected GA run: mean ± sample std, and the step/memory ratios of cost.json."""
    results = tmp_path / "results"
    for seed, (fq, mu) in enumerate([(0.1, 0.5), (0.3, 0.7)]):
        folder = results / "demo" / f"seed{seed}"
        folder.mkdir(parents=True)
        run = _result(
            "s-lora-ga-lr1e-4",
            seed,
            {"forget_quality": fq, "model_utility": mu},
            kind="unlearn",
            method="ga",
            variant="ga",
            weights="lora",
            learning_rate=1e-4,
        )
        (folder / "s-lora-ga-lr1e-4.json").write_text(json.dumps(run))
        choice = {"run": "s-lora-ga-lr1e-4", "met_rule": seed == 0, "evaluated": ["s-lora-ga-lr1e-4"]}
        selection = {"scale": {}, "settings": {"s": {"utility_threshold": 0.5, "choices": {"s/lora/ga": choice}}}}
        (folder / "selection.json").write_text(json.dumps(selection))
    (results / "cost").mkdir()
    cost = {
        "methods": [
            {"method": "ga", "weights": "lora", "status": "ok", "step_time_ratio": 0.6, "peak_memory_ratio": 0.98}
        ]
    }
    (results / "cost" / "cost.json").write_text(json.dumps(cost))
    body = make_tables.render(results, tmp_path, write_plots=False)
    row = next(line for line in body.splitlines() if line.startswith("| ga †"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # mean(0.1, 0.3) = 0.2, sample std = 0.1414; mean(0.5, 0.7) = 0.6, std 0.1414; † since seed 1 missed the rule
    assert cells[:6] == ["ga †", "lora", "1e-4", "–", "0.2 ± 0.141", "0.6 ± 0.141"]
    assert cells[-3:] == ["0.6", "0.98", "2"]


def test_make_tables_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="tables:begin"):
        make_tables.main(["--results", str(tmp_path), "--readme", str(readme)])


def test_cost_ratios_are_relative_to_the_finetune_step_of_the_same_weights():
    import cost

    rows = [
        {"method": "finetune", "weights": "lora", "status": "ok", "step_time_s": 2.0, "peak_memory_mb": 1000.0},
        {"method": "mox", "weights": "lora", "status": "ok", "step_time_s": 2.5, "peak_memory_mb": 1100.0},
        {"method": "finetune", "weights": "full", "status": "ok", "step_time_s": 4.0, "peak_memory_mb": 2000.0},
        {"method": "mox", "weights": "full", "status": "ok", "step_time_s": 5.0, "peak_memory_mb": 3000.0},
        {"method": "ga", "weights": "full", "status": "failed (exit 1)"},
    ]
    ratios = {
        (r["method"], r["weights"]): (r.get("step_time_ratio"), r.get("peak_memory_ratio"))
        for r in cost.with_ratios(rows)
    }
    assert ratios[("mox", "lora")] == (1.25, 1.1)
    assert ratios[("mox", "full")] == (1.25, 1.5)
    assert ratios[("finetune", "full")] == (1.0, 1.0)
    assert ratios[("ga", "full")] == (None, None)


def test_headline_rows_give_each_seeds_forget_quality_difference_and_a_sign_count():
    def run(fq, mu):
        return {"metrics": {"forget_quality": fq, "model_utility": mu}}

    runs = {
        0: {"m0": run(0.5, 0.40), "g0": run(0.1, 0.42), "n0": run(0.5, 0.40)},
        1: {"m1": run(0.2, 0.44), "g1": run(0.3, 0.40), "n1": run(0.1, 0.40)},
    }
    choices = {
        0: {"f/lora/mox": {"run": "m0"}, "f/lora/ga": {"run": "g0"}, "f/lora/npo": {"run": "n0"}},
        1: {"f/lora/mox": {"run": "m1"}, "f/lora/ga": {"run": "g1"}, "f/lora/npo": {"run": "n1"}},
    }
    scale = {"runs": runs, "selection": {s: {"settings": {"f": {"choices": c}}} for s, c in choices.items()}}
    rows = {row[0]: row[1:] for row in make_tables.headline_rows(scale, "f")}
    assert set(rows) == {"MOX (lora) − ga (lora)", "MOX (lora) − npo (lora)"}  # no task-vector run: no row
    ga = rows["MOX (lora) − ga (lora)"]
    assert [float(v) for v in ga[:2]] == pytest.approx([0.4, -0.1])
    assert ga[2] == "1 ahead, 1 behind, 0 tied"
    assert rows["MOX (lora) − npo (lora)"][2] == "1 ahead, 0 behind, 1 tied"


def per_row_result(forget_losses: dict, holdout_losses: dict, ratios=None, utility=1.0, alpha=None) -> dict:
    forget = {"mia_loss": forget_losses, **({"truth_ratio": ratios} if ratios else {})}
    return {
        "alpha": alpha,
        "metrics": {"model_utility": utility},
        "per_sample": {"forget": forget, "holdout": {"mia_loss": holdout_losses}},
    }


def test_the_validation_split_picks_the_alpha_whose_validation_rows_look_least_like_members():
    """Rows split by position in numeric order ('2' before '10'): even positions validate. Membership AUC by
    hand (a holdout row counts when its loss is above a forget row's): α 8 fails the utility rule although its
    AUC is exactly 0.5; α 4 (AUC 3/4) and α 2 (AUC 1/4) tie at 0.25 from 0.5, so the larger wins; α 1 (AUC 1)
    loses. A result without per-row values is no candidate."""
    holdout = {"50": 3.0, "51": 4.0}

    def losses(first, third):  # rows in order 0, 2, 3, 10: rows '0' and '3' validate, '2' and '10' test
        return {"10": 99.0, "0": first, "3": third, "2": -99.0}

    sweep = {
        8.0: per_row_result(losses(3.5, 3.5), holdout, utility=0.1),  # forget 3.5 vs 3 and 4: 2 of 4 pairs
        4.0: per_row_result(losses(3.5, 2.5), holdout),
        2.0: per_row_result(losses(3.5, 4.5), holdout),
        1.0: per_row_result(losses(1.0, 2.0), holdout),
        0.5: {"metrics": {"model_utility": 1.0}},
    }
    assert selection.forget_split(sweep[4.0]) == (["0", "3"], ["2", "10"])
    chosen, table = selection.validated_alpha(sweep, target_utility=1.0)
    assert chosen == 4.0
    assert {a: row["validation_mia_auc"] for a, row in table.items()} == {
        8.0: 0.5,
        4.0: 0.75,
        2.0: 0.25,
        1.0: 1.0,
        0.5: None,
    }
    assert [a for a, row in table.items() if row["passes"]] == [4.0, 2.0, 1.0, 0.5]
    assert selection.validated_alpha({8.0: sweep[8.0], 0.5: sweep[0.5]}, target_utility=1.0)[0] is None


def test_test_rows_forget_quality_is_the_ks_p_value_of_the_odd_positions_only():
    from scipy.stats import ks_2samp

    rows = [str(i) for i in range(10)]
    ours = {row: 0.1 * (i + 1) for i, row in enumerate(rows)}
    theirs = {row: 0.3 + 0.05 * i for i, row in enumerate(rows)}
    result = per_row_result(dict.fromkeys(rows, 1.0), {"h": 2.0}, ratios=ours)
    reference = {"per_sample": {"forget": {"truth_ratio": theirs}}}
    odd = rows[1::2]
    expected = ks_2samp([ours[r] for r in odd], [theirs[r] for r in odd]).pvalue
    assert selection.forget_quality_on_test_rows(result, reference) == pytest.approx(expected)
    assert expected != pytest.approx(ks_2samp(list(ours.values()), list(theirs.values())).pvalue)
    assert selection.forget_quality_on_test_rows(result, {}) is None


def test_forget_validation_evaluates_every_passing_alpha_and_chooses_on_validation_rows(toy_run, tmp_path, monkeypatch):
    """The validation-split choice on the toy model: plain MOX's sweep stops at its first pass (α 2), then the
    choice evaluates the rest of the sweep; every result keeps its per-row values; a passing result recorded
    without them is evaluated again to the same numbers; seed 1 reruns the chosen α; the table reads it."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    _, cache, _ = toy_run
    scale = replace(
        rb.SCALES["toy"],
        name="toy_validation",
        alphas=(4.0, 2.0, 0.5),
        mox_weights=("lora",),
        sweep_every_alpha=False,
        select_on_seed=0,
        forget_validation=True,
    )
    monkeypatch.setitem(rb.SCALES, scale.name, scale)
    monkeypatch.setattr(selection, "passes", lambda result, target, fraction=0.9: result.get("alpha") != 4.0)
    out = tmp_path / "out"
    seed0 = rb.run_benchmark(scale.name, 0, ["mox"], out, cache, settings=["f1"])
    names = [f"f1-lora-mox-lr1e-3-a{a}" for a in ("4", "2", "0.5")]
    choices = json.loads((seed0 / "selection.json").read_text())["settings"]["f1"]["choices"]
    assert choices["f1/lora/mox"]["evaluated"] == names[:2]  # the utility rule's sweep stopped at α 2
    choice = choices["f1/lora/mox+forget_validation"]
    assert choice["evaluated"] == names and choice["alpha_star_by_utility"] == 2.0

    def expected_auc(name):  # by sklearn on the even positions, from the result file
        per_sample = json.loads((seed0 / f"{name}.json").read_text())["per_sample"]
        forget, holdout = per_sample["forget"]["mia_loss"], per_sample["holdout"]["mia_loss"]
        rows = sorted(forget, key=int)[0::2]
        scores = [forget[r] for r in rows] + list(holdout.values())
        return roc_auc_score([0] * len(rows) + [1] * len(holdout), scores)

    aucs = {2.0: expected_auc(names[1]), 0.5: expected_auc(names[2])}
    assert choice["validation"]["per_alpha"]["2"]["validation_mia_auc"] == pytest.approx(aucs[2.0])
    assert choice["alpha_star"] == min(aucs, key=lambda a: (abs(aucs[a] - 0.5), -a))
    retain = json.loads((seed0 / "f1-retain.json").read_text())
    assert set(retain["per_sample"]["forget"]["truth_ratio"]) == set(
        json.loads((seed0 / f"{names[2]}.json").read_text())["per_sample"]["forget"]["truth_ratio"]
    )

    # A passing result from before per-row values were kept is evaluated again, to the same numbers.
    path = seed0 / f"{names[2]}.json"
    before = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in before.items() if k != "per_sample"}))
    rb.run_benchmark(scale.name, 0, ["mox"], out, cache, settings=["f1"])
    again = json.loads(path.read_text())
    assert again["per_sample"] == before["per_sample"] and again["metrics"] == before["metrics"]
    assert (cache / "work" / scale.name / "seed0" / "f1" / f"{names[2]}.before-per-sample.json").is_file()

    seed1 = rb.run_benchmark(scale.name, 1, ["mox"], out, cache, settings=["f1"])
    choice1 = json.loads((seed1 / "selection.json").read_text())["settings"]["f1"]["choices"]
    assert choice1["f1/lora/mox+forget_validation"]["run"] == choice["run"]
    assert choice1["f1/lora/mox+forget_validation"]["evaluated"] == [choice["run"]]

    rows = make_tables.validation_rows(make_tables.load_results(out)[scale.name], "f1")
    assert [row[0] for row in rows] == ["MOX (α: the largest that passes)", "MOX [forget_validation]"]
    assert rows[1][2] == f"{choice['alpha_star']:g}" and rows[1][-1] == "2 of 2"
    table_keys = [row[0] for row in make_tables.selected_rows(make_tables.load_results(out)[scale.name], "f1", None)]
    assert not any("forget_validation" in label for label in table_keys)
