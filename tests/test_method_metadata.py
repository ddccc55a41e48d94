"""Methods own their metadata and exports: every registered trainer says its family, summary, tags and paper and
how it exports, every config its provenance; the stages, the model card, the benchmark harness and the tables
read them, so a new method needs its module and one registry line, nothing else."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llm_unlearn.methods import METHODS, Method
from llm_unlearn.methods.base import UnlearnConfig, UnlearningTrainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "scripts"))

import make_tables  # noqa: E402
import run_benchmark as rb  # noqa: E402
from reliability_setup import run_config, save_tiny_model  # noqa: E402

from llm_unlearn import stages  # noqa: E402
from llm_unlearn.model_card import build_model_card  # noqa: E402
from llm_unlearn.runs import RunInfo  # noqa: E402

FAMILIES = {"ascent", "descent", "mox", "representation"}


# --- every registered method ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_carries_its_metadata(name, tmp_path):
    trainer, config = METHODS[name].trainer, METHODS[name].config
    assert trainer.family in FAMILIES
    assert isinstance(trainer.summary, str) and trainer.summary.strip() and "\n" not in trainer.summary
    assert trainer.summary.endswith(".")  # the card continues with the next sentence
    assert trainer.tags and all(isinstance(tag, str) and tag for tag in trainer.tags)
    assert trainer.paper is None or set(trainer.paper) == {"title", "url"}
    assert callable(trainer.export) and callable(trainer.export_saved)
    provenance = config(output_dir=str(tmp_path), use_cpu=True).provenance()
    assert isinstance(provenance, dict)
    json.dumps(provenance)  # run_info.json records it


def test_registered_metadata_matches_what_the_cards_and_benchmark_always_said():
    """Values written down here, not read from the classes: the text of every card, its tag, and the family
    (the learning-rate grid) of every method are those of the earlier hand-kept tables."""
    families = {
        "mox": "mox",
        "ga": "ascent",
        "grad_diff": "ascent",
        "npo": "ascent",
        "simnpo": "ascent",
        "idk": "descent",
        "task_vector": "descent",
        "eupmu": "ascent",
        "ungrad": "ascent",
        "pcgrad": "ascent",
        "sfron": "ascent",
        "rmu": "representation",
        "pdu": "ascent",
        "idk_dpo": "ascent",
        "undial": "descent",
        "wga": "ascent",
        "satimp": "ascent",
        "ce_u": "descent",
    }
    assert {name: method.trainer.family for name, method in METHODS.items()} == families
    assert all(method.trainer.tags == (name,) for name, method in METHODS.items())
    assert METHODS["ga"].trainer.summary == "Gradient ascent: maximizes the answer NLL on the forget set."
    assert METHODS["pcgrad"].trainer.summary.startswith("PCGrad: projects conflicting forget and retain gradients")


def test_shared_fields_are_declared_once_and_typed(tmp_path):
    """retain_loss / retain_weight / the bounded forget loss come from one declaration each (same help, same
    default) in every method that has them, as Literal choices; methods without a retain term have none."""
    helps: dict[str, set] = {}
    for method in METHODS.values():
        types = typing.get_type_hints(method.config)
        for f in dataclasses.fields(method.config):
            helps.setdefault(f.name, set()).add((f.metadata.get("help"), repr(f.default), str(types[f.name])))
    for name in ("retain_loss", "retain_weight", "ga_nll_ceiling"):
        assert len(helps[name]) == 1, f"{name} is declared more than once: {helps[name]}"
    assert "Literal" in next(iter(helps["retain_loss"]))[2]
    fields_of = {name: {f.name for f in dataclasses.fields(m.config)} for name, m in METHODS.items()}
    assert "retain_loss" not in fields_of["ga"] and "retain_weight" not in fields_of["task_vector"]
    assert "retain_loss" not in fields_of["idk"]  # idk's retain term is always the NLL
    with pytest.raises(ValueError, match="retain_loss must be one of"):
        METHODS["sfron"].config(output_dir=str(tmp_path), use_cpu=True, retain_loss="mse")
    # θ_ref comes with the KL retain term or the NPO forget loss, and with neither it is not loaded.
    npo_free = METHODS["ungrad"].config(output_dir=str(tmp_path), use_cpu=True, forget_loss="ga_clipped")
    assert not METHODS["ungrad"].trainer.wants_reference(npo_free)
    kl = METHODS["ungrad"].config(output_dir=str(tmp_path), use_cpu=True, forget_loss="ga_clipped", retain_loss="kl")
    assert METHODS["ungrad"].trainer.wants_reference(kl)


def test_provenance_of_the_extrapolating_methods(tmp_path):
    mox = METHODS["mox"].config(output_dir=str(tmp_path), use_cpu=True, alpha=2.0, alphas=[8.0, 2.0], momentum=True)
    assert mox.provenance() == {"alpha": 2.0, "alphas": [2.0, 8.0], "eta": 0.675}
    tv = METHODS["task_vector"].config(output_dir=str(tmp_path), use_cpu=True)

    # What run_info.json records: the config's provenance, null for what the method does not use.
    def recorded(args):
        info = RunInfo(stage="unlearn", base_model="m", seed=0, provenance=args.provenance()).to_json()
        return {key: info[key] for key in ("alpha", "alphas", "eta")}

    assert recorded(tv) == {"alpha": 5.0, "alphas": None, "eta": None}
    assert recorded(METHODS["ga"].config(output_dir=str(tmp_path), use_cpu=True)) == {
        "alpha": None,
        "alphas": None,
        "eta": None,
    }


# --- nothing outside the registry names a method ---------------------------------------------------------------

# Files that read the method classes. A method name may appear in a named module constant (ALL_CAPS: benchmark
# settings keyed by method, the scales, a family name that equals its method's, an experiment's reference
# method), which states the protocol as data; never inline in a code path (`if method == "npo"`).
READERS = (
    *(f"llm_unlearn/stages/{p.name}" for p in sorted((REPO / "llm_unlearn" / "stages").glob("*.py"))),
    "llm_unlearn/model_card.py",
    "llm_unlearn/hub.py",
    "benchmarks/make_tables.py",
)


def method_name_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    allowed: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            allowed |= {id(n) for n in ast.walk(node.value)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in METHODS and id(node) not in allowed
    ]


@pytest.mark.parametrize("relative", [*READERS, "benchmarks/run_benchmark.py"])
def test_no_code_path_names_a_method(relative):
    assert method_name_literals(REPO / relative) == []


def test_the_name_check_can_fail(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('if method == "npo":\n    pass\nMOX_FAMILY = "mox"\ndef f():\n    X = "ga"\n')
    assert method_name_literals(source) == [(1, "npo"), (5, "ga")]


# --- a new method: one temporary registry entry, no other edit ---------------------------------------------------


@dataclass
class ToyConfig(UnlearnConfig):
    strength: float = field(default=0.5, metadata={"help": "How much to forget."})

    def provenance(self) -> dict:
        return {"alpha": self.strength, "strength": self.strength}


class ToyTrainer(UnlearningTrainer):
    family = "descent"
    summary = "Toy: descends the forget NLL (a test method)."
    tags = ("toy", "test-only")
    paper = {"title": "A Toy Method", "url": "https://example.org/toy"}
    display_name = "Toy"
    needs_retain = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.nll(model, inputs["forget"])
        self.record(forget_nll=loss, loss=loss)
        return loss

    def export(self, run_dir, model_source=None) -> dict[str, dict]:
        twin = self.export_unlearned(str(Path(run_dir) / "twin"))
        return {**super().export(run_dir), "twin": {**twin, "alpha": 0.25}}


@pytest.fixture()
def toy_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Method(ToyConfig, ToyTrainer))
    return "toy"


def test_a_new_method_runs_through_the_stages_and_onto_its_card(toy_registered, tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    config = run_config(model_dir, tmp_path / "run", "toy", max_steps=1, strength=0.75)
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    run = tmp_path / "run"
    info = json.loads((run / "run_info.json").read_text())
    assert info["method"] == "toy" and info["hyperparameters"]["strength"] == 0.75
    assert (info["alpha"], info["alphas"], info["eta"], info["strength"]) == (0.75, None, None, 0.75)
    assert set(info["exports"]) == {"unlearned", "twin"}
    twin_info = json.loads((run / "twin" / "run_info.json").read_text())
    assert twin_info["alpha"] == 0.25  # each export keeps its own α
    card = build_model_card(run / "twin", repo_id="alice/toy")
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["tags"] == ["llm_unlearn", "unlearning", "toy", "test-only"]
    assert (
        "with the `toy` unlearning method. Toy: descends the forget NLL (a test method). "
        "Paper: [A Toy Method](https://example.org/toy).\n"
    ) in card
    assert "- α (extrapolation strength): 0.25\n" in card and "- η: not used\n" in card


def test_a_card_for_an_unregistered_method_says_so(tmp_path, toy_registered):
    info = {
        "method": "retired_method",
        "hyperparameters": {},
        "alpha": None,
        "eta": None,
        "base_model": "some-org/base",
        "base_model_revision": None,
        "data": {"dataset": "tofu", "splits": {}},
        "seed": 0,
        "versions": {},
        "git_commit": None,
        "toolkit_version": "0.1.0",
    }
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    card = build_model_card(tmp_path)
    assert "`retired_method`: no one-line description is registered for this method name." in card
    assert yaml.safe_load(card.split("---")[1])["tags"] == ["llm_unlearn", "unlearning", "retired_method"]


def test_the_benchmark_places_a_new_method_by_its_family(toy_registered, monkeypatch, tmp_path):
    scale = rb.SCALES["toy"]
    assert rb.registered_methods(None, scale)[-1] == "toy"
    assert rb.registered_methods(["toy"], scale) == ["toy"]
    calls = []
    monkeypatch.setattr(rb, "prepare_references", lambda ctx: None)
    monkeypatch.setattr(rb, "run_mox", lambda ctx, method: calls.append(("mox", method)))
    monkeypatch.setattr(rb, "run_baseline", lambda ctx, method, weights: calls.append((weights, method)))
    ctx = rb.Context(scale, 0, scale.settings[0], tmp_path / "out", tmp_path / "cache", tmp_path / "work", "tiny")
    rb.run_setting(ctx, ["ga", "toy", "mox"])
    assert calls == [("mox", "mox"), ("lora", "ga"), ("lora", "toy"), ("full", "ga"), ("full", "toy")]
    assert rb.scale_manifest(scale)["families"]["toy"] == "descent"
    # A family without a learning-rate grid in the scale is refused before anything runs.
    monkeypatch.setattr(ToyTrainer, "family", "sideways")
    with pytest.raises(SystemExit, match="family 'sideways' has no learning-rate grid"):
        rb.registered_methods(["toy"], scale)


def _selection_folder(results: Path, runs: dict[str, str]) -> None:
    """One seed of results with a selected LoRA run per {choice name: method}."""
    folder = results / "demo" / "seed0"
    folder.mkdir(parents=True)
    choices = {}
    for variant, method in runs.items():
        name = f"s-lora-{variant}-lr1e-4"
        payload = {
            "run": name,
            "seed": 0,
            "setting": "s",
            "kind": "unlearn",
            "method": method,
            "variant": variant,
            "weights": "lora",
            "learning_rate": 1e-4,
            "metrics": {"forget_quality": 0.5, "model_utility": 0.5},
        }
        (folder / f"{name}.json").write_text(json.dumps(payload))
        choices[f"s/lora/{variant}"] = {"run": name, "met_rule": True, "evaluated": [name]}
    selection = {"scale": {}, "settings": {"s": {"utility_threshold": 0.4, "choices": choices}}}
    (folder / "selection.json").write_text(json.dumps(selection))


def test_the_tables_order_and_label_a_new_method_from_the_registry(toy_registered, monkeypatch, tmp_path):
    _selection_folder(tmp_path / "results", {"toy": "toy", "ga": "ga", "mox": "mox", "zzz_unknown": "zzz_unknown"})
    body = make_tables.render(tmp_path / "results", tmp_path, write_plots=False)
    labels = [line.split("|")[1].strip() for line in body.splitlines() if "| lora |" in line]
    assert labels == ["MOX", "ga", "Toy", "zzz_unknown"]  # registry order; unknown names last
    # In the mox family, the method's momentum variant gets its row right after it.
    monkeypatch.setattr(ToyTrainer, "family", "mox")
    _selection_folder(tmp_path / "results2", {"toy_momentum": "toy", "toy": "toy", "ga": "ga"})
    body = make_tables.render(tmp_path / "results2", tmp_path, write_plots=False)
    labels = [line.split("|")[1].strip() for line in body.splitlines() if "| lora |" in line]
    assert labels == ["ga", "Toy", "Toy-momentum"]
