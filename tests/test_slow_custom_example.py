"""The README's "Unlearn your own data" example, end to end on SmolLM2 (slow: about 10 minutes on 2 CPU cores):
fine-tune a target on examples/customers, MOX over LoRA, evaluate both, push the unlearned adapter to a local
fake Hub. The forget set's answer probability must fall far more than the retain set's."""

import json
from pathlib import Path

import pytest

from llm_unlearn import cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["metrics"]


def test_readme_custom_example_end_to_end(tmp_path, monkeypatch, fake_hub):
    monkeypatch.chdir(REPO)  # the recipes name examples/ relative to the repository
    target, mox = tmp_path / "target", tmp_path / "mox_lora"
    # The README's commands, with the run folders moved under tmp_path.
    steps = [
        ["finetune", "recipes/custom/finetune_target.yaml", f"training.output_dir={target}"],
        [
            "evaluate",
            "recipes/custom/evaluate.yaml",
            f"model.name_or_path={target}/model",
            f"evaluation.model_path={target}/model",
            f"evaluation.output_dir={target}/eval",
        ],
        [
            "extrapolate",
            "recipes/custom/mox_lora.yaml",
            f"model.name_or_path={target}/model",
            f"training.output_dir={mox}",
        ],
        [
            "evaluate",
            "recipes/custom/evaluate.yaml",
            f"model.name_or_path={target}/model",
            f"evaluation.model_path={mox}/unlearned",
        ],
    ]
    for step in steps:
        assert cli.main(step) == 0, step
    before, after = summary(target / "eval"), summary(mox / "eval")
    forget_drop = 1 - after["forget_prob"] / before["forget_prob"]
    retain_drop = 1 - after["retain_prob"] / before["retain_prob"]
    print(
        f"forget Prob {before['forget_prob']:.3f} -> {after['forget_prob']:.3f} ({forget_drop:.0%} down), retain Prob "
        f"{before['retain_prob']:.3f} -> {after['retain_prob']:.3f} ({retain_drop:.0%} down)"
    )
    assert before["forget_prob"] > 0.5  # the target did learn the forget set
    assert forget_drop > 0.3 and retain_drop < forget_drop / 3
    assert after["retain_kl_to_start"] > 0 and after["general_knowledge"] is not None

    assert cli.main(["push", str(mox / "unlearned"), "--repo-id", "you/customers-mox", "--endpoint", fake_hub.url]) == 0
    card = fake_hub.files("you/customers-mox")["README.md"].decode()
    run_info = json.loads((mox / "run_info.json").read_text())
    forget = run_info["data"]["splits"]["forget"]
    assert forget["rows"] == 10 and forget["sha256"] in card  # the forget set's size and hash ...
    forget_rows = (REPO / "examples/customers/forget.jsonl").read_text().splitlines()
    assert not any(json.loads(row)["answer"] in card for row in forget_rows)  # ... never its content
    assert "model-index" in card and "forget_prob" in card
